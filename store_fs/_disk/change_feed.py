"""The change feed: ``events/<writer>.jsonl``, one line per rollout status change.

Each process appends only to its own file. The lines are for people
(``tail -f events/*.jsonl | jq``) and wake waiters up; waiters still re-read the
records, so a lost or torn event line costs latency, never correctness.
"""

from __future__ import annotations

import os
import threading

from store_fs._disk import codec, fsio, log_segments
from store_fs._disk.context import Context
from store_fs._disk.rollout_history import RolloutRecord

__all__ = ["EVENT_LOGS", "EventLog"]

#: The feed's files: ``<writer>.jsonl`` and segments (:mod:`store_fs._disk.log_segments`).
EVENT_LOGS = log_segments.Kind(prefix="")


class _Fd:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.lock = threading.Lock()


class EventLog:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def _fd(self) -> _Fd:
        holder: _Fd = self._ctx.local("events-fd", _Fd)
        return holder

    def record_change(self, old: RolloutRecord | None, new: RolloutRecord) -> None:
        if old is not None and old.status == new.status:
            return
        line = codec.dumps_line(
            {
                "rollout_id": new.rollout_id,
                "status": new.status,
                "previous": old.status if old else None,
                "time": self._ctx.clock.time(),
            }
        )
        holder = self._fd()
        with holder.lock:
            if holder.fd is None:
                path = self._ctx.layout.events / f"{self._ctx.log_writer}.jsonl"
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
                holder.fd = fsio.open_making_dirs(path, flags, durable=self._ctx.durable)
            fsio.append_own(holder.fd, line)

    def close(self) -> None:
        holder = self._fd()
        with holder.lock:
            if holder.fd is not None:
                os.close(holder.fd)
                holder.fd = None
