"""The packaged loop: an algorithm, runner processes, one store.

``Trainer(algorithm=..., n_runners=N, store=...)`` and ``fit(agent, train_dataset)``
start N runner processes (a :class:`~store_fs.runner_pool.RunnerPool` over the same
store directory, or the same ``agl store`` URL), run the algorithm in this process, and
stop the runners when it returns, raises, or Ctrl-C arrives. Runners stopped
mid-rollout report their attempts failed ("runner interrupted"), so retry rules apply.

The constructor takes upstream Agent-lightning 0.3's arguments with their meaning
(docs/behaviour.md §10.5): ``n_runners`` (``n_workers`` is its old name), ``max_rollouts``
(``max_tasks``), ``initial_resources``, ``tracer``, ``adapter``, ``store``, ``runner``,
``algorithm``, ``hooks``. Arguments that need upstream's execution strategies or LLM proxy
are refused with a :class:`TypeError` naming what to use instead.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import ctypes
import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from store_fs.lightning_store import LightningStore, open_store
from store_fs.models import RolloutMode
from store_fs.runner_pool import RunnerPool, run_runner_process

_WATCH_SECONDS = 0.5

log = logging.getLogger(__name__)

__all__ = [
    "Algorithm",
    "AlgorithmLike",
    "Baseline",
    "FunctionalAlgorithm",
    "Trainer",
    "algo",
    "open_store",
    "run_runner_process",
]

DEFAULT_STORE = "runs/trainer"


class Algorithm:
    """Base class of algorithms: subclasses implement ``run`` (sync or async).

    The trainer hands an algorithm what it needs before ``run``: the store, the initial
    resources, the adapter and itself; ``get_*`` read them back, as upstream's accessors do.
    """

    store: LightningStore | None = None
    initial_resources: Any = None
    adapter: Any = None
    trainer: Trainer | None = None
    llm_proxy: Any = None

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        raise NotImplementedError

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)

    def set_store(self, store: LightningStore) -> None:
        self.store = store

    def get_store(self) -> LightningStore:
        if self.store is None:
            raise ValueError("the algorithm has no store yet: it is set by Trainer.fit (or set_store)")
        return self.store

    def set_initial_resources(self, resources: Any) -> None:
        self.initial_resources = resources

    def get_initial_resources(self) -> Any:
        return self.initial_resources

    def set_adapter(self, adapter: Any) -> None:
        self.adapter = adapter

    def get_adapter(self) -> Any:
        if self.adapter is None:
            raise ValueError("the algorithm has no adapter: pass adapter= to the Trainer")
        return self.adapter

    def set_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def get_trainer(self) -> Trainer:
        if self.trainer is None:
            raise ValueError("the algorithm is not part of a Trainer")
        return self.trainer

    def set_llm_proxy(self, llm_proxy: Any) -> None:
        self.llm_proxy = llm_proxy

    def get_llm_proxy(self) -> Any:
        return self.llm_proxy


class AlgorithmLike(Protocol):
    """What the trainer calls: agl's :class:`Algorithm`, or an object with the same methods
    (upstream Agent-lightning's ``Algorithm`` subclasses and ``@agentlightning.algo`` functions)."""

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any: ...

    def set_store(self, store: Any) -> None: ...

    def set_initial_resources(self, resources: Any) -> None: ...

    def set_adapter(self, adapter: Any) -> None: ...

    def set_trainer(self, trainer: Any) -> None: ...


class FunctionalAlgorithm(Algorithm):
    """An algorithm made from a function; what it declares is passed by parameter name:
    ``store``, ``initial_resources``, ``adapter``, ``llm_proxy``, ``train_dataset``, ``val_dataset``."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self._func = func
        self._params = inspect.signature(func).parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self._func)

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        offered: dict[str, Callable[[], Any]] = {
            "store": self.get_store,
            "initial_resources": self.get_initial_resources,
            "adapter": lambda: self.adapter,
            "llm_proxy": self.get_llm_proxy,
            "train_dataset": lambda: train_dataset,
            "val_dataset": lambda: val_dataset,
        }
        for name, value in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            if value is not None and name not in self._params:
                raise TypeError(f"{self._func.__name__} takes no {name}")
        return self._func(**{name: get() for name, get in offered.items() if name in self._params})


def algo(func: Callable[..., Any]) -> FunctionalAlgorithm:
    """Make an algorithm of a function taking any of: store, initial_resources, adapter,
    llm_proxy, train_dataset, val_dataset."""
    return FunctionalAlgorithm(func)


class Baseline(Algorithm):
    """The algorithm of :meth:`Trainer.dev`: every sample once (train, then val), no learning.

    Returns ``{rollout_id: status}`` so a dry run shows at a glance what finished how.
    """

    def __init__(self, *, timeout: float | None = None) -> None:
        self.timeout = timeout

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> dict[str, str]:
        store = self.get_store()
        ids: list[str] = []
        modes: tuple[tuple[RolloutMode, Any], ...] = (("train", train_dataset), ("val", val_dataset))
        for mode, dataset in modes:
            for sample in _samples(dataset):
                ids.append((await store.enqueue_rollout(input=sample, mode=mode)).rollout_id)
        done = await store.wait_for_rollouts(rollout_ids=ids, timeout=self.timeout)
        return {r.rollout_id: r.status for r in done}


def _samples(dataset: Any) -> Iterable[Any]:
    if dataset is None:
        return ()
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return (dataset[i] for i in range(len(dataset)))
    items: Iterable[Any] = iter(dataset)
    return items


# Upstream arguments agl does not provide, and what to use instead.
_UNSUPPORTED = {
    "strategy": "agl runs runners as processes over the shared store (n_runners=); "
    "for runners on other machines run `agl run` there",
    "llm_proxy": "pass the model endpoint as an LLM resource in initial_resources",
    "port": "serve the store with `agl store --port N` and pass store='http://host:N'",
    "triplet_exporter": "pass adapter=",
}


class Trainer:
    """Runs an algorithm against ``n_runners`` runner processes sharing one store.

    Args:
        algorithm: an :class:`Algorithm` (or an ``@algo`` function, or upstream's
            ``Algorithm``, recognised by its methods); :meth:`dev` defaults to :class:`Baseline`.
        n_runners: runner processes to start (default 1); ``n_workers`` is the old name.
        max_rollouts: each runner stops after this many rollouts; ``max_tasks`` is the old name.
        store: a store directory, an ``agl store`` URL, or a store object (a ``FileStore``'s
            root or a client's URL is what the runner processes open).
        tracer: the runners' tracer (default: :class:`~store_fs.tracing.OtelTracer`); must pickle.
            Upstream's tracers are refused (``TypeError``): they run under upstream's runner.
        initial_resources: published before the algorithm starts, and passed to it.
        adapter: handed to the algorithm (``get_adapter()``), as upstream.
        runner: ``LitAgentRunner`` keyword arguments (a dict) for every runner process.
        hooks: runner hooks (upstream's ``Hook`` interface), passed to every runner.
        runner_kwargs: extra ``LitAgentRunner`` arguments (e.g. ``poll_interval``).
        dev: as upstream's deprecated flag: ``fit`` behaves as :meth:`dev`.
        daemon: accepted for compatibility; runner processes are always stopped with the trainer.
    """

    def __init__(
        self,
        *,
        dev: bool = False,
        n_runners: int | None = None,
        max_rollouts: int | None = None,
        initial_resources: Any = None,
        tracer: Any = None,
        adapter: Any = None,
        store: Any = None,
        runner: dict[str, Any] | None = None,
        algorithm: AlgorithmLike | Callable[..., Any] | None = None,
        n_workers: int | None = None,
        max_tasks: int | None = None,
        daemon: bool = True,
        hooks: Any = None,
        runner_kwargs: dict[str, Any] | None = None,
        **unsupported: Any,
    ) -> None:
        _refuse(unsupported)
        if runner is not None and not isinstance(runner, dict):
            raise TypeError(
                "runner= takes LitAgentRunner keyword arguments (a dict): each runner process builds its own"
            )
        _check_tracer(tracer)
        self.algorithm = _as_algorithm(algorithm)
        self.n_runners = _positive("n_runners", n_runners if n_runners is not None else n_workers or 1)
        self.n_workers = self.n_runners
        self.max_rollouts = max_rollouts if max_rollouts is not None else max_tasks
        self.max_tasks = self.max_rollouts
        self.store_location = _location(store)
        self.tracer = tracer
        self.adapter = adapter
        self.initial_resources = initial_resources
        self.daemon = daemon
        self._dev = dev
        self.runner_kwargs: dict[str, Any] = {"poll_interval": 0.2, **(runner or {}), **(runner_kwargs or {})}
        if self.max_rollouts is not None:
            self.runner_kwargs["max_rollouts"] = _positive("max_rollouts", self.max_rollouts)
        if hooks is not None:
            self.runner_kwargs["hooks"] = list(hooks) if isinstance(hooks, (list, tuple)) else [hooks]

    def fit(self, agent: Any, train_dataset: Any = None, *, val_dataset: Any = None) -> Any:
        """Run the algorithm to completion with runners executing ``agent``; returns its result."""
        if self._dev:
            return self.dev(agent, train_dataset, val_dataset=val_dataset)
        if self.algorithm is None:
            raise TypeError("Trainer.fit needs an algorithm (algorithm=...); Trainer.dev runs a baseline")
        return self._run(self.algorithm, agent, train_dataset, val_dataset)

    def dev(self, agent: Any, train_dataset: Any = None, *, val_dataset: Any = None) -> Any:
        """A dry run: the configured algorithm, or :class:`Baseline` (each sample once), with the
        same store, runners and tracer as :meth:`fit`."""
        return self._run(self.algorithm or Baseline(), agent, train_dataset, val_dataset)

    def _run(self, algorithm: AlgorithmLike, agent: Any, train_dataset: Any, val_dataset: Any) -> Any:
        set_trainer = getattr(agent, "set_trainer", None)
        if callable(set_trainer):
            set_trainer(self)
        pool = RunnerPool(
            self.store_location,
            agent,
            n_runners=self.n_runners,
            tracer=self.tracer,
            runner_kwargs=self.runner_kwargs,
        )
        with pool:
            watch = _RunnerWatch(pool)
            try:
                result = self._run_algorithm(algorithm, train_dataset, val_dataset)
            except (KeyboardInterrupt, _NoRunnerLeft):
                if _finished(watch) is not None:  # the watch interrupted it: say why
                    raise RuntimeError(watch.dead) from None
                raise
            except BaseException:
                with contextlib.suppress(KeyboardInterrupt):  # the watch's, come late
                    _finished(watch)  # no interrupt may land in the pool's stop
                raise
            try:
                _finished(watch)
            except KeyboardInterrupt:
                if watch.dead is None:  # a real Ctrl-C
                    raise
                # else the watch's interrupt came as the algorithm returned: its result stands
            return result

    def _run_algorithm(self, algorithm: AlgorithmLike, train_dataset: Any, val_dataset: Any) -> Any:
        store = open_store(self.store_location)
        algorithm.set_store(store)
        if self.initial_resources is not None:  # as upstream: what was not given is not set
            algorithm.set_initial_resources(self.initial_resources)
        if self.adapter is not None:
            algorithm.set_adapter(self.adapter)
        algorithm.set_trainer(self)
        if self.initial_resources is not None:
            asyncio.run(store.add_resources(self.initial_resources))
        result = algorithm.run(train_dataset=train_dataset, val_dataset=val_dataset)
        if inspect.isawaitable(result):
            return asyncio.run(_await(result))
        return result


class _NoRunnerLeft(BaseException):
    """Raised in a Trainer's thread other than the main one when its runners have all died
    (a BaseException, so that an algorithm's ``except Exception`` does not swallow it)."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Have ``exc_type`` raised in the thread ``thread_id`` when it next runs Python code (None:
    withdraw one not raised yet). CPython's ``PyThreadState_SetAsyncExc``: a signal, what
    interrupts the main thread, reaches no other thread."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


def _finished(watch: _RunnerWatch) -> str | None:
    """``watch.finish()``, however often an interrupt the watch sent again lands in it."""
    while True:
        try:
            return watch.finish()
        except _NoRunnerLeft:
            continue


class _RunnerWatch:
    """While the algorithm runs (started on creation, until :meth:`finish`): restarts runners
    that die, as the pool allows, and when every runner has died with an error (none left to
    restart) says so in :attr:`dead` and interrupts the algorithm, which would otherwise wait
    for its rollouts forever. (Runners that stopped by themselves, at ``max_rollouts``, are
    not an error.) The main thread is interrupted with ``KeyboardInterrupt``
    (``_thread.interrupt_main``), another thread with :class:`_NoRunnerLeft`; either when it
    next runs Python code (a wait for rollouts does, a blocking call in C only once it returns).
    The other thread's exception is sent again every ``_WATCH_SECONDS`` until :meth:`finish`:
    one that landed in an asyncio task or callback of the algorithm's loop is kept there (as a
    task's exception) and interrupts nothing."""

    def __init__(self, pool: RunnerPool) -> None:
        self.pool = pool
        self.dead: str | None = None
        self._main = threading.current_thread() is threading.main_thread()
        self._owner = threading.get_ident()
        self._lock = threading.Lock()
        self._running = True
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="agl-runner-watch", daemon=True)
        self._thread.start()

    def finish(self) -> str | None:
        """Stop watching (no interrupt comes after this returns); :attr:`dead`."""
        with self._lock:
            self._running = False
            if self.dead is not None and not self._main:
                _raise_in_thread(self._owner, None)  # if still pending: the caller is told anyway
        self._done.set()
        self._thread.join()
        return self.dead

    def _watch(self) -> None:
        while not self._done.wait(_WATCH_SECONDS):
            if self.pool.poll() or not self.pool.failed or self.pool.stopping:
                continue
            failures = "; ".join(self.pool.failures) or "every runner process exited with an error"
            with self._lock:  # decided and sent while the algorithm still runs, or not at all
                if not self._running:
                    return
                self.dead = f"no runner left to run the algorithm's rollouts: {failures}"
                if self._main:
                    _thread.interrupt_main()
                    return
            while True:
                with self._lock:
                    if not self._running:
                        return
                    _raise_in_thread(self._owner, _NoRunnerLeft)
                if self._done.wait(_WATCH_SECONDS):
                    return


def _check_tracer(tracer: Any) -> None:
    if tracer is None:
        return
    from store_fs.tracing.tracer import Tracer

    if not isinstance(tracer, Tracer):
        raise TypeError(
            f"Trainer(tracer={type(tracer).__name__}(...)): agl's runners record spans with "
            "store_fs.tracing.OtelTracer (or AgentOpsTracer); upstream's tracers run under upstream's Trainer"
        )


def _refuse(unsupported: dict[str, Any]) -> None:
    for name, value in unsupported.items():
        if name in _UNSUPPORTED:
            if value is not None:
                raise TypeError(f"Trainer({name}=...) is not supported by agl: {_UNSUPPORTED[name]}")
            continue
        raise TypeError(f"Trainer() got an unexpected keyword argument {name!r}")


_ALGORITHM_METHODS = ("run", "set_store", "set_initial_resources", "set_adapter", "set_trainer")


def _as_algorithm(algorithm: AlgorithmLike | Callable[..., Any] | None) -> AlgorithmLike | None:
    if algorithm is None or isinstance(algorithm, Algorithm):
        return algorithm
    if all(callable(getattr(algorithm, name, None)) for name in _ALGORITHM_METHODS):
        found: AlgorithmLike = algorithm  # type: ignore[assignment]
        return found
    if not callable(algorithm):
        raise TypeError(f"algorithm= takes an Algorithm or a function, not {algorithm!r}")
    return algo(algorithm)


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _location(store: Any) -> str:
    """Where runner processes find the store: a path or a URL (store objects give theirs)."""
    if store is None:
        return DEFAULT_STORE
    if isinstance(store, (str, Path)):
        return str(store)
    for attribute in ("root", "url"):
        value = getattr(store, attribute, None)
        if isinstance(value, (str, Path)):
            return str(value)
    raise TypeError(
        f"store= takes a directory, an agl store URL, FileStore or LightningStoreClient, not {store!r}"
    )


async def _await(awaitable: Any) -> Any:
    return await awaitable
