"""The packaged loop: an algorithm, runner processes, one store.

``Trainer(algorithm=..., n_runners=N, store=...)`` and ``fit(agent, train_dataset)``
start N runner processes (each a :class:`LitAgentRunner` over the same store
directory, or the same ``agl store`` URL), run the algorithm in this process, and
stop the runners when it returns, raises, or Ctrl-C arrives. Runners stopped
mid-rollout leave their attempts to the reaper.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import multiprocessing as mp
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Algorithm", "FunctionalAlgorithm", "Trainer", "algo", "open_store", "run_runner_process"]

log = logging.getLogger(__name__)


def open_store(location: Any) -> Any:
    """A store from a path (FileStore) or an ``http(s)://`` URL (LightningStoreClient)."""
    if not isinstance(location, (str, Path)):
        return location
    text = str(location)
    if text.startswith(("http://", "https://")):
        from store_fs.client import LightningStoreClient

        return LightningStoreClient(text)
    from store_fs.store import FileStore

    return FileStore(text)


class Algorithm:
    """Base class of algorithms: subclasses implement ``run`` (sync or async)."""

    store: Any = None
    initial_resources: Any = None

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        raise NotImplementedError


_INJECTABLE = ("store", "initial_resources", "train_dataset", "val_dataset")


class FunctionalAlgorithm(Algorithm):
    """An algorithm made from a function; arguments are passed by parameter name."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self._func = func
        self._params = inspect.signature(func).parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        offered = {
            "store": self.store,
            "initial_resources": self.initial_resources,
            "train_dataset": train_dataset,
            "val_dataset": val_dataset,
        }
        for name in ("train_dataset", "val_dataset"):
            if offered[name] is not None and name not in self._params:
                raise TypeError(f"{self._func.__name__} takes no {name}")
        return self._func(**{k: v for k, v in offered.items() if k in self._params})


def algo(func: Callable[..., Any]) -> FunctionalAlgorithm:
    """Make an algorithm of a function taking any of: store, initial_resources, train_dataset, val_dataset."""
    return FunctionalAlgorithm(func)


def run_runner_process(
    store_location: str,
    agent: Any,
    worker_index: int,
    stop: Any,
    tracer: Any = None,
    runner_kwargs: Any = None,
) -> None:
    """Body of one runner process: run until ``stop`` is set or SIGINT/SIGTERM arrives."""
    from store_fs.runner import LitAgentRunner

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("store_fs").setLevel(logging.INFO)  # completed rollouts, with durations

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runner = LitAgentRunner(tracer=tracer, **(runner_kwargs or {}))
    with runner.run_context(agent=agent, store=open_store(store_location), worker_id=worker_index):
        asyncio.run(runner.iter(event=stop))


class Trainer:
    """Runs an algorithm against ``n_runners`` runner processes sharing one store.

    Args:
        algorithm: an :class:`Algorithm` (or an ``@algo`` function).
        n_runners: runner processes to start (default 1).
        store: a store directory, an ``agl store`` URL, or a ``FileStore`` (its root is used).
        tracer: the runners' tracer (default: :class:`~store_fs.tracing.OtelTracer`); must pickle.
        initial_resources: published before the algorithm starts, and passed to it.
        runner_kwargs: extra ``LitAgentRunner`` arguments (e.g. ``poll_interval``).
    """

    def __init__(
        self,
        *,
        algorithm: Algorithm | Callable[..., Any],
        n_runners: int | None = None,
        store: Any = "runs/trainer",
        tracer: Any = None,
        initial_resources: Any = None,
        runner_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.algorithm = algorithm if isinstance(algorithm, Algorithm) else algo(algorithm)
        self.n_runners = n_runners or 1
        root = getattr(store, "root", store)
        self.store_location = str(root)
        self.tracer = tracer
        self.initial_resources = initial_resources
        self.runner_kwargs = dict(runner_kwargs or {"poll_interval": 0.2})

    def fit(self, agent: Any, train_dataset: Any = None, *, val_dataset: Any = None) -> Any:
        """Run the algorithm to completion with runners executing ``agent``; returns its result."""
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        runners = [
            ctx.Process(
                target=run_runner_process,
                args=(self.store_location, agent, i, stop, self.tracer, self.runner_kwargs),
                name=f"agl-runner-{i}",
            )
            for i in range(self.n_runners)
        ]
        for process in runners:
            process.start()
        try:
            return self._run_algorithm(train_dataset, val_dataset)
        finally:
            stop.set()
            for process in runners:
                process.join(15)
                if process.is_alive():
                    log.warning("runner %s did not stop in time: terminating it", process.name)
                    process.terminate()
                    process.join(5)

    def _run_algorithm(self, train_dataset: Any, val_dataset: Any) -> Any:
        store = open_store(self.store_location)
        self.algorithm.store = store
        self.algorithm.initial_resources = self.initial_resources
        if self.initial_resources is not None:
            asyncio.run(store.add_resources(self.initial_resources))
        result = self.algorithm.run(train_dataset=train_dataset, val_dataset=val_dataset)
        if inspect.isawaitable(result):
            return asyncio.run(_await(result))
        return result


async def _await(awaitable: Any) -> Any:
    return await awaitable
