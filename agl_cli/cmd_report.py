"""agl report: one self-contained HTML page about a store (store_fs.report)."""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any

import typer

from store_fs.errors import ExitCode

from . import output
from .exit_codes import CliError
from .params import interval_seconds
from .state import CliState


def _default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _is_stdout(path: str) -> bool:
    """``-o`` names this process's standard output (``/dev/stdout``, the file it is redirected
    to): the page goes there, and the summary must not (it would overwrite the page's start)."""
    try:
        return os.path.samestat(os.fstat(1), os.stat(path))
    except OSError:
        return False


def _written(cli: CliState, result: Any) -> None:
    problems = "not checked" if result.problems is None else f"{result.problems} problem(s)"
    output.info(
        f"report written to {result.path}: {result.rollouts:,} rollouts, {problems}, "
        f"{result.bytes / 1e6:.2f} MB in {result.seconds:.1f} s"
    )
    if _is_stdout(result.path):
        return  # the message above, on stderr, says it
    cli.out.emit_line(
        {
            "path": result.path,
            "bytes": result.bytes,
            "rollouts": result.rollouts,
            "problems": result.problems,
            "seconds": round(result.seconds, 3),
        }
    )


def report(
    ctx: typer.Context,
    store: Annotated[
        str | None, typer.Argument(help="Store directory (default: --store, AGL_STORE or runs/default).")
    ] = None,
    out: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.")] = "report.html",
    rollout: Annotated[
        list[str] | None,
        typer.Option("--rollout", help="Rollout whose spans to draw (repeatable; default: best and worst)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Include a data health section: a quick check of what the report reads, the queue and "
            "the index marker (see --full-check).",
        ),
    ] = True,
    full_check: Annotated[
        bool,
        typer.Option(
            "--full-check",
            help="Make the data health section what `agl check` finds: it reads every file again "
            "(minutes for 100,000 rollouts).",
        ),
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Write the report again when the store changes (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            parser=interval_seconds,
            metavar="SECONDS",
            help="With --watch: at least this many seconds between two reports.",
        ),
    ] = 2.0,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Worker processes reading a big store [default: one per CPU, at most 4]."
        ),
    ] = None,
    cache: Annotated[
        bool,
        typer.Option(
            "--cache/--no-cache",
            help="Reuse the rows of rollouts that ended minutes ago, kept in the store's cache/ by "
            "earlier reports (a rollout changed since is read again); --no-cache reads everything.",
        ),
    ] = True,
) -> None:
    """Write one offline HTML page about the store: summary, reward per resource version, reward
    and throughput over time, attempts per worker, distributions, failures, data health and span
    waterfalls. Prints {path, bytes, rollouts, problems, seconds} as JSON.

    \b
    agl report runs/exp1 -o exp1.html && xdg-open exp1.html
    agl report --watch -o live.html          # regenerated as the run goes on
    agl report --full-check -o exp1.html     # data health as `agl check` reports it
    """
    from store_fs.report import ReportOptions, ReportOutputError, watch_report, write_report

    if full_check and not check:
        raise typer.BadParameter("cannot be used with --no-check", param_hint="--full-check")
    cli = CliState.of(ctx)
    opened = (dataclasses.replace(cli, store=store) if store is not None else cli).open_store()
    options = ReportOptions(
        rollout_ids=tuple(rollout or ()),
        run_check=check,
        full_check=full_check,
        jobs=jobs if jobs is not None else _default_jobs(),
        refresh_seconds=max(2, round(interval)) if watch else None,
        cache=cache,
    )
    try:
        if watch:
            watch_report(opened, out, options, on_written=lambda r: _written(cli, r), interval=interval)
        else:
            _written(cli, write_report(opened, out, options))
    except ReportOutputError as err:
        raise CliError(str(err), ExitCode.BAD_INPUT) from None
    except KeyboardInterrupt:
        output.info("stopped")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
