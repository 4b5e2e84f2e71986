"""Compacting a whole store's per-writer logs into segments, on demand or by itself.

Which logs: the rollout index (``index/rollouts/``), the change feed (``events/``) and each
worker's logs (``workers/<id>/``); the mechanism and what readers see is
:mod:`store_fs._disk.log_segments`. Worker logs are folded (only the lines that still win a field
are kept, as a writer does with its own log), the others copied whole: the rollout index cursor
and ``agl events`` follow them line by line.

:func:`compact_logs` runs under the maintenance lock (``check --fix``, ``agl prune`` and a
compaction never overlap). :class:`AutoCompaction` is how readers start it by themselves: when
a refresh of the rollout index found more than :data:`AUTO_THRESHOLD` per-writer logs (a count
the refresh has anyway), it tries the lock without waiting, at most once per
:data:`AUTO_RETRY_SECONDS` per process, and logs rather than raises what goes wrong: the query
that noticed is answered either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from store_fs._disk import fsio, log_segments
from store_fs._disk.change_feed import EVENT_LOGS
from store_fs._disk.context import Context
from store_fs._disk.index_snapshot import write_snapshot
from store_fs._disk.maintenance import maintenance_lock
from store_fs._disk.quarantine import Quarantine
from store_fs._disk.rollout_index import INDEX_LOGS, IndexView
from store_fs._disk.server_clock import server_now
from store_fs._disk.worker_logs import WORKER_LOGS, fold_bytes
from store_fs.errors import MaintenanceBusyError

__all__ = [
    "AUTO_RETRY_SECONDS",
    "AUTO_THRESHOLD",
    "DEFAULT_IDLE_SECONDS",
    "AutoCompaction",
    "CompactionReport",
    "compact_logs",
]

log = logging.getLogger(__name__)

#: Per-writer index logs beyond which a reader compacts the store by itself.
AUTO_THRESHOLD = 32
#: Index lines a process parsed from the logs (not from a snapshot) beyond which it compacts by
#: itself, and beyond which compaction writes a new index snapshot.
SNAPSHOT_EVERY_LINES = 20_000
#: A process tries automatic compaction at most this often (the logs may be of live writers).
AUTO_RETRY_SECONDS = 60.0
#: A log written from another host is taken once untouched this long (its writer cannot be asked).
DEFAULT_IDLE_SECONDS = 3600.0


@dataclass
class CompactionReport:
    directories: int = 0  # log directories looked at
    segments: int = 0  # new segments written
    absorbed: int = 0  # files copied into them
    removed: int = 0  # files removed (absorbed now, or left by an interrupted compaction)
    bytes: int = 0  # payload bytes of the new segments
    torn: int = 0  # torn last lines of dead writers, moved to quarantine
    quarantine: str | None = None
    snapshot: bool = False  # a new rollout index snapshot was written


Fold = Callable[[bytes], bytes] | None


def _log_directories(ctx: Context) -> Iterator[tuple[Path, log_segments.Kind, Fold]]:
    yield ctx.layout.rollout_index, INDEX_LOGS, None
    yield ctx.layout.events, EVENT_LOGS, None
    for entry in fsio.iter_dirs(ctx.layout.workers):
        yield Path(entry.path), WORKER_LOGS, fold_bytes


def compact_logs(
    ctx: Context,
    *,
    idle_seconds: float = DEFAULT_IDLE_SECONDS,
    progress: Callable[[int, int], None] | None = None,
) -> CompactionReport:
    """Compact every log directory of the store (the caller holds the maintenance lock).
    ``progress(done, total)`` is called after each directory."""
    report = CompactionReport()
    now = server_now(ctx)
    quarantine: Quarantine | None = None

    def keep_torn(path: Path, data: bytes, offset: int) -> None:
        nonlocal quarantine
        if quarantine is None:
            quarantine = Quarantine(ctx.layout, ctx.writer, durable=ctx.durable)
            report.quarantine = str(quarantine.directory)
        quarantine.quarantine_bytes(path, data, offset, "the torn last line of a log whose writer is gone")
        report.torn += 1

    directories = list(_log_directories(ctx))
    for done, (directory, kind, fold) in enumerate(directories, 1):

        def take(log_file: log_segments.LogFile, kind: log_segments.Kind = kind) -> bool:
            writer = kind.writer(log_file.name)
            return log_segments.writer_gone(writer, log_file.mtime, now=now, idle_seconds=idle_seconds)

        result = log_segments.compact_directory(
            directory,
            kind,
            take=take,
            writer=ctx.writer,
            durable=ctx.durable,
            fold=fold,
            on_torn=keep_torn,
        )
        report.directories += 1
        report.segments += result.segment is not None
        report.absorbed += result.inputs
        report.removed += result.removed
        report.bytes += result.bytes
        if progress is not None:
            progress(done, len(directories))
    report.snapshot = _snapshot_index(ctx)
    return report


def _snapshot_index(ctx: Context) -> bool:
    """Write a new rollout index snapshot (``index_snapshot``) when there is none or more than
    ``SNAPSHOT_EVERY_LINES`` lines were written since the last; whether one was written."""
    directory = ctx.layout.rollout_index
    if not ctx.layout.rollout_index_marker.exists():
        return False  # an incomplete index lists only some rollouts: nothing to snapshot
    view = IndexView()
    try:
        view.refresh(directory, partial=True)
        if view.snapshot is not None and view.parsed_lines < SNAPSHOT_EVERY_LINES:
            return False
        view.merge_sections()
        lines = view.lines_by_status()
        write_snapshot(directory, dict(view.files), lines, writer=ctx.writer, durable=ctx.durable)
        return True
    finally:
        view.reset()


class AutoCompaction:
    """Compaction started by a reader that met too many per-writer logs (see the module doc)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._last_try: float | None = None
        self._lines = 0  # index lines parsed by this process since it last compacted

    def __call__(self, writer_logs: int, lines: int) -> None:
        """After an index refresh that met ``writer_logs`` per-writer logs and parsed ``lines``."""
        self._lines += lines
        if writer_logs <= AUTO_THRESHOLD and self._lines <= SNAPSHOT_EVERY_LINES:
            return
        now = time.monotonic()
        if not self._lock.acquire(blocking=False):
            return  # another thread of this process is at it
        try:
            if self._last_try is not None and now - self._last_try < AUTO_RETRY_SECONDS:
                return
            self._last_try = now
            self._lines = 0
            try:
                with maintenance_lock(self._ctx.layout, timeout=0):
                    report = compact_logs(self._ctx)
            except MaintenanceBusyError:
                return  # a repair, a prune or another compaction is running: next time
            except OSError as err:
                log.warning("automatic compaction of %s failed: %s", self._ctx.layout.root, err)
                return
            root = self._ctx.layout.root
            log.info("compacted %d log(s) of %s into %d segment(s)", report.absorbed, root, report.segments)
        finally:
            self._lock.release()
