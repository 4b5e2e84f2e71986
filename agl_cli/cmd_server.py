"""agl store: serve the store over Agent-lightning's REST API (and OTLP/HTTP traces)."""

from __future__ import annotations

from typing import Annotated

import typer

from store_fs.errors import ExitCode

from . import output
from .exit_codes import CliError
from .params import Durability, LogLevel, megabytes, seconds
from .state import CliState, check_directories, check_store_path


def store(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Bind address. 0.0.0.0 or :: expose the store to the network.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port (0 picks a free one; the log line names it).")
    ] = 4747,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="AGL_STORE_TOKEN", help="Require 'Authorization: Bearer TOKEN' (not on /health)."
        ),
    ] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option("--log-level", case_sensitive=False, help="INFO logs one line per request."),
    ] = "INFO",
    max_body_mb: Annotated[
        float,
        typer.Option("--max-body-mb", parser=megabytes, metavar="MB", help="Larger request bodies get 413."),
    ] = 64.0,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, max=256, help="Store calls served at once (default: 2 per CPU, at least 4, at most 8)."
        ),
    ] = None,
    scan_debounce_seconds: Annotated[
        float,
        typer.Option(
            "--scan-debounce-seconds",
            parser=seconds,
            metavar="SECONDS",
            help="At most one watchdog scan per this many seconds (0: before every call).",
        ),
    ] = 1.0,
    claim_grace_seconds: Annotated[
        float,
        typer.Option(
            "--claim-grace-seconds",
            parser=seconds,
            metavar="SECONDS",
            help="How long a claim or decision may stay half-applied before the watchdog finishes it.",
        ),
    ] = 30.0,
    clock_skew_seconds: Annotated[
        float,
        typer.Option(
            "--clock-skew-seconds",
            parser=seconds,
            metavar="SECONDS",
            help="Extra slack before another host's heartbeats are judged silent.",
        ),
    ] = 0.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes sharing the port, to use more than one core "
            "(each with --threads store threads).",
        ),
    ] = 1,
    durability: Annotated[
        Durability | None,
        typer.Option(
            help="'fsync': every write is on disk before its answer (survives power loss), even if "
            "the store does not require it; a store created here records it. [default: the "
            "store's setting, see agl init --durability]",
            show_default=False,
        ),
    ] = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            parser=seconds,
            metavar="SECONDS",
            help="On Ctrl-C or SIGTERM, how long requests in flight may take to finish.",
        ),
    ] = 10.0,
) -> None:
    """Serve the store over HTTP in the foreground until Ctrl-C (creating the store if missing).

    Upstream's LightningStoreClient, its OTLP exporters and store_fs.client.LightningStoreClient
    can all talk to it. Several servers, CLI calls and runners may share one store directory.
    Writes are as durable as the store's setting says (agl init --durability fsync: power loss),
    or --durability asks.

    \b
    Example:
      AGL_STORE=runs/exp1 agl store --port 4747 &
      curl -s localhost:4747/v1/agl/statistics
      agl store --workers 4        # on a machine with 4 or more cores
    """
    cli = CliState.of(ctx)
    from store_fs import FileStore
    from store_fs.bearer_token import check_token
    from store_fs.server import ServerStartError, log_to_stderr, run_server

    if token:
        check_token(token)  # before a store is made for a server that cannot start

    # The global logging setup is WARNING; the access log needs its own level and handler.
    log_to_stderr(log_level.upper())
    check_store_path(cli.store_path())
    opened = FileStore(
        cli.store_path(),
        create=True,
        scan_debounce_seconds=scan_debounce_seconds,
        claim_grace_seconds=claim_grace_seconds,
        clock_skew_seconds=clock_skew_seconds,
        durability=durability,
    )
    check_directories(opened)
    output.info(
        f"{'created a new' if opened.created else 'serving the'} store at {opened.root}"
        f" (durability: {opened.durability})"
    )
    try:
        run_server(
            opened,
            host=host,
            port=port,
            token=token or None,
            max_body_bytes=int(max_body_mb * 2**20),
            threads=threads,
            shutdown_grace=shutdown_grace,
            workers=workers,
        )
    except OSError as err:  # port in use, address not available...
        raise CliError(f"cannot serve on {host}:{port}: {err.strerror or err}", ExitCode.ERROR) from err
    except ServerStartError as err:  # a worker could not start, or workers kept dying
        raise CliError(str(err), ExitCode.ERROR) from err
