"""``LightningStore``: the store API, declared once.

Every store in this package implements this protocol by subclassing it:
:class:`~store_fs.store.FileStore` (a directory) and
:class:`~store_fs.client.LightningStoreClient` (``agl store`` over HTTP). The server's
route table (:mod:`store_fs.server.routes`) names, for each route, the methods it serves
and calls them through this protocol, so mypy checks all three against one signature
and ``tests/test_store_contract.py`` checks that every method has a route and every route
a method. The docstrings here are the contracts; implementations document only how they
meet them. Semantics are spelled out in docs/behaviour.md; deliberate differences from
upstream Agent-lightning 0.3 in docs/deviations.md.

Names, parameters and return types are upstream 0.3's ``LightningStore``, plus agl's
extensions (marked *agl*): ``idempotency_key(s)``, ``heartbeat``, and typed not-found
errors. Every method is ``async``; errors are those of :mod:`store_fs.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, Self

from store_fs.models import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    FilterLogic,
    LightningStoreCapabilities,
    LightningStoreStatistics,
    NamedResources,
    PaginatedResult,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    SortOrder,
    Span,
    TaskInput,
    Unset,
    Worker,
    WorkerStatus,
)

__all__ = ["LightningStore", "open_store"]


class LightningStore(Protocol):
    """Rollouts, attempts, resources, spans and workers of one training loop."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        # With upstream Agent-lightning loaded, a store is also upstream's LightningStore, so
        # upstream's Trainer, runner and agents accept it (store_fs/upstream_compat.py).
        from store_fs.upstream_compat import store_class

        return object.__new__(store_class(cls))

    # -- what the store is ----------------------------------------------------------------
    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """What callers may rely on: thread and async safety, zero-copy, OTLP trace ingestion."""
        ...

    async def statistics(self) -> LightningStoreStatistics:
        """Counts for inspection: rollouts, attempts, spans, resources, workers, uptime."""
        ...

    # -- creating and handing out rollouts (docs/behaviour.md §2.1-§2.2) ----------------------------
    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        """Create a rollout with its first attempt already started (``preparing``), not queued.

        Without ``resources_id`` the latest resources at this moment are attached.
        """
        ...

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
        """Queue a rollout (status ``queuing``) for a runner to dequeue.

        *agl*: with ``idempotency_key``, enqueueing the same key again returns the rollout
        created the first time instead of creating another (safe client retries).
        """
        ...

    async def enqueue_many_rollouts(
        self, rollouts: Sequence[EnqueueRolloutRequest], *, idempotency_keys: Sequence[str] | None = None
    ) -> Sequence[Rollout]:
        """Queue several rollouts, in order; the result follows the input order.

        *agl*: ``idempotency_keys``, one per request, as ``enqueue_rollout``'s key.
        """
        ...

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the oldest queued rollout and start its next attempt; None when nothing is queued.

        Never blocks. Each queued rollout is handed to exactly one caller, across processes and
        hosts. ``worker_id`` marks the worker busy with this attempt.
        """
        ...

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Claim up to ``limit`` queued rollouts at once, oldest first, as ``dequeue_rollout``."""
        ...

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Start a new attempt of a rollout now, whatever its status; a cancelled rollout is a
        :class:`~store_fs.errors.ConflictError` (*agl*: cancelled is sticky)."""
        ...

    # -- reading and changing rollouts (docs/behaviour.md §2.6, §6.4) ---------------------------
    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        """Filter, sort and page rollouts; without ``sort_by``, oldest first.

        ``status`` and ``rollout_ids`` are upstream's older names of ``status_in`` and
        ``rollout_id_in``. A rollout with attempts comes back as an ``AttemptedRollout`` carrying
        its latest attempt. ``limit=-1`` means no limit.
        """
        ...

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | AttemptedRollout | None:
        """The rollout (with its latest attempt, if any); None for an unknown id."""
        ...

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput | Unset = UNSET,
        mode: RolloutMode | Unset | None = UNSET,
        resources_id: str | Unset | None = UNSET,
        status: RolloutStatus | Unset = UNSET,
        config: RolloutConfig | Unset = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> Rollout:
        """Overwrite the given fields (``UNSET`` leaves a field alone).

        A terminal status stamps ``end_time``; ``queuing`` or ``requeuing`` puts the rollout back
        in the queue; ``cancelled`` also takes its live attempts away from their runners, who learn
        it at their next heartbeat. Unknown id: :class:`~store_fs.errors.RolloutNotFoundError`.
        """
        ...

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        """Cancel a rollout: queued, it will not run; running, its runner is told to stop."""
        ...

    # -- attempts (docs/behaviour.md §2.3-§2.7) -------------------------------------------------
    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        """The attempts of one rollout, by ``sequence_id`` unless told otherwise."""
        ...

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The attempt with the highest ``sequence_id``; None for a rollout without attempts."""
        ...

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus | Unset = UNSET,
        worker_id: str | Unset = UNSET,
        last_heartbeat_time: float | Unset = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> Attempt:
        """Overwrite the given fields of an attempt (``attempt_id`` may be ``"latest"``).

        The rollout's status follows its latest attempt (docs/behaviour.md §2.4), unless the
        rollout is cancelled. A final status of a live attempt is a commit: exactly one of the
        runner and a racing reaper decides the attempt.
        """
        ...

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> bool:
        """*agl*: signal that an attempt is alive without storing a span.

        False when the attempt is no longer the caller's (cancelled, expired, settled): the
        caller should stop working on it.
        """
        ...

    # -- resources (docs/behaviour.md §7) ------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Publish a new resources snapshot under a new id; it becomes the latest."""
        ...

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Publish ``resources`` under ``resources_id`` (a new version of an existing id, or a
        new id); it becomes the latest."""
        ...

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """The newest version of a snapshot; None for an unknown id."""
        ...

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The snapshot published last; None before any was published."""
        ...

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        """Snapshots at their newest version, filtered, sorted and paged; without ``sort_by``,
        oldest first."""
        ...

    # -- spans (docs/behaviour.md §5, §6.5) ---------------------------------------------------------
    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """The next number of the rollout-wide span sequence: increasing across attempts."""
        ...

    async def get_many_span_sequence_ids(
        self, rollout_attempt_ids: Sequence[tuple[str, str]]
    ) -> Sequence[int]:
        """One ``get_next_span_sequence_id`` per ``(rollout_id, attempt_id)`` pair, in order."""
        ...

    async def add_span(self, span: Span) -> Span | None:
        """Store a span of a known attempt; it counts as that attempt's heartbeat.

        A span whose ``span_id`` is already stored for the attempt is not stored again: None.
        A span may move its attempt (and rollout) from ``preparing`` to ``running``.
        """
        ...

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store several spans; returns those actually stored (duplicates left out)."""
        ...

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        """Store an OpenTelemetry ``ReadableSpan`` as a span of the attempt (a new sequence id
        unless one is given)."""
        ...

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: SortOrder = "asc",
    ) -> PaginatedResult[Span]:
        """Spans of a rollout (all attempts, one ``attempt_id``, or ``"latest"``), filtered,
        sorted and paged; by ``sequence_id`` unless told otherwise."""
        ...

    # -- waiting (docs/behaviour.md §4) -----------------------------------------------------
    async def wait_for_rollouts(
        self, *, rollout_ids: list[str], timeout: float | None = None
    ) -> list[Rollout]:
        """The rollouts among ``rollout_ids`` that are finished (succeeded, failed, cancelled)
        within ``timeout`` seconds (None: as long as it takes), in the order of ``rollout_ids``.

        Returns early when all are finished; unknown ids are left out.
        """
        ...

    # -- workers (docs/behaviour.md §8) -------------------------------------------------------
    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        """Workers (runners as the store sees them), filtered, sorted and paged."""
        ...

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """A worker's state; None for an unknown id."""
        ...

    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] | Unset = UNSET) -> Worker:
        """Record a worker heartbeat (creating the worker if new), replacing its stats when given."""
        ...


def open_store(location: str | Path | LightningStore) -> LightningStore:
    """The store at ``location``: an ``http(s)://`` URL of ``agl store`` (a
    :class:`~store_fs.client.LightningStoreClient`) or a directory (a
    :class:`~store_fs.store.FileStore`, created if missing). A store object is returned as is."""
    if not isinstance(location, (str, Path)):
        return location
    text = str(location)
    if text.startswith(("http://", "https://")):
        from store_fs.client import LightningStoreClient

        return LightningStoreClient(text)
    from store_fs.store import FileStore

    return FileStore(text)
