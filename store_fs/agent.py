"""Agents: what a runner calls for each rollout, and the decorators that make one from a function.

``@rollout`` looks at the function's parameters: ``(task, prompt_template)`` gets
the first ``PromptTemplate`` of the rollout's resources, ``(task, llm)`` the first
``LLM`` (a ``ProxyLLM`` routed to this rollout and attempt), and a parameter named
``rollout`` gets the ``AttemptedRollout``. Sync and async functions both work.
The function may return ``None``, a number (the final reward), or a list of spans
(``Span``, ``SpanCoreFields``, OpenTelemetry ``ReadableSpan``, or dicts of either shape);
the runner fails an attempt whose agent returns anything else (docs/runner.md).

Runners take any object with a ``LitAgent``'s methods (:class:`AgentLike`), so upstream
Agent-lightning's ``LitAgent`` subclasses and ``@agentlightning.rollout`` agents run as they
are (:func:`as_agent`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal, Protocol

from store_fs.models import LLM, AttemptedRollout, NamedResources, PromptTemplate, ProxyLLM

__all__ = [
    "AgentLike",
    "FunctionalLitAgent",
    "LitAgent",
    "as_agent",
    "llm_rollout",
    "load_qualified",
    "prompt_rollout",
    "rollout",
]


class AgentLike(Protocol):
    """What a runner calls: agl's :class:`LitAgent`, or any object with the same methods
    (upstream Agent-lightning's ``LitAgent`` and its decorated functions)."""

    def is_async(self) -> bool: ...

    def training_rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any: ...

    async def training_rollout_async(
        self, task: Any, resources: NamedResources, rollout: AttemptedRollout
    ) -> Any: ...

    def validation_rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any: ...

    async def validation_rollout_async(
        self, task: Any, resources: NamedResources, rollout: AttemptedRollout
    ) -> Any: ...


_AGENT_METHODS = (
    "is_async",
    "training_rollout",
    "training_rollout_async",
    "validation_rollout",
    "validation_rollout_async",
)


class LitAgent:
    """Base class of agents. Override ``rollout`` or ``rollout_async`` (or the train/val variants)."""

    def is_async(self) -> bool:
        cls = type(self)
        return any(
            getattr(cls, name) is not getattr(LitAgent, name)
            for name in ("rollout_async", "training_rollout_async", "validation_rollout_async")
        )

    def rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any:
        raise NotImplementedError(f"{type(self).__name__} implements neither rollout nor rollout_async")

    async def rollout_async(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any:
        raise NotImplementedError(f"{type(self).__name__} implements neither rollout nor rollout_async")

    def training_rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any:
        return self.rollout(task, resources, rollout)

    async def training_rollout_async(
        self, task: Any, resources: NamedResources, rollout: AttemptedRollout
    ) -> Any:
        return await self.rollout_async(task, resources, rollout)

    def validation_rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any:
        return self.rollout(task, resources, rollout)

    async def validation_rollout_async(
        self, task: Any, resources: NamedResources, rollout: AttemptedRollout
    ) -> Any:
        return await self.rollout_async(task, resources, rollout)


Kind = Literal["prompt", "llm"]


def _first(resources: NamedResources, kind: type[Any], what: str) -> Any:
    for resource in resources.values():
        if isinstance(resource, kind):
            return resource
    raise ValueError(f"the rollout's resources hold no {what}")


class FunctionalLitAgent(LitAgent):
    """An agent made from a function by the decorators below; still callable as the function."""

    def __init__(self, func: Callable[..., Any], kind: Kind, *, strip_proxy: bool = True) -> None:
        self._func = func
        self._kind = kind
        self._strip_proxy = strip_proxy
        self._wants_rollout = "rollout" in inspect.signature(func).parameters
        self._async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by reference to the decorated module-level name, so runner processes can load it.
        return (load_qualified, (self._func.__module__, self._func.__qualname__))

    def is_async(self) -> bool:
        return self._async

    def _kwargs(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"task": task}
        if self._kind == "prompt":
            kwargs["prompt_template"] = _first(resources, PromptTemplate, "PromptTemplate")
        else:
            llm = _first(resources, LLM, "LLM")
            if isinstance(llm, ProxyLLM) and self._strip_proxy:
                llm = llm.with_attempted_rollout(rollout)
            kwargs["llm"] = llm
        if self._wants_rollout:
            kwargs["rollout"] = rollout
        return kwargs

    def rollout(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any:
        if self._async:
            raise RuntimeError(f"{self._func.__name__} is async: call rollout_async")
        return self._func(**self._kwargs(task, resources, rollout))

    async def rollout_async(self, task: Any, resources: NamedResources, rollout: AttemptedRollout) -> Any:
        if not self._async:
            raise RuntimeError(f"{self._func.__name__} is not async: call rollout")
        return await self._func(**self._kwargs(task, resources, rollout))


def load_qualified(module: str, qualname: str) -> Any:
    """The object named ``qualname`` in module ``module`` (how agents travel to runner processes)."""
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _check_signature(func: Callable[..., Any], resource_param: str) -> None:
    params = list(inspect.signature(func).parameters)
    if len(params) < 2 or params[0] != "task":
        raise ValueError(f"{func.__name__} must take (task, {resource_param}[, rollout])")


def prompt_rollout(func: Callable[..., Any]) -> FunctionalLitAgent:
    """An agent taking ``(task, prompt_template[, rollout])``."""
    _check_signature(func, "prompt_template")
    return FunctionalLitAgent(func, "prompt")


def llm_rollout(func: Callable[..., Any] | None = None, *, strip_proxy: bool = True) -> Any:
    """An agent taking ``(task, llm[, rollout])``; usable bare or as ``@llm_rollout(strip_proxy=False)``."""

    def wrap(f: Callable[..., Any]) -> FunctionalLitAgent:
        _check_signature(f, "llm")
        return FunctionalLitAgent(f, "llm", strip_proxy=strip_proxy)

    return wrap if func is None else wrap(func)


def rollout(func: Callable[..., Any]) -> FunctionalLitAgent:
    """An agent from a function whose parameters say what it needs (``llm`` or ``prompt_template``)."""
    params = inspect.signature(func).parameters
    if "llm" in params:
        return llm_rollout(func)  # type: ignore[no-any-return]
    if "prompt_template" in params:
        return prompt_rollout(func)
    raise NotImplementedError(f"{func.__name__} takes neither 'llm' nor 'prompt_template'")


def as_agent(agent: Any) -> AgentLike:
    """``agent`` as a runner calls it: a ``LitAgent`` (agl's, or any object with its methods)
    as it is, a plain function through :func:`rollout`."""
    if isinstance(agent, LitAgent) or all(callable(getattr(agent, name, None)) for name in _AGENT_METHODS):
        found: AgentLike = agent
        return found
    if callable(agent):
        return rollout(agent)
    raise TypeError(
        f"{agent!r} is not an agent: pass a LitAgent, or a function taking (task, prompt_template) "
        "or (task, llm)"
    )
