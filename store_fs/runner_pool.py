"""``RunnerPool``: runner processes for one agent on one store, started, watched and stopped.

``agl run`` and :class:`~store_fs.trainer.Trainer` both supervise runners with it:

>>> with RunnerPool("runs/exp1", agent, n_runners=4) as pool:   # doctest: +SKIP
...     pool.wait()          # until Ctrl-C, SIGTERM, or every runner has exited

Each runner is a spawned process running :func:`run_runner_process`: a
:class:`~store_fs.runner.LitAgentRunner` over the store, until the pool's stop event is
set or the process gets a signal.

Signals (docs/runner.md). The first SIGINT or SIGTERM stops: the pool sets the stop event;
each runner stops taking work, cancels its agents and reports their attempts ``failed``
("runner interrupted") within its grace period, then exits; runners still alive after
``stop_timeout`` are terminated, which for them is a second signal. A second signal exits
at once: a runner process calls ``os._exit``, the pool kills its runners and raises
``KeyboardInterrupt``. A runner that exits with an error is restarted up to
``max_restarts`` times in all (0: never).

Each runner leads its own process group, so what its agents start (tools, sandboxes, servers)
is in that group too, and ends with the runner: a runner sends SIGTERM to the rest of its
group as it exits, and once a runner process is gone (stopped, crashed, killed), the pool
sends SIGTERM to what is left of its group and, after ``_GROUP_GRACE_SECONDS``, SIGKILL. A
terminal's Ctrl-C therefore reaches the pool only, which stops the runners through the stop
event. A process an agent detaches itself (a new session) is its own business.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from store_fs.errors import RemoteStoreError
from store_fs.lightning_store import open_store

__all__ = ["RunnerPool", "check_runner_store", "run_runner_process", "shippable_agent", "worker_name"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.2
# How long what is left of a finished runner's process group has between SIGTERM and SIGKILL.
_GROUP_GRACE_SECONDS = 1.0
# The runner retries every call itself, so its HTTP client keeps its own retries short.
_CLIENT_RETRY_DELAYS = (0.2, 0.5, 1.0)


class _StopOnSignal:
    """A signal handler: the first signal asks to stop, a second one exits at once.

    It only flips a flag: taking a lock in a handler (setting an Event) could deadlock
    with the main thread holding the same lock at that instant.
    """

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            os._exit(128 + signum)  # the second signal: no cleanup, no waiting for anything
        self.stopping = True


class _StopEvent:
    """Set once this process got a signal, the pool's shared stop event is set, or the process
    that started this runner is gone (``parent_pid`` is no longer its parent: killed with -9,
    it could forward no signal, and an orphan would go on taking work for good); from then
    on, a signal (e.g. the pool terminating a late runner) is a second one."""

    def __init__(self, shared: Any, signals: _StopOnSignal, parent_pid: int | None) -> None:
        self.shared = shared
        self.signals = signals
        self.parent_pid = parent_pid

    def is_set(self) -> bool:
        if not self.signals.stopping:
            if self.shared.is_set():
                self.signals.stopping = True
            elif self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning(
                    "the process that started this runner (pid %d) is gone: stopping", self.parent_pid
                )
                self.signals.stopping = True
        return self.signals.stopping


class _AgentByName:
    """Unpickles as the module-level object ``module.qualname``: how an agent that does not
    pickle by value (upstream's ``@rollout`` agents) reaches a spawned runner."""

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def __reduce__(self) -> tuple[Any, ...]:
        from store_fs.agent import load_qualified

        return (load_qualified, (self.module, self.qualname))


def _pickles(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True


def _by_name(agent: Any) -> _AgentByName | None:
    from store_fs.agent import load_qualified

    module, qualname = getattr(agent, "__module__", None), getattr(agent, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        with contextlib.suppress(Exception):
            if load_qualified(module, qualname) is agent:
                return _AgentByName(module, qualname)
    return None


def _without_weak_references(agent: Any) -> Any:
    """A shallow copy whose weak references (upstream's ``LitAgent`` keeps its trainer and
    runner so) are None: they cannot cross a process boundary anyway."""
    if not hasattr(agent, "__dict__"):
        return None
    clone = copy.copy(agent)
    for name, value in vars(clone).items():
        if isinstance(value, weakref.ReferenceType):
            setattr(clone, name, None)
    return clone


def shippable_agent(agent: Any) -> Any:
    """``agent`` as it can travel to a spawned runner process: itself if it pickles; else a
    reference to the module-level name it is bound to; else a copy without its weak
    references. TypeError if none of these pickles."""
    if _pickles(agent):
        return agent
    found = _by_name(agent)
    if found is None:
        clone = _without_weak_references(agent)
        found = clone if clone is not None and _pickles(clone) else None
    if found is None:
        raise TypeError(
            f"the agent {agent!r} cannot be sent to runner processes (it does not pickle): "
            "define it at module level"
        )
    return found


def _open_runner_store(location: str) -> Any:
    if location.startswith(("http://", "https://")):
        from store_fs.client import LightningStoreClient

        return LightningStoreClient(location, retry_delays=_CLIENT_RETRY_DELAYS)
    return open_store(location)


def check_runner_store(location: str) -> None:
    """Fail now, not in every runner process: a store directory that does not exist
    (:class:`~store_fs.errors.StoreNotFoundError`), or a server that refuses this process's
    bearer token (:class:`~store_fs.errors.RemoteStoreError`: each runner logged it at every
    poll, forever). A server not reachable yet is fine: runners wait for it."""
    if not location.startswith(("http://", "https://")):
        from store_fs.store import FileStore

        FileStore(location, create=False).close()
        return
    from store_fs.client import LightningStoreClient

    async def probe() -> None:
        client = LightningStoreClient(location, retry_delays=(), timeout=10.0)
        try:
            await client.query_workers(limit=1)
        except RemoteStoreError as err:
            if err.status in (401, 403):
                raise
        except OSError:
            pass  # not up yet, or gone for a moment: the runners retry
        finally:
            await client.close()

    asyncio.run(probe())


def run_runner_process(
    store_location: str,
    agent: Any,
    worker_index: int,
    stop: Any,
    tracer: Any = None,
    runner_kwargs: Any = None,
    parent_pid: int | None = None,
) -> None:
    """Body of one runner process: run until ``stop`` is set, SIGINT/SIGTERM arrives, or the
    process ``parent_pid`` (a pool's: a runner started otherwise, from a shell, is not
    watched) is no longer its parent.

    Each stops the runner (attempts in flight are reported failed, "runner interrupted") and
    returns; a second signal ends the process at once. ``runner_kwargs`` are
    :class:`~store_fs.runner.LitAgentRunner` arguments, plus ``hooks`` (for ``run_context``).
    """
    from store_fs.runner import LitAgentRunner

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("store_fs").setLevel(logging.INFO)  # completed rollouts, with durations

    if parent_pid is not None:
        with contextlib.suppress(OSError):  # a group of its own, which its pool ends after it
            os.setpgid(0, 0)
    signals = _StopOnSignal()
    if threading.current_thread() is threading.main_thread():  # handlers can be set only there
        signal.signal(signal.SIGINT, signals)
        signal.signal(signal.SIGTERM, signals)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the pool's spawn
    if isinstance(agent, bytes):  # a pool's: its module is imported now, signals unblocked
        agent = pickle.loads(agent)
    kwargs = dict(runner_kwargs or {})
    hooks = kwargs.pop("hooks", None)
    runner = LitAgentRunner(tracer=tracer, **kwargs)
    store = _open_runner_store(store_location)
    try:
        with runner.run_context(agent=agent, store=store, hooks=hooks, worker_id=worker_index):
            if parent_pid is not None:  # a pool's: named by host and pool (worker_name)
                runner.worker_id = worker_name(worker_index, parent_pid)
            asyncio.run(_iterate(runner, store, _StopEvent(stop, signals, parent_pid)))
    finally:
        if parent_pid is not None:
            _end_own_group()


def worker_name(index: int, pool_pid: int) -> str:
    """The worker id of runner ``index`` of the pool in process ``pool_pid``:
    ``<host>-<pool pid>-Worker-<index>``, so that pools on several machines, or several on one
    (two ``agl run``, a ``Trainer`` beside one), never share a worker record. A runner the pool
    restarts keeps its id."""
    from store_fs._disk.fsio import host_tag

    return f"{host_tag()}-{pool_pid}-Worker-{index}"


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _end_own_group() -> None:
    """SIGTERM to what is left in this runner's process group (its agents' processes), itself
    spared: the pool does the same once the runner is gone, but a pool killed along with its
    group (``kill -9 -PGID``, a closed terminal's SIGHUP) cannot, and an orphaned runner stops
    by itself."""
    with contextlib.suppress(OSError, ValueError):
        if os.getpgrp() != os.getpid():
            return  # no group of its own (setpgid failed): not ours to signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)


async def _iterate(runner: Any, store: Any, event: _StopEvent) -> None:
    try:
        await runner.iter(event=event)
    finally:
        close = getattr(store, "close", None)
        if inspect.iscoroutinefunction(close):
            await close()  # the HTTP client's connections on this loop


def _end_groups(procs: list[Any], ended: set[int]) -> None:
    """End what is left of the process groups of finished runners (``procs``, each at most once
    as recorded in ``ended``): SIGTERM, then SIGKILL to whatever is still there after
    ``_GROUP_GRACE_SECONDS``.

    A group outlives its leader while any member lives, and its id, the runner's pid, is not
    handed to another process meanwhile; a runner that died before making its group has none
    to signal (``ProcessLookupError``)."""
    signalled = []
    for proc in procs:
        if proc.pid is None or proc.pid in ended or proc.exitcode is None:
            continue
        ended.add(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            continue  # no such group: nothing the runner started is left
        log.info("ending the processes runner %s left behind", proc.name)
        signalled.append(proc.pid)
    deadline = time.monotonic() + _GROUP_GRACE_SECONDS
    while signalled and time.monotonic() < deadline:
        time.sleep(0.05)
        signalled = [pid for pid in signalled if _group_exists(pid)]
    for pid in signalled:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists; signalling it is not allowed
    return True


class RunnerPool:
    """``n_runners`` runner processes executing ``agent`` on the store at ``store_location``
    (a directory or an ``agl store`` URL).

    Args:
        tracer: the runners' tracer (default: the runner's own default); it must pickle.
        runner_kwargs: extra :class:`~store_fs.runner.LitAgentRunner` arguments, and ``hooks`` (a list;
            they must pickle).
        max_restarts: how many times in all a runner that exited with an error is started again.
        stop_timeout: seconds the runners get, together, to stop before they are terminated
            (a runner needs its ``interrupt_grace_seconds`` and a little more).
    """

    def __init__(
        self,
        store_location: str,
        agent: Any,
        *,
        n_runners: int = 1,
        tracer: Any = None,
        runner_kwargs: dict[str, Any] | None = None,
        max_restarts: int = 0,
        stop_timeout: float = 8.0,
    ) -> None:
        if n_runners < 1:
            raise ValueError(f"n_runners must be at least 1, not {n_runners}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, not {max_restarts}")
        self.store_location = store_location
        self.agent = shippable_agent(agent)
        self.n_runners = n_runners
        self.tracer = tracer
        self.runner_kwargs = dict(runner_kwargs or {})
        self.restarts_left = max_restarts
        self.stop_timeout = stop_timeout
        self._ctx = mp.get_context("spawn")
        self._stop = self._ctx.Event()
        self._procs: list[Any] = []
        #: Some runner exited with an error (or had to be terminated) and was not restarted.
        self.failed = False
        #: Why, one line per runner that was not restarted (also logged when it happens).
        self.failures: list[str] = []
        self._reported: set[int] = set()  # pids of the runners in ``failures``
        self._killed = False
        self._signals_seen = 0
        self._groups_ended: set[int] = set()  # pids of runners whose process group was ended

    def _spawn(self, index: int) -> Any:
        proc = self._ctx.Process(
            target=run_runner_process,
            args=(
                self.store_location,
                pickle.dumps(self.agent),
                index,
                self._stop,
                self.tracer,
                self.runner_kwargs,
                os.getpid(),
            ),
            name=f"agl-runner-{index}",
        )
        # SIGINT and SIGTERM blocked in the new process (a mask survives exec) until its
        # handlers are set: until then it is in the terminal's process group, and a Ctrl-C while
        # it imported the agent's module ended it with a traceback (exit 1 for the pool). Held,
        # the signal stops it as any other stop does once it is ready. The agent travels as
        # bytes, unpickled (its module imported) only after that: a process or thread the
        # module starts must not inherit the block, or it would ignore SIGTERM for good.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return proc

    def start(self) -> RunnerPool:
        """Start the runner processes (once)."""
        if not self._procs:
            self._procs = [self._spawn(i) for i in range(self.n_runners)]
        return self

    def request_stop(self) -> None:
        """Ask the runners to stop; :meth:`stop` waits for them."""
        self._stop.set()

    def _stopping(self) -> bool:
        return self._signals_seen > 0 or self._stop.is_set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def poll(self) -> bool:
        """Restart runners that failed, as ``max_restarts`` allows; True while any runner runs."""
        _end_groups([proc for proc in self._procs if not proc.is_alive()], self._groups_ended)
        for index, proc in enumerate(self._procs):
            if proc.is_alive() or proc.exitcode == 0 or self._stop.is_set():
                continue
            if self.restarts_left <= 0:
                if proc.pid not in self._reported:
                    self._reported.add(proc.pid)
                    why = f"runner {proc.name} exited with code {proc.exitcode}: not restarted (none left)"
                    self.failures.append(why)
                    log.warning("%s; %d runner(s) still running", why, sum(p.is_alive() for p in self._procs))
                self.failed = True
                continue
            self.restarts_left -= 1
            log.warning("runner %s exited with code %s: restarting it", proc.name, proc.exitcode)
            _end_groups([proc], self._groups_ended)  # if it died since the pass above
            self._procs[index] = self._spawn(index)
        return any(proc.is_alive() for proc in self._procs)

    def wait(self, until: Callable[[], bool] | None = None) -> None:
        """Watch the runners until ``until()`` is true, the pool is asked to stop, a signal
        arrives (SIGINT or SIGTERM: see the module docstring), or no runner is left; then
        stop them."""
        with self._signals():
            try:
                while not self._stopping() and self.poll() and not (until and until()):
                    time.sleep(_POLL_SECONDS)
            except KeyboardInterrupt:
                if self._killed:  # the second signal: out at once
                    raise
                # else Python's own SIGINT handling (not the main thread): a first Ctrl-C
            finally:
                self.stop()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """While waiting: the first SIGINT/SIGTERM stops the pool, a second one kills it."""
        if threading.current_thread() is not threading.main_thread():
            yield  # handlers can only be set from the main thread
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # Only a flag here (the loop in wait() sets the stop event): setting an Event from a
            # handler could deadlock on a lock the interrupted main thread holds.
            self._signals_seen += 1
            if self._signals_seen > 1:
                self.kill()
                raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Stop every runner: ask, wait up to ``stop_timeout`` for all of them, then terminate."""
        self._stop.set()
        deadline = time.monotonic() + self.stop_timeout
        try:
            for proc in self._procs:
                proc.join(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            self.kill()
            raise
        self._terminate_late()
        _end_groups(self._procs, self._groups_ended)
        if any(proc.exitcode != 0 for proc in self._procs):
            self.failed = True

    def _terminate_late(self) -> None:
        late = [proc for proc in self._procs if proc.is_alive()]
        for proc in late:
            log.warning("runner %s did not stop in time: terminating it", proc.name)
            proc.terminate()  # its second signal: it exits at once
        for proc in late:
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)

    def kill(self) -> None:
        """SIGKILL every runner still alive and what is left of every runner's process group
        (their attempts are left to the reaper)."""
        self._killed = True
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            if proc.pid is not None and proc.pid not in self._groups_ended:
                self._groups_ended.add(proc.pid)
                with contextlib.suppress(OSError):  # a group outlives its leader while it has members
                    os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> RunnerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
