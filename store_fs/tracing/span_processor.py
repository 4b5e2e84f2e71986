"""The OpenTelemetry span processor that routes finished spans to their rollout."""

from __future__ import annotations

import threading

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan

from store_fs.tracing.rollout_binding import RolloutBinding, current_binding

__all__ = ["LightningSpanProcessor"]

ROLLOUT_ID_KEY = "agentlightning.rollout_id"
ATTEMPT_ID_KEY = "agentlightning.attempt_id"


class LightningSpanProcessor(SpanProcessor):
    """Tags each span with the rollout it started in, and delivers it there when it ends.

    ``on_start`` runs in the code that opens the span, where the rollout's context
    variable is visible; the binding is remembered by span id, because a span may
    end elsewhere (a stream drained in another task). Spans started outside any
    rollout are ignored.
    """

    def __init__(self) -> None:
        self._open: dict[int, RolloutBinding] = {}
        self._lock = threading.Lock()

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        binding = current_binding()
        if binding is None:
            return
        if binding.rollout_id and binding.attempt_id:
            span.set_attribute(ROLLOUT_ID_KEY, binding.rollout_id)
            span.set_attribute(ATTEMPT_ID_KEY, binding.attempt_id)
        with self._lock:
            self._open[span.context.span_id] = binding

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        with self._lock:
            binding = self._open.pop(context.span_id, None)
        if binding is not None and context.trace_flags.sampled:
            binding.deliver(span)

    def shutdown(self) -> None:
        with self._lock:
            self._open.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
