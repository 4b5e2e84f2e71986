"""The rollout index: ``index/rollouts/<writer>.jsonl``, so listing and counting need not read every record.

Without it, ``query_rollouts(status_in=...)`` and ``statistics()`` list and parse
every rollout record: seconds for a store of 100,000 rollouts. With it they read
a few new log bytes and then only the records they return.

**Writing.** Every revision of a rollout record, right after its ``link(2)`` made
it the truth, appends one line to the writing process's own log::

    {"rollout_id": "ro-...", "rev": 3, "status": "running", "start_time": 1712.5, "attempts": 1}

One process per file (``<host>-<pid>``, like the span and event logs), one
``write(2)`` per line, so no lock and no torn lines between writers. A writer
whose file was deleted (the index was removed or reset) opens a new one.

**Reading.** The truth about a rollout is the line with its highest revision,
whichever log holds it: taking the maximum is order-independent, so lines of
several writers may land in any order and a line may appear twice. Each process
keeps, per log file, the byte offset read so far and the merged map; a refresh
lists ``index/rollouts/`` and reads only new bytes. Bytes after a file's last
newline are a write in progress and wait for the next refresh; a complete line
that does not parse is skipped and listed by ``agl check``. A file that shrank,
vanished or was replaced makes the reader start again from nothing.

**Completeness.** The index is a cache: it is only used while
``index/rollouts/complete.json`` exists, which says every rollout has a line.
New stores start with it; a store made by an older build (or whose ``index/``
was deleted) has none, and readers fall back to reading every record until
``agl check --fix`` has rebuilt the index from the records and written it.

**Staleness.** A process that dies between creating a revision and appending its
line leaves that rollout's entry one revision behind until the rollout's next
revision or ``agl check --fix``. Readers re-check each rollout they return on its
record, so a stale entry can make a listing late (a rollout missing from a status
it has just entered), never wrong. Counts (``statistics``, and ``total`` of a
page beyond what was read) come from the index and share that lateness.

**Repair.** ``agl check`` compares the index with the records. Entries behind
their record are fixed by appending the record's entry from the checking process;
entries ahead of their record (records restored from an older copy), entries of
rollouts that do not exist and corrupt lines cannot be outvoted by appending, so
``--fix`` then deletes the index and rebuilds it from the records.

**Removal.** ``agl prune`` (:mod:`store_fs._disk.removal`) appends a *tombstone* for each
rollout it removed: a line whose status is ``pruned``, one revision past the record's last
(``attempts`` 0). Entries are ordered by ``(start_time, rev)``, so the tombstone outvotes every
line of the removed rollout, in any order, and a rollout created later under the same id (an
idempotency key used again) starts later and outvotes the tombstone. Readers keep tombstones in
the merged view but never list, count or return them.

**Compaction.** Each process that ever wrote a revision leaves one file; the logs
of exited writers are concatenated into segments (:mod:`store_fs._disk.log_segments`,
:mod:`store_fs._disk.log_compaction`), which readers read like any log. Compaction also
writes a snapshot (:mod:`store_fs._disk.index_snapshot`): the merged view at a position, by
status. A cold view starts from it and merges only the sections a query needs, so a
selective listing reads the lines of its status and those written since the snapshot. The
``after_refresh`` hook reports logs met and lines parsed, so the store compacts by itself
when either grows too large.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, get_args

from store_fs._disk import codec, fsio, log_segments
from store_fs._disk.context import Context
from store_fs._disk.ids import ROLLOUT_ID_RE
from store_fs._disk.index_snapshot import Snapshot
from store_fs._disk.layout import Layout
from store_fs._disk.rollout_history import RolloutRecord
from store_fs.models import RolloutStatus

__all__ = [
    "LATE_SPANS",
    "PRUNED",
    "BadIndexLine",
    "Entry",
    "IndexView",
    "RolloutIndex",
    "entry_of",
    "ordered",
    "parse_entry",
    "publish_marker",
    "tombstone",
]

log = logging.getLogger(__name__)

#: The status of a tombstone: the rollout was removed (``agl prune``); see "Removal" above.
PRUNED = "pruned"
_STATUSES = frozenset(get_args(RolloutStatus)) | {PRUNED}


class Entry(NamedTuple):
    """What the index knows of one rollout at one revision."""

    rollout_id: str
    rev: int
    status: str
    start_time: float
    attempts: int


def entry_of(rev: int, record: RolloutRecord) -> Entry:
    return Entry(record.rollout_id, rev, record.status, record.start_time, len(record.attempts))


def tombstone(rollout_id: str, last_rev: int, start_time: float) -> Entry:
    """The entry saying that the rollout whose newest revision was ``last_rev`` is gone."""
    return Entry(rollout_id, last_rev + 1, PRUNED, start_time, 0)


def _order(entry: Entry) -> tuple[float, int]:
    # Revisions of one rollout share its start_time; a rollout re-created under a removed
    # rollout's id (same idempotency key) starts later, so its lines win over the old ones.
    return (entry.start_time, entry.rev)


def _line(entry: Entry) -> bytes:
    return codec.dumps_line(entry._asdict())


#: The key marking a line that announces spans stored after the rollout finished (readers of
#: the index as a whole take it as any line; :mod:`store_fs._disk.index_cursor` reports the
#: rollout again).
LATE_SPANS = "late_spans"


def parse_entry(row: Any) -> Entry | None:
    """The entry a parsed line describes, or None if it is not a valid index line."""
    if not isinstance(row, dict):
        return None
    rid, rev, status = row.get("rollout_id"), row.get("rev"), row.get("status")
    start, attempts = row.get("start_time"), row.get("attempts")
    if not (
        isinstance(rid, str)
        and ROLLOUT_ID_RE.fullmatch(rid)  # index lines become paths: validate like any id
        and type(rev) is int
        and rev >= 1
        and status in _STATUSES
        and type(start) in (int, float)
        and type(attempts) is int
        and attempts >= 0
    ):
        return None
    return Entry(rid, rev, status, float(start), attempts)  # type: ignore[arg-type]


#: Index bytes parsed at once (cut at a newline).
_SLICE_BYTES = 1 << 20


@dataclass(frozen=True)
class BadIndexLine:
    path: Path
    offset: int
    reason: str


#: The logs of ``index/rollouts/``: ``<writer>.jsonl`` and segments (:mod:`store_fs._disk.log_segments`).
INDEX_LOGS = log_segments.Kind(prefix="")


@dataclass
class IndexView:
    """One reader's merged state of the logs (per process; ``check`` loads its own)."""

    files: log_segments.Position = field(default_factory=dict)
    entries: dict[str, Entry] = field(default_factory=dict)
    by_status: dict[str, dict[str, Entry]] = field(default_factory=dict)
    attempts: int = 0
    bad: list[BadIndexLine] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: The snapshot this view started from, while some of its sections are not merged yet.
    snapshot: Snapshot | None = None
    #: Index lines parsed from the logs (not from a snapshot) since the count was last taken.
    parsed_lines: int = 0

    def reset(self) -> None:
        self.files.clear()
        self.entries.clear()
        self.by_status.clear()
        self.attempts = 0
        self.bad.clear()
        self._drop_snapshot()

    def _drop_snapshot(self) -> None:
        if self.snapshot is not None:
            self.snapshot.close()
            self.snapshot = None

    def merge_sections(self, statuses: Collection[str] | None = None) -> None:
        """Merge the snapshot's sections of ``statuses`` (all when None) into the view."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        known = snapshot.sections
        wanted = list(known) if statuses is None else [s for s in statuses if s in known]
        for status in wanted:
            data, offset = snapshot.section(status), snapshot.offset_of(status)
            del snapshot.sections[status]
            if data:
                self._parse(snapshot.path, offset, data)
        if not snapshot.sections:
            self._drop_snapshot()

    def merge(self, entry: Entry) -> None:
        """Keep ``entry`` if it is the newest revision seen for its rollout."""
        current = self.entries.get(entry.rollout_id)
        if current is not None:
            if _order(entry) <= _order(current):
                return
            del self.by_status[current.status][entry.rollout_id]
            self.attempts -= current.attempts
        self.entries[entry.rollout_id] = entry
        self.by_status.setdefault(entry.status, {})[entry.rollout_id] = entry
        self.attempts += entry.attempts

    def refresh(self, directory: Path, *, partial: bool = False, from_snapshot: bool = True) -> None:
        """Read what the logs gained since the last refresh (callers hold ``lock``). A cold view
        starts from the directory's snapshot when there is one (``index_snapshot``) unless
        ``from_snapshot`` is False; with ``partial`` its sections are left for
        :meth:`merge_sections`, else all are merged."""
        if from_snapshot and not self.files and self.snapshot is None and not self.entries:
            snapshot = Snapshot.open(directory)
            if snapshot is not None and log_segments.position_holds(directory, INDEX_LOGS, snapshot.position):
                self.files.update(snapshot.position)
                self.snapshot = snapshot
            elif snapshot is not None:  # the logs were rebuilt, or the store copied: read them all
                snapshot.close()
        chunks, replaced = log_segments.read_new(directory, INDEX_LOGS, self.files)
        if replaced:  # files only grow or are absorbed by segments: the index was rebuilt
            self.reset()
            chunks, _ = log_segments.read_new(directory, INDEX_LOGS, self.files)
        for chunk in chunks:
            self.parsed_lines += chunk.data.count(b"\n")
            self._parse(directory / chunk.file, chunk.offset, chunk.data)
        if not partial:
            self.merge_sections()

    def lines_by_status(self) -> dict[str, list[bytes]]:
        """The newest line of every rollout, by status (what a snapshot holds; merge all first)."""
        out: dict[str, list[bytes]] = {}
        for status, entries in self.by_status.items():
            if entries:
                out[status] = [_line(e) for e in entries.values()]
        return out

    def writer_logs(self) -> int:
        """Per-writer logs (not segments) seen by the last refresh: what compaction would absorb."""
        return sum(1 for name in self.files if log_segments.SEGMENT_MARK not in name)

    def _parse(self, path: Path, base: int, chunk: bytes) -> None:
        """Merge the complete lines of ``chunk`` (which starts at byte ``base`` of ``path``), a
        slice of about ``_SLICE_BYTES`` at a time: a log of 100,000 rollouts parsed at once held
        200,000 dicts (a few hundred MB) just to merge them."""
        start = 0
        while start < len(chunk):
            end = chunk.rfind(b"\n", start, start + _SLICE_BYTES) + 1
            if end <= start:  # one line longer than a slice
                end = chunk.index(b"\n", start) + 1
            self._parse_slice(path, base + start, chunk[start:end])
            start = end

    def _parse_slice(self, path: Path, base: int, chunk: bytes) -> None:
        # Fast path: the slice as one JSON array (one parser call for thousands of lines).
        try:
            rows = codec.loads(b"[" + chunk[:-1].replace(b"\n", b",") + b"]")
        except codec.DecodeError:
            rows = None
        if isinstance(rows, list) and len(rows) == chunk.count(b"\n"):
            entries = [parse_entry(row) for row in rows]
            if None not in entries:
                for entry in entries:
                    self.merge(entry)  # type: ignore[arg-type]
                return
        offset = base  # slow path: line by line, to name the offsets of bad lines
        for raw in chunk.split(b"\n")[:-1]:
            if not raw.strip():  # a blank line (a torn line's terminator) describes nothing
                offset += len(raw) + 1
                continue
            try:
                entry = parse_entry(codec.loads(raw))
            except codec.DecodeError:
                entry = None
            if entry is None:
                self.bad.append(BadIndexLine(path, offset, "not a valid index line"))
                log.warning("%s: byte %d: not a valid rollout index line", path, offset)
            else:
                self.merge(entry)
            offset += len(raw) + 1

    def select(
        self,
        status_in: Sequence[Any] | None,
        rollout_id_in: Sequence[Any] | None,
        rollout_id_contains: Any,
        logic: str,
    ) -> list[Entry]:
        """Entries matching the filter exactly as :func:`store_fs._filtering.matches` would on records
        (merging only the snapshot sections the filter can match, see ``index_snapshot``)."""
        if self.snapshot is not None:
            wanted = _members(status_in) if status_in is not None else None
            if logic == "and" and isinstance(wanted, frozenset):
                self.merge_sections([s for s in wanted if isinstance(s, str)])
            else:
                self.merge_sections()
        tests: list[Callable[[Entry], bool]] = []
        base: Iterable[Entry] = self.entries.values()
        if status_in is not None:
            statuses = _members(status_in)
            if logic == "and" and isinstance(statuses, frozenset):
                # Only these buckets can match: skip the rest of the store entirely.
                base = [e for s in statuses if isinstance(s, str) for e in self.by_status.get(s, {}).values()]
            else:
                tests.append(lambda e: e.status in statuses)
        if rollout_id_in is not None:
            ids = _members(rollout_id_in)
            tests.append(lambda e: e.rollout_id in ids)
        if rollout_id_contains is not None:
            needle = rollout_id_contains
            tests.append(lambda e: isinstance(needle, str) and needle in e.rollout_id)
        if not tests:
            return [e for e in base if e.status != PRUNED]
        combine = all if logic == "and" else any
        return [e for e in base if e.status != PRUNED and combine(t(e) for t in tests)]

    def live_count(self) -> int:
        """Rollouts the view lists (tombstones left out)."""
        return len(self.entries) - len(self.by_status.get(PRUNED, ()))


def _members(values: Sequence[Any]) -> Collection[Any]:
    """``values`` as a set when hashable (fast ``in``), else as the list ``matches`` would use."""
    try:
        return frozenset(values)
    except TypeError:
        return list(values)


def ordered(entries: list[Entry], sort_by: str | None, descending: bool, need: int | None) -> Iterator[Entry]:
    """``entries`` in the order ``query_rollouts`` returns them, for ``sort_by`` None,
    ``"start_time"`` or ``"rollout_id"``: the default order is oldest first
    (start_time, rollout_id), and a sort is stable over it. With ``need``, only about
    the first ``need`` are sorted eagerly; the rest follow on demand."""
    if sort_by == "rollout_id":
        key: Callable[[Entry], Any] = lambda e: e.rollout_id  # noqa: E731 - ids are unique
        pick = heapq.nlargest if descending else heapq.nsmallest
    elif sort_by == "start_time" and descending:
        key, pick = (lambda e: (-e.start_time, e.rollout_id)), heapq.nsmallest
    else:
        key, pick = (lambda e: (e.start_time, e.rollout_id)), heapq.nsmallest
    if need is not None and need * 4 < len(entries):
        head = pick(need, entries, key=key)
        yield from head
        if len(head) == len(entries):
            return
        rest = sorted(entries, key=key, reverse=pick is heapq.nlargest)
        yield from rest[len(head) :]
        return
    yield from sorted(entries, key=key, reverse=pick is heapq.nlargest)


def publish_marker(layout: Layout, reason: str, *, now: float, durable: bool = False) -> None:
    """Write ``complete.json``: from now on readers trust the index to list every rollout."""
    layout.rollout_index.mkdir(parents=True, exist_ok=True)
    body = {"complete": True, "reason": reason, "time": now, "by": fsio.writer_tag()}
    fsio.publish(layout.rollout_index_marker, codec.dumps_record(body), durable=durable)


# On a network filesystem, how long an open index log is trusted to still be the index's
# before ``fstat`` asks whether it was deleted: by ``rm -r index``, which takes the completeness
# marker too (readers then scan the records, so a line lost meanwhile costs nothing), or by
# ``check --fix``, which runs on a quiet store. Asking on every append cost one round trip to
# the NFS server per revision (benchmarks/bench_nfs.py); on a local disk it costs nothing, so it
# is asked every time.
_RECHECK_SECONDS = 1.0


class _Writer:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.checked = 0.0  # monotonic time ``fd`` was last known to be linked
        self.lock = threading.Lock()


class RolloutIndex:
    """Appends this process's index lines and answers from its merged view of all logs."""

    def __init__(self, ctx: Context, *, after_refresh: Callable[[int, int], None] | None = None) -> None:
        """``after_refresh(writer_logs, lines)`` is called after each refresh with the number of
        per-writer logs met and of lines parsed since the last call (the store starts compaction
        with it when there are too many of either)."""
        self._ctx = ctx
        self._dir = ctx.layout.rollout_index
        self._after_refresh_hook = after_refresh
        # .appended: None outside a one_sync() block; inside it, whether a line was appended.
        self._batch = threading.local()

    # -- writing -------------------------------------------------------------------
    def record(self, rev: int, record: RolloutRecord) -> None:
        """The record store's observer: index revision ``rev`` of ``record``, which is written.

        A failure is logged, not raised: the revision is already the truth, and the
        entry is only stale until the next revision or ``agl check --fix``.
        """
        try:
            self.append([entry_of(rev, record)])
        except OSError as err:
            log.warning("rollout index not updated for %s revision %d: %s", record.rollout_id, rev, err)

    def announce_late_spans(self, rev: int, record: RolloutRecord) -> None:
        """Say that spans were stored after ``record`` (revision ``rev``, finished) finished:
        its line again, marked :data:`LATE_SPANS`. Logged, not raised, on failure, as
        :meth:`record`."""
        line = codec.dumps_line({**entry_of(rev, record)._asdict(), LATE_SPANS: True})
        try:
            self._append_bytes(line)
        except OSError as err:
            log.warning("late spans of %s not announced in the rollout index: %s", record.rollout_id, err)

    def append(self, entries: Iterable[Entry]) -> None:
        """Append lines to this process's log in one write (``check`` repairs with this too)."""
        data = b"".join(_line(e) for e in entries)
        if data:
            self._append_bytes(data)

    def _append_bytes(self, data: bytes) -> None:
        holder: _Writer = self._ctx.local("rollout-index-writer", _Writer)
        with holder.lock:
            for retry in (False, True):
                try:
                    fsio.append_own(self._open(holder), data)
                    break
                except OSError as err:
                    # Deleted under us (ENOENT, or ESTALE over NFS): the index was reset.
                    if retry or err.errno not in (errno.ENOENT, errno.ESTALE):
                        raise
                    self._drop(holder)
        if self._ctx.durable:
            if getattr(self._batch, "appended", None) is not None:
                self._batch.appended = True  # synced once when the one_sync() block ends
            else:
                # Outside the lock, shared with the threads appending at the same time.
                fsio.sync_data(self.log_path())

    @contextmanager
    def one_sync(self) -> Iterator[None]:
        """Inside the block, this thread's lines are not synced one by one: the log is synced
        once when the block ends, if a line was appended (a batch's revisions). A failure of
        that sync is logged, not raised, as :meth:`record` does: the revisions are the truth,
        and their entries are only stale until ``agl check --fix``."""
        if getattr(self._batch, "appended", None) is not None:
            raise RuntimeError("one_sync blocks do not nest")
        self._batch.appended = False
        try:
            yield
        finally:
            appended, self._batch.appended = self._batch.appended, None
            if appended:
                try:
                    fsio.sync_data(self.log_path())
                except OSError as err:
                    log.warning("rollout index log %s not synced: %s", self.log_path(), err)

    def _open(self, holder: _Writer) -> int:
        now = time.monotonic()  # the real clock: a test's frozen clock must not freeze the check
        if holder.fd is not None:
            if self._ctx.shared_fs and now - holder.checked < _RECHECK_SECONDS:
                return holder.fd
            if os.fstat(holder.fd).st_nlink > 0:
                holder.checked = now
                return holder.fd
        self._drop(holder)  # our file was deleted: appending to it would reach nobody
        path = self.log_path()
        fd = fsio.open_making_dirs(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, durable=self._ctx.durable)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A dead process with our pid left a torn last line: end it, so that it
            # reads as one bad line instead of swallowing our first line.
            fsio.append(fd, b"\n")
        holder.fd, holder.checked = fd, now
        return fd

    def log_path(self) -> Path:
        """This process's log."""
        return self._dir / f"{self._ctx.log_writer}.jsonl"

    @staticmethod
    def _drop(holder: _Writer) -> None:
        if holder.fd is not None:
            try:
                os.close(holder.fd)
            except OSError:
                pass
            holder.fd = None

    def close(self) -> None:
        holder: _Writer = self._ctx.local("rollout-index-writer", _Writer)
        with holder.lock:
            self._drop(holder)

    # -- completeness --------------------------------------------------------------
    def is_complete(self) -> bool:
        return self._ctx.layout.rollout_index_marker.exists()

    def mark_complete(self, reason: str) -> None:
        """Declare that every rollout has a line (only after making it so)."""
        publish_marker(self._ctx.layout, reason, now=self._ctx.clock.time(), durable=self._ctx.durable)

    def remove(self) -> None:
        """Delete the whole index (``check --fix`` rebuilds it; run on a quiet store)."""
        self.close()  # this process's next line goes to the new index at once
        aside = self._dir.with_name(f".rollouts-{secrets.token_hex(4)}.old")
        try:
            os.rename(self._dir, aside)  # one step: no reader sees a half-deleted index
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    # -- reading -------------------------------------------------------------------
    def _view(self) -> IndexView:
        view: IndexView = self._ctx.local("rollout-index-view", IndexView)
        return view

    @staticmethod
    def _counts(view: IndexView) -> tuple[int, int]:
        """(per-writer logs, lines parsed since last asked), for the hook (hold ``view.lock``)."""
        lines, view.parsed_lines = view.parsed_lines, 0
        return view.writer_logs(), lines

    def _after_refresh(self, counts: tuple[int, int]) -> None:
        # Called without the view's lock: the hook may compact, and other threads may query.
        if self._after_refresh_hook is not None:
            self._after_refresh_hook(*counts)

    def load(self) -> IndexView:
        """A fresh view read from every log from the start (for ``check``): not from the snapshot,
        which holds only the lines that parsed, so a bad line behind it would go unreported."""
        view = IndexView()
        view.refresh(self._dir, from_snapshot=False)
        return view

    def select(
        self,
        *,
        status_in: Sequence[Any] | None,
        rollout_id_in: Sequence[Any] | None,
        rollout_id_contains: Any,
        logic: str,
    ) -> list[Entry] | None:
        """Entries matching the filter (see :meth:`IndexView.select`), or None when the
        index is not complete and the caller must read the records instead."""
        view = self._view()
        with view.lock:
            view.refresh(self._dir, partial=True)
            seen = self._counts(view)
            # Checked after the refresh: an index deleted meanwhile reads as incomplete, not empty.
            selected = None
            if self.is_complete():
                selected = view.select(status_in, rollout_id_in, rollout_id_contains, logic)
        self._after_refresh(seen)
        return selected

    def lookup(self, rollout_ids: Iterable[str]) -> dict[str, Entry] | None:
        """The newest entry of each of ``rollout_ids`` that has one (one refresh, then dict
        look-ups), or None when the index is not complete."""
        view = self._view()
        with view.lock:
            view.refresh(self._dir)
            seen = self._counts(view)
            entries = view.entries
            found = (
                {
                    rid: entry
                    for rid in rollout_ids
                    if (entry := entries.get(rid)) is not None and entry.status != PRUNED
                }
                if self.is_complete()
                else None
            )
        self._after_refresh(seen)
        return found

    def finished_among(self, rollout_ids: set[str], statuses: Collection[str]) -> dict[str, Entry] | None:
        """The newest entries of ``rollout_ids`` whose status is one of ``statuses`` (one
        refresh, then per status a set intersection that walks the smaller side), or None when
        the index is not complete. A waiter asks this at every change it hears of: unlike
        :meth:`lookup`, it costs little when few of the ids it waits for have finished."""
        view = self._view()
        with view.lock:
            # Merging only the asked-for sections of a snapshot is enough: a rollout has one
            # entry in a snapshot, and every log line past it is newer than that entry.
            view.refresh(self._dir, partial=True)
            view.merge_sections(statuses)
            seen = self._counts(view)
            found: dict[str, Entry] | None = None
            if self.is_complete():
                found = {}
                for status in statuses:
                    section = view.by_status.get(status)
                    if section:
                        found.update((rid, section[rid]) for rid in section.keys() & rollout_ids)
        self._after_refresh(seen)
        return found

    def counts(self) -> tuple[int, int, list[str]] | None:
        """(rollouts, attempts, ids of rollouts with attempts), or None if not complete."""
        view = self._view()
        with view.lock:
            view.refresh(self._dir)
            seen = self._counts(view)
            complete = self.is_complete()
            if complete:
                attempted = [e.rollout_id for e in view.entries.values() if e.attempts]
                counted = view.live_count(), view.attempts, attempted
        self._after_refresh(seen)
        return counted if complete else None
