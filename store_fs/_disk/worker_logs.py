"""Worker records: ``workers/<worker_id>/log.<host>-<pid>.<instance>.jsonl``, one log per writing process.

A worker's state is upstream's ``Worker``: a status (busy, idle, unknown), the
rollout and attempt it works on, and the times of its last dequeue, busy and
idle transitions and heartbeat. Several processes change it: the runner itself
(dequeue, attempt updates, ``update_worker`` heartbeats), a reaper in any
process (its attempt timed out), the CLI. Each process appends to its own log,
one line per change holding only the fields that change sets, plus ``t``, the
writer's wall time::

    {"t": 1795564584.54, "status": "busy", "last_busy_time": 1795564584.54, ...}

A reader folds every line of every log of the worker in ``t`` order (later
lines win, field by field). Why a log rather than a record replaced by rename:
a status change is then one ``write(2)`` with no read first, no temporary file,
no rename and no inode freed. The rename-over-existing version cost a runner
about 1 ms per rollout (two syncs per rollout, each a read, a new inode, a
rename that made ext4 write the data out, and a freed inode), a quarter of its
time in the loop benchmark (BENCHMARKS.md).

Worker status is advisory, as upstream's is: ``t`` comes from each writer's
clock, so with two machines writing about one worker at once, the fold follows
their clocks. Nothing decides anything from it.

A writer keeps its own log short: past ``COMPACT_BYTES`` it rewrites it (temporary
file, then rename) as the few lines that still win a field, each keeping its
``t``, so the fold of all logs is unchanged. Logs of exited processes are folded into
a segment by compaction (:mod:`store_fs._disk.log_compaction`, :func:`fold_bytes`);
readers read segments and logs alike (:mod:`store_fs._disk.log_segments`).
``status.json`` and ``heartbeat.json`` written by older builds are read as the oldest layer.

A complete line that does not parse, is not a JSON object, has no numeric ``t`` or holds a
value its ``Worker`` field refuses is logged and skipped, as a bad span line is: one damaged
line costs the change it held, not every read of the worker. ``agl check`` reports such lines
(:meth:`WorkerStore.bad_lines`) and ``--fix`` moves them to quarantine.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import TypeAdapter, ValidationError

from store_fs._disk import codec, fsio, log_segments
from store_fs._disk.context import Context
from store_fs._disk.ids import check_name_id
from store_fs._disk.span_log import BadLine
from store_fs.models import Attempt, Worker

__all__ = ["COMPACT_BYTES", "WORKER_LOGS", "WorkerStore", "fold_bytes", "fold_lines"]

log = logging.getLogger(__name__)

COMPACT_BYTES: Final = 32 * 1024

_LOG_PREFIX = "log."
_LOG_SUFFIX = ".jsonl"
#: One worker's logs: ``log.<writer>.jsonl`` and segments (:mod:`store_fs._disk.log_segments`).
WORKER_LOGS = log_segments.Kind(_LOG_PREFIX, _LOG_SUFFIX)
# Written by builds before the logs: read as the base layer, never written.
_LEGACY = ("status.json", "heartbeat.json")
_MAX_OPEN_LOGS = 16
_FIELDS = frozenset(Worker.model_fields) - {"worker_id"}


Change = tuple[float, int, dict[str, Any]]  # (t, order, fields)


def _winners(changes: list[Change]) -> dict[str, tuple[float, Any]]:
    """Per field, the ``(t, value)`` of the change that wins it: by ``t``, then ``order``; later wins."""
    winners: dict[str, tuple[float, Any]] = {}
    for t, _, fields in sorted(changes, key=lambda change: (change[0], change[1])):
        for key, value in fields.items():
            winners[key] = (t, value)
    return winners


def fold_lines(lines: list[Change]) -> dict[str, Any]:
    """Fold ``(t, order, fields)`` changes into one state: by ``t``, then ``order``; later wins."""
    return {key: value for key, (_, value) in _winners(lines).items()}


def _winning_lines(changes: list[Change]) -> bytes:
    """Lines holding only what wins a field, each with its ``t``: the same fold, fewer lines."""
    by_time: dict[float, dict[str, Any]] = {}
    for key, (t, value) in _winners(changes).items():
        by_time.setdefault(t, {})[key] = value
    return b"".join(codec.dumps_line({"t": t, **fields}) for t, fields in sorted(by_time.items()))


def fold_bytes(data: bytes) -> bytes:
    """Worker log lines (of one or several logs, in order) as the few lines that win a field:
    how compaction shrinks a worker's logs without changing what readers fold. Lines that do
    not parse are kept as they are (``agl check`` reports them, nothing is lost)."""
    changes: list[Change] = []
    kept: list[bytes] = []
    for order, line in enumerate(data.splitlines()):
        try:
            fields = codec.loads(line)
        except codec.DecodeError:
            fields = None
        t = fields.pop("t", None) if isinstance(fields, dict) else None
        if not isinstance(fields, dict) or not isinstance(t, (int, float)):
            if line.strip():
                kept.append(line + b"\n")
            continue
        changes.append((float(t), order, fields))
    return b"".join(kept) + _winning_lines(changes)


@functools.cache
def _field_validators() -> dict[str, TypeAdapter[Any]]:
    # Built on first read, not at import: every agl command imports this module.
    out: dict[str, TypeAdapter[Any]] = {}
    for name, info in Worker.model_fields.items():
        if name in _FIELDS:
            annotation: Any = info.annotation
            out[name] = TypeAdapter(Annotated[annotation, *info.metadata] if info.metadata else annotation)
    return out


def _valid(path: Path, offset: int, fields: dict[str, Any], bad: list[BadLine] | None) -> bool:
    """Whether every known field of a line holds a value its ``Worker`` field accepts. A line
    with one that does not (``"status": 5``, written by hand) is skipped like a line that does
    not parse: folded in, it would make every read of the worker fail."""
    validators = _field_validators()
    for name, value in fields.items():
        validator = validators.get(name)
        if validator is None:
            continue
        try:
            validator.validate_python(value)
        except ValidationError as err:
            reason = err.errors()[0]["msg"]
            _skip(path, offset, f"field {name!r} does not validate: {reason}", bad)
            return False
    return True


def _skip(path: Path, offset: int, reason: str, bad: list[BadLine] | None) -> None:
    log.warning("skipping corrupt worker log line in %s at byte %d: %s", path, offset, reason)
    if bad is not None:
        bad.append(BadLine(path, offset, reason))


class _Writer:
    """This process's view of the worker logs it appends to."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # worker id -> the status this process last wrote or read (for mark_idle's rule)
        self.status: dict[str, str] = {}
        # log path -> [open fd, size]: a dequeue or a finished attempt appends one line, so
        # reopening the log each time would cost a lookup and an open (NFS round trips) per call.
        self.logs: OrderedDict[Path, list[int]] = OrderedDict()

    def log_fd(self, path: Path, *, durable: bool) -> list[int]:
        """``[fd, size]`` of this process's open log ``path`` (opened, or created, on first use)."""
        entry = self.logs.get(path)
        if entry is not None:
            self.logs.move_to_end(path)
            return entry
        fd = fsio.open_making_dirs(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, durable=durable)
        entry = self.logs[path] = [fd, os.fstat(fd).st_size]
        while len(self.logs) > _MAX_OPEN_LOGS:
            os.close(self.logs.popitem(last=False)[1][0])
        return entry

    def forget(self, path: Path) -> None:
        """Close ``path``'s fd: the log was replaced (compaction) and must be reopened."""
        entry = self.logs.pop(path, None)
        if entry is not None:
            os.close(entry[0])


