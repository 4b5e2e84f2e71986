"""agl init / workers / stats / check / export."""

from __future__ import annotations

from typing import Annotated

import typer

from store_fs.errors import ExitCode

from . import output
from .state import CliState, require_rollout, run

workers_app = typer.Typer(help="Inspect workers.", no_args_is_help=True)


def init(
    ctx: typer.Context,
    path: Annotated[
        str | None, typer.Argument(help="Directory of the store (default: --store or runs/default).")
    ] = None,
) -> None:
    """Create a store (safe to run again on an existing one).

    \b
    agl init runs/exp1 && export AGL_STORE=runs/exp1
    """
    cli = CliState.of(ctx)
    from store_fs import init_store

    root = init_store(path or cli.store_path())
    output.info(f"store ready at {root}")


@workers_app.command("list")
def list_workers(ctx: typer.Context) -> None:
    """Workers with their status and current rollout.

    \b
    agl workers list | jq -r 'select(.status=="busy") | .worker_id'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    cli.out.emit_records(
        list(run(store.query_workers(sort_by="worker_id"))),
        [("worker_id", 20), ("status", 8), ("current_rollout_id", 15), ("last_heartbeat_time", 18)],
    )


def stats(ctx: typer.Context) -> None:
    """Counts of rollouts, attempts, spans, resources and workers.

    \b
    agl stats | jq .total_rollouts
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    cli.out.emit_json(run(store.statistics()))


def check(
    ctx: typer.Context, fix: Annotated[bool, typer.Option(help="Repair what is safe to repair.")] = False
) -> None:
    """Look for torn span lines, orphan tokens, temp files, stale rollout.json links, rollout index
    gaps and corrupt records.

    Exits 7 if problems remain (after --fix: those it could not repair). Run --fix on a quiet store.

    \b
    agl check || agl check --fix
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    problems = store.check(fix=fix)
    for problem in problems:
        if cli.out.machine:
            cli.out.emit_line(
                {"kind": problem.kind, "path": problem.path, "detail": problem.detail, "fixed": problem.fixed}
            )
        else:
            output.info(str(problem))
    left = [p for p in problems if not p.fixed]
    output.info(f"{len(problems)} problem(s), {len(problems) - len(left)} fixed")
    if left:
        raise typer.Exit(ExitCode.CORRUPT)


def export(ctx: typer.Context, rollout_id: Annotated[str, typer.Argument(help="Rollout id.")]) -> None:
    """A rollout with its attempts and spans as one JSON document.

    \b
    agl export "$RID" > "$RID.json"
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    data = require_rollout(store, rollout_id).model_dump(mode="json")
    data.pop("attempt", None)
    data["attempts"] = [a.model_dump(mode="json") for a in run(store.query_attempts(rollout_id))]
    data["spans"] = [s.model_dump(mode="json") for s in run(store.query_spans(rollout_id))]
    cli.out.emit_json(data)
