"""Upstream Agent-lightning 0.3's code over agl's objects, in one process, without importing it.

Upstream's trainer, runner and agents test a few values with ``isinstance`` against their
own classes: its ``Trainer`` wants a store that is an ``agentlightning.LightningStore``, its
``@rollout`` agents look for an ``agentlightning.PromptTemplate`` or ``LLM`` among the
resources, and ``ProxyLLM`` routing wants an ``agentlightning.AttemptedRollout``. agl's
objects have the same fields but other classes, so upstream would refuse them.

When upstream is loaded (it is in ``sys.modules``: this module never imports it), agl
therefore hands out objects that are instances of both classes:

* a store (``FileStore``, ``LightningStoreClient``) created then is an instance of a subclass
  that also derives from upstream's ``LightningStore`` (:func:`store_class`; the hook is
  ``store_fs.lightning_store.LightningStore.__new__``). It takes upstream's ``UNSET``
  ("argument not given", which upstream's wrappers such as ``LightningStoreThreaded`` pass
  on) as agl's;
* the resources it returns, and the attempted rollouts it hands out (``dequeue_rollout``,
  ``start_rollout``, ``start_attempt``), are copies whose classes derive from agl's class and
  from upstream's class of the same name (:func:`retyped`); agl's runner does the same for
  what it passes to an agent.

These subclasses add no fields and change no behaviour: JSON, equality and agl's own code see
the same values, and a pickled copy comes back as agl's plain class. A page of results
(``query_*``) is upstream's ``PaginatedResult`` too: upstream's HTTP server, put in front of a
``FileStore`` by its ``Trainer``, wraps anything else again and failed every list route with a
500. The rollouts, attempts, spans and workers in a page stay agl's class: upstream reads those
by their fields.
Without upstream loaded, nothing here runs.
"""

from __future__ import annotations

import copy
import functools
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = [
    "PAGED_METHODS",
    "RETYPED_METHODS",
    "as_ours",
    "hybrid_model_class",
    "retyped",
    "store_class",
    "upstream_module",
    "upstream_twin",
]

T = TypeVar("T")

_TYPES = "agentlightning.types"
_STORE_BASE = "agentlightning.store.base"

# The store methods whose results are retyped: what upstream's runner and agents inspect.
RETYPED_METHODS = frozenset(
    {
        "add_resources",
        "update_resources",
        "get_resources_by_id",
        "get_latest_resources",
        "query_resources",
        "dequeue_rollout",
        "start_rollout",
        "start_attempt",
    }
)

# The store methods whose pages (not their items) are retyped: upstream's server tests them.
PAGED_METHODS = frozenset({"query_rollouts", "query_attempts", "query_spans", "query_workers"})

# Fields whose values are retyped too (one level down).
_NESTED = ("attempt", "config", "resources", "status")


def upstream_module(name: str) -> ModuleType | None:
    """Upstream's module ``name`` if this process has loaded it (never imports it)."""
    return sys.modules.get(name)


def upstream_twin(cls: type) -> type[BaseModel] | None:
    """Upstream's model class of the same name as agl model ``cls``, if upstream is loaded."""
    types = upstream_module(_TYPES)
    if types is None:
        return None
    twin = getattr(types, cls.__name__, None)
    return twin if isinstance(twin, type) and issubclass(twin, BaseModel) else None


def _is_hybrid(cls: type) -> bool:
    return bool(cls.__dict__.get("_agl_hybrid", False))


def _rebuild_model(cls: type[BaseModel], state: dict[str, Any]) -> BaseModel:
    """Unpickle a retyped model as agl's own class."""
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


@functools.cache
def hybrid_model_class(ours: type[BaseModel], theirs: type[BaseModel]) -> type[BaseModel]:
    """A class deriving from agl model ``ours`` and upstream model ``theirs``; it adds no field.

    Its instances equal any agl or upstream object of that model with the same values, and
    pickle as ``ours``.
    """

    def __reduce__(self: BaseModel) -> tuple[Any, ...]:
        return (_rebuild_model, (ours, self.__getstate__()))

    def __eq__(self: BaseModel, other: object) -> bool:
        if isinstance(other, (ours, theirs)):
            return bool(self.model_dump() == other.model_dump())
        return NotImplemented

    namespace: dict[str, Any] = {
        "__module__": ours.__module__,
        "__qualname__": ours.__qualname__,
        "__doc__": ours.__doc__,
        "__reduce__": __reduce__,
        "__eq__": __eq__,
        "__hash__": ours.__hash__,
        "_agl_hybrid": True,
    }
    route = getattr(ours, "with_attempted_rollout", None)
    if route is not None:  # ProxyLLM: the LLM it routes to is upstream's too

        def with_attempted_rollout(self: BaseModel, rollout: Any) -> Any:
            return retyped(route(self, rollout))

        namespace["with_attempted_rollout"] = with_attempted_rollout
    metaclass: Any = type(ours)
    hybrid: type[BaseModel] = metaclass(ours.__name__, (ours, theirs), namespace)
    return hybrid


