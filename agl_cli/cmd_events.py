"""agl events: the store's change feed (every rollout status change), optionally followed live."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from . import completion, output
from .state import CliState, run
from .tables import EVENT_COLUMNS

if TYPE_CHECKING:
    from store_fs import FileStore


def events(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen, until Ctrl-C.")
    ] = False,
    rollout: Annotated[
        list[str] | None,
        typer.Option(
            "--rollout", help="Only its events (repeatable).", autocompletion=completion.rollout_ids
        ),
    ] = None,
) -> None:
    """Rollout status changes, oldest first: {rollout_id, status, previous, time, writer} (JSONL
    when piped, a table on a terminal).

    Each writing process appends to its own events/<writer>.jsonl; --follow watches them
    (inotify, or polling on network filesystems).

    \b
    agl events | jq -c 'select(.status=="failed")'
    agl events --follow --rollout ro-0123456789ab
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    if follow:
        output.info("following the change feed; Ctrl-C to stop")
    run(_print(cli, store, follow, rollout))


async def _print(cli: CliState, store: FileStore, follow: bool, rollout_ids: list[str] | None) -> None:
    from store_fs.live import follow_events

    out = cli.out
    table = out.table(EVENT_COLUMNS, fixed=True)
    if not out.machine:
        out.emit_text([table.header()])
    async for event in follow_events(store, follow=follow, rollout_ids=rollout_ids):
        if out.machine:
            out.emit_line(event)
        else:
            out.emit_text(table.render([event], header=False))
