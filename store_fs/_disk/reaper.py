"""The reaper: any process using the store may run it; several at once are safe.

A scan looks at the few tokens in ``queue/claimed``, ``queue/done`` and
``queue/expired``:

* a live attempt past ``timeout_seconds`` or silent for ``unresponsive_seconds``
  is expired by renaming its token (only the winner of that rename applies the
  retry rule, so two reapers never retry twice);
* a decision token older than the grace period is applied again (its mover died);
* a claimed token whose attempt was never recorded is, after the grace period,
  expired as ``unresponsive``: its claimer died right after claiming.

Liveness is judged twice and the longer silence wins: by watching the heartbeat
counters move on this process's monotonic clock (immune to clock skew; needs
this process to have watched for a while), and by the wall-clock times the
heartbeats carry (lets a fresh process judge at once; ``clock_skew_seconds``
widens it for stores shared by machines whose clocks differ).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from store_fs._disk.claims import QUEUED_STATUSES, Engine
from store_fs._disk.context import Context
from store_fs._disk.queue_tokens import ClaimToken, JournalEntry
from store_fs._disk.rollout_history import RolloutRecord
from store_fs._disk.rollout_index import RolloutIndex
from store_fs._disk.server_clock import server_offset
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES
from store_fs.errors import AglError
from store_fs.models import Attempt

__all__ = ["Reaper"]

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    signature: object
    first_seen: float
    changed_at: float


class _Tracker:
    def __init__(self) -> None:
        self.seen: dict[object, _Seen] = {}
        self.lock = threading.Lock()
        self.last_scan: float | None = None
        self.last_sweep: float | None = None
        self.touched: set[object] = set()
        # One pass at a time per process: passes share ``seen`` and ``touched``.
        self.scan_lock = threading.Lock()


class Reaper:
    def __init__(
        self,
        ctx: Context,
        engine: Engine,
        *,
        debounce: float,
        grace: float,
        index: RolloutIndex | None = None,
    ) -> None:
        self._ctx = ctx
        self._engine = engine
        self._index = index
        self.debounce = debounce
        self.grace = grace

    def _tracker(self) -> _Tracker:
        tracker: _Tracker = self._ctx.local("reaper", _Tracker)
        return tracker

    def _observe(self, key: object, signature: object) -> _Seen:
        now = self._ctx.clock.monotonic()
        tracker = self._tracker()
        tracker.touched.add(key)
        seen = tracker.seen.get(key)
        if seen is None:
            seen = tracker.seen[key] = _Seen(signature, now, now)
        elif seen.signature != signature:
            seen.signature, seen.changed_at = signature, now
        return seen

    def _age(self, key: object, wall_age: float | None) -> float:
        seen = self._observe(key, None)
        return max(self._ctx.clock.monotonic() - seen.first_seen, wall_age or 0.0)

    # -- entry points --------------------------------------------------------------
    def maybe_scan(self) -> int:
        """Scan unless one ran less than ``debounce`` seconds ago in this process."""
        tracker = self._tracker()
        now = self._ctx.clock.monotonic()
        with tracker.lock:
            if tracker.last_scan is not None and now - tracker.last_scan < self.debounce:
                return 0
            tracker.last_scan = now
        if not tracker.scan_lock.acquire(blocking=False):
            return 0  # another thread is scanning right now
        try:
            return self._scan(tracker)
        finally:
            tracker.scan_lock.release()

    def maybe_scan_soon(self) -> None:
        """Like :meth:`maybe_scan`, in a thread of its own, returning at once: for a waiter on
        a network filesystem, where a pass costs round trips per live attempt (up to a second
        and more at a few ms each) that would otherwise delay the waiter seeing completions."""
        tracker = self._tracker()
        now = self._ctx.clock.monotonic()
        with tracker.lock:
            if tracker.last_scan is not None and now - tracker.last_scan < self.debounce:
                return
            tracker.last_scan = now
        if not tracker.scan_lock.acquire(blocking=False):
            return  # a pass is running

        def run() -> None:
            try:
                self._scan(tracker)
            except Exception:  # a thread's error would only be printed: log it as the reaper does
                log.exception("reaper pass failed")
            finally:
                tracker.scan_lock.release()

        # A daemon: a pass cut short by the process's exit is one a later pass finishes
        # (every step is one rename, applied again idempotently).
        threading.Thread(target=run, name="agl-reaper", daemon=True).start()

    def scan(self) -> int:
        """One pass (after any pass another thread is making); returns the number of attempts
        expired. Errors on one token never stop the pass."""
        tracker = self._tracker()
        with tracker.scan_lock:
            return self._scan(tracker)

    def _scan(self, tracker: _Tracker) -> int:
        expired = 0
        tracker.touched = set()
        for entry in self._engine.queue.list_journal():
            self._guard(self._revisit, entry)
        for token in self._engine.queue.list_claimed():
            expired += bool(self._guard(self._check_claim, token))
        swept = self._sweep_pending()
        # Forget what is gone, so a long-running process does not accumulate observations.
        keep = tracker.touched if swept else tracker.touched | {k for k in tracker.seen if k[0] == "pending"}  # type: ignore[index]
        tracker.seen = {k: v for k, v in tracker.seen.items() if k in keep}
        return expired

    def _sweep_pending(self) -> bool:
        """Remove pending tokens whose rollout never came to be (the enqueuer died)."""
        tracker = self._tracker()
        now = self._ctx.clock.monotonic()
        if tracker.last_sweep is not None and now - tracker.last_sweep < self.grace:
            return False  # listing a big queue is not free: once per grace period is plenty
        tracker.last_sweep = now
        queue = self._engine.queue
        tokens = queue.list_pending()
        if not tokens:
            return True  # nothing to sweep: do not load the index (100,000 rollouts: ~1.8 s)
        # A rollout named by the index exists (its line follows its first revision): one
        # dict look-up instead of a stat per queued rollout (100,000 queued: ~1.3 s -> ~0.1 s).
        indexed = self._index.lookup(t.rollout_id for t in tokens) if self._index is not None else None
        for token in tokens:
            if indexed is not None and token.rollout_id in indexed:
                continue
            if self._engine.records.exists(token.rollout_id):
                continue
            if self._age(("pending", token.name), queue.pending_age(token)) >= self.grace:
                log.info("removing orphan pending token %s", token.name)
                queue.discard_pending(token)
        return True

    def _guard(self, fn: object, arg: object) -> object:
        try:
            return fn(arg)  # type: ignore[operator]
        except (AglError, OSError) as err:
            log.warning("reaper skipped %s: %s", arg, err)
            return None

    # -- decisions -----------------------------------------------------------------
    def _revisit(self, entry: JournalEntry) -> None:
        if self._age(("journal", entry.path.name), self._engine.queue.journal_age(entry)) >= self.grace:
            log.info("re-applying %s %s of %s", entry.kind, entry.outcome, entry.token.rollout_id)
            self._engine.apply(entry)

    def _check_claim(self, token: ClaimToken) -> bool:
        # Only read: the cached record, not a private copy (a scan looks at every live claim).
        found = self._engine.records.head(token.rollout_id)
        record = found[1] if found else None
        attempt = record.find(token.attempt_id) if record else None
        if record is None or attempt is None or attempt.sequence_id != token.sequence_id:
            return self._check_orphan(token, record)
        if attempt.status not in LIVE_ATTEMPT_STATUSES:
            if self._age(("claim", token.name), self._engine.queue.claimed_age(token)) >= self.grace:
                self._engine.queue.drop_claimed(token)  # decided through the record; token left over
            return False
        verdict = self._verdict(record, attempt)
        if verdict is None:
            return False
        entry = self._engine.settle(attempt, verdict)  # type: ignore[arg-type]
        if entry is None:
            return False  # another reaper, or the runner's commit, got there first
        log.info("attempt %s of %s is %s", attempt.attempt_id, attempt.rollout_id, verdict)
        self._engine.apply(entry)
        return True

    def _check_orphan(self, token: ClaimToken, record: RolloutRecord | None) -> bool:
        if self._age(("claim", token.name), self._engine.queue.claimed_age(token)) < self.grace:
            return False  # its claimer may still be about to record the attempt
        if record is not None:
            # This process's view may be behind (NFS caches): judge the newest revision, proven
            # newest by writing it again (that compare-and-swap fails if it is not). A claimer
            # that recorded its attempt meanwhile is alive, not abandoned.
            record = self._engine.records.update(token.rollout_id, lambda rec: rec)
            if record.find(token.attempt_id) is not None:
                return False
        if record is None or not _claimable(record, token):
            # Lost a race, its rollout never came to be, or a stale queue token (the rollout
            # left the queue): the claimer's compare-and-swap would have refused it.
            self._engine.queue.drop_claimed(token)
            return False
        entry = self._engine.queue.settle(token, "expired", "unresponsive")
        if entry is None:
            return False
        log.info("claim %s was abandoned before its attempt was recorded", token.name)
        self._engine.apply(entry)
        return True

    def _verdict(self, record: RolloutRecord, attempt: Attempt) -> str | None:
        config = record.config
        if config.timeout_seconds is None and config.unresponsive_seconds is None:
            return None
        beats = self._engine.spans.heartbeats(self._engine.attempt_dir(attempt))
        signature = (tuple(sorted((b.counter, b.time) for b in beats)), attempt.last_heartbeat_time)
        seen = self._observe(("attempt", attempt.rollout_id, attempt.attempt_id), signature)
        mono = self._ctx.clock.monotonic()
        # Ages on the file server's clock: the attempt's start and its heartbeats, each moved
        # onto it by the offset of the process that wrote it. No host's wall clock is compared
        # with another's, so a runner 5 s ahead or behind is judged like any other.
        offset = server_offset(self._ctx)
        now = self._ctx.clock.time() + offset
        started = record.started_on_server(attempt, offset)
        skew = self._ctx.clock_skew_seconds
        timeout = config.timeout_seconds
        if timeout is not None and max(now - started - skew, mono - seen.first_seen) > timeout:
            return "timeout"
        if config.unresponsive_seconds is not None:
            # ``last_heartbeat_time`` is stamped by the span that marked the attempt running,
            # usually in the process that started it (whose clock offset the record keeps), or
            # set by callers (upstream's runners heartbeat through update_attempt) on a clock
            # nobody recorded: read on the starter's clock, or this host's if none was recorded.
            signs = [started] + [b.server_time for b in beats]
            if attempt.last_heartbeat_time is not None:
                starter = record.server_offsets.get(attempt.attempt_id, offset)
                signs.append(attempt.last_heartbeat_time + starter)
            last_sign = max(signs)
            silence = max(now - last_sign - skew, mono - seen.changed_at)
            if silence > config.unresponsive_seconds:
                return "unresponsive"
        return None


def _claimable(record: RolloutRecord, token: ClaimToken) -> bool:
    """Whether the claim could still become attempt ``token.sequence_id`` of ``record``."""
    return len(record.attempts) + 1 == token.sequence_id and record.status in QUEUED_STATUSES
