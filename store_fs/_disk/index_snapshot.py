"""``index/rollouts/snapshot.json``: the merged rollout index at one position, by status.

The index logs hold one line per revision, so a process that lists rollouts by status for the
first time parses every line ever written: about a second for 100,000 rollouts, to return the
ten that failed. The snapshot is that merge done once, by compaction
(:mod:`store_fs._disk.log_compaction`): the newest line of every rollout (tombstones included),
grouped by status, and the position in the logs it reflects::

    {"agl_index_snapshot": 1, "time": 1796560623.6, "by": "vm-18213",
     "position": {"@seg-...jsonl": [2179617, 41234567], "vm-18219.3fa2c1.jsonl": [2179912, 4410]},
     "sections": {"failed": [0, 1040, 10], "succeeded": [1040, 10431210, 99990]}}
    {"rollout_id": "ro-...", "rev": 4, "status": "failed", ...}
    ...

Sections are ``[start, end, count]``, byte offsets after the header line. A reader adopts the
position (:meth:`IndexView.refresh <store_fs._disk.rollout_index.IndexView.refresh>`), reads the
logs on from it like any incremental reader (compactions since the snapshot are carried across by
:func:`~store_fs._disk.log_segments.read_new`), and merges a status's section only when a query
asks for that status: merging keeps the highest revision, so the order does not matter. A
rollout whose newer line came after the snapshot is thus never listed under its old status; one
whose snapshot line is newer than a late line after the position (a writer that stalled between
a revision and its index line) can be a candidate of the wrong status until its section is
merged, and queries check every candidate on its record anyway. Counts merge every section.

The file is replaced whole (temporary file, then rename); a reader keeps its descriptor, so a
replacement never mixes two snapshots. It is a cache: deleting it costs the next cold reader a
full parse, and ``agl check --fix`` deletes it with the rest of the index when it rebuilds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from store_fs._disk import codec, fsio
from store_fs._disk.log_segments import Position

__all__ = ["SNAPSHOT_NAME", "Snapshot", "write_snapshot"]

SNAPSHOT_NAME = "snapshot.json"
_HEADER_KEY = "agl_index_snapshot"
_FORMAT = 1


class Snapshot:
    """An open snapshot: its position, and its sections read on demand."""

    def __init__(
        self, path: Path, fd: int, header_end: int, position: Position, sections: dict[str, tuple[int, int]]
    ):
        self.path = path
        self._fd: int | None = fd
        self._header_end = header_end
        self.position = position
        self.sections = sections

    @classmethod
    def open(cls, directory: Path) -> Snapshot | None:
        """The directory's snapshot, or None when there is none or it cannot be read (a reader
        then reads the logs from the start, as without one)."""
        try:
            fd, _st = fsio.open_to_read(directory / SNAPSHOT_NAME)
        except OSError:
            return None
        try:
            header = _read_header(fd)
        except (OSError, ValueError):
            os.close(fd)
            return None
        if header is None:
            os.close(fd)
            return None
        header_end, position, sections = header
        return cls(directory / SNAPSHOT_NAME, fd, header_end, position, sections)

    def offset_of(self, status: str) -> int:
        """Where the section of ``status`` starts in the file."""
        return self._header_end + self.sections[status][0]

    def section(self, status: str) -> bytes:
        """The lines of ``status`` (complete lines; empty when the snapshot has none)."""
        span = self.sections.get(status)
        if span is None or self._fd is None:
            return b""
        start, end = span
        return os.pread(self._fd, end - start, self._header_end + start)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_header(fd: int) -> tuple[int, Position, dict[str, tuple[int, int]]] | None:
    chunk = b""
    while b"\n" not in chunk:
        more = os.pread(fd, 1 << 16, len(chunk))
        if not more:
            return None
        chunk += more
    line = chunk[: chunk.index(b"\n") + 1]
    try:
        body = codec.loads(line)
    except codec.DecodeError:
        return None
    if not isinstance(body, dict) or body.get(_HEADER_KEY) != _FORMAT:
        return None
    raw_position, raw_sections = body.get("position"), body.get("sections")
    if not isinstance(raw_position, dict) or not isinstance(raw_sections, dict):
        return None
    position: Position = {}
    for name, value in raw_position.items():
        if not _counts(value, 2):
            return None
        position[str(name)] = (value[0], value[1])
    sections: dict[str, tuple[int, int]] = {}
    for status, value in raw_sections.items():
        if not _counts(value, 3):
            return None
        sections[str(status)] = (value[0], value[1])
    return len(line), position, sections


def _counts(value: object, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(type(v) is int and v >= 0 for v in value)


def write_snapshot(
    directory: Path,
    position: Position,
    lines_by_status: Mapping[str, list[bytes]],
    *,
    writer: str,
    durable: bool,
) -> None:
    """Publish a snapshot of ``position`` holding ``lines_by_status`` (complete index lines)."""
    sections: dict[str, list[int]] = {}
    body = bytearray()
    for status in sorted(lines_by_status):
        lines = lines_by_status[status]
        start = len(body)
        body += b"".join(lines)
        sections[status] = [start, len(body), len(lines)]
    header = {
        _HEADER_KEY: _FORMAT,
        "time": time.time(),
        "by": writer,
        "position": {name: [ino, offset] for name, (ino, offset) in sorted(position.items())},
        "sections": sections,
    }
    fsio.publish(directory / SNAPSHOT_NAME, codec.dumps_line(header) + bytes(body), durable=durable)
