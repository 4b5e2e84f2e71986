"""agl store: serve the store over Agent-lightning's REST API (and OTLP/HTTP traces)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from store_fs.errors import ExitCode

from . import output
from .exit_codes import CliError
from .state import CliState


def store(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Bind address. 0.0.0.0 or :: expose the store to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one; the log line names it).")] = 4747,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="AGL_STORE_TOKEN", help="Require 'Authorization: Bearer TOKEN' (not on /health)."
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO (one line per request), WARNING or ERROR.")
    ] = "INFO",
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="Larger request bodies are refused with 413.")
    ] = 64.0,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Store calls served at once (default: 2 per CPU, at least 4, at most 8)."),
    ] = None,
) -> None:
    """Serve the store over HTTP in the foreground until Ctrl-C (creating the store if missing).

    Upstream's LightningStoreClient, its OTLP exporters and store_fs.client.LightningStoreClient
    can all talk to it. Several servers, CLI calls and runners may share one store directory.

    \b
    Example:
      AGL_STORE=runs/exp1 agl store --port 4747 &
      curl -s localhost:4747/v1/agl/statistics
    """
    cli = CliState.of(ctx)
    from store_fs import FileStore
    from store_fs.server import run_server

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter("must be DEBUG, INFO, WARNING or ERROR", param_hint="--log-level")
    # The global logging setup is WARNING; the access log needs its own level and handler.
    server_log = logging.getLogger("store_fs.server")
    server_log.setLevel(level)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    server_log.addHandler(handler)
    server_log.propagate = False
    opened = FileStore(cli.store_path(), create=True)
    output.info(f"{'created a new' if opened.created else 'serving the'} store at {opened.root}")
    try:
        run_server(
            opened,
            host=host,
            port=port,
            token=token or None,
            max_body_bytes=int(max_body_mb * 2**20),
            threads=threads,
        )
    except OSError as err:  # port in use, address not available...
        raise CliError(f"cannot serve on {host}:{port}: {err.strerror or err}", ExitCode.ERROR) from err
