"""The OpenTelemetry span processor that routes finished spans to their rollout."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan

from store_fs.tracing.rollout_binding import RolloutBinding, current_binding, lose_unattributed

__all__ = ["LightningSpanProcessor"]

ROLLOUT_ID_KEY = "agentlightning.rollout_id"
ATTEMPT_ID_KEY = "agentlightning.attempt_id"


class LightningSpanProcessor(SpanProcessor):
    """Tags each span with the rollout it started in, and delivers it there when it ends.

    ``on_start`` runs in the code that opens the span, where the rollout's context
    variable is visible; the binding is remembered by span id, because a span may
    end elsewhere (a stream drained in another task). Spans started outside any
    rollout are ignored.

    ``on_end`` runs inside the instrumented code's ``span.end()``, so it must not fail on
    what an instrumentation recorded: ``None`` values (agentops records an absent message
    ``content`` as ``None``; the OpenTelemetry SDK keeps them, a stored span cannot hold
    them) are left out, as an OTLP exporter would, in the span's and its events' attributes.
    """

    def __init__(self) -> None:
        self._open: dict[int, RolloutBinding] = {}
        self._lock = threading.Lock()

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        binding = current_binding()
        if binding is None:
            # Several rollouts run here and this span is in none's context: counted as lost by
            # each, so that none ends "succeeded" with a call missing from its trace.
            lose_unattributed(f"span {span.name!r} started")
            return
        if binding.rollout_id and binding.attempt_id:
            span.set_attribute(ROLLOUT_ID_KEY, binding.rollout_id)
            span.set_attribute(ATTEMPT_ID_KEY, binding.attempt_id)
        with self._lock:
            self._open[span.context.span_id] = binding
        binding.started(span)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        with self._lock:
            binding = self._open.pop(context.span_id, None)
        if binding is not None:
            binding.ended(context.span_id)
            # Sampled or not (a provider set up elsewhere may record without sampling): an
            # attempt's spans are its training data, not telemetry to thin out.
            binding.deliver(storable(span))

    def shutdown(self) -> None:
        with self._lock:
            self._open.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _holds_none(attributes: Mapping[str, Any] | None) -> bool:
    values = (attributes or {}).values()
    return any(v is None or (isinstance(v, tuple | list) and None in v) for v in values)


def _without_none(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attributes minus ``None`` values and sequences holding one (a stored span's
    sequences are of one type)."""
    return {k: v for k, v in (attributes or {}).items() if v is not None and not _holds_none({k: v})}


def storable(span: ReadableSpan) -> ReadableSpan:
    """``span`` itself, or a copy without the ``None`` values a stored span cannot hold."""
    if not _holds_none(span.attributes) and not any(_holds_none(e.attributes) for e in span.events):
        return span
    events = [Event(e.name, _without_none(e.attributes), e.timestamp) for e in span.events]
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_without_none(span.attributes),
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
