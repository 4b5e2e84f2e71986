"""``FileStore``: Agent-lightning's LightningStore API on a directory.

Every method is ``async`` and has upstream's name, signature and return type.
Any number of processes, on one machine or sharing the directory over NFS, may
open the same store at once; no server and no lock on the hot path are needed.
The reaper (timeouts, dead runners) runs inside the methods upstream runs its
watchdog in, debounced by ``scan_debounce_seconds``, and while waiting.

Deviations from upstream are deliberate and listed in docs/deviations.md:
unknown ids in mutating calls raise typed not-found errors (``ValueError``
subclasses); ``cancelled`` is sticky; ``query_spans`` with ``filter_logic="or"``
and no conditions returns everything in scope; sequence ids can only be
allocated for rollouts that exist.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from . import codec, fsio
from .check import Problem, check_store
from .clock import Clock, SystemClock
from .context import Context, Durability
from .engine import Engine
from .errors import (
    AttemptNotFoundError,
    CorruptRecordError,
    FormatVersionError,
    RolloutNotFoundError,
    StoreNotFoundError,
)
from .events import EventLog
from .ids import (
    check_attempt_id,
    check_name_id,
    is_rollout_id,
    new_attempt_id,
    new_rollout_id,
    rollout_id_for_key,
)
from .layout import FORMAT_VERSION, Layout
from .models import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    LightningStoreCapabilities,
    LightningStoreStatistics,
    NamedResources,
    PaginatedResult,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    TaskInput,
    Unset,
    Worker,
    WorkerStatus,
)
from .query import build_filter, check_page_args, matches, paginate, sort_items
from .queue import ClaimToken, Queue
from .records import RecordStore, RolloutRecord
from .resources_store import ResourceStore
from .rollout_index import Entry, RolloutIndex, publish_marker
from .rollout_index import ordered as index_order
from .span_log import SpanLog
from .transitions import (
    FINAL_ATTEMPT_STATUSES,
    LIVE_ATTEMPT_STATUSES,
    TERMINAL_ROLLOUT_STATUSES,
    mark_running,
    set_attempt_status,
    touch_attempt,
)
from .watch import ChangeFeed, WatchMode, resolve_mode
from .watchdog import Reaper
from .workers import WorkerStore

# A waiter re-reads every record it waits for at least this often (index lines are hints).
FULL_RECHECK_SECONDS = 1.0

__all__ = ["FileStore", "init_store"]

log = logging.getLogger(__name__)

FilterLogic = Literal["and", "or"]
SortOrder = Literal["asc", "desc"]


def init_store(root: str | Path) -> Path:
    """Create the store's directories and ``FORMAT.json`` (idempotent). Returns the root."""
    layout = Layout(Path(root))
    for directory in layout.directories():
        directory.mkdir(parents=True, exist_ok=True)
    from . import __version__

    body = codec.dumps_record(
        {"format": "agl-store", "version": FORMAT_VERSION, "created_by": f"agl {__version__}"}
    )
    created = fsio.create_exclusive(layout.format_file, body)
    if created and not any(fsio.iter_dirs(layout.rollouts)):
        # A new, empty store: every rollout it will ever hold gets an index line, so the
        # index is complete from the start. Stores made by older builds are not marked.
        publish_marker(layout, "new store", now=time.time())
    gitignore = layout.root / ".gitignore"
    if not gitignore.exists():
        # Queue churn, per-process change feeds and the (rebuildable) index are operational,
        # not history.
        fsio.create_exclusive(gitignore, b"queue/\nevents/\nindex/\nlocks/\n")
    return layout.root


def _check_format(layout: Layout) -> None:
    data = fsio.read_bytes(layout.format_file)
    if data is None:
        raise StoreNotFoundError(str(layout.root))
    try:
        version = codec.loads(data).get("version")
    except (ValueError, AttributeError):
        version = None
    if version != FORMAT_VERSION:
        raise FormatVersionError(str(layout.root), version, FORMAT_VERSION)


