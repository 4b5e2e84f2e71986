"""Group commit: threads that need the same file or directory on disk share one sync.

A caller writes first, then calls :meth:`GroupSync.sync`. If a sync of that path is
already under way it began before the caller's write, so the caller waits for the next
one; that next one, started by whichever waiter gets there first, covers every caller
that arrived in between. So N threads writing one log (the rollout index, a span log) or
renaming entries of one directory (``queue/claimed/``) at once cost about two syncs
instead of N, and each still returns only once its own write is durable. Different paths
never wait for each other.

A sync that fails raises in the thread that ran it and in every thread registered by then
and not covered by an earlier success, whose write it may have carried: Linux reports a
failed writeback to one ``fsync`` only, so a later sync, even one that succeeds, says
nothing of data the disk does not hold. A Ctrl-C in the thread running a sync is raised
there once the round's state is restored, so no other caller is left waiting. Everything
here is per process: a forked child starts with no syncs in flight.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import Final

__all__ = ["DIRECTORIES", "FILES", "GroupSync", "fdatasync_path", "fsync_directory"]

StrPath = str | os.PathLike[str]


def _sync_by_name(path: StrPath, flags: int, sync: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        sync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: StrPath) -> None:
    """``fsync`` of a directory by name: its entries are on disk."""
    _sync_by_name(path, os.O_DIRECTORY, os.fsync)


def fdatasync_path(path: StrPath) -> None:
    """``fdatasync`` of a file by name: its data (and size) are on disk."""
    _sync_by_name(path, 0, os.fdatasync)


class _Round:
    """The syncs of one path: how many callers asked, up to which the last sync covered, and
    the callers failed syncs condemned."""

    __slots__ = ("cond", "failures", "flushing", "requested", "synced", "users")

    def __init__(self, lock: threading.RLock) -> None:
        self.cond = threading.Condition(lock)
        self.requested = 0
        self.synced = 0
        # (after, through, error): a failed sync condemns the callers with after < ticket <=
        # through, those registered when it failed and not covered by an earlier success.
        self.failures: list[tuple[int, int, BaseException]] = []
        self.flushing = False
        self.users = 0


def _owned(lock: threading.RLock) -> bool:
    owned: bool = getattr(lock, "_is_owned")()  # noqa: B009 (private on every RLock, not typed)
    return owned


def _reacquire(lock: threading.RLock) -> BaseException | None:
    """Take ``lock`` back even if a signal handler raises meanwhile (Ctrl-C); what it raised.
    A handler may run just after ``acquire`` returns: ownership, not the return, tells."""
    interrupted: BaseException | None = None
    while not _owned(lock):
        try:
            lock.acquire()
        except BaseException as err:  # KeyboardInterrupt and the like: the lock comes first
            interrupted = err
    return interrupted


def _failed(path: str, error: BaseException) -> OSError:
    """What a caller whose write a failed sync may have carried raises: an OSError, whatever
    stopped the sync (an interrupted one leaves the write's fate as unknown as an EIO)."""
    if isinstance(error, OSError):
        return OSError(error.errno, f"a shared sync of {path} failed: {error.strerror or error}")
    return OSError(errno.EIO, f"a shared sync of {path} did not finish: {error!r}")


class GroupSync:
    """Shares ``flush(path)`` among the threads that need the same path synced at once."""

    def __init__(self, flush: Callable[[str], None]) -> None:
        self._flush = flush
        self._lock = threading.RLock()  # re-entrant: see _reacquire
        self._rounds: dict[str, _Round] = {}

    def forget(self) -> None:
        """Drop every sync in flight (in a forked child, where no thread runs them)."""
        self._lock = threading.RLock()
        self._rounds = {}

    def sync(self, path: StrPath) -> None:
        """Return once everything written to ``path`` before this call is on disk; raise if a
        sync that may have carried it failed."""
        key = os.fspath(path)
        with self._lock:
            state = self._rounds.get(key)
            if state is None:
                state = self._rounds[key] = _Round(self._lock)
            state.users += 1
            state.requested += 1
            ticket = state.requested
            try:
                while True:
                    # Failures first: a later success (a new caller's sync, on a fresh file
                    # descriptor) does not say the failed writeback reached the disk.
                    for after, through, error in state.failures:
                        if after < ticket <= through:
                            raise _failed(key, error)
                    if state.synced >= ticket:
                        return
                    if state.flushing:
                        state.cond.wait()  # one started before our write: wait for the next
                        continue
                    self._run(key, state)
            finally:
                state.users -= 1
                if state.users == 0:
                    del self._rounds[key]

    def _run(self, key: str, state: _Round) -> None:
        """One flush of ``key``, for every caller registered so far (lock held on entry and exit)."""
        state.flushing, covers = True, state.requested
        error: BaseException | None = None
        try:
            self._lock.release()  # inside the try: an interrupt after it is caught below
            self._flush(key)
        except BaseException as err:
            error = err
        interrupted = _reacquire(self._lock)
        state.flushing = False
        if error is None:
            state.synced = max(state.synced, covers)
        else:
            # Every caller registered by now and not covered by an earlier success may have had
            # its write in the writeback that failed, and the kernel reports such an error once:
            # a second sync would say all is well. So they all fail; later callers sync afresh.
            state.failures.append((state.synced, state.requested, error))
        state.cond.notify_all()
        if interrupted is not None:
            raise interrupted
        if error is not None:
            raise error


#: The process's shared syncs: data of files (span logs, index logs) and directories
#: (after a rename, link, create or unlink in them). Two instances, made once: a
#: forked child resets them.
FILES: Final = GroupSync(fdatasync_path)
DIRECTORIES: Final = GroupSync(fsync_directory)


def _reset_in_child() -> None:
    FILES.forget()
    DIRECTORIES.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
