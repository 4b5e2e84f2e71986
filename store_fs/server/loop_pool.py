"""A pool of event loops on worker threads: where the server runs its store calls.

FileStore's methods are ``async`` to match upstream's API, but they do their file I/O
synchronously. Awaited on the server's own event loop, each one would hold that loop
(and with it every other connection) until it returns. Run on a pool of threads
instead, calls from different connections overlap: the file syscalls release the GIL.

Each thread runs a persistent event loop rather than plain blocking functions, because
store calls are coroutines that may really wait: ``wait_for_rollouts`` awaits a change
feed, and while it does its thread's loop serves other calls. So a long wait occupies
no thread, and a pool of a few threads serves any number of waiters.

The server sends here the calls that may take long (the queue, searches, batches, waits);
those that touch one rollout's few files it runs on its own loop, because for them the two
cross-thread wake-ups of the trip here cost more than the call (:mod:`store_fs.server.app`).

Contract:

* :meth:`LoopPool.start` starts ``size`` threads, each running its own event loop.
* :meth:`LoopPool.run`, awaited on any other event loop, runs a coroutine to completion
  on the least busy pool loop and returns its result or raises its exception.
  Cancelling the awaiting task cancels the coroutine on its pool loop at its next
  ``await``; synchronous work already under way finishes first, so a store operation
  is never cut in half by a cancellation.
* :meth:`LoopPool.close` / :meth:`LoopPool.aclose` refuse new work, cancel what still
  runs on the pool loops and wait for it (up to ``timeout``), then each loop is shut
  down the way :func:`asyncio.run` does it (async generators, default executor) and
  closed, and its thread joined. The pool can be started again afterwards.

Threads are daemons: a store call stuck past ``close``'s timeout is reported, and it
cannot keep the process alive at exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopPool", "PoolClosedError", "default_size"]

log = logging.getLogger("store_fs.server")

T = TypeVar("T")

CLOSE_TIMEOUT = 10.0


def default_size() -> int:
    """Twice the CPUs, but at least 4 and at most 8 threads.

    Even one core gains from a few threads, because most of a store call's time is
    spent in syscalls that release the GIL; past 8, threads mostly contend for the GIL
    over the Python work (parsing, validation) around those syscalls.
    """
    return min(8, max(4, 2 * (os.cpu_count() or 1)))


class PoolClosedError(RuntimeError):
    """Work was submitted to a pool that is not running (not started yet, or closing)."""


class _Worker:
    """One thread running one event loop until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = 0  # calls submitted and not yet answered (guarded by the pool's lock)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()
        if self.loop is None:
            raise RuntimeError(f"{self.name}: event loop failed to start")

    def _main(self) -> None:
        try:
            # asyncio.run: on the way out it cancels and awaits every task still on the
            # loop, then shuts down async generators and the default executor (used by
            # fsync durability) and closes the loop.
            asyncio.run(self._serve())
        except Exception:
            log.exception("%s: event loop failed", self.name)
        finally:
            self._ready.set()  # also when the loop failed to start: start() must not hang

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stopping.wait()

    def stop(self) -> None:
        """Ask the loop to finish (from any thread); its tasks are cancelled and awaited."""
        loop, stopping = self.loop, self._stopping
        if loop is None or stopping is None:
            return
        try:
            loop.call_soon_threadsafe(stopping.set)
        except RuntimeError:
            pass  # the loop is already closed


class LoopPool:
    """``size`` event loops on as many threads (:func:`default_size` when None); see the module
    docstring for the contract."""

    def __init__(self, size: int | None = None, *, name: str = "agl-store") -> None:
        if size is None:
            size = default_size()
        if size < 1:
            raise ValueError(f"a loop pool needs at least one thread, not {size}")
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._next = 0

    @property
    def running(self) -> bool:
        return bool(self._workers)

    @property
    def threads(self) -> list[threading.Thread]:
        """The pool's threads (empty when not running)."""
        return [w.thread for w in self._workers]

    def start(self) -> None:
        # Under the lock throughout, so run() sees either no workers or only running ones.
        with self._lock:
            if self._workers:
                raise RuntimeError("the loop pool is already running")
            workers = [_Worker(f"{self.name}-{i}") for i in range(self.size)]
            try:
                for worker in workers:
                    worker.start()
            except BaseException:
                _stop_all(workers, CLOSE_TIMEOUT)
                raise
            self._workers = workers

    def _pick(self) -> _Worker:
        """The least busy worker, ties broken round robin, with its busy count raised."""
        with self._lock:
            workers = self._workers
            if not workers:
                raise PoolClosedError("the store's thread pool is not running")
            n = len(workers)
            first = self._next
            self._next = (first + 1) % n
            # min() keeps the first of equals: rotating the start spreads an idle pool's calls.
            worker = min((workers[(first + k) % n] for k in range(n)), key=lambda w: w.busy)
            worker.busy += 1
            return worker

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on a pool loop and return its result (see the module docstring).

        Raises :class:`PoolClosedError` (and closes ``coro``) when the pool is not running.
        """
        try:
            worker = self._pick()
        except BaseException:
            coro.close()  # never scheduled: closing it avoids a "never awaited" warning
            raise
        try:
            assert worker.loop is not None
            try:
                future = asyncio.run_coroutine_threadsafe(coro, worker.loop)
            except RuntimeError:  # the loop closed between _pick and here
                coro.close()
                raise PoolClosedError("the store's thread pool is shutting down") from None
            # wrap_future forwards a cancellation of this await to the pool task.
            return await asyncio.wrap_future(future)
        finally:
            # Counted until the caller stops waiting: after a cancellation the call may still be
            # finishing synchronous work, which only skews the next pick or two.
            with self._lock:
                worker.busy -= 1

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Stop every loop and join its thread (blocking; see the module docstring).

        Returns False (and logs a warning) if some thread was still busy after ``timeout``
        seconds; it then finishes on its own.
        """
        with self._lock:
            workers, self._workers = self._workers, []
        return _stop_all(workers, timeout)

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """:meth:`close` without blocking the calling event loop."""
        if not self._workers:
            return True
        # Joining takes as long as the slowest call in progress: wait on a helper thread.
        return await asyncio.to_thread(self.close, timeout)


def _stop_all(workers: list[_Worker], timeout: float) -> bool:
    """Stop the workers' loops and join their threads; False if some were still busy at ``timeout``."""
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + timeout
    for worker in workers:
        if worker.thread.is_alive():  # a thread never started (start() failed early): nothing to join
            worker.thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [w.name for w in workers if w.thread.is_alive()]
    if stuck:
        log.warning("store thread(s) %s still busy after %.1f s; left to finish", ", ".join(stuck), timeout)
    return not stuck
