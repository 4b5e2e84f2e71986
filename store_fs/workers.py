"""Worker records: ``workers/<worker_id>/heartbeat.json`` and ``status.json``.

The two halves have different writers: ``update_worker`` (the runner's periodic
heartbeat) writes the first, the status sync of dequeues and attempt updates
writes the second. Each half is replaced whole, so a reader never sees a torn
record and a heartbeat never erases a status (or the reverse). Worker status is
advisory, as upstream's is: two syncs of the same worker racing from two
processes end with the last one's view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import codec, fsio
from .context import Context
from .errors import CorruptRecordError
from .ids import check_name_id
from .models import Attempt, Worker

__all__ = ["WorkerStore"]

_STATUS_FIELDS = (
    "status",
    "last_dequeue_time",
    "last_busy_time",
    "last_idle_time",
    "current_rollout_id",
    "current_attempt_id",
)


class WorkerStore:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._layout = ctx.layout

    def _read(self, path: Path) -> dict[str, Any]:
        data = fsio.read_bytes(path)
        if data is None:
            return {}
        try:
            obj = codec.loads(data)
        except codec.DecodeError as err:
            raise CorruptRecordError(str(path), str(err)) from None
        return obj if isinstance(obj, dict) else {}

    def get(self, worker_id: str) -> Worker | None:
        directory = self._layout.worker_dir(check_name_id("worker", worker_id))
        if not directory.is_dir():
            return None
        status = self._read(directory / "status.json")
        beat = self._read(directory / "heartbeat.json")
        return Worker(worker_id=worker_id, **{**status, **beat})

    def all(self) -> list[Worker]:
        workers = (self.get(entry.name) for entry in fsio.iter_dirs(self._layout.workers))
        return sorted((w for w in workers if w is not None), key=lambda w: w.worker_id)

    def count(self) -> int:
        return sum(1 for _ in fsio.iter_dirs(self._layout.workers))

    def _write(self, worker_id: str, name: str, data: dict[str, Any]) -> None:
        directory = self._layout.worker_dir(worker_id)
        directory.mkdir(parents=True, exist_ok=True)
        fsio.publish(directory / name, codec.dumps_record(data), durable=self._ctx.durable)

    def heartbeat(self, worker_id: str, stats: dict[str, Any] | None) -> Worker:
        """Record a heartbeat (and replace the stats when given)."""
        check_name_id("worker", worker_id)
        path = self._layout.worker_dir(worker_id) / "heartbeat.json"
        beat = self._read(path)
        beat["last_heartbeat_time"] = self._ctx.clock.time()
        if stats is not None:
            beat["heartbeat_stats"] = dict(stats)
        self._write(worker_id, "heartbeat.json", beat)
        worker = self.get(worker_id)
        assert worker is not None
        return worker

    def _status(self, worker_id: str) -> dict[str, Any]:
        data = self._read(self._layout.worker_dir(worker_id) / "status.json")
        return {k: data.get(k) for k in _STATUS_FIELDS if k in data}

    def sync(self, attempt: Attempt, *, dequeue: bool = False) -> None:
        """Derive the worker's status from its attempt (upstream's rule)."""
        worker_id = attempt.worker_id
        if not worker_id:
            return
        check_name_id("worker", worker_id)
        now = self._ctx.clock.time()
        status = self._status(worker_id)
        if dequeue:
            status["last_dequeue_time"] = now
        if attempt.status in ("succeeded", "failed", "timeout", "unresponsive"):
            status["status"] = "idle" if attempt.status in ("succeeded", "failed") else "unknown"
            status["last_idle_time"] = now
            status["current_rollout_id"] = status["current_attempt_id"] = None
        else:
            status["status"] = "busy"
            status["last_busy_time"] = now
            status["current_rollout_id"] = attempt.rollout_id
            status["current_attempt_id"] = attempt.attempt_id
        self._write(worker_id, "status.json", status)

    def mark_idle(self, worker_id: str) -> None:
        """After a dequeue that found nothing."""
        check_name_id("worker", worker_id)
        now = self._ctx.clock.time()
        status = self._status(worker_id)
        if status.get("status") != "idle":
            status["status"] = "idle"
            status["last_idle_time"] = now
        status["last_dequeue_time"] = now
        self._write(worker_id, "status.json", status)
