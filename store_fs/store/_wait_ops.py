"""``wait_for_rollouts``: sleep on the change feed until rollouts finish."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from store_fs._disk.rollout_history import RecordStore, RolloutRecord
from store_fs._disk.rollout_index import RolloutIndex
from store_fs._disk.status_rules import TERMINAL_ROLLOUT_STATUSES
from store_fs._disk.watch import ChangeFeed, resolve_mode
from store_fs.models import Rollout
from store_fs.store._base import StoreCore

# A waiter re-reads every record it waits for at least this often (index lines are hints).
FULL_RECHECK_SECONDS = 1.0
# The same on a network filesystem, where each re-read is a round trip or two per rollout and
# only a crash between a revision and its index line (or an index write that failed) needs it.
SHARED_FS_RECHECK_SECONDS = 5.0
# Seconds of re-reading per look on a network filesystem (at least one record per look): a
# re-read costs tens of lookups at the file server's latency (a path walk, an open, a read), and
# re-reading 200 records at once kept a waiter from seeing completions for 3 s
# (tests/test_two_hosts.py, stress). A look comes every poll tick, so a few hundred waited-for
# rollouts are all re-read within tens of seconds; few are re-read every SHARED_FS_RECHECK_SECONDS.
SHARED_FS_RECHECK_BUDGET = 0.1
# Rollouts whose last re-read this process remembers, at most (waits that timed out leave some).
_REMEMBERED = 200_000


# Reads a waiter on a network filesystem makes at once (threads mostly waiting on the server).
_PARALLEL_READS = 8
_T = TypeVar("_T")
_Found = tuple[int, RolloutRecord] | None


@functools.cache
def _readers() -> ThreadPoolExecutor:
    """The process's pool for a waiter's parallel reads (made on first use on a network FS)."""
    return ThreadPoolExecutor(_PARALLEL_READS, thread_name_prefix="agl-wait-read")


class _Rechecks:
    """When this process last re-read each record some waiter waited for (monotonic)."""

    def __init__(self) -> None:
        self.read_at: dict[str, float] = {}


class _Waiting:
    """The rollouts one call still waits for, and those it found finished."""

    def __init__(
        self,
        records: RecordStore,
        index: RolloutIndex,
        rollout_ids: Iterable[str],
        recheck: float,
        shared_fs: bool,
        rechecks: _Rechecks,
        store_gone: Callable[[], None],
    ) -> None:
        self.records = records
        self.store_gone = store_gone
        self.index = index
        self.recheck = recheck
        self.shared_fs = shared_fs
        self.budget = SHARED_FS_RECHECK_BUDGET if shared_fs else None
        self.rechecks = rechecks
        self.waiting = set(rollout_ids)
        self.finished: dict[str, Rollout] = {}
        # The first look (at the index) counts as a read: re-reads start ``recheck`` from now.
        now = time.monotonic()
        read_at = rechecks.read_at
        if len(read_at) > _REMEMBERED:
            read_at.clear()
        for rollout_id in self.waiting:
            read_at.setdefault(rollout_id, now)
        self.next_due = self._next_due(now)

    def settle(self, rollout_id: str, found: tuple[int, RolloutRecord] | None) -> None:
        if found is None:  # gone (removed by ``agl prune``): nothing to wait for
            # ... unless the whole store went (moved away, removed): that raises, where the
            # wait would otherwise end as if every rollout had been pruned.
            self.store_gone()
            self.waiting.discard(rollout_id)
        elif found[1].status in TERMINAL_ROLLOUT_STATUSES:
            self.finished[rollout_id] = found[1].plain()
            self.waiting.discard(rollout_id)

    def check(self, deadline: float | None = None) -> None:
        """Settle what finished. The rollout index tells which waited-for rollouts finished, so
        a look costs one index refresh instead of a read of every record. Index lines are hints
        (a crash can lose one), so each record is also read again once its last read in this
        process is ``recheck`` seconds old (per process, not per call: an algorithm that waits
        with short timeouts in a loop would otherwise re-read everything at every call), for
        at most ``budget`` seconds per look (a network filesystem: the longest unread first, a
        few at a time, so a look stays short and completions are seen while the rest wait),
        and never past ``deadline`` (monotonic), the caller's."""
        entries = self.index.finished_among(self.waiting, TERMINAL_ROLLOUT_STATUSES)
        if entries is None:  # no complete index: the records are all there is
            for rollout_id in list(self.waiting):
                self.settle(rollout_id, self.records.head(rollout_id))
            return
        # Read the revision the index names, by name: this process's cached view (and, on NFS,
        # its cached listing or "no such revision" answer) may be the running one. A newer
        # revision would have its own index line, unless its writer died before writing it (a
        # revival, `agl rollouts retry`, cut short): on a local disk, where asking costs a stat,
        # the next one is asked for. On NFS it would cost a round trip per rollout, and is not:
        # there a waiter may take such a rollout for finished until `agl check --fix`.
        finished = [(r, e.rev) for r, e in entries.items()]
        newest = self.records.head_at_least
        newer = not self.shared_fs
        for (rid, _rev), found in self._read(lambda key: newest(*key, newer=newer), finished):
            self.settle(rid, found)
        self._recheck_due(deadline)

    def _read(self, read: Callable[[_T], _Found], keys: list[_T]) -> Iterator[tuple[_T, _Found]]:
        """``(key, read(key))`` for each key: on a network filesystem several at once (each read
        is a dozen round trips that mostly wait on the file server), else one after another."""
        if not self.shared_fs or len(keys) < 2:
            return ((k, read(k)) for k in keys)
        return zip(keys, _readers().map(read, keys), strict=True)

    def _next_due(self, now: float) -> float:
        """When the least recently read of the waited-for records is due for a re-read (another
        call of this process may read some meanwhile: then a look finds fewer due, never misses one)."""
        read_at = self.rechecks.read_at
        return min((read_at.get(r, now) for r in self.waiting), default=now) + self.recheck

    def _recheck_due(self, deadline: float | None = None) -> None:
        now = time.monotonic()
        if now < self.next_due:  # a look at every change: most find nothing due
            return
        read_at = self.rechecks.read_at
        due = [r for r in self.waiting if now - read_at.get(r, now) >= self.recheck]
        if self.budget is not None:
            due.sort(key=lambda r: read_at.get(r, now))  # the longest unread first
        step = _PARALLEL_READS if self.shared_fs else 1
        for start in range(0, len(due), step):
            batch = due[start : start + step]
            for rollout_id in batch:
                read_at[rollout_id] = now
            for rollout_id, found in self._read(self.records.head, batch):
                self.settle(rollout_id, found)
            spent = time.monotonic()
            if (self.budget is not None and spent - now >= self.budget) or (
                deadline is not None and spent >= deadline  # the caller's time is up
            ):
                return  # ``next_due`` stays passed: the next look goes on with the rest
        self.next_due = self._next_due(now)


