"""agl rollouts list / show / cancel / retry."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from .cmd_queue import ROLLOUT_COLUMNS
from .state import CliState, require_rollout, run

rollouts_app = typer.Typer(help="List, inspect, cancel and retry rollouts.", no_args_is_help=True)


@rollouts_app.command("list")
def list_rollouts(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Keep rollouts in this status (repeatable).")
    ] = None,
    id_contains: Annotated[
        str | None, typer.Option("--id-contains", help="Substring of the rollout id.")
    ] = None,
    any_: Annotated[bool, typer.Option("--any", help="Match any filter instead of all.")] = False,
    sort_by: Annotated[
        str | None, typer.Option("--sort-by", help="Field to sort by, e.g. start_time.")
    ] = None,
    desc: Annotated[bool, typer.Option(help="Sort descending.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many (-1: all).")] = -1,
    offset: Annotated[int, typer.Option(help="Skip this many matches first.")] = 0,
) -> None:
    """Rollouts, oldest first (JSONL when piped).

    \b
    agl rollouts list --status failed --status cancelled
    agl rollouts list | jq -r 'select(.status=="succeeded") | .rollout_id'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    result = run(
        store.query_rollouts(
            status_in=status,  # type: ignore[arg-type]
            rollout_id_contains=id_contains,
            filter_logic="or" if any_ else "and",
            sort_by=sort_by,
            sort_order="desc" if desc else "asc",
            limit=limit,
            offset=offset,
        )
    )
    cli.out.emit_records(list(result), ROLLOUT_COLUMNS)
    if not cli.out.machine:
        output.info(f"{len(result)} of {result.total} rollout(s)")


@rollouts_app.command("show")
def show(ctx: typer.Context, rollout_id: Annotated[str, typer.Argument(help="Rollout id.")]) -> None:
    """One rollout with all its attempts (one JSON document).

    \b
    agl rollouts show "$RID" | jq '.attempts[-1].status'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    rollout = require_rollout(store, rollout_id)
    attempts = run(store.query_attempts(rollout_id))
    data = rollout.model_dump(mode="json")
    data.pop("attempt", None)
    data["attempts"] = [a.model_dump(mode="json") for a in attempts]
    cli.out.emit_json(data)


@rollouts_app.command("cancel")
def cancel(
    ctx: typer.Context, rollout_ids: Annotated[list[str], typer.Argument(help="Rollouts to cancel.")]
) -> None:
    """Cancel rollouts: queued ones never run; running ones' runners are told at their next heartbeat.

    \b
    agl rollouts list --status queuing | jq -r .rollout_id | xargs agl rollouts cancel
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    for rid in rollout_ids:
        require_rollout(store, rid)  # all ids are checked before anything changes
    for rid in rollout_ids:
        rollout = run(store.cancel_rollout(rid))
        if cli.out.machine:
            cli.out.emit_line(rollout)
        output.info(f"cancelled {rid}")


@rollouts_app.command("retry")
def retry(
    ctx: typer.Context, rollout_ids: Annotated[list[str], typer.Argument(help="Rollouts to queue again.")]
) -> None:
    """Queue rollouts again (status requeuing), whatever their status, cancelled included.

    \b
    agl rollouts list --status failed | jq -r .rollout_id | xargs agl rollouts retry
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    for rid in rollout_ids:
        require_rollout(store, rid)
    for rid in rollout_ids:
        rollout = run(store.update_rollout(rid, status="requeuing"))
        if cli.out.machine:
            cli.out.emit_line(rollout)
        output.info(f"requeued {rid}")
