"""Which rollouts finished since a saved position in the rollout index logs.

The rollout index (``index/rollouts/<writer>.jsonl``, :mod:`store_fs._disk.rollout_index`) gets
one line per revision of every rollout, appended right after the revision is made. A position is,
per log file, its inode and the byte offset read so far: reading on from it costs the new bytes
only, whatever the store's size, and a position can be saved and resumed by another process or
host (inode numbers are the file server's, the same on every NFS client).

A rollout *finished* at revision ``T`` when ``T`` is finished (succeeded, failed or cancelled) and
``T - 1`` is not (or ``T`` is its first revision). Lines are only hints of that: for each rollout
with a finished line among the new bytes, the record is read afresh and the run of finished
revisions ending at its newest one is walked back to its first revision ``T``; the rollout is
reported when a new line is that of ``T``. So each finishing is reported once, however many
revisions follow it (a metadata update) and in whatever order the logs of several writers are
read; a rollout that is retried and finishes again is reported again; one that is running again
is not reported until it finishes again. Spans stored after the rollout finished (a reward given
later by a grader) change the rows built from it, so they are announced by a line marked
``"late_spans": true`` naming the head revision (:meth:`RolloutIndex.announce_late_spans`),
written after the spans: a new such line naming ``T`` or later reports the rollout again. (A
span whose writer read the rollout as running, and which another process finished between that
read and the span's write, is not announced: a full read shows it.)

Compaction (:mod:`store_fs._disk.log_segments`) moves lines into segments; a position is carried
across it, so no line is read twice or skipped. If the logs were rebuilt (``agl check --fix``
replaced them: a known file vanished, was replaced, or shrank, and no segment holds it), positions
cannot be carried over: reading restarts at the end of the new logs and the rebuild is logged.
Rollouts that finished between the last read and the rebuild are then missed,
which is why rebuilds are for quiet stores. A process killed between a finishing revision and its
index line leaves the line to ``agl check --fix`` (``stale-index``), which appends it at the
newest revision: reported then if nothing has changed the rollout since.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store_fs._disk import codec, fsio, log_segments
from store_fs._disk.layout import Layout, revision_name
from store_fs._disk.rollout_history import RecordStore
from store_fs._disk.rollout_index import INDEX_LOGS, LATE_SPANS, parse_entry
from store_fs._disk.status_rules import TERMINAL_ROLLOUT_STATUSES
from store_fs.errors import CorruptRecordError

__all__ = ["IndexPosition", "read_finished", "read_finished_at"]

log = logging.getLogger(__name__)


@dataclass
class IndexPosition:
    """Per log file name: ``(inode, offset)``. JSON-able through :meth:`to_json`."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"files": {name: [ino, offset] for name, (ino, offset) in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndexPosition:
        files = data.get("files")
        if not isinstance(files, Mapping):
            raise ValueError("a cursor position needs a 'files' object")
        out: dict[str, tuple[int, int]] = {}
        for name, value in files.items():
            if (
                not isinstance(name, str)
                or not isinstance(value, list)
                or len(value) != 2
                or not all(type(v) is int and v >= 0 for v in value)
            ):
                raise ValueError(f"bad cursor entry for {name!r}: {value!r}")
            out[name] = (value[0], value[1])
        return cls(out)

    @classmethod
    def at_end(cls, directory: Path) -> IndexPosition:
        """The position after every complete line written so far."""
        return cls(log_segments.end_position(directory, INDEX_LOGS))


def _new_finished_lines(chunks: list[log_segments.Chunk]) -> dict[str, tuple[set[int], set[int]]]:
    """Per rollout, the revisions of the finished lines in ``chunks``, and those of the lines
    among them that announce late spans."""
    found: dict[str, tuple[set[int], set[int]]] = {}
    for chunk in chunks:
        for raw in chunk.data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                row = codec.loads(raw)
            except codec.DecodeError:
                continue
            entry = parse_entry(row)
            if entry is not None and entry.status in TERMINAL_ROLLOUT_STATUSES:
                revs, late = found.setdefault(entry.rollout_id, (set(), set()))
                revs.add(entry.rev)
                if row.get(LATE_SPANS) is True:
                    late.add(entry.rev)
    return found


def _status_at(layout: Layout, rollout_id: str, rev: int) -> str | None:
    # Revision file names: store_fs/_disk/rollout_history.py.
    data = fsio.read_bytes(layout.history_dir(rollout_id) / revision_name(rev))
    try:
        body = codec.loads(data) if data else None
    except codec.DecodeError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


def _finishing_revision(
    layout: Layout, records: RecordStore, rollout_id: str, named: int
) -> tuple[int, int] | None:
    """(the first revision of the run of finished revisions that ends at the newest, the
    newest); None when the rollout is gone or not finished now. ``named``: the highest revision
    the new lines name, read by name (with those after it): on NFS a listing of ``history/``
    may come from a cache that does not show it yet, and the rollout would look unfinished."""
    found = records.head_at_least(rollout_id, named)
    if found is None or found[1].status not in TERMINAL_ROLLOUT_STATUSES:
        return None
    newest = rev = found[0]
    while rev > 1 and _status_at(layout, rollout_id, rev - 1) in TERMINAL_ROLLOUT_STATUSES:
        rev -= 1
    return rev, newest


def read_finished(layout: Layout, position: IndexPosition, records: RecordStore) -> list[str]:
    """Rollouts that finished since ``position`` (which is advanced): :func:`read_finished_at`
    without the revisions."""
    return [rollout_id for rollout_id, _rev in read_finished_at(layout, position, records)]


def read_finished_at(layout: Layout, position: IndexPosition, records: RecordStore) -> list[tuple[str, int]]:
    """Rollouts that finished since ``position`` (which is advanced), in the order the logs
    name them, each with the newest revision read (a reader of the record must read at least
    that one). See the module's docstring for what "finished" means and when it is reported.

    A record that cannot be read raises :class:`CorruptRecordError` and leaves ``position``
    where it was: skipping the rollout would lose it for good from every reader that saves
    its place (``agl data --cursor``), and after ``agl check --fix`` the same call reads on.
    """
    directory = layout.rollout_index
    before = dict(position.files)
    chunks, rebuilt = log_segments.read_new(directory, INDEX_LOGS, position.files)
    if rebuilt:
        log.warning("the rollout index was rebuilt: following on from its end (%s)", directory)
        position.files = IndexPosition.at_end(directory).files
        return []
    out = []
    try:
        for rollout_id, (revs, late) in _new_finished_lines(chunks).items():
            finished = _finishing_revision(layout, records, rollout_id, max(revs))
            if finished is not None and (finished[0] in revs or max(late, default=0) >= finished[0]):
                out.append((rollout_id, finished[1]))
    except CorruptRecordError:
        position.files = before
        raise
    return out
