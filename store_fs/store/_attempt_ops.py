"""Attempts of a rollout: query, latest, update (a final status is a commit), heartbeat."""

from __future__ import annotations

from typing import Any

from store_fs._disk import codec
from store_fs._disk.ids import check_attempt_id, check_name_id
from store_fs._disk.queue_tokens import ClaimToken
from store_fs._disk.rollout_history import RolloutRecord
from store_fs._disk.status_rules import (
    FINAL_ATTEMPT_STATUSES,
    LIVE_ATTEMPT_STATUSES,
    keep_heartbeat,
    set_attempt_status,
    touch_attempt,
)
from store_fs._filtering import check_page_args, paginate, sort_items
from store_fs.errors import ConflictError, RolloutNotFoundError
from store_fs.models import UNSET, Attempt, AttemptStatus, PaginatedResult, SortOrder, Unset
from store_fs.store._base import StoreCore


class AttemptMethods(StoreCore):
    """Reading and updating attempts; every live attempt reported carries its latest heartbeat."""

    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        self._healthcheck()
        check_page_args(limit, offset)
        record = self._records.get(rollout_id) if self._known_rollout(rollout_id) else None
        attempts = [self._with_heartbeat(a) for a in record.attempts] if record else []
        ordered = sort_items(attempts, sort_by, sort_order, Attempt)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        self._healthcheck()
        record = self._records.get(rollout_id) if self._known_rollout(rollout_id) else None
        latest = record.latest() if record else None
        return self._with_heartbeat(latest) if latest else None

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus | Unset = UNSET,
        worker_id: str | Unset = UNSET,
        last_heartbeat_time: float | Unset = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> Attempt:
        # A final status takes the attempt's token first (the commit), so a racing reaper cannot also
        # decide it.
        self._healthcheck()
        _check_ids(attempt_id, worker_id)
        # Before anything moves: a final status settles the attempt's token first.
        codec.check_storable(
            "the attempt's metadata or last_heartbeat_time",
            [v for v in (metadata, last_heartbeat_time) if not isinstance(v, Unset)],
        )
        current = self._engine.find_attempt(self._record(rollout_id), attempt_id)
        if not isinstance(status, Unset):
            status = Attempt.model_validate({**current.model_dump(), "status": status}).status
        journal = None
        beat = None
        if not isinstance(status, Unset) and status in FINAL_ATTEMPT_STATUSES:
            _refuse_late_outcome(current, status)
            self._spans.flush(self._engine.attempt_dir(current))
            journal = self._engine.settle(current, status)
            beat = self._engine.beat_time(current)
        now = self._clock.time()
        requeued: list[bool] = []

        def apply(record: RolloutRecord) -> RolloutRecord:
            requeued.clear()
            attempt = record.find(current.attempt_id)
            if attempt is None:  # cannot happen: attempts are never removed
                raise RolloutNotFoundError(rollout_id)
            before = record.status
            if isinstance(last_heartbeat_time, Unset):
                keep_heartbeat(attempt, beat)
            _overwrite(attempt, worker_id, last_heartbeat_time, metadata)
            if isinstance(status, Unset):
                touch_attempt(record, attempt, now)
            else:
                set_attempt_status(record, attempt, status, now)
            requeued.append(record.status == "requeuing" and before != "requeuing")
            return record

        record = self._records.update(rollout_id, apply)
        updated = record.find(current.attempt_id)
        assert updated is not None
        if not isinstance(status, Unset) and status in LIVE_ATTEMPT_STATUSES:
            token = ClaimToken(rollout_id, updated.sequence_id, updated.attempt_id)
            if not self._queue.is_claimed(token):
                self._queue.create_claimed(token)  # live again: the reaper must watch it
        self._engine.finish(journal, record, bool(requeued and requeued[0]))
        if (isinstance(worker_id, str) and worker_id) or (
            not isinstance(status, Unset) and updated.worker_id
        ):
            self._workers.sync(updated)
        return self._with_heartbeat(updated)

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> bool:
        # Runs the reaper, so a lone runner's own overdue attempt is expired (and the runner told) too.
        self._healthcheck()
        record = self._record(rollout_id)
        attempt = self._engine.find_attempt(record, attempt_id)
        self._spans.heartbeat(self._engine.attempt_dir(attempt), force=True)
        token = ClaimToken(rollout_id, attempt.sequence_id, attempt.attempt_id)
        return self._queue.is_claimed(token)


def _check_ids(attempt_id: str, worker_id: str | Unset) -> None:
    if attempt_id != "latest":
        check_attempt_id(attempt_id)
    if isinstance(worker_id, str) and worker_id:
        check_name_id("worker", worker_id)


def _overwrite(
    attempt: Attempt,
    worker_id: str | Unset,
    last_heartbeat_time: float | Unset,
    metadata: dict[str, Any] | Unset | None,
) -> None:
    """Set the fields an ``update_attempt`` call gave (UNSET leaves a field alone)."""
    if not isinstance(worker_id, Unset):
        attempt.worker_id = worker_id
    if not isinstance(last_heartbeat_time, Unset):
        attempt.last_heartbeat_time = last_heartbeat_time
    if not isinstance(metadata, Unset):
        attempt.metadata = metadata


# Verdicts the store reaches on its own: a runner's outcome arriving after one of these is late.
_STORE_VERDICTS = frozenset({"timeout", "unresponsive"})


def _refuse_late_outcome(current: Attempt, status: AttemptStatus) -> None:
    """A reaper's verdict stands: a runner's late succeeded/failed does not overwrite it, since
    the rollout may already be queued again (docs/deviations.md). Other overwrites, such as
    succeeded -> failed by a person, are upstream's and allowed."""
    if current.status in _STORE_VERDICTS and status in ("succeeded", "failed"):
        raise ConflictError(
            f"attempt {current.attempt_id} of {current.rollout_id} was already found {current.status}; "
            f"the late outcome {status} is not recorded",
            rollout_id=current.rollout_id,
        )