class WorkerStore:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._layout = ctx.layout

    def _writer(self) -> _Writer:
        writer: _Writer = self._ctx.local("worker-logs", _Writer)
        return writer

    # -- reading -------------------------------------------------------------------
    def _changes(self, directory: Path, bad: list[BadLine] | None = None) -> Iterator[Change]:
        """Every readable change recorded for one worker, as ``(t, order, fields)``; what
        cannot be read is logged, skipped and appended to ``bad``."""
        order = 0
        for name in _LEGACY:
            path = directory / name
            data = fsio.read_bytes(path)
            obj = self._decode(path, data, 0, bad) if data else None
            fields = None if obj is None else {k: v for k, v in obj.items() if k in _FIELDS}
            if fields is not None and _valid(path, 0, fields, bad):
                yield float("-inf"), order, fields
                order += 1
        for chunk in log_segments.read_all(directory, WORKER_LOGS):
            for t, fields in self._lines(directory / chunk.file, chunk.data, chunk.offset, bad):
                yield t, order, {k: v for k, v in fields.items() if k in _FIELDS}
                order += 1

    def _lines(
        self, path: Path, data: bytes, start: int, bad: list[BadLine] | None
    ) -> Iterator[tuple[float, dict[str, Any]]]:
        """Complete lines (read from ``path`` at byte ``start``) as ``(t, the other fields)``,
        in order; lines that cannot be read are skipped (see :meth:`_decode`)."""
        offset = start
        for line in data.split(b"\n")[:-1]:
            fields = self._decode(path, line, offset, bad) if line.strip() else None
            if fields is not None:
                t = fields.pop("t", None)
                if not isinstance(t, (int, float)):
                    _skip(path, offset, "a worker log line without a numeric 't'", bad)
                elif _valid(path, offset, fields, bad):
                    yield float(t), fields
            offset += len(line) + 1

    @staticmethod
    def _decode(path: Path, data: bytes, offset: int, bad: list[BadLine] | None) -> dict[str, Any] | None:
        """The JSON object at byte ``offset`` of ``path``; None (logged, added to ``bad``) when
        it is not one."""
        try:
            obj = codec.loads(data)
        except codec.DecodeError as err:
            _skip(path, offset, str(err).splitlines()[0], bad)
            return None
        if not isinstance(obj, dict):
            _skip(path, offset, "not a JSON object", bad)
            return None
        return obj

    def bad_lines(self, directory: Path) -> list[BadLine]:
        """What readers of the worker at ``directory`` skip: lines (and older builds' records)
        that cannot be read, each with its file and byte offset. For ``agl check``."""
        bad: list[BadLine] = []
        for _change in self._changes(directory, bad):
            pass
        return bad

    def _state(self, worker_id: str) -> dict[str, Any] | None:
        directory = self._layout.worker_dir(worker_id)
        if not directory.is_dir():
            return None
        return fold_lines(list(self._changes(directory)))

    def get(self, worker_id: str) -> Worker | None:
        state = self._state(check_name_id("worker", worker_id))
        return None if state is None else Worker(worker_id=worker_id, **state)

    def all(self) -> list[Worker]:
        workers = (self.get(entry.name) for entry in fsio.iter_dirs(self._layout.workers))
        return sorted((w for w in workers if w is not None), key=lambda w: w.worker_id)

    def count(self) -> int:
        return sum(1 for _ in fsio.iter_dirs(self._layout.workers))

    def close(self) -> None:
        """Close the logs this process keeps open (they reopen on the next write)."""
        writer = self._writer()
        with writer.lock:
            for path in list(writer.logs):
                writer.forget(path)

    # -- writing -------------------------------------------------------------------
    def _log_path(self, worker_id: str) -> Path:
        return self._layout.worker_dir(worker_id) / f"{_LOG_PREFIX}{self._ctx.log_writer}{_LOG_SUFFIX}"

    def _append(self, worker_id: str, fields: dict[str, Any]) -> None:
        """Record one change: one appended line in this process's log of the worker."""
        line = codec.dumps_line({"t": self._ctx.clock.time(), **fields})
        path = self._log_path(worker_id)
        writer = self._writer()
        with writer.lock:
            entry = writer.log_fd(path, durable=self._ctx.durable)
            try:
                # Not synced even when durable: worker status is advisory, and re-sent by the
                # worker's next dequeue or heartbeat (docs/format.md, "Durability").
                fsio.append_own(entry[0], line)
            except OSError:
                writer.forget(path)  # e.g. ESTALE after the file was replaced: reopen next time
                raise
            entry[1] += len(line)  # only this process appends to its log
            if "status" in fields:
                writer.status[worker_id] = fields["status"]
            if entry[1] > COMPACT_BYTES:
                writer.forget(path)
                self._compact(path)

    def _compact(self, path: Path) -> None:
        """Rewrite this process's log as the lines that still win a field (same fold); lines
        that cannot be read are kept as they are, for ``agl check`` to report."""
        data = fsio.read_bytes(path) or b""
        # Bytes after the last newline are a write in progress.
        fsio.publish(path, fold_bytes(data[: data.rfind(b"\n") + 1]), durable=self._ctx.durable)

    def heartbeat(self, worker_id: str, stats: dict[str, Any] | None) -> Worker:
        """Record a heartbeat (and replace the stats when given)."""
        check_name_id("worker", worker_id)
        fields: dict[str, Any] = {"last_heartbeat_time": self._ctx.clock.time()}
        if stats is not None:
            # Refused before the write: NaN would be stored as null, {1: .., "1": ..} as one key.
            codec.check_storable("the worker's heartbeat_stats", stats)
            fields["heartbeat_stats"] = dict(stats)
        self._append(worker_id, fields)
        worker = self.get(worker_id)
        assert worker is not None
        return worker

    def sync(self, attempt: Attempt, *, dequeue: bool = False) -> None:
        """Derive the worker's status from its attempt (upstream's rule)."""
        worker_id = attempt.worker_id
        if not worker_id:
            return
        check_name_id("worker", worker_id)
        now = self._ctx.clock.time()
        fields: dict[str, Any] = {}
        if dequeue:
            fields["last_dequeue_time"] = now
        if attempt.status in ("succeeded", "failed", "timeout", "unresponsive"):
            fields["status"] = "idle" if attempt.status in ("succeeded", "failed") else "unknown"
            fields["last_idle_time"] = now
            fields["current_rollout_id"] = fields["current_attempt_id"] = None
        else:
            fields["status"] = "busy"
            fields["last_busy_time"] = now
            fields["current_rollout_id"] = attempt.rollout_id
            fields["current_attempt_id"] = attempt.attempt_id
        self._append(worker_id, fields)

    def mark_idle(self, worker_id: str) -> None:
        """After a dequeue that found nothing: idle, and ``last_idle_time`` only on the transition."""
        check_name_id("worker", worker_id)
        now = self._ctx.clock.time()
        writer = self._writer()
        with writer.lock:
            known = writer.status.get(worker_id)
        if known is None:
            state = self._state(worker_id) or {}
            known = str(state.get("status", "unknown"))
        fields: dict[str, Any] = {"status": "idle", "last_dequeue_time": now}
        if known != "idle":
            fields["last_idle_time"] = now
        self._append(worker_id, fields)
