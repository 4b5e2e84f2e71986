"""The maintenance lock: ``locks/maintenance.lock``, held by repairs (``check --fix``) and
migrations, never by the hot path (enqueue, dequeue, spans, updates and waits take no lock).

It is a :class:`filelock.FileLock`: ``flock(2)`` on the lock file, which the kernel releases
when the holder exits or dies, so a maintenance process killed with ``kill -9`` does not block
the next one. On NFS, Linux clients turn ``flock`` into a POSIX byte-range lock that the server
arbitrates across hosts (NFSv4 has locking built in; NFSv3 needs ``lockd``/``statd``) and
releases when the dead holder's lease expires. Where a filesystem refuses ``flock`` altogether,
filelock falls back to an exclusively created marker file, which a dead holder leaves behind:
docs/format.md says how to clear it. The lock file itself is never deleted (deleting it would
let two holders lock two different files).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import filelock

from store_fs._disk.layout import Layout
from store_fs.errors import MaintenanceBusyError

__all__ = ["maintenance_lock"]


@contextmanager
def maintenance_lock(layout: Layout, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold the store's maintenance lock; :class:`MaintenanceBusyError` if another process
    holds it for longer than ``timeout`` seconds."""
    layout.locks.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(layout.locks / "maintenance.lock", timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise MaintenanceBusyError(str(lock.lock_file)) from None
    try:
        yield
    finally:
        lock.release()
