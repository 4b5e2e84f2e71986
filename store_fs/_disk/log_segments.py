"""Segments: the per-writer logs of exited processes, concatenated into one file.

The rollout index (``index/rollouts/<writer>.jsonl``), the change feed (``events/<writer>.jsonl``)
and the worker logs (``workers/<id>/log.<writer>.jsonl``) are kept one file per writing process,
so that appending needs no lock. A shell loop of one-shot ``agl`` calls therefore leaves a file
per kind per call, and every reader lists and opens all of them. Compaction
(:func:`compact_directory`, run under the maintenance lock) bounds that: it copies the logs of
writers that have exited into one *segment* and then removes them.

**A segment** is ``<prefix>@seg-<UTC µs>-<writer><suffix>`` (``@`` never occurs in a writer's
name). Its first line is a header, then comes the *payload*, complete lines only::

    {"agl_segment": 1, "covers": [{"name": "h-12.jsonl", "ino": 1834, "start": 0, "end": 311, "at": 0}, ...]}

A cover says: bytes ``[start, end)`` of the file ``name`` whose inode was ``ino`` are accounted
for, copied at payload offset ``at`` (a dead writer's torn last line is counted, not copied; ``at``
is null when the payload is a fold of its inputs rather than a copy, as for worker logs, whose
readers fold anyway). Covers are flattened: a segment that absorbs another lists the other and
everything the other listed, so one header answers for every file absorbed recently.

**Reading.** A reader lists the directory (:func:`scan`) and reads each segment that no other
segment covers (from the end of its header), and each plain log from the end of what the covers
say of it when its inode matches (or its name, for names never reused: :meth:`Kind.unique`),
else from byte 0. So the order of compaction's steps (publish
the segment by rename, then remove its inputs) never shows a line twice or hides one, also when
compaction is killed between them: the inputs left behind are skipped up to what was copied, and
the next compaction removes them. A file that vanishes between a reader's listing and its read was
absorbed: the reader lists again (:func:`read_new` does).

Incremental readers keep, per file name, ``(inode, offset)``. :func:`read_new` carries such a
position across compactions: a segment it has not met is read except for the ranges its covers
map from files the position had already read. The rollout index cursor and ``agl events`` rely
on that to report each line once.

**Whose logs.** Only logs whose writer is gone are taken (:func:`writer_gone`): on this host, no
process has its pid; written from another host, untouched for ``idle_seconds`` (an hour by
default: a live writer on another host cannot be asked). Bytes after a dead writer's last newline
(it was killed mid-line) are handed to ``on_torn`` (the maintenance code quarantines them) and not
copied. Writers name these logs after their process instance (``fsio.log_tag``), so a removed
log's name never comes back with a recycled inode; an input that grew after it was copied
anyway (an older build reusing the pid) is left in place, and readers read it on from the
copied end. Covers of files that are gone are dropped a week after they were absorbed
(``COVER_RETENTION_SECONDS``), so headers do not grow with every process that ever wrote.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store_fs._disk import codec, fsio

__all__ = [
    "Chunk",
    "CompactionResult",
    "Cover",
    "Kind",
    "Listing",
    "LogFile",
    "Segment",
    "compact_directory",
    "end_position",
    "position_holds",
    "read_all",
    "read_new",
    "scan",
    "writer_gone",
]

SEGMENT_MARK = "@seg-"
_HEADER_KEY = "agl_segment"
_FORMAT = 1
#: Pauses before each listing when files vanish under a reader (a compaction removed them) or
#: seem replaced: an NFS client may list a directory from its cache for a second or so, without
#: the segment that absorbed them. About 1.5 s in all before a reader concludes the logs were
#: rebuilt (or gives up on a compaction that keeps removing files).
_RELIST_PAUSES = (0.0, 0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
#: Covers of removed files are carried into new segments for at least this long after the file
#: was absorbed: positions saved before that can still be carried across (older ones read on
#: from the end of the logs). Without a limit every header would list every file ever written.
COVER_RETENTION_SECONDS = 7 * 86400.0


@dataclass(frozen=True)
class Kind:
    """Which files of a directory are the logs: ``<prefix><writer><suffix>``."""

    prefix: str
    suffix: str = ".jsonl"

    def matches(self, name: str) -> bool:
        return name.startswith(self.prefix) and name.endswith(self.suffix) and not name.startswith(".")

    def is_segment(self, name: str) -> bool:
        return name.startswith(self.prefix + SEGMENT_MARK)

    def writer(self, name: str) -> str:
        return name[len(self.prefix) : len(name) - len(self.suffix)]

    def unique(self, name: str) -> bool:
        """Whether no other file will ever have this name: a segment, or a log named after its
        process instance (``<host>-<pid>.<instance>``). Covers then hold by name, even when the
        inode changed (a copied or restored store); older ``<host>-<pid>`` logs need the inode."""
        return self.is_segment(name) or "." in self.writer(name)

    def segment_name(self, writer: str) -> str:
        return f"{self.prefix}{SEGMENT_MARK}{time.time_ns() // 1000:017d}-{writer}{self.suffix}"


@dataclass(frozen=True)
class Cover:
    """Bytes ``[start, end)`` of file ``name`` (inode ``ino``) are at payload offset ``at``."""

    name: str
    ino: int
    start: int
    end: int
    at: int | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ino": self.ino, "start": self.start, "end": self.end, "at": self.at}


@dataclass(frozen=True)
class Segment:
    header_end: int  # the payload starts here
    covers: tuple[Cover, ...]
    folded: bool
    time: float  # when it was written (wall clock of its writer)


@dataclass(frozen=True)
class LogFile:
    name: str
    ino: int
    size: int
    mtime: float
    segment: Segment | None  # None for a plain per-writer log


@dataclass
class Listing:
    """One look at a directory of logs, with what the segments in it cover."""

    directory: Path
    kind: Kind
    files: dict[str, LogFile] = field(default_factory=dict)
    #: (name, ino) -> the end of the bytes of that file some segment holds
    covered: dict[tuple[str, int], int] = field(default_factory=dict)
    #: name -> the same, for names that are never reused (:meth:`Kind.unique`)
    covered_names: dict[str, int] = field(default_factory=dict)
    #: names of logs that are no regular file (a directory, a symbolic link loop): left out of
    #: every read, reported by ``agl check``
    not_files: list[str] = field(default_factory=list)

    def covered_end(self, name: str, ino: int) -> int | None:
        """The end of the bytes of file ``name`` (inode ``ino``) that a segment holds, if any."""
        end = self.covered.get((name, ino))
        if end is None and self.kind.unique(name):
            end = self.covered_names.get(name)
        return end

    def live_segments(self) -> list[LogFile]:
        """Segments no other segment has absorbed, oldest first."""
        segments = (f for f in self.files.values() if f.segment is not None)
        return sorted((f for f in segments if self.covered_end(f.name, f.ino) is None), key=lambda f: f.name)

    def plain(self) -> list[LogFile]:
        return sorted((f for f in self.files.values() if f.segment is None), key=lambda f: f.name)

    def start_of(self, log: LogFile) -> int:
        """Where reading ``log`` begins: past its header, or past what segments hold of it."""
        if log.segment is not None:
            return log.segment.header_end
        return self.covered_end(log.name, log.ino) or 0


@dataclass(frozen=True)
class Chunk:
    """Complete lines: ``data`` was read at byte ``offset`` of file ``file``; ``source`` is the
    writer's file the lines were first written to (for a copy in a segment, the file copied)."""

    source: str
    data: bytes
    file: str
    offset: int


