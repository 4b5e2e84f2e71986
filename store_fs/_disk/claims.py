"""The claim / commit / requeue protocol over records and queue tokens.

Invariants (docs/format.md explains them at length):

1. The rollout record's compare-and-swap decides every state change; queue
   tokens are how work is found and how live attempts are watched.
2. A live attempt has a token in ``claimed/``. Moving that token out
   (``settle``) is the one decision about the attempt's fate; the mover then
   applies it to the record and removes the journal token.
3. Applying a journal token is idempotent, so if the mover dies in between,
   any reaper applies it again, and a requeue is never done twice: attempt
   ``n+1`` can only be created by one compare-and-swap.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path

from store_fs._disk.context import Context
from store_fs._disk.ids import new_attempt_id
from store_fs._disk.queue_tokens import ClaimToken, JournalEntry, PendingToken, Queue
from store_fs._disk.rollout_history import RecordStore, RolloutRecord
from store_fs._disk.server_clock import server_offset
from store_fs._disk.span_log import SpanLog
from store_fs._disk.status_rules import (
    FINAL_ATTEMPT_STATUSES,
    LIVE_ATTEMPT_STATUSES,
    keep_heartbeat,
    set_attempt_status,
)
from store_fs._disk.worker_logs import WorkerStore
from store_fs.errors import AttemptNotFoundError, ConflictError, NotFoundError, RolloutNotFoundError
from store_fs.models import Attempt, AttemptedRollout, AttemptStatus

__all__ = ["Engine"]

log = logging.getLogger(__name__)


_SPREAD = 8
# A rollout in these statuses waits for its next attempt; a pending token for it is claimable.
QUEUED_STATUSES = frozenset({"queuing", "requeuing"})


class _PendingCache:
    def __init__(self) -> None:
        self.tokens: list[PendingToken] = []
        self.contended = False
        self.lock = threading.Lock()


class _Stale(Exception):
    """The token no longer matches the record (another attempt was created first)."""


class Engine:
    def __init__(
        self, ctx: Context, records: RecordStore, queue: Queue, spans: SpanLog, workers: WorkerStore
    ) -> None:
        self.ctx = ctx
        self.records = records
        self.queue = queue
        self.spans = spans
        self.workers = workers

    def attempt_dir(self, attempt: Attempt) -> Path:
        return self.ctx.layout.attempt_dir(attempt.rollout_id, attempt.sequence_id, attempt.attempt_id)

    def beat_time(self, attempt: Attempt) -> float | None:
        """The newest heartbeat any process wrote to the attempt's heartbeat files (spans and
        ``heartbeat()`` of a live attempt land there, not in its record)."""
        beats = self.spans.heartbeats(self.attempt_dir(attempt))
        return max((b.time for b in beats if b.counter > 0), default=None)  # -1: caught mid-rewrite

    # -- starting attempts ---------------------------------------------------------
    def begin(
        self, claim: ClaimToken, worker_id: str | None, *, pending: PendingToken | None = None
    ) -> AttemptedRollout | None:
        """Turn an owned token into attempt ``claim.sequence_id`` of the rollout.

        ``pending`` is the queue token ``claim`` was taken from (None for ``start_attempt``).
        None (and the token dropped) when a queue token turned out stale.
        """
        now = self.ctx.clock.time()
        offset = server_offset(self.ctx)
        from_queue = pending is not None
        confirmed: list[bool] = []

        def add_attempt(record: RolloutRecord) -> RolloutRecord:
            confirmed.clear()
            if len(record.attempts) >= claim.sequence_id:
                raise _Stale  # attempt ``seq`` exists: no cache is ever ahead of the truth
            if len(record.attempts) + 1 < claim.sequence_id or (
                from_queue and record.status not in QUEUED_STATUSES
            ):
                # Either the token is stale, or this process's view of the record is (on NFS a
                # host may not see the revision that requeued the rollout yet). Writing the
                # record again unchanged settles it: that compare-and-swap fails if a newer
                # revision exists, and the retry then judges the newest one.
                confirmed.append(True)
                return record
            if record.status == "cancelled":
                raise ConflictError(f"rollout {record.rollout_id} is cancelled", rollout_id=record.rollout_id)
            record.attempts.append(
                Attempt(
                    rollout_id=record.rollout_id,
                    attempt_id=claim.attempt_id,
                    sequence_id=claim.sequence_id,
                    start_time=now,
                    worker_id=worker_id,
                )
            )
            record.server_offsets = {**record.server_offsets, claim.attempt_id: offset}
            record.status = "preparing"
            return record

        try:
            just_read = False
            if from_queue and claim.sequence_id == 1:
                # A first attempt's rollout is usually still at its first revision: read that by
                # name instead of listing history/ and asking for revision 2 (NFS round trips).
                # If it is not the newest, adding the attempt fails its compare-and-swap and
                # the retry reads the newest.
                just_read = self.records.head_at_least(claim.rollout_id, 1, newer=False) is not None
            record = self.records.update(claim.rollout_id, add_attempt, just_read=just_read)
            if confirmed:
                raise _Stale  # the newest revision, just confirmed, does not want this attempt
        except (_Stale, ConflictError, RolloutNotFoundError):
            self.queue.drop_claimed(claim)
            if from_queue:
                return None
            raise
        except BaseException:
            self._give_back(claim, pending)
            raise
        attempt = record.attempts[-1]
        attempt_dir = self.attempt_dir(attempt)
        # Its id is ours, fresh: nobody has spans for it yet. Its directory is made by the
        # first span or heartbeat; until then the reaper dates its liveness from start_time.
        self.spans.new_attempt(attempt_dir, attempt.rollout_id, attempt.sequence_id)
        self._note_worker(attempt, from_queue)
        public = record.public()
        assert isinstance(public, AttemptedRollout)
        return public

    def _note_worker(self, attempt: Attempt, dequeue: bool) -> None:
        """The worker's status, after the attempt is recorded: failing the call then would
        hand the attempt to nobody, left preparing (for good, without a timeout). The status
        is advisory, so a log that cannot be written is a warning."""
        try:
            self.workers.sync(attempt, dequeue=dequeue)
        except OSError as err:
            log.warning(
                "attempt %s of %s: the worker's log was not written: %s",
                attempt.attempt_id,
                attempt.rollout_id,
                err,
            )

    def _give_back(self, claim: ClaimToken, pending: PendingToken | None) -> None:
        """The record could not be read or written (an I/O error, a corrupt file), so no
        attempt was recorded: a queued token goes back to wait for the next dequeue, rather
        than sit in claimed/ until the reaper records an attempt that never ran."""
        try:
            if pending is not None:
                self.queue.unclaim(claim, pending)
            else:
                self.queue.drop_claimed(claim)
        except OSError as err:  # the same trouble, likely: report the first error, not this one
            log.warning("claim %s left in claimed/ for the reaper: %s", claim.name, err)

    def _next_candidate(self, relisted: list[bool]) -> PendingToken | None:
        """The next pending token to try, from this process's cached listing.

        The listing is re-read only when the cache runs dry, so a dequeue costs one
        ``rename`` instead of a directory scan. After losing a race, the next pick is
        random among the first few, so runners stop colliding on the same head token.
        """
        cache: _PendingCache = self.ctx.local("pending-cache", _PendingCache)
        with cache.lock:
            if not cache.tokens:
                if relisted[0]:
                    return None
                relisted[0] = True
                self.queue.forget_discarded()
                cache.tokens = self.queue.list_pending()
                cache.tokens.reverse()  # pop() from the end takes the oldest
                if not cache.tokens:
                    return None
            index = -1
            if cache.contended:
                index = -1 - random.randrange(min(_SPREAD, len(cache.tokens)))
            return cache.tokens.pop(index)

    def has_candidates(self) -> bool:
        """Whether this process holds pending tokens from an earlier listing: the next claim
        then starts with a ``rename``, not with listing the queue (``claim_next``)."""
        cache: _PendingCache = self.ctx.local("pending-cache", _PendingCache)
        return bool(cache.tokens)

    def claim_next(self, worker_id: str | None) -> AttemptedRollout | None:
        """Claim the oldest claimable pending token. None when the queue is exhausted."""
        relisted = [False]
        cache: _PendingCache = self.ctx.local("pending-cache", _PendingCache)
        while (token := self._next_candidate(relisted)) is not None:
            if not self.records.exists(token.rollout_id):
                continue  # enqueue in flight (the record follows its token), or an orphan the reaper sweeps
            # Rename first, read the record after: a runner that loses the race for a token
            # has then spent one stat and one failed rename, not a read of the record. A
            # stale token (its attempt already exists, or the rollout left the queue) is
            # recognised by ``begin`` and dropped from ``claimed/``.
            claim = self.queue.claim(token, new_attempt_id())
            # Lost to another runner, unless this process took the token away itself (a span
            # reviving a requeued rollout): no contention then, and the next pick stays the
            # oldest (FIFO, docs/behaviour.md §2.2).
            cache.contended = claim is None and not self.queue.discarded_here(token)
            if claim is None:
                continue
            result = self.begin(claim, worker_id, pending=token)
            if result is not None:
                return result
        return None

    def start_attempt(self, rollout_id: str, worker_id: str | None) -> AttemptedRollout:
        while True:
            record = self.records.require(rollout_id)
            if record.status == "cancelled":
                raise ConflictError(f"rollout {rollout_id} is cancelled", rollout_id=rollout_id)
            claim = ClaimToken(rollout_id, len(record.attempts) + 1, new_attempt_id())
            self.queue.create_claimed(claim)
            try:
                result = self.begin(claim, worker_id)
            except _Stale:
                continue  # someone created that attempt number first: take the next
            assert result is not None
            return result

    # -- settling attempts ---------------------------------------------------------
    def ensure_pending(self, record: RolloutRecord) -> None:
        """A queuing/requeuing rollout must have a pending token for its next attempt."""
        if record.status not in QUEUED_STATUSES:
            return
        seq = len(record.attempts) + 1
        if not any(
            t.rollout_id == record.rollout_id and t.sequence_id == seq for t in self.queue.list_pending()
        ):
            self.queue.publish_pending(record.rollout_id, seq)

    def settle(self, attempt: Attempt, status: AttemptStatus) -> JournalEntry | None:
        """Take the decision for a live attempt; None when its token is gone or never existed."""
        token = ClaimToken(attempt.rollout_id, attempt.sequence_id, attempt.attempt_id)
        if status in ("succeeded", "failed"):
            return self.queue.settle(token, "done", status)
        return self.queue.settle(token, "expired", status)

    def finish(self, journal: JournalEntry | None, record: RolloutRecord, became_requeuing: bool) -> None:
        """The consequences of a stored decision: requeue, then close the journal token."""
        if became_requeuing:
            self.queue.publish_pending(record.rollout_id, len(record.attempts) + 1)
        if journal is not None:
            self.queue.close_journal(journal)

    def apply(self, entry: JournalEntry) -> None:
        """Apply a decision token again (its mover may have died). Idempotent."""
        token, outcome = entry.token, entry.outcome
        now = self.ctx.clock.time()
        record = self.records.get(token.rollout_id)
        if record is None:
            self.queue.close_journal(entry)
            return
        known = record.find(token.attempt_id)
        beat = None if known is None else self.beat_time(known)
        synced: list[Attempt] = []

        def decide(rec: RolloutRecord) -> RolloutRecord | None:
            synced.clear()
            attempt = rec.find(token.attempt_id)
            if outcome not in FINAL_ATTEMPT_STATUSES:
                return None  # cancelled: nothing to do to the attempt
            if attempt is None:
                if len(rec.attempts) + 1 != token.sequence_id or rec.status not in QUEUED_STATUSES:
                    return None  # a stale token: the claimer's compare-and-swap would have refused it
                # The claimer died between claiming and recording its attempt: record the
                # attempt it had begun, as dead, so the retry rules apply as to any crash.
                attempt = Attempt(
                    rollout_id=rec.rollout_id,
                    attempt_id=token.attempt_id,
                    sequence_id=token.sequence_id,
                    start_time=now,
                )
                rec.attempts.append(attempt)
                rec.server_offsets = {**rec.server_offsets, token.attempt_id: server_offset(self.ctx)}
            elif entry.kind == "expired" and attempt.status not in LIVE_ATTEMPT_STATUSES:
                return None  # finished before the verdict landed
            elif attempt.status == outcome:
                return None  # already applied
            keep_heartbeat(attempt, beat)
            set_attempt_status(rec, attempt, outcome, now)  # type: ignore[arg-type]
            synced.append(attempt)
            return rec

        record = self.records.update(token.rollout_id, decide)
        for attempt in synced:
            self.workers.sync(attempt)
        self.ensure_pending(record)
        self.queue.close_journal(entry)

    def find_attempt(self, record: RolloutRecord, attempt_id: str) -> Attempt:
        if not record.attempts:
            raise NotFoundError(
                f"No attempts found for rollout {record.rollout_id}", rollout_id=record.rollout_id
            )
        attempt = record.latest() if attempt_id == "latest" else record.find(attempt_id)
        if attempt is None:
            raise AttemptNotFoundError(record.rollout_id, attempt_id)
        return attempt

    def expire_live(self, record: RolloutRecord, reason: str) -> None:
        """Take the tokens of every live attempt (cancellation); runners see it at their next check."""
        for attempt in record.attempts:
            if attempt.status in LIVE_ATTEMPT_STATUSES:
                token = ClaimToken(attempt.rollout_id, attempt.sequence_id, attempt.attempt_id)
                entry = self.queue.settle(token, "expired", reason)
                if entry is not None:
                    self.queue.close_journal(entry)