class WaitMethods(StoreCore):
    """Waiting for rollouts to reach a terminal status."""

    async def wait_for_rollouts(
        self, *, rollout_ids: list[str], timeout: float | None = None
    ) -> list[Rollout]:
        shared = self._ctx.shared_fs
        # The watchdog runs while waiting, as upstream's does. On a network filesystem a pass
        # costs round trips per live attempt, so it runs beside the waiter rather than before it.
        watchdog = self._reaper.maybe_scan_soon if shared else self._reaper.maybe_scan
        watchdog()
        recheck = SHARED_FS_RECHECK_SECONDS if shared else FULL_RECHECK_SECONDS
        wanted = (r for r in rollout_ids if self._known_rollout(r))
        rechecks: _Rechecks = self._ctx.local("wait-rechecks", _Rechecks)
        state = _Waiting(self._records, self._index, wanted, recheck, shared, rechecks, self.check_still_here)
        # Waiting sleeps for real, so its deadline is on the real clock even when an
        # injected clock drives timestamps and liveness.
        deadline = None if timeout is None else time.monotonic() + timeout
        state.check(deadline)
        if state.waiting and (timeout is None or timeout > 0):
            mode = resolve_mode(self._watch_mode, self.root)
            async with ChangeFeed(self.layout.events, mode) as feed:
                state.check(deadline)  # the feed is live: nothing that happens from here on is missed
                while state.waiting and (deadline is None or time.monotonic() < deadline):
                    # Never sleep past the deadline: a watcher tick is 250 ms.
                    await feed.next(None if deadline is None else deadline - time.monotonic())
                    watchdog()
                    state.check(deadline)
        return [state.finished[r] for r in rollout_ids if r in state.finished]