class _Vanished(Exception):
    """A listed file was gone when read: it was absorbed; list again."""


def _gone(err: OSError) -> bool:
    """A file that is no longer there: ENOENT, or ESTALE from an NFS client whose handle for it
    outlived its removal on another host."""
    return isinstance(err, FileNotFoundError) or err.errno == errno.ESTALE


# -- headers -----------------------------------------------------------------------------

# Segments never change, so a header is parsed once per process: (path, ino) -> Segment.
_headers: dict[tuple[str, int], Segment | None] = {}
_HEADERS_KEPT = 4096


def _read_header(path: Path, ino: int) -> Segment | None:
    key = (str(path), ino)
    if key in _headers:
        return _headers[key]
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_ino != ino:
            raise _Vanished
        line = f.readline()
    segment = _parse_header(line)
    if len(_headers) >= _HEADERS_KEPT:
        _headers.clear()
    _headers[key] = segment
    return segment


def _parse_header(line: bytes) -> Segment | None:
    """The header line's content, or None when it is not one (an unreadable segment is then read
    as a plain log: its lines are not lost, and ``agl check`` shows the bad first line)."""
    if not line.endswith(b"\n"):
        return None
    try:
        body = codec.loads(line)
    except codec.DecodeError:
        return None
    if not isinstance(body, dict) or body.get(_HEADER_KEY) != _FORMAT:
        return None
    covers = []
    for c in body.get("covers") or ():
        try:
            at = c["at"]
            cover = Cover(
                str(c["name"]), int(c["ino"]), int(c["start"]), int(c["end"]), None if at is None else int(at)
            )
        except (KeyError, TypeError, ValueError):
            return None
        covers.append(cover)
    made = body.get("time")
    made = made if isinstance(made, (int, float)) else 0.0
    return Segment(len(line), tuple(covers), bool(body.get("folded")), made)