class FileStore:
    """A LightningStore kept in the directory ``root``.

    Args:
        root: the store directory.
        create: create the store if ``root`` holds none (else :class:`StoreNotFoundError`).
        durability: ``"process"`` (default) survives ``kill -9`` of any process: every
            call's data is handed to the kernel before it returns. ``"fsync"`` also
            survives power loss: data and directories are fsynced (span writes of
            concurrent callers share one fsync).
        scan_debounce_seconds: at most one reaper scan per this many seconds per process
            (0: before every eligible call, like upstream's tests).
        claim_grace_seconds: how long a decision or claim may stay half-applied before
            another process finishes it for its (presumably dead) owner.
        clock_skew_seconds: slack when judging heartbeats written by another machine's clock.
        watch_mode: ``"auto"`` (polling on network filesystems, inotify elsewhere),
            ``"inotify"`` or ``"poll"``.
        clock: injectable time source (tests).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        create: bool = True,
        durability: Durability = "process",
        scan_debounce_seconds: float = 1.0,
        claim_grace_seconds: float = 30.0,
        clock_skew_seconds: float = 0.0,
        watch_mode: WatchMode = "auto",
        clock: Clock | None = None,
    ) -> None:
        if durability not in ("process", "fsync"):
            raise ValueError(f"durability must be 'process' or 'fsync', not {durability!r}")
        self.root = Path(root)
        layout = Layout(self.root)
        if create and not layout.format_file.exists():
            init_store(self.root)
        _check_format(layout)
        self._clock = clock or SystemClock()
        self._ctx = Context(layout, self._clock, durability, clock_skew_seconds)
        self._events = EventLog(self._ctx)
        self._index = RolloutIndex(self._ctx)
        self._records = RecordStore(self._ctx, self._events.record_change, self._index.record)
        self._queue = Queue(self._ctx)
        self._spans = SpanLog(self._ctx)
        self._resources = ResourceStore(self._ctx)
        self._workers = WorkerStore(self._ctx)
        self._engine = Engine(self._ctx, self._records, self._queue, self._spans, self._workers)
        self._reaper = Reaper(
            self._ctx,
            self._engine,
            debounce=scan_debounce_seconds,
            grace=claim_grace_seconds,
            index=self._index,
        )
        self._watch_mode = watch_mode
        self._started = self._clock.monotonic()
        self._warned_index_ahead = False

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @property
    def layout(self) -> Layout:
        return self._ctx.layout

    def close(self) -> None:
        """Close this process's open span, event and index files (reopened on next use)."""
        self._spans.close()
        self._events.close()
        self._index.close()

    # -- helpers -------------------------------------------------------------------
    def _healthcheck(self) -> None:
        self._reaper.maybe_scan()

    def check(self, *, fix: bool = False) -> list[Problem]:
        """Look for damage and half-finished work; with ``fix``, repair what is safe to repair.

        Orphan-pending tokens are only safe to remove when no enqueue is in flight, and a
        rollout index that appending cannot correct is rebuilt: run ``check(fix=True)`` on
        a quiet store.
        """
        return check_store(self._engine, self._index, fix=fix)

    def reap(self) -> int:
        """Run one reaper scan now; returns how many attempts were expired."""
        return self._reaper.scan()

    def _known_rollout(self, rollout_id: str) -> bool:
        """False for ids that cannot name a rollout; raises for ids that are unsafe in a path."""
        return is_rollout_id(rollout_id)

    def _record(self, rollout_id: str) -> RolloutRecord:
        if not self._known_rollout(rollout_id):
            raise RolloutNotFoundError(rollout_id)
        return self._records.require(rollout_id)

    def _with_heartbeat(self, attempt: Attempt) -> Attempt:
        """Live attempts report the latest heartbeat written by any process."""
        if attempt.status in FINAL_ATTEMPT_STATUSES - {"unresponsive"}:
            return attempt
        beats = self._spans.heartbeats(self._engine.attempt_dir(attempt))
        latest = max((b.time for b in beats if b.counter > 1), default=None)
        if latest is not None and (
            attempt.last_heartbeat_time is None or latest > attempt.last_heartbeat_time
        ):
            return attempt.model_copy(update={"last_heartbeat_time": latest})
        return attempt

    def _public(self, record: RolloutRecord) -> Rollout | AttemptedRollout:
        public = record.public()
        if isinstance(public, AttemptedRollout):
            public.attempt = self._with_heartbeat(public.attempt)
        return public

    def _resolve_resources(self, resources_id: str | None) -> str | None:
        return resources_id if resources_id is not None else self._resources.latest_id()

    def _new_record(
        self,
        rollout_id: str,
        input: TaskInput,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | None,
        metadata: dict[str, Any] | None,
        status: RolloutStatus,
    ) -> RolloutRecord:
        return RolloutRecord(
            rollout_id=rollout_id,
            input=input,
            start_time=self._clock.time(),
            mode=mode,
            resources_id=resources_id,
            status=status,
            config=config.model_copy(deep=True) if config else RolloutConfig(),
            metadata=dict(metadata) if metadata else {},
        )

    # -- capabilities and statistics -----------------------------------------------
    @property
    def capabilities(self) -> LightningStoreCapabilities:
        return {"thread_safe": True, "async_safe": True, "zero_copy": True, "otlp_traces": False}

    async def statistics(self) -> LightningStoreStatistics:
        """Counts for inspection. Rollouts and attempts come from the rollout index (as late
        as the index, see store_fs/rollout_index.py); spans are counted in the span files of
        rollouts that have attempts. Without a complete index, every record is read."""
        counts = self._index.counts()
        if counts is not None:
            rollouts, attempts, attempted = counts
            spans = sum(self._count_spans(rollout_id) for rollout_id in attempted)
        else:
            rollouts = attempts = spans = 0
            for record in self._records.iter_records():
                rollouts += 1
                attempts += len(record.attempts)
                spans += sum(self._spans.count(self._engine.attempt_dir(a)) for a in record.attempts)
        return {
            "name": type(self).__name__,
            "total_rollouts": rollouts,
            "total_attempts": attempts,
            "total_spans": spans,
            "total_resources": self._resources.count(),
            "total_workers": self._workers.count(),
            "uptime": self._clock.monotonic() - self._started,
        }

    def _count_spans(self, rollout_id: str) -> int:
        attempts = self.layout.attempts_dir(rollout_id)
        return sum(self._spans.count(attempts / entry.name) for entry in fsio.iter_dirs(attempts))

    # -- rollouts ------------------------------------------------------------------
    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        """Create a rollout with its first attempt already started (not queued)."""
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
        result = self._engine.begin(claim, worker_id, from_queue=False)
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
        """Queue a rollout. With ``idempotency_key``, enqueueing the same key again returns
        the rollout created the first time instead of creating another."""
        self._healthcheck()
        request = EnqueueRolloutRequest(
            input=input, mode=mode, resources_id=resources_id, config=config, metadata=metadata
        )
        return self._enqueue(request, self._resolve_resources(resources_id), idempotency_key)

    def _enqueue(self, request: EnqueueRolloutRequest, resources_id: str | None, key: str | None) -> Rollout:
        rollout_id = rollout_id_for_key(key) if key is not None else new_rollout_id()
        if key is not None:
            existing = self._records.get(rollout_id)
            if existing is not None:
                self._engine.ensure_pending(existing)
                return existing.plain()
        # Token first, record second: a claimer that finds a token without a record waits,
        # so a crash in between leaves only a token the reaper removes, never a ghost rollout.
        self._queue.publish_pending(rollout_id, 1)
        record = self._new_record(
            rollout_id, request.input, request.mode, resources_id, request.config, request.metadata, "queuing"
        )
        if not self._records.create(record):
            existing = self._records.get(rollout_id)
            assert existing is not None
            return existing.plain()
        return record.plain()

    async def enqueue_many_rollouts(
        self, rollouts: Sequence[EnqueueRolloutRequest], *, idempotency_keys: Sequence[str] | None = None
    ) -> Sequence[Rollout]:
        """Queue several rollouts in order; the latest resources id is looked up once."""
        self._healthcheck()
        if idempotency_keys is not None and len(idempotency_keys) != len(rollouts):
            raise ValueError("idempotency_keys must have one key per rollout")
        latest: str | Unset | None = UNSET
        out: list[Rollout] = []
        for i, raw in enumerate(rollouts):
            request = EnqueueRolloutRequest.model_validate(raw)
            resources_id = request.resources_id
            if resources_id is None:
                if isinstance(latest, Unset):
                    latest = self._resources.latest_id()
                resources_id = latest
            out.append(
                self._enqueue(request, resources_id, idempotency_keys[i] if idempotency_keys else None)
            )
        return out

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the oldest queued rollout; None when nothing is queued (never blocks)."""
        self._healthcheck()
        if worker_id:
            check_name_id("worker", worker_id)
        result = self._engine.claim_next(worker_id)
        if result is None and worker_id:
            self._workers.mark_idle(worker_id)
        return result

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
        """Start a new attempt now, whatever the rollout's status (except cancelled)."""
        self._healthcheck()
        if worker_id:
            check_name_id("worker", worker_id)
        self._record(rollout_id)
        return self._engine.start_attempt(rollout_id, worker_id)

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
        """Filter, sort and page rollouts. Without ``sort_by``, oldest first.

        With a complete rollout index (store_fs/rollout_index.py) the candidates come
        from the index and only the records of the page are read (see
        :meth:`_query_indexed` for what ``total`` means then); without one, every record.
        """
        self._healthcheck()
        if status is not None:
            warnings.warn("'status' is deprecated; use 'status_in'", DeprecationWarning, stacklevel=2)
            status_in = status if status_in is None else status_in
        if rollout_ids is not None:
            warnings.warn(
                "'rollout_ids' is deprecated; use 'rollout_id_in'", DeprecationWarning, stacklevel=2
            )
            rollout_id_in = rollout_ids if rollout_id_in is None else rollout_id_in
        # Materialised once: the filter, the index and the direct read each go through them.
        status_in = None if status_in is None else list(status_in)
        rollout_id_in = None if rollout_id_in is None else list(rollout_id_in)
        check_page_args(limit, offset)
        filters = build_filter(
            filter_logic,
            status=("within", list(status_in)) if status_in is not None else None,
            rollout_id=("within", list(rollout_id_in)) if rollout_id_in is not None else None,
            rollout_id__c=("contains", rollout_id_contains) if rollout_id_contains is not None else None,
        )
        if rollout_id_in is not None and filter_logic == "and" and rollout_id_contains is None:
            # Read just the named rollouts instead of the whole tree.
            ids = [r for r in dict.fromkeys(rollout_id_in) if isinstance(r, str) and self._known_rollout(r)]
            found = [self._records.get(r) for r in ids]
            records = [r for r in found if r is not None]
        else:
            picked = self._index.select(
                status_in=status_in,
                rollout_id_in=rollout_id_in,
                rollout_id_contains=rollout_id_contains,
                logic=filter_logic,
            )
            if picked is not None:
                return self._query_indexed(picked, filters, sort_by, sort_order, limit, offset)
            records = list(self._records.iter_records())  # no complete index: read the tree
        selected = [r for r in records if matches(r, filters)]
        return self._page(selected, sort_by, sort_order, limit, offset)

    def _page(
        self,
        records: list[RolloutRecord],
        sort_by: str | None,
        sort_order: SortOrder,
        limit: int,
        offset: int,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        """Matching ``records`` sorted (oldest first, then by ``sort_by``) and paged."""
        records.sort(key=lambda r: (r.start_time, r.rollout_id))
        ordered = sort_items(records, sort_by, sort_order, Rollout)
        page = paginate(ordered, limit, offset)
        return PaginatedResult(
            items=[self._public(r) for r in page], limit=limit, offset=offset, total=len(ordered)
        )

    def _query_indexed(
        self,
        picked: list[Entry],
        filters: dict[str, Any],
        sort_by: str | None,
        sort_order: SortOrder,
        limit: int,
        offset: int,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        """``query_rollouts`` over the candidates the index picked.

        Every returned rollout is re-checked on its record, so a stale index entry can
        leave a rollout out (late) but never return one that does not match. In the
        index's orders (none, ``start_time``, ``rollout_id``) only the page is read:
        the ``offset`` rollouts before it are skipped by their index entries, and
        ``total`` is the index's count less the candidates found stale while reading.
        Other orders need every candidate's record.
        """
        if sort_by not in (None, "start_time", "rollout_id"):
            records = [r for r in map(self._verified, picked, itertools.repeat(filters)) if r is not None]
            return self._page(records, sort_by, sort_order, limit, offset)
        sort_items([], sort_by, sort_order)  # the same argument check as the full scan
        need = None if limit == -1 else offset + limit + 8  # a few spare for stale entries
        page: list[RolloutRecord] = []
        stale = 0
        for entry in itertools.islice(index_order(picked, sort_by, sort_order == "desc", need), offset, None):
            if len(page) == limit:
                break
            record = self._verified(entry, filters)
            if record is None:
                stale += 1
            else:
                page.append(record)
        return PaginatedResult(
            items=[self._public(r) for r in page], limit=limit, offset=offset, total=len(picked) - stale
        )

    def _verified(self, entry: Entry, filters: dict[str, Any]) -> RolloutRecord | None:
        """The record of an index candidate if it really matches ``filters``, else None."""
        try:
            found = self._records.head(entry.rollout_id)
        except CorruptRecordError as err:
            log.warning("%s", err)  # like the full scan: skipped here, reported by check
            return None
        if found is None:
            return None
        rev, record = found
        if rev < entry.rev and not self._warned_index_ahead:
            self._warned_index_ahead = True
            log.warning(
                "the rollout index is ahead of %s (revision %d, index %d): if `agl check` agrees, "
                "records were restored from an older copy and `agl check --fix` rebuilds the index",
                entry.rollout_id,
                rev,
                entry.rev,
            )
        # The cached head is shared: only read it (``_public`` builds new objects).
        return record if matches(record, filters) else None

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | AttemptedRollout | None:
        self._healthcheck()
        if not self._known_rollout(rollout_id):
            return None
        record = self._records.get(rollout_id)
        return None if record is None else self._public(record)

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
        """Overwrite the given fields. A terminal status stamps ``end_time``; ``queuing`` or
        ``requeuing`` puts the rollout back in the queue; ``cancelled`` also takes the live
        attempts' tokens, so their runners learn it at their next check."""
        self._healthcheck()
        self._record(rollout_id)
        fields: dict[str, Any] = {
            k: v
            for k, v in {
                "input": input,
                "mode": mode,
                "resources_id": resources_id,
                "status": status,
                "config": config,
                "metadata": metadata,
            }.items()
            if not isinstance(v, Unset)
        }
        validated = Rollout.model_validate(
            {"rollout_id": rollout_id, "input": None, "start_time": 0.0, **fields}
        )
        now = self._clock.time()

        def apply(record: RolloutRecord) -> RolloutRecord | None:
            if not fields:
                return None
            for key in fields:
                setattr(record, key, getattr(validated, key))
            if "status" in fields and record.status in TERMINAL_ROLLOUT_STATUSES:
                record.end_time = now
            return record

        record = self._records.update(rollout_id, apply)
        if "status" in fields:
            if record.status == "cancelled":
                self._engine.expire_live(record, "cancelled")
            self._engine.ensure_pending(record)
        return record.plain()

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        """Cancel a rollout: queued, it will not run; running, its runner is told to stop."""
        return await self.update_rollout(rollout_id, status="cancelled")

    # -- attempts ------------------------------------------------------------------
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
        """Overwrite the given fields of an attempt (``attempt_id`` may be ``"latest"``).

        A final status (succeeded, failed, timeout, unresponsive) of a live attempt is a
        commit: it takes the attempt's token, so a racing reaper cannot also decide it.
        The rollout's status follows from its latest attempt, unless it is cancelled.
        """
        self._healthcheck()
        if attempt_id != "latest":
            check_attempt_id(attempt_id)
        if isinstance(worker_id, str) and worker_id:
            check_name_id("worker", worker_id)
        current = self._engine.find_attempt(self._record(rollout_id), attempt_id)
        if not isinstance(status, Unset):
            status = Attempt.model_validate({**current.model_dump(), "status": status}).status
        journal = None
        if not isinstance(status, Unset) and status in FINAL_ATTEMPT_STATUSES:
            journal = self._engine.settle(current, status)
        now = self._clock.time()
        requeued: list[bool] = []

        def apply(record: RolloutRecord) -> RolloutRecord:
            requeued.clear()
            attempt = record.find(current.attempt_id)
            if attempt is None:  # cannot happen: attempts are never removed
                raise RolloutNotFoundError(rollout_id)
            before = record.status
            if not isinstance(worker_id, Unset):
                attempt.worker_id = worker_id
            if not isinstance(last_heartbeat_time, Unset):
                attempt.last_heartbeat_time = last_heartbeat_time
            if not isinstance(metadata, Unset):
                attempt.metadata = metadata
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
        if (not isinstance(worker_id, Unset) and worker_id) or (
            not isinstance(status, Unset) and updated.worker_id
        ):
            self._workers.sync(updated)
        return self._with_heartbeat(updated)

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> bool:
        """Signal that an attempt is alive (no span needed). False if its token was taken
        (cancelled or expired): the caller should stop working on it. Runs the reaper,
        so a lone runner's own overdue attempt is expired (and the runner told) too."""
        self._healthcheck()
        record = self._record(rollout_id)
        attempt = self._engine.find_attempt(record, attempt_id)
        self._spans.heartbeat(self._engine.attempt_dir(attempt), force=True)
        token = ClaimToken(rollout_id, attempt.sequence_id, attempt.attempt_id)
        return self._queue.is_claimed(token)

    # -- resources -----------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        return self._resources.put(None, resources)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        self._healthcheck()
        return self._resources.put(resources_id, resources)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        return self._resources.get(resources_id)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        return self._resources.latest()

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
        """Snapshots at their newest version; without ``sort_by``, oldest first."""
        check_page_args(limit, offset)
        filters = build_filter(
            "and",
            resources_id=("exact", resources_id) if resources_id is not None else None,
            resources_id__c=("contains", resources_id_contains)
            if resources_id_contains is not None
            else None,
        )
        selected = [r for r in self._resources.all() if matches(r, filters)]
        ordered = sort_items(selected, sort_by, sort_order, ResourcesUpdate)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )

    # -- spans ---------------------------------------------------------------------
    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """The next number of the rollout-wide span sequence (``attempt_id`` is not used)."""
        if not self._known_rollout(rollout_id) or not self._records.exists(rollout_id):
            raise RolloutNotFoundError(rollout_id)
        return self._spans.allocate(rollout_id)

    async def get_many_span_sequence_ids(
        self, rollout_attempt_ids: Sequence[tuple[str, str]]
    ) -> Sequence[int]:
        counts: dict[str, int] = {}
        for rollout_id, _ in rollout_attempt_ids:
            counts[rollout_id] = counts.get(rollout_id, 0) + 1
        firsts: dict[str, int] = {}
        for rollout_id, count in counts.items():
            if not self._known_rollout(rollout_id) or not self._records.exists(rollout_id):
                raise RolloutNotFoundError(rollout_id)
            firsts[rollout_id] = self._spans.allocate(rollout_id, count)
        out: list[int] = []
        for rollout_id, _ in rollout_attempt_ids:
            out.append(firsts[rollout_id])
            firsts[rollout_id] += 1
        return out

    def _store_group(
        self, rollout_id: str, attempt_id: str, spans: Sequence[Span]
    ) -> tuple[list[Span], Path | None]:
        if not self._known_rollout(rollout_id):
            raise RolloutNotFoundError(rollout_id)
        record = self._records.require(rollout_id)
        check_attempt_id(attempt_id)
        attempt = record.find(attempt_id)
        if attempt is None:
            raise AttemptNotFoundError(rollout_id, attempt_id)
        # Upstream syncs the counter before validating; here a refused span changes nothing.
        self._spans.bump(rollout_id, max(s.sequence_id for s in spans))
        attempt_dir = self._engine.attempt_dir(attempt)
        written, path = self._spans.append(attempt_dir, spans)
        if written:
            self._spans.heartbeat(attempt_dir)
            self._promote(record, attempt)
        return written, path

    def _promote(self, record: RolloutRecord, attempt: Attempt) -> None:
        """The span-as-heartbeat rule, skipped when it would change nothing.

        Live attempts report heartbeats from the heartbeat files; a finished attempt's
        record is stamped instead (rare, and throttled like heartbeats).
        """
        now = self._clock.time()
        latest = record.latest()
        is_latest = latest is not None and latest.attempt_id == attempt.attempt_id
        revive = attempt.status in ("preparing", "unresponsive") or (
            is_latest and record.status in ("preparing", "requeuing")
        )
        stamp = (
            attempt.status in FINAL_ATTEMPT_STATUSES and now - (attempt.last_heartbeat_time or 0.0) >= 0.25
        )
        if not revive and not stamp:
            return

        def promote(rec: RolloutRecord) -> RolloutRecord | None:
            current = rec.find(attempt.attempt_id)
            if current is None:
                return None
            if mark_running(rec, current, now):
                return rec
            if current.status in FINAL_ATTEMPT_STATUSES:
                current.last_heartbeat_time = now
                return rec
            return None

        self._records.update(record.rollout_id, promote)

    async def _durable(self, paths: Sequence[Path | None]) -> None:
        if self._ctx.durable:
            for path in {p for p in paths if p is not None}:
                await asyncio.to_thread(self._spans.sync, path)

    async def add_span(self, span: Span) -> Span | None:
        """Store a span; None (and an error logged) if its ``span_id`` is already stored
        for the attempt. The span counts as a heartbeat of its attempt."""
        written, path = self._store_group(span.rollout_id, span.attempt_id, [span])
        await self._durable([path])
        return span if written else None

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store spans grouped by attempt (first-seen order); returns those actually stored."""
        groups: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        stored: list[Span] = []
        paths: list[Path | None] = []
        for (rollout_id, attempt_id), group in groups.items():
            written, path = self._store_group(rollout_id, attempt_id, group)
            stored.extend(written)
            paths.append(path)
        await self._durable(paths)
        return stored

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        if sequence_id is None:
            sequence_id = await self.get_next_span_sequence_id(rollout_id, attempt_id)
        span = Span.from_opentelemetry(readable_span, rollout_id, attempt_id, sequence_id)
        return await self.add_span(span)

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
        """Spans of a rollout (or of one attempt, or ``"latest"``), filtered, sorted, paged."""
        self._healthcheck()
        check_page_args(limit, offset)
        filters = build_filter(
            filter_logic,
            trace_id=("exact", trace_id),
            trace_id__c=("contains", trace_id_contains),
            span_id=("exact", span_id),
            span_id__c=("contains", span_id_contains),
            parent_id=("exact", parent_id),
            parent_id__c=("contains", parent_id_contains),
            name=("exact", name),
            name__c=("contains", name_contains),
        )
        if attempt_id is not None and attempt_id != "latest":
            check_attempt_id(attempt_id)
        record = self._records.get(rollout_id) if self._known_rollout(rollout_id) else None
        attempts = record.attempts if record else []
        if attempt_id == "latest":
            attempts = attempts[-1:]
        elif attempt_id is not None:
            attempts = [a for a in attempts if a.attempt_id == attempt_id]
        spans = self._spans.read(self._engine.attempt_dir(a) for a in attempts)
        selected = [s for s in spans if matches(s, filters)]
        ordered = sort_items(selected, sort_by, sort_order, Span)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )

    # -- waiting -------------------------------------------------------------------
    async def wait_for_rollouts(
        self, *, rollout_ids: list[str], timeout: float | None = None
    ) -> list[Rollout]:
        """Rollouts among ``rollout_ids`` that are finished (succeeded, failed, cancelled)
        within ``timeout`` seconds (None: wait as long as it takes). Unknown ids are left
        out; the order of the result follows ``rollout_ids``."""
        self._healthcheck()
        finished: dict[str, Rollout] = {}
        waiting = {r for r in rollout_ids if self._known_rollout(r)}
        # Waiting sleeps for real, so its deadline is on the real clock even when an
        # injected clock drives timestamps and liveness.
        deadline = None if timeout is None else time.monotonic() + timeout

        def check(candidates: Iterable[str]) -> None:
            for rid in candidates:
                found = self._records.head(rid)
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
                check([rid for rid, entry in entries.items() if entry.status in TERMINAL_ROLLOUT_STATUSES])

        check(list(waiting))
        if waiting and (timeout is None or timeout > 0):
            mode = resolve_mode(self._watch_mode, self.root)
            async with ChangeFeed(self.layout.events, mode) as feed:
                check(list(waiting))  # the feed is live: nothing that happens from here on is missed
                while waiting and (deadline is None or time.monotonic() < deadline):
                    await feed.next()
                    self._reaper.maybe_scan()
                    check_changed()
        return [finished[r] for r in rollout_ids if r in finished]

    # -- workers -------------------------------------------------------------------
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
        self._healthcheck()
        check_page_args(limit, offset)
        filters = build_filter(
            filter_logic,
            status=("within", list(status_in)) if status_in is not None else None,
            worker_id=("contains", worker_id_contains),
        )
        selected = [w for w in self._workers.all() if matches(w, filters)]
        ordered = sort_items(selected, sort_by, sort_order, Worker)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] | Unset = UNSET) -> Worker:
        """Record a worker heartbeat, replacing its stats when given (None is a TypeError)."""
        if heartbeat_stats is None:
            raise TypeError("heartbeat_stats must be a dict when given, not None")
        stats = None if isinstance(heartbeat_stats, Unset) else dict(heartbeat_stats)
        return self._workers.heartbeat(worker_id, stats)
