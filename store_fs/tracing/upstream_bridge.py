"""Upstream Agent-lightning's emitters inside agl's trace contexts, and agl's inside upstream's.

Upstream's ``emit_reward``, ``emit_message``, ``emit_annotation``, ``emit_object``,
``emit_exception`` and ``operation`` find their tracer in one process-wide slot of
``agentlightning.tracer.base`` (``get_active_tracer()``), which upstream's tracers fill for
the duration of their ``trace_context`` and which is empty otherwise: the emitters then
raise "No active tracer found". agl's tracers bind a rollout through a context variable
instead, so an agent run by agl's runner would lose upstream's rewards.

While at least one agl trace context is open in the process, :func:`upstream_emitters`
puts :data:`BRIDGE` in upstream's slot (when upstream is loaded and the slot is empty). The
bridge looks up, at each call, the agl tracer of the *caller's* trace context, so rollouts
running at once in one process still keep their spans apart, and what upstream's emitters
record goes through that tracer like agl's own ``emit_*``: same span, same queue, same
order, same retries. The slot is emptied when the last agl trace context closes.

The other way, :func:`upstream_active_tracer` lets agl's ``emit_*`` record through
upstream's tracer when the agent runs under upstream's runner.

Nothing here imports upstream: its module is used only if the process has loaded it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from store_fs.models import Attributes, TraceStatus
from store_fs.tracing.tracer import Tracer, active_tracer
from store_fs.upstream_compat import retyped, upstream_module

__all__ = ["BRIDGE", "UpstreamTracerBridge", "upstream_active_tracer", "upstream_emitters"]

_BASE = "agentlightning.tracer.base"


class UpstreamTracerBridge:
    """Stands in upstream's active-tracer slot; every call goes to the agl tracer of the
    caller's trace context (the emitters call ``create_span`` and ``operation_context``)."""

    def _tracer(self) -> Tracer:
        found = active_tracer()
        if found is None:
            raise RuntimeError(
                "No active tracer found: upstream's emitters record spans inside a rollout "
                "run by a runner (this call is outside every agl trace context)"
            )
        return found[0]

    def create_span(
        self,
        name: str,
        attributes: Attributes | None = None,
        timestamp: float | None = None,
        status: TraceStatus | None = None,
    ) -> Any:
        """Record an instant span; returns its core fields (also upstream's class)."""
        return retyped(self._tracer().create_span(name, attributes, timestamp, status))

    def operation_context(
        self,
        name: str,
        attributes: Attributes | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> contextlib.AbstractContextManager[Any]:
        """A span around a block of code (upstream's ``operation``)."""
        tracer = self._tracer()
        method = getattr(tracer, "operation_context", None)
        if method is None:
            raise RuntimeError(f"{type(tracer).__name__} cannot record operations")
        context: contextlib.AbstractContextManager[Any] = method(name, attributes, start_time, end_time)
        return context

    def __getattr__(self, name: str) -> Any:
        found = None if name.startswith("_") else active_tracer()
        if found is None:
            raise AttributeError(name)
        return getattr(found[0], name)


BRIDGE = UpstreamTracerBridge()


class _Slot:
    """How many agl trace contexts are open, and whether the bridge is in upstream's slot."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0

    def enter(self) -> None:
        with self.lock:
            self.open += 1
            base = upstream_module(_BASE)
            if base is not None and base.get_active_tracer() is None:
                base.set_active_tracer(BRIDGE)

    def leave(self) -> None:
        with self.lock:
            self.open -= 1
            base = upstream_module(_BASE)
            if self.open == 0 and base is not None and base.get_active_tracer() is BRIDGE:
                base.clear_active_tracer()


_SLOT = _Slot()


@contextlib.contextmanager
def upstream_emitters() -> Iterator[None]:
    """Inside: upstream's emitters record through the caller's agl trace context."""
    _SLOT.enter()
    try:
        yield
    finally:
        _SLOT.leave()


def upstream_active_tracer() -> Any:
    """Upstream's tracer of the trace context open now (its runner's), or None."""
    base = upstream_module(_BASE)
    tracer = base.get_active_tracer() if base is not None else None
    return None if tracer is BRIDGE else tracer