# -- listing -----------------------------------------------------------------------------


def scan(directory: Path, kind: Kind) -> Listing:
    """The logs of ``directory`` now (an absent directory has none). A file absorbed by a
    compaction (on any host) while it was listed makes it list again."""
    for pause in _RELIST_PAUSES:
        time.sleep(pause)
        try:
            return _scan_once(directory, kind)
        except _Vanished:
            continue
    raise OSError(f"{directory}: logs kept vanishing while listed (is a compaction looping?)")


def _scan_once(directory: Path, kind: Kind) -> Listing:
    listing = Listing(directory, kind)
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if kind.matches(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return listing
    for entry in entries:
        try:
            st = entry.stat()
            if not stat.S_ISREG(st.st_mode):
                listing.not_files.append(entry.name)
                continue
            segment = _read_header(directory / entry.name, st.st_ino) if kind.is_segment(entry.name) else None
        except OSError as err:
            if fsio.broken_name(err, entry.path) is None:
                if _gone(err):
                    raise _Vanished from None  # absorbed since the listing: its segment may be new
                raise
            listing.not_files.append(entry.name)  # a symbolic link loop, or to nothing
            continue
        listing.files[entry.name] = LogFile(entry.name, st.st_ino, st.st_size, st.st_mtime, segment)
    for log in listing.files.values():
        if log.segment is not None:
            for c in log.segment.covers:
                key = (c.name, c.ino)
                listing.covered[key] = max(listing.covered.get(key, 0), c.end)
                listing.covered_names[c.name] = max(listing.covered_names.get(c.name, 0), c.end)
    return listing


# -- reading -----------------------------------------------------------------------------

Position = dict[str, tuple[int, int]]  # file name -> (inode, bytes read)


def read_all(directory: Path, kind: Kind) -> list[Chunk]:
    """Every complete line of every log, each once."""
    chunks, _ = read_new(directory, kind, {})
    return chunks


def read_new(directory: Path, kind: Kind, position: Position) -> tuple[list[Chunk], bool]:
    """The complete lines appended since ``position``, which is advanced; and whether the logs
    were replaced rather than grown (a file the position knows vanished, shrank or changed inode
    with no segment holding it: the index was rebuilt). When that is so, nothing is read and the
    position is left alone: the caller decides (start over, or go on from the end)."""
    replaced = False
    for pause in _RELIST_PAUSES:
        time.sleep(pause)
        try:
            listing = scan(directory, kind)
            _clamp_cut_short(listing, position)
            replaced = _replaced(listing, position)
            if replaced:
                continue  # or a listing from a cache, without the new segment: look again
            advanced: Position = {}
            chunks = _read_listing(listing, position, advanced)
        except _Vanished:
            continue
        position.clear()
        position.update(advanced)
        return chunks, False
    if replaced:
        return [], True
    raise OSError(f"{directory}: logs kept vanishing while read (is a compaction looping?)")


def end_position(directory: Path, kind: Kind) -> Position:
    """The position after every complete line written so far (nothing is read but the last
    block of each per-writer log, to find its last newline)."""
    position: Position = {}
    listing = scan(directory, kind)
    for log in listing.files.values():
        if log.segment is not None:
            position[log.name] = (log.ino, log.size)
        else:
            end = _complete_end(directory / log.name, log.size)
            position[log.name] = (log.ino, max(listing.start_of(log), end))
    return position


def _complete_end(path: Path, size: int) -> int:
    """Offset just past the last newline within the first ``size`` bytes (0 if none or gone)."""
    try:
        with open(path, "rb") as f:
            end = size
            while end > 0:
                start = max(0, end - 4096)
                f.seek(start)
                at = f.read(end - start).rfind(b"\n")
                if at >= 0:
                    return start + at + 1
                end = start
    except FileNotFoundError:
        pass
    return 0


def position_holds(directory: Path, kind: Kind, position: Position) -> bool:
    """Whether reading on from ``position`` is possible now (one listing, no waiting): every file
    it names is there, or held by a segment. A saved position of a copied store does not hold."""
    return not _replaced(scan(directory, kind), position)


def _clamp_cut_short(listing: Listing, position: Position) -> None:
    """A plain log that kept its inode but is now shorter than what was read of it was cut
    short under the reader, not replaced: a power cut took back lines its writer had not synced
    (an unfinished ``enqueue_many_rollouts``' index lines, synced at the batch's end). It is
    read on from its last complete line, and every other log from where it was. Taken for a
    rebuild, every log was followed on from its end, and rollouts finished meanwhile, in other
    logs, were never delivered (found by an adversarial pass)."""
    for name, (ino, offset) in list(position.items()):
        log = listing.files.get(name)
        if log is not None and log.segment is None and log.ino == ino and log.size < offset:
            position[name] = (ino, _complete_end(listing.directory / name, log.size))


def _replaced(listing: Listing, position: Position) -> bool:
    return bool(replaced_names(listing, position))


def replaced_names(listing: Listing, position: Position) -> list[str]:
    """The logs ``position`` knows that vanished, shrank or changed inode, with no segment
    holding what was read of them."""
    out = []
    for name, (ino, offset) in position.items():
        log = listing.files.get(name)
        if log is not None and log.ino == ino and log.size >= offset:
            continue
        if listing.covered_end(name, ino) is not None:
            continue  # absorbed by a segment
        out.append(name)
    return out


def _read_listing(listing: Listing, position: Position, advanced: Position) -> list[Chunk]:
    chunks: list[Chunk] = []
    for log in listing.live_segments():
        assert log.segment is not None
        known = position.get(log.name)
        if known is not None and known[0] == log.ino:
            advanced[log.name] = known  # segments are read whole, once
            continue
        payload = _read_range(listing.directory / log.name, log.ino, log.segment.header_end, log.size)
        chunks.extend(_unread_pieces(log, payload, position))
        advanced[log.name] = (log.ino, log.size)
    for log in listing.plain():
        known = position.get(log.name)
        offset = known[1] if known is not None and known[0] == log.ino else 0
        offset = max(offset, listing.start_of(log))
        if log.size > offset:
            data = _read_range(listing.directory / log.name, log.ino, offset, log.size)
            end = data.rfind(b"\n") + 1  # bytes after the last newline are a write in progress
            if end:
                chunks.append(Chunk(log.name, data[:end], log.name, offset))
                offset += end
        advanced[log.name] = (log.ino, offset)
    return chunks


def _read_range(path: Path, ino: int, start: int, end: int) -> bytes:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_ino != ino:
                raise _Vanished
            f.seek(start)
            return f.read(end - start)
    except OSError as err:
        if _gone(err):
            raise _Vanished from None
        raise


def _unread_pieces(log: LogFile, payload: bytes, position: Position) -> list[Chunk]:
    """The parts of a segment's payload that ``position`` has not read yet, by source file."""
    assert log.segment is not None
    if log.segment.folded:
        return [Chunk(log.name, payload, log.name, log.segment.header_end)] if payload else []
    # Plain files' copies tile the payload (segments' own covers span them). A copy can be
    # shorter than its cover: a dead writer's torn last line is accounted for, not copied.
    covers = log.segment.covers
    sources = sorted(
        (i for i, c in enumerate(covers) if c.at is not None and SEGMENT_MARK not in c.name),
        key=lambda i: covers[i].at or 0,
    )
    copy_end: dict[int, int] = {}
    for n, i in enumerate(sources):
        c = covers[i]
        following = covers[sources[n + 1]].at if n + 1 < len(sources) else None
        copy_end[i] = min((c.at or 0) + c.end - c.start, len(payload) if following is None else following)
    read_before: list[tuple[int, int]] = []
    for i, c in enumerate(covers):
        known = position.get(c.name)
        if known is not None and known[0] == c.ino and c.at is not None and known[1] > c.start:
            hi = c.at + min(known[1], c.end) - c.start
            read_before.append((c.at, min(hi, copy_end.get(i, hi))))
    pieces: list[Chunk] = []
    for i in sources:
        c = covers[i]
        for lo, hi in _subtract(c.at or 0, copy_end[i], read_before):
            pieces.append(Chunk(c.name, payload[lo:hi], log.name, log.segment.header_end + lo))
    return [p for p in pieces if p.data]


def _subtract(start: int, end: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start, end)`` without the given ranges."""
    out = [(start, end)]
    for lo, hi in ranges:
        nxt = []
        for a, b in out:
            if hi <= a or lo >= b:
                nxt.append((a, b))
                continue
            if a < lo:
                nxt.append((a, lo))
            if hi < b:
                nxt.append((hi, b))
        out = nxt
    return [(a, b) for a, b in out if b > a]


# -- whose logs may be taken -------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def writer_gone(writer: str, mtime: float, *, now: float, idle_seconds: float) -> bool:
    """Whether the process that wrote ``<host>-<pid>[.<instance>]`` can no longer append: on this host, no
    process has that pid (a new process that gets it appends to a new file, or past what was
    copied); from another host, nothing written for ``idle_seconds`` (``now`` and ``mtime`` on
    the file server's clock)."""
    host, _, pid = writer.partition(".")[0].rpartition("-")  # <host>-<pid>[.<instance>]
    if host == fsio.host_tag() and pid.isdigit():
        return int(pid) != fsio.current_pid() and not _pid_alive(int(pid))
    return now - mtime >= idle_seconds


# -- compaction --------------------------------------------------------------------------


#: ``on_torn(path, bytes, offset)``: what to do with a dead writer's torn last line.
OnTorn = Callable[[Path, bytes, int], None]


@dataclass
class CompactionResult:
    inputs: int = 0  # files absorbed into the new segment
    removed: int = 0  # files removed (absorbed now or by an earlier, interrupted compaction)
    bytes: int = 0  # payload bytes of the new segment
    segment: str | None = None


def compact_directory(
    directory: Path,
    kind: Kind,
    *,
    take: Callable[[LogFile], bool],
    writer: str,
    durable: bool = False,
    max_segments: int = 8,
    fold: Callable[[bytes], bytes] | None = None,
    on_torn: OnTorn | None = None,
) -> CompactionResult:
    """Absorb the plain logs ``take`` accepts (their writers are gone) into a new segment, then
    remove them; also absorb the live segments when there would be more than ``max_segments``,
    and remove files an interrupted compaction absorbed but left. With ``fold`` the payload is
    ``fold(concatenated inputs)`` (a smaller equivalent for readers that fold; covers get no
    offsets). The caller holds the maintenance lock: two compactions of one directory at once
    could each absorb a file the other removes."""
    result = CompactionResult()
    listing = scan(directory, kind)
    _remove_leftovers(listing, take, result)
    inputs = [
        log
        for log in listing.plain()
        if (listing.covered_end(log.name, log.ino) or 0) < log.size
        if take(log)
    ]
    segments = listing.live_segments()
    if len(segments) + (1 if inputs else 0) > max_segments or (fold is not None and inputs and segments):
        absorbed_segments = segments
    else:
        absorbed_segments = []
    if not inputs and len(absorbed_segments) < 2:
        return result
    now = time.time()
    draft = _Draft()
    for log in absorbed_segments:
        draft.add_segment(listing, log, now)
    for log in inputs:
        draft.add_log(listing, log, on_torn)
    payload, covers, copied = draft.payload, draft.covers, draft.copied
    folded = fold is not None
    body = fold(bytes(payload)) if fold is not None else bytes(payload)
    if folded:
        covers = [Cover(c.name, c.ino, c.start, c.end, None) for c in covers]
    header = {
        _HEADER_KEY: _FORMAT,
        "folded": folded,
        "by": writer,
        "time": now,
        "covers": [c.to_json() for c in covers],
    }
    name = kind.segment_name(writer)
    fsio.publish(directory / name, codec.dumps_line(header) + body, durable=durable)
    result.segment, result.inputs, result.bytes = name, len(copied), len(body)
    for log, size in copied:
        result.removed += _remove_if_unchanged(directory / log.name, log.ino, size)
    if durable:
        fsio.fsync_dir(directory)
    return result


@dataclass
class _Draft:
    """A segment being put together: its payload, its covers, and the files it absorbs."""

    payload: bytearray = field(default_factory=bytearray)
    covers: list[Cover] = field(default_factory=list)
    copied: list[tuple[LogFile, int]] = field(default_factory=list)  # (file, its size when copied)

    def add_segment(self, listing: Listing, log: LogFile, now: float) -> None:
        assert log.segment is not None
        base = len(self.payload)
        self.payload += _read_range(listing.directory / log.name, log.ino, log.segment.header_end, log.size)
        recent = now - log.segment.time < COVER_RETENTION_SECONDS
        for c in log.segment.covers:
            present = listing.files.get(c.name)
            if not recent and (present is None or present.ino != c.ino):
                continue  # absorbed long ago and gone: see COVER_RETENTION_SECONDS
            self.covers.append(Cover(c.name, c.ino, c.start, c.end, None if c.at is None else base + c.at))
        self.covers.append(Cover(log.name, log.ino, log.segment.header_end, log.size, base))
        self.copied.append((log, log.size))

    def add_log(self, listing: Listing, log: LogFile, on_torn: OnTorn | None) -> None:
        start = listing.start_of(log)
        path = listing.directory / log.name
        data = _read_range(path, log.ino, start, log.size)
        end = data.rfind(b"\n") + 1
        if end < len(data) and on_torn is not None:
            on_torn(path, data[end:], start + end)
        # The cover takes the torn tail too (accounted for), the payload only complete lines.
        self.covers.append(Cover(log.name, log.ino, start, log.size, len(self.payload)))
        self.payload += data[:end]
        self.copied.append((log, log.size))


def _remove_leftovers(listing: Listing, take: Callable[[LogFile], bool], result: CompactionResult) -> None:
    """Remove what live segments already hold whole: absorbed segments, and plain logs that did
    not grow since they were copied (left by a compaction killed before its removals)."""
    for log in list(listing.files.values()):
        end = listing.covered_end(log.name, log.ino)
        if end is None or log.size > end or (log.segment is None and not take(log)):
            continue
        result.removed += _remove_if_unchanged(listing.directory / log.name, log.ino, log.size)
        del listing.files[log.name]


def _remove_if_unchanged(path: Path, ino: int, size: int) -> int:
    """Unlink ``path`` if it is still that inode at that size (1 if removed)."""
    try:
        st = os.lstat(path)
        if st.st_ino != ino or st.st_size != size:
            return 0  # grown or replaced since it was copied: readers read on from the copied end
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return 1
