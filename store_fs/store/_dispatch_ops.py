"""Creating rollouts and handing them to runners: start, enqueue, dequeue, start_attempt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from store_fs._disk import fsio
from store_fs._disk.ids import check_name_id, new_attempt_id, new_rollout_id, rollout_id_for_key
from store_fs._disk.queue_tokens import ClaimToken
from store_fs._disk.rollout_history import RolloutRecord
from store_fs.models import (
    UNSET,
    AttemptedRollout,
    EnqueueRolloutRequest,
    Rollout,
    RolloutConfig,
    RolloutMode,
    TaskInput,
    Unset,
)
from store_fs.store._base import StoreCore


class DispatchMethods(StoreCore):
    """Rollouts in: queued (or started at once), claimed by runners, or given a new attempt."""

    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        self._healthcheck()
        if worker_id:
            check_name_id("worker", worker_id)
        rollout_id = new_rollout_id()
        record = self._new_record(
            rollout_id, input, mode, self._resolve_resources(resources_id), config, metadata, "queuing"
        )
        # The record goes in without attempts, then the attempt is added like any other.
        claim = ClaimToken(rollout_id, 1, new_attempt_id())
        self._queue.create_claimed(claim)
        self._records.create(record)
        result = self._engine.begin(claim, worker_id)
        assert result is not None
        return result

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Rollout:
        self._healthcheck()
        request = EnqueueRolloutRequest(
            input=input, mode=mode, resources_id=resources_id, config=config, metadata=metadata
        )
        return self._enqueue(request, self._resolve_resources(resources_id), idempotency_key)

    def _enqueue(self, request: EnqueueRolloutRequest, resources_id: str | None, key: str | None) -> Rollout:
        rollout_id = rollout_id_for_key(key) if key is not None else new_rollout_id()
        existing = self._keyed(rollout_id, key)
        if existing is not None:
            return existing
        return self._publish_new(self._queued_record(rollout_id, request, resources_id))

    def _keyed(self, rollout_id: str, key: str | None) -> Rollout | None:
        """The rollout an idempotency key already made (queued again if its token was lost)."""
        if key is None:
            return None
        existing = self._records.get(rollout_id)
        if existing is None:
            return None
        self._engine.ensure_pending(existing)
        return existing.plain()

    def _queued_record(
        self,
        rollout_id: str,
        request: EnqueueRolloutRequest,
        resources_id: str | None,
        what: str = "the rollout's input, config or metadata",
    ) -> RolloutRecord:
        return self._new_record(
            rollout_id,
            request.input,
            request.mode,
            resources_id,
            request.config,
            request.metadata,
            "queuing",
            what=what,
        )

    def _publish_new(self, record: RolloutRecord) -> Rollout:
        # Built (and its values checked) before anything is written. Then token first, record
        # second: a claimer that finds a token without a record waits, so a crash in between
        # leaves only a token the reaper removes, never a ghost rollout.
        rollout_id = record.rollout_id
        self._queue.publish_pending(rollout_id, 1)
        if not self._records.create(record):
            existing = self._records.get(rollout_id)
            assert existing is not None
            return existing.plain()
        return record.plain()

    async def enqueue_many_rollouts(
        self, rollouts: Sequence[EnqueueRolloutRequest], *, idempotency_keys: Sequence[str] | None = None
    ) -> Sequence[Rollout]:
        # The latest resources id is looked up once for the whole batch.
        self._healthcheck()
        if idempotency_keys is not None and len(idempotency_keys) != len(rollouts):
            raise ValueError("idempotency_keys must have one key per rollout")
        latest: str | Unset | None = UNSET
        # Every record is built (its values checked) before the first is written: a refused
        # batch stores nothing.
        planned: list[tuple[str | None, RolloutRecord]] = []
        for i, raw in enumerate(rollouts):
            request = EnqueueRolloutRequest.model_validate(raw)
            resources_id = request.resources_id
            if resources_id is None:
                if isinstance(latest, Unset):
                    latest = self._resources.latest_id()
                resources_id = latest
            key = idempotency_keys[i] if idempotency_keys else None
            rollout_id = rollout_id_for_key(key) if key is not None else new_rollout_id()
            what = f"rollout {i} of the batch"
            planned.append((key, self._queued_record(rollout_id, request, resources_id, what)))
        out: list[Rollout] = []
        # With durability="fsync", the batch syncs queue/pending/ and its index log once, at its
        # end, instead of once per rollout. Each record's own directories are still synced as
        # it is made: runners may claim it before the batch ends, and what they make durable
        # must not stand on a record that is not (their index lines, their attempts). A power
        # cut before the batch returns may keep a rollout without its token (`not-queued`) or
        # lose an index line (`stale-index`), which `agl check --fix` repairs (docs/format.md,
        # "Durability"). No await in the block: both deferrals are per thread.
        with self._index.one_sync(), fsio.syncs_deferred(self.layout.pending):
            for key, record in planned:
                existing = self._keyed(record.rollout_id, key)
                out.append(existing if existing is not None else self._publish_new(record))
        return out

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        self._healthcheck()
        if worker_id:
            check_name_id("worker", worker_id)
        result = self._engine.claim_next(worker_id)
        if result is None and worker_id:
            self._workers.mark_idle(worker_id)
        return result

    def dequeue_is_cheap(self) -> bool:
        """True when a ``dequeue_rollout`` now would start from this process's listing of the
        queue rather than list it (a queue of 20,000 rollouts takes ~0.1 s to list), so it takes
        about as long as another write of one rollout (the server then runs it on its HTTP loop)."""
        return self._engine.has_candidates()

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        self._healthcheck()
        if worker_id:
            check_name_id("worker", worker_id)
        out: list[AttemptedRollout] = []
        while len(out) < limit:
            result = self._engine.claim_next(worker_id)
            if result is None:
                break
            out.append(result)
        if not out and worker_id:
            self._workers.mark_idle(worker_id)
        return out

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        self._healthcheck()
        if worker_id:
            check_name_id("worker", worker_id)
        self._record(rollout_id)
        return self._engine.start_attempt(rollout_id, worker_id)
