"""Plain threads and thread pools carry the trace context of the code that starts them.

The rollout a span belongs to is a context variable (:mod:`store_fs.tracing.rollout_binding`).
asyncio tasks and ``asyncio.to_thread`` copy it, but a ``threading.Thread`` starts with an empty
context and a thread pool's worker runs every task in its own, so code an agent runs there was
in no trace context: attributed to the process's only open one, and lost by every open one
when several run (``max_parallel > 1``: each attempt failed).

Once a trace context has been opened in the process (:func:`carry_trace_contexts`), so that
nothing changes for programs that never trace:

* ``Thread.start`` notes the caller's trace context, and the new thread belongs to it while it
  is open, subclasses with their own ``run`` included (the note is taken where the thread's
  bootstrap calls ``run``). Once that rollout has ended, the thread works for a rollout opened
  since, when it is the only one open (a helper thread started by one rollout and reused by
  the next ones works for each); when none opened since, it is a straggler of its own rollout,
  whose binding counts what it emits, and never a rollout that ran beside it
  (:func:`~store_fs.tracing.rollout_binding.current_binding`). A thread or pool task started
  after its rollout ended (by an agent the runner abandoned, which cannot be stopped) is such a
  straggler for good, never taken for a reused helper of a later rollout. The note
  (:class:`~store_fs.tracing.rollout_binding.Origin`) holds the binding by a weak reference, so
  a long-lived thread keeps no rollout's spans in memory;
* ``ThreadPoolExecutor.submit`` (``map`` and asyncio's ``run_in_executor`` go through it) runs
  each task in the trace context of its caller, whatever its worker thread noted when it was
  started, since workers are reused across rollouts.

Only agl's trace context is carried, not every context variable (as Python 3.14's
``Thread(context=...)`` could): code in those threads sees its other variables as before.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any

from store_fs.tracing.rollout_binding import Origin, inherit, origin_to_inherit, run_inherited

__all__ = ["carry_trace_contexts"]

_NOTE = "_agl_trace_context"

_lock = threading.Lock()
_originals: dict[str, Any] = {}


def _start(self: threading.Thread, *args: Any, **kwargs: Any) -> Any:
    if not hasattr(self, _NOTE):
        setattr(self, _NOTE, origin_to_inherit())
    return _originals["start"](self, *args, **kwargs)


def _bootstrap_inner(self: threading.Thread) -> Any:
    origin: Origin | None = getattr(self, _NOTE, None)
    if origin is not None:
        inherit(origin)  # in the thread's own context, which ends with it
    return _originals["bootstrap"](self)


def _submit(
    self: concurrent.futures.ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    task = functools.partial(run_inherited, origin_to_inherit(), fn)
    return _originals["submit"](self, task, *args, **kwargs)


_PATCHES: dict[str, tuple[Any, str, Callable[..., Any]]] = {
    "start": (threading.Thread, "start", _start),
    "bootstrap": (threading.Thread, "_bootstrap_inner", _bootstrap_inner),
    "submit": (concurrent.futures.ThreadPoolExecutor, "submit", _submit),
}


def carry_trace_contexts() -> None:
    """From now on, threads and pool tasks started carry their caller's trace context.
    Idempotent; never undone (a thread started inside a rollout must keep its rollout
    whenever it ends, and the wrappers cost a context-variable read outside one)."""
    with _lock:
        if _originals:
            return
        for key, (owner, name, wrapper) in _PATCHES.items():
            _originals[key] = getattr(owner, name)
            setattr(owner, name, wrapper)
