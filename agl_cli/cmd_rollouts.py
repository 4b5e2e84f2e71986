"""agl rollouts list / show / cancel / retry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from store_fs import damaged_reads
from store_fs.errors import ExitCode

from . import output
from .exit_codes import CliError
from .params import Limit, Offset, RolloutArg, RolloutArgs, RolloutSortField, StatusFilter, values
from .state import CliState, require_rollout, run
from .tables import ROLLOUT_COLUMNS

if TYPE_CHECKING:
    from store_fs import FileStore

rollouts_app = typer.Typer(
    help="""List, watch, inspect, cancel and retry rollouts.

\b
Examples:
  agl rollouts list --status failed --status cancelled
  agl rollouts list --watch
  agl rollouts show ro-0123456789ab | jq '.attempts[-1].status'
  agl rollouts list --status failed | jq -r .rollout_id | xargs agl rollouts retry
""",
    no_args_is_help=True,
)


@rollouts_app.command("list")
def list_rollouts(
    ctx: typer.Context,
    status: StatusFilter = None,
    id_contains: Annotated[
        str | None, typer.Option("--id-contains", help="Substring of the rollout id.")
    ] = None,
    any_: Annotated[bool, typer.Option("--any", help="Match any filter instead of all.")] = False,
    sort_by: Annotated[RolloutSortField | None, typer.Option("--sort-by", help="Field to sort by.")] = None,
    desc: Annotated[bool, typer.Option(help="Sort descending.")] = False,
    limit: Limit = -1,
    offset: Offset = 0,
    watch: Annotated[
        bool,
        typer.Option("--watch", "-w", help="Then print rollouts again as they change, until Ctrl-C."),
    ] = False,
) -> None:
    """Rollouts, oldest first (JSONL when piped); with --watch, then each change as it happens.

    \b
    agl rollouts list --status failed --status cancelled
    agl rollouts list --sort-by start_time --desc --limit 10
    agl rollouts list --watch --status running      # a live view; Ctrl-C to stop
    agl rollouts list | jq -r 'select(.status=="succeeded") | .rollout_id'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    query: dict[str, Any] = {
        "status_in": values(status),
        "rollout_id_contains": id_contains,
        "filter_logic": "or" if any_ else "and",
        "sort_by": sort_by,
        "sort_order": "desc" if desc else "asc",
        "limit": limit,
        "offset": offset,
    }
    if watch:
        run(_watch(cli, store, query))
        return
    with damaged_reads.collecting() as damaged:
        result = run(store.query_rollouts(**query))
    cli.out.emit_records(list(result), ROLLOUT_COLUMNS)
    if not cli.out.machine:
        output.info(f"{len(result)} of {result.total} rollout(s)")
    if damaged:  # a partial list must not pass for the whole one in a script
        paths = sorted(damaged)
        raise CliError(
            f"{len(paths)} rollout(s) left out, their records are damaged: {', '.join(paths[:3])}"
            + (" ..." if len(paths) > 3 else "")
            + " (`agl check` reports them)",
            ExitCode.CORRUPT,
        )


async def _watch(cli: CliState, store: FileStore, query: dict[str, Any]) -> None:
    from store_fs.live import watch_rollouts

    out = cli.out
    table = out.table(ROLLOUT_COLUMNS, fixed=True)
    if not out.machine:
        out.emit_text([table.header()])
    output.info("watching for changes; Ctrl-C to stop")
    async for changed in watch_rollouts(store, **query):
        if out.machine:
            for rollout in changed:
                out.emit_line(rollout)
        elif changed:
            out.emit_text(table.render((output.to_data(r) for r in changed), header=False))


@rollouts_app.command("show")
def show(ctx: typer.Context, rollout_id: RolloutArg) -> None:
    """One rollout with all its attempts (one JSON document).

    \b
    agl rollouts show "$RID" | jq '.attempts[-1].status'
    """
    cli = CliState.of(ctx)
    from store_fs.exporting import rollout_document

    store = cli.open_store()
    document = run(rollout_document(store, rollout_id, spans=False))
    if document is None:
        from store_fs import RolloutNotFoundError

        raise RolloutNotFoundError(rollout_id)
    cli.out.emit_json(document)


def _check_all(store: FileStore, rollout_ids: list[str]) -> None:
    for rid in rollout_ids:
        require_rollout(store, rid)  # all ids are checked before anything changes


@rollouts_app.command("cancel")
def cancel(ctx: typer.Context, rollout_ids: RolloutArgs) -> None:
    """Cancel rollouts: queued ones never run; running ones' runners are told at their next heartbeat.

    \b
    agl rollouts list --status queuing | jq -r .rollout_id | xargs agl rollouts cancel
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    _check_all(store, rollout_ids)
    for rid in rollout_ids:
        rollout = run(store.cancel_rollout(rid))
        if cli.out.machine:
            cli.out.emit_line(rollout)
        output.info(f"cancelled {rid}")


@rollouts_app.command("retry")
def retry(ctx: typer.Context, rollout_ids: RolloutArgs) -> None:
    """Queue rollouts again (status requeuing), whatever their status, cancelled included.

    \b
    agl rollouts list --status failed | jq -r .rollout_id | xargs agl rollouts retry
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    _check_all(store, rollout_ids)
    for rid in rollout_ids:
        rollout = run(store.update_rollout(rid, status="requeuing"))
        if cli.out.machine:
            cli.out.emit_line(rollout)
        output.info(f"requeued {rid}")
