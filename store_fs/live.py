"""Following a store as it changes: the change feed's events, and rollouts as they change.

Read-only helpers over a :class:`~store_fs.store.FileStore` (``agl events`` and ``agl rollouts
list --watch`` are built on them). The change feed is ``events/<writer>.jsonl``, one line per
rollout status change, appended by each writing process to its own file
(``store_fs/_disk/change_feed.py``); :class:`EventReader` reads only the bytes added since its
last read and never a torn last line. Following sleeps on the feed directory with watchfiles
(``store_fs/_disk/watch.py``: inotify, or polling on network filesystems and with
``AGL_WATCH=poll``), and looks again at least every tick, so a missed wake-up costs latency only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store_fs._disk import codec, log_segments
from store_fs._disk.change_feed import EVENT_LOGS
from store_fs._disk.ids import check_rollout_id
from store_fs._disk.watch import ChangeFeed, resolve_mode
from store_fs.models import Rollout, RolloutStatus

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["EventReader", "follow_events", "watch_rollouts"]


@dataclass
class EventReader:
    """Incremental reader of a store's ``events/`` directory.

    Each call to :meth:`read_new` returns the events appended since the previous call, oldest
    first, each as its JSON object with ``writer`` (the name of the file it was appended to)
    added. A line without its newline yet is left for the next call; a complete line that does
    not parse is skipped. Logs compacted into segments meanwhile are followed across
    (``store_fs/_disk/log_segments.py``): no event is returned twice.
    """

    directory: Path
    position: log_segments.Position = field(default_factory=dict)

    def read_new(self) -> list[dict[str, Any]]:
        """Events appended since the last call, by time."""
        chunks, replaced = log_segments.read_new(self.directory, EVENT_LOGS, self.position)
        if replaced:
            # Logs deleted, cut short or replaced (the whole feed begun again, or a file
            # rotated away): those are read from their start, the others go on where they were.
            listing = log_segments.scan(self.directory, EVENT_LOGS)
            for name in log_segments.replaced_names(listing, self.position):
                del self.position[name]
            chunks, _ = log_segments.read_new(self.directory, EVENT_LOGS, self.position)
        events = []
        for chunk in chunks:
            writer = EVENT_LOGS.writer(chunk.source)
            for line in chunk.data.splitlines():
                try:
                    event = codec.loads(line)
                except codec.DecodeError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("rollout_id"), str):
                    event["writer"] = writer
                    events.append(event)
        events.sort(key=_time_of)
        return events


def _time_of(event: dict[str, Any]) -> float:
    value = event.get("time")
    return float(value) if isinstance(value, (int, float)) else 0.0


def _keep(event: dict[str, Any], rollout_ids: set[str] | None) -> bool:
    return rollout_ids is None or event["rollout_id"] in rollout_ids


async def follow_events(
    store: FileStore, *, follow: bool = False, rollout_ids: Sequence[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The store's change events so far, oldest first; with ``follow``, then new ones as they
    are written, until the caller stops iterating (or the store is removed or moved away:
    :class:`~store_fs.errors.StoreNotFoundError`). ``rollout_ids`` keeps only those rollouts'."""
    wanted = None if rollout_ids is None else {check_rollout_id(rid) for rid in rollout_ids}
    reader = EventReader(store.layout.events)
    if not follow:
        for event in reader.read_new():
            if _keep(event, wanted):
                yield event
        return
    async with ChangeFeed(store.layout.events, resolve_mode("auto", store.root)) as feed:
        while True:  # the feed is live before the first read: nothing written after it is missed
            # Removed, moved away or replaced: say so, rather than wait for ever (or follow another).
            store.check_still_here()
            for event in reader.read_new():
                if _keep(event, wanted):
                    yield event
            await feed.next()


def _fingerprint(rollout: Rollout) -> tuple[Any, ...]:
    attempt = getattr(rollout, "attempt", None)
    return (
        rollout.status,
        rollout.end_time,
        None if attempt is None else attempt.attempt_id,
        None if attempt is None else attempt.status,
    )


async def watch_rollouts(
    store: FileStore,
    *,
    status_in: Sequence[RolloutStatus] | None = None,
    rollout_id_contains: str | None = None,
    filter_logic: Any = "and",
    sort_by: str | None = None,
    sort_order: Any = "asc",
    limit: int = -1,
    offset: int = 0,
    recheck_seconds: float = 5.0,
) -> AsyncIterator[list[Rollout]]:
    """The rollouts ``query_rollouts`` selects, then, after every change, those of them that
    are new or changed (status, end time, latest attempt or its status), until the caller stops.

    The first list may be empty; later ones never are. The query runs again when the change
    feed says something happened, and every ``recheck_seconds`` in any case.
    """
    query = {
        "status_in": status_in,
        "rollout_id_contains": rollout_id_contains,
        "filter_logic": filter_logic,
        "sort_by": sort_by,
        "sort_order": sort_order,
        "limit": limit,
        "offset": offset,
    }
    seen: dict[str, tuple[Any, ...]] = {}
    first = True
    async with ChangeFeed(store.layout.events, resolve_mode("auto", store.root)) as feed:
        while True:
            store.check_still_here()  # gone or replaced: say so, not "nothing"
            page = await store.query_rollouts(**query)
            changed = [r for r in page if seen.get(r.rollout_id) != _fingerprint(r)]
            seen.update((r.rollout_id, _fingerprint(r)) for r in changed)
            if changed or first:
                yield changed
            first = False
            looked = time.monotonic()
            while not await feed.next() and time.monotonic() - looked < recheck_seconds:
                pass
