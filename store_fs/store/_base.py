"""What every part of :class:`~store_fs.store.FileStore` shares: its components, the
helpers its methods are written with, and creating or opening the store directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from store_fs._disk import codec, fsio
from store_fs._disk.change_feed import EventLog
from store_fs._disk.check import Problem, check_store
from store_fs._disk.claims import Engine
from store_fs._disk.context import Context, Durability
from store_fs._disk.format_file import (
    check_durability,
    effective_durability,
    format_body,
    read_format,
    require_store,
    set_durability,
)
from store_fs._disk.ids import is_rollout_id
from store_fs._disk.layout import Layout
from store_fs._disk.log_compaction import DEFAULT_IDLE_SECONDS, AutoCompaction, CompactionReport, compact_logs
from store_fs._disk.maintenance import maintenance_lock
from store_fs._disk.queue_tokens import Queue
from store_fs._disk.reaper import Reaper
from store_fs._disk.resource_versions import ResourceStore
from store_fs._disk.rollout_history import RecordStore, RolloutRecord
from store_fs._disk.rollout_index import RolloutIndex, publish_marker
from store_fs._disk.server_clock import server_offset
from store_fs._disk.span_log import SpanLog
from store_fs._disk.status_rules import FINAL_ATTEMPT_STATUSES
from store_fs._disk.watch import WatchMode, is_network_fs
from store_fs._disk.worker_logs import WorkerStore
from store_fs.clock import Clock, SystemClock
from store_fs.errors import CorruptRecordError, NestedStoreError, RolloutNotFoundError
from store_fs.lightning_store import LightningStore
from store_fs.models import (
    Attempt,
    AttemptedRollout,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    TaskInput,
)


def init_store(root: str | Path, *, durability: Durability | None = None) -> Path:
    """Create the store's directories and ``FORMAT.json`` (idempotent). Returns the root.

    ``durability``: the store's setting, which every process opening it uses at least
    (docs/format.md, "Durability"). A new store records it (``"process"`` when None); an
    existing one is changed to it under the maintenance lock (None: left as it is). With
    ``"fsync"``, every directory and file made is on disk when this returns.
    """
    if durability is not None:
        check_durability(durability)
    root = Path(root)
    created = _make_store(Layout(root), durability or "process")
    if not created:
        # The store there must open: a FORMAT.json that is a link to nothing was taken for
        # one (agl init said "store ready", every command then "no store"; an adversarial pass).
        format_file = Layout(root).format_file
        if os.path.lexists(format_file) and not format_file.exists():
            raise CorruptRecordError(str(format_file), "a symbolic link to nothing, not a format file")
        read_format(Layout(root))
        if durability is not None:
            set_durability(root, durability)
    return root


def _make_store(layout: Layout, durability: Durability) -> bool:
    """Make whatever of the store is missing, recording ``durability`` in a new
    ``FORMAT.json``; whether this call made that file (an existing store's setting stays)."""
    durable = durability == "fsync"
    if not layout.format_file.exists():
        _refuse_nested(layout.root)
    for directory in layout.directories():
        fsio.make_dirs(directory, durable=durable)
    from store_fs import __version__

    body = format_body(durability, created_by=f"agl {__version__}")
    created = fsio.create_exclusive(layout.format_file, body, durable=durable)
    if created and not any(fsio.iter_dirs(layout.rollouts)):
        # A new, empty store: every rollout it will ever hold gets an index line, so the
        # index is complete from the start. Stores made by older builds are not marked.
        publish_marker(layout, "new store", now=time.time(), durable=durable)
    gitignore = layout.root / ".gitignore"
    if not gitignore.exists():
        # Queue churn, per-process change feeds, the (rebuildable) index and caches are
        # operational, not history.
        fsio.create_exclusive(
            gitignore, b"queue/\nevents/\nindex/\nlocks/\ntrash/\ncache/\n", durable=durable
        )
    return created


def _refuse_nested(root: Path) -> None:
    """:class:`NestedStoreError` when ``root``, a store to be made, is inside another store."""
    for parent in Path(os.path.abspath(root)).parents:
        if Layout(parent).format_file.is_file():
            raise NestedStoreError(str(root), str(parent))


def _restore_directories(layout: Layout, *, durable: bool) -> None:
    """Make the store's empty directories again where they are missing: git and some copies
    keep no empty directory (and a store's ``.gitignore`` leaves out ``queue/``), and every
    write assumes its directory exists. A store this process cannot write to stays as it is."""
    for directory in layout.directories():
        if not directory.is_dir():
            try:
                fsio.make_dirs(directory, durable=durable)
            except OSError:
                return  # read-only: readers need none of them


class StoreCore(LightningStore):
    """The state and helpers of a :class:`~store_fs.store.FileStore`, which mixes the API in.

    Every component (records, queue, spans, index, ...) is built here, once, so each
    mixin reads the same objects; the arguments are documented on ``FileStore``.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        create: bool = True,
        durability: Durability | None = None,
        scan_debounce_seconds: float = 1.0,
        claim_grace_seconds: float = 30.0,
        clock_skew_seconds: float = 0.0,
        watch_mode: WatchMode = "auto",
        span_cache_bytes: int = 16 * 2**20,
        clock: Clock | None = None,
    ) -> None:
        if durability is not None:
            check_durability(durability)
        self.root = Path(root)
        #: How this store was opened, to open it again in another process (the server's
        #: worker processes); None when a clock was injected, which cannot cross a process.
        self.open_options: dict[str, Any] | None = None
        if clock is None:
            self.open_options = {
                "durability": durability,  # as asked: the store's setting is read at each open
                "scan_debounce_seconds": scan_debounce_seconds,
                "claim_grace_seconds": claim_grace_seconds,
                "clock_skew_seconds": clock_skew_seconds,
                "watch_mode": watch_mode,
                "span_cache_bytes": span_cache_bytes,
            }
        layout = Layout(self.root)
        #: True when this call created the store (``create=True`` and none was there). Of two
        #: processes creating one store at once, the one that writes ``FORMAT.json`` first
        #: created it, and its setting is the store's.
        self.created = False
        if create and not layout.format_file.exists():
            self.created = _make_store(layout, durability or "process")
        #: What this process does before a call returns: the stronger of the store's
        #: setting and ``durability`` (docs/format.md, "Durability").
        found = read_format(layout)
        self.durability: Durability = effective_durability(durability, found.durability)
        #: Which store this is (``FORMAT.json``'s ``store_id``; docs/format.md): ``agl store``
        #: tells its clients, so that none writes into another store after a restart.
        self.store_id: str | None = found.store_id
        if not self.created:
            _restore_directories(layout, durable=self.durability == "fsync")
        self._clock = clock or SystemClock()
        self._ctx = Context(
            layout, self._clock, self.durability, clock_skew_seconds, shared_fs=is_network_fs(self.root)
        )
        # Read the file server's clock now, so that every age judged later (on the injected
        # clock, which tests move by hand) counts from the same reading.
        server_offset(self._ctx)
        self._events = EventLog(self._ctx)
        self._index = RolloutIndex(self._ctx, after_refresh=AutoCompaction(self._ctx))
        self._records = RecordStore(self._ctx, self._events.record_change, self._index.record)
        self._queue = Queue(self._ctx)
        if span_cache_bytes < 0:
            raise ValueError(f"span_cache_bytes must be >= 0, not {span_cache_bytes}")
        self._spans = SpanLog(self._ctx, cache_bytes=span_cache_bytes)
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
        self._format_seen: tuple[int, ...] | None = None  # check_still_here's last look

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    @property
    def layout(self) -> Layout:
        return self._ctx.layout

    @property
    def network_filesystem(self) -> bool:
        """Whether the store is on a network filesystem (detected from the mount table, or
        ``AGL_NETWORK_FS=1|0``): other hosts see changes late and each call costs round trips."""
        return self._ctx.shared_fs

    def check_still_here(self) -> None:
        """Raise :class:`~store_fs.errors.StoreNotFoundError` unless the store this object
        opened is still at its root: removed, moved away, or replaced by another store since
        (``agl store``, a follower, a waiter would go on with whatever is there now, writing
        into another store under this one's id). One ``stat``; ``FORMAT.json`` is read again
        only when it changed (a migration or a durability change rewrites it: same id)."""
        try:
            st = os.stat(self.layout.format_file)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        seen = None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if seen is None or seen != self._format_seen:
            require_store(self.layout, self.store_id)  # raises, naming what happened
            self._format_seen = seen

    def close(self) -> None:
        """Close this process's open span, event, index and worker-log files (reopened on next use)."""
        self._spans.close()
        self._events.close()
        self._index.close()
        self._workers.close()

    # -- helpers -------------------------------------------------------------------
    def _healthcheck(self) -> None:
        self._reaper.maybe_scan()

    def check(self, *, fix: bool = False, grace: float | None = None) -> list[Problem]:
        """Look for damage and half-finished work; with ``fix``, repair what is safe to repair.

        What an enqueue in flight leaves for a moment (a pending token without its rollout, a
        rollout directory without its first revision) is passed over while younger than
        ``grace`` seconds (default: this store's ``claim_grace_seconds``); after a crash, with
        nothing running, ``grace=0`` takes it too. Other repairs assume no writer is in the
        middle of the same change: prefer a quiet store for ``fix``.
        """
        return check_store(
            self._engine, self._index, fix=fix, grace=self._reaper.grace if grace is None else grace
        )

    def compact(
        self,
        *,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        wait: float = 0.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> CompactionReport:
        """Merge the per-writer logs (rollout index, change feed, worker logs) of processes that
        have exited into segments, so that the number of files stays bounded however many
        processes wrote (docs/format.md, "Segments and compaction"). Logs written from another
        host count as exited once untouched for ``idle_seconds``. Runs under the maintenance
        lock: :class:`~store_fs.errors.MaintenanceBusyError` if another holder keeps it longer
        than ``wait`` seconds. Readers and writers go on meanwhile and see every line once.
        ``progress(done, total)`` follows the log directories."""
        with maintenance_lock(self._ctx.layout, timeout=wait):
            return compact_logs(self._ctx, idle_seconds=idle_seconds, progress=progress)

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
            return attempt  # its last heartbeat was kept in its record (``keep_heartbeat``)
        latest = self._engine.beat_time(attempt)
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
        *,
        what: str = "the rollout's input, config or metadata",
    ) -> RolloutRecord:
        """The first revision of a new rollout; raises :class:`UnstorableValueError` (naming
        ``what``) for caller values JSON cannot hold, before the caller writes anything."""
        codec.check_storable(what, (input, config, metadata))
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