def _retype_model(obj: BaseModel) -> BaseModel:
    cls = type(obj)
    if _is_hybrid(cls) or not cls.__module__.startswith("store_fs."):
        return obj
    twin = upstream_twin(cls)
    if twin is None:
        return obj
    clone = copy.copy(obj)
    for name in _NESTED:
        value = clone.__dict__.get(name)
        if isinstance(value, (BaseModel, dict)):
            clone.__dict__[name] = retyped(value)
    object.__setattr__(clone, "__class__", hybrid_model_class(cls, twin))
    return clone


def retyped(value: T) -> T:
    """``value`` with every agl model in it (a model, a page, a list, a dict's values) also an
    instance of upstream's class of the same name. ``value`` itself without upstream loaded."""
    if upstream_module(_TYPES) is None:
        return value
    result: Any = value
    if isinstance(value, BaseModel):
        items = getattr(value, "items", None)
        if type(value).__name__ == "PaginatedResult" and isinstance(items, (list, tuple)):
            result = retyped_page(value.model_copy(update={"items": [retyped(item) for item in items]}))
        else:
            result = _retype_model(value)
    elif isinstance(value, list):
        result = [retyped(item) for item in value]
    elif isinstance(value, dict):  # named resources
        result = {key: retyped(item) for key, item in value.items()}
    return result  # type: ignore[no-any-return]


def retyped_page(page: T) -> T:
    """``page`` (agl's ``PaginatedResult``) as an instance of upstream's too, its items as they
    are; ``page`` itself without upstream loaded, or if it is no page."""
    if not isinstance(page, BaseModel):
        return page
    cls = type(page)
    if _is_hybrid(cls) or cls.__name__ != "PaginatedResult":
        return page
    twin = upstream_twin(cls)
    if twin is None:
        return page
    clone = copy.copy(page)
    object.__setattr__(clone, "__class__", hybrid_model_class(cls, twin))
    return clone


def as_ours(value: Any) -> Any:
    """An upstream model (a resource from upstream's store or HTTP client) as agl's class of
    the same name, where agl has one: what agl's agents look for. Anything else unchanged."""
    cls = type(value)
    if not isinstance(value, BaseModel) or not cls.__module__.startswith("agentlightning"):
        return value
    from store_fs import models

    ours = getattr(models, cls.__name__, None)
    if not (isinstance(ours, type) and issubclass(ours, BaseModel)):
        return value
    return ours.model_validate(value.model_dump())


def _ours(value: Any, unset: object) -> Any:
    """Upstream's ``UNSET`` ("not given") becomes agl's; anything else is kept."""
    if value is unset:
        from store_fs.models import UNSET

        return UNSET
    return value


def _translating(
    method: Callable[..., Any], unset: object, retype: Callable[[Any], Any] | None
) -> Callable[..., Any]:
    """``method`` taking upstream's ``UNSET`` as agl's, its result passed through ``retype``."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        args = tuple(_ours(arg, unset) for arg in args)
        kwargs = {name: _ours(value, unset) for name, value in kwargs.items()}
        result = await method(self, *args, **kwargs)
        return retype(result) if retype is not None else result

    return wrapper


@functools.cache
def _hybrid_store_class(ours: type, theirs: type, unset: object) -> type:
    namespace: dict[str, Any] = {
        "__module__": ours.__module__,
        "__qualname__": ours.__qualname__,
        "__doc__": ours.__doc__,
        "_agl_hybrid": True,
    }
    for name, method in inspect.getmembers(ours, inspect.iscoroutinefunction):
        if not name.startswith("_"):
            retype = retyped if name in RETYPED_METHODS else retyped_page if name in PAGED_METHODS else None
            namespace[name] = _translating(method, unset, retype)
    return type(ours)(ours.__name__, (ours, theirs), namespace)


def store_class(cls: type[T]) -> type[T]:
    """The class to instantiate for store class ``cls``: ``cls`` itself, or, when upstream is
    loaded, a subclass that is also upstream's ``LightningStore`` (see the module docstring)."""
    base = upstream_module(_STORE_BASE)
    theirs = getattr(base, "LightningStore", None) if base is not None else None
    if not isinstance(theirs, type) or issubclass(cls, theirs):
        return cls
    hybrid: type[T] = _hybrid_store_class(cls, theirs, getattr(base, "UNSET", None))  # type: ignore[arg-type]
    return hybrid
