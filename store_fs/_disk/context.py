"""What every component of a :class:`~store_fs.store.FileStore` shares: paths, clock, settings.

Per-process state (open file descriptors, caches) is rebuilt after ``fork`` so a
child never writes into its parent's per-writer files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from store_fs._disk.fsio import current_pid, log_tag, writer_tag
from store_fs._disk.layout import Layout
from store_fs.clock import Clock

__all__ = ["Context", "Durability"]

Durability = Literal["process", "fsync"]


@dataclass
class Context:
    layout: Layout
    clock: Clock
    durability: Durability = "process"
    # Extra seconds granted before a heartbeat written by another machine's wall clock
    # is judged stale by ours (only matters to observers that have not watched it move).
    clock_skew_seconds: float = 0.0
    # The store is on a network filesystem (NFS...): another host sees this process's writes
    # to a file it keeps open only once they are flushed (close-to-open consistency).
    shared_fs: bool = False
    _pid: int = field(default_factory=current_pid)
    _local: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def durable(self) -> bool:
        return self.durability == "fsync"

    @property
    def writer(self) -> str:
        return writer_tag()

    @property
    def log_writer(self) -> str:
        """The name of this process's compactable logs (see :func:`~store_fs._disk.fsio.log_tag`)."""
        return log_tag()

    def local(self, name: str, factory: Callable[[], Any]) -> Any:
        """A per-process object named ``name``, created by ``factory()`` (fresh after fork)."""
        pid = current_pid()
        with self.lock:
            if pid != self._pid:
                self._pid = pid
                self._local = {}
            obj = self._local.get(name)
            if obj is None:
                obj = self._local[name] = factory()
            return obj
