"""The packaged loop: an algorithm, runner processes, one store.

``Trainer(algorithm=..., n_runners=N, store=...)`` and ``fit(agent, train_dataset)``
start N runner processes (a :class:`~store_fs.runner_pool.RunnerPool` over the same
store directory, or the same ``agl store`` URL), run the algorithm in this process, and
stop the runners when it returns, raises, or Ctrl-C arrives. Runners stopped
mid-rollout leave their attempts to the reaper.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from store_fs.lightning_store import open_store
from store_fs.runner_pool import RunnerPool, run_runner_process

__all__ = ["Algorithm", "FunctionalAlgorithm", "Trainer", "algo", "open_store", "run_runner_process"]


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
        pool = RunnerPool(
            self.store_location,
            agent,
            n_runners=self.n_runners,
            tracer=self.tracer,
            runner_kwargs=self.runner_kwargs,
        )
        with pool:
            return self._run_algorithm(train_dataset, val_dataset)

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
