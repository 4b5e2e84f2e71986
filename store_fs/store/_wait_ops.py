"""``wait_for_rollouts``: sleep on the change feed until rollouts finish."""

from __future__ import annotations

import time
from collections.abc import Iterable

from store_fs._disk.status_rules import TERMINAL_ROLLOUT_STATUSES
from store_fs._disk.watch import ChangeFeed, resolve_mode
from store_fs.models import Rollout
from store_fs.store._base import StoreCore

# A waiter re-reads every record it waits for at least this often (index lines are hints).
FULL_RECHECK_SECONDS = 1.0


class WaitMethods(StoreCore):
    """Waiting for rollouts to reach a terminal status."""

    async def wait_for_rollouts(
        self, *, rollout_ids: list[str], timeout: float | None = None
    ) -> list[Rollout]:
        self._healthcheck()
        finished: dict[str, Rollout] = {}
        waiting = {r for r in rollout_ids if self._known_rollout(r)}
        # Waiting sleeps for real, so its deadline is on the real clock even when an
        # injected clock drives timestamps and liveness.
        deadline = None if timeout is None else time.monotonic() + timeout

        def check(candidates: Iterable[str], *, fresh: bool = False) -> None:
            for rid in candidates:
                found = self._records.head(rid, cached_ok=not fresh)
                if found is None:
                    waiting.discard(rid)
                elif found[1].status in TERMINAL_ROLLOUT_STATUSES:
                    finished[rid] = found[1].plain()
                    waiting.discard(rid)

        last_full = time.monotonic()

        def check_changed() -> None:
            # The index tells which waited-for rollouts finished, so a wake-up costs one
            # index refresh instead of a look at every record. Index lines are hints too (a
            # crash can lose one): a full pass every FULL_RECHECK_SECONDS covers that.
            nonlocal last_full
            now = time.monotonic()
            entries = None if now - last_full >= FULL_RECHECK_SECONDS else self._index.lookup(waiting)
            if entries is None:
                last_full = now
                check(list(waiting))
            else:
                # The index says these finished: read their records afresh, since this
                # process's cached view (and, on NFS, its cached lookup of the newer revision)
                # may still be the running one.
                done = [rid for rid, entry in entries.items() if entry.status in TERMINAL_ROLLOUT_STATUSES]
                check(done, fresh=True)

        check(list(waiting))
        if waiting and (timeout is None or timeout > 0):
            mode = resolve_mode(self._watch_mode, self.root)
            async with ChangeFeed(self.layout.events, mode) as feed:
                check(list(waiting))  # the feed is live: nothing that happens from here on is missed
                while waiting and (deadline is None or time.monotonic() < deadline):
                    # Never sleep past the deadline: a watcher tick is 250 ms.
                    await feed.next(None if deadline is None else deadline - time.monotonic())
                    self._reaper.maybe_scan()
                    check_changed()
        return [finished[r] for r in rollout_ids if r in finished]
