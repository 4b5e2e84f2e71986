"""Tracing: OpenTelemetry tracers, span routing to rollouts, and OpenAI instrumentation.

``OtelTracer`` is the default. ``AgentOpsTracer`` (in ``store_fs.tracing.agentops_tracer``)
is opt-in and imported only when chosen, because importing AgentOps is slow and patches
the interpreter's import machinery.
"""

from __future__ import annotations

from store_fs.tracing.openai_instrument import instrument_openai
from store_fs.tracing.root_span import adopt_root_span, rollout_root_span
from store_fs.tracing.span_processor import LightningSpanProcessor
from store_fs.tracing.tracer import OtelTracer, Tracer, active_tracer

__all__ = [
    "LightningSpanProcessor",
    "OtelTracer",
    "Tracer",
    "active_tracer",
    "adopt_root_span",
    "instrument_openai",
    "rollout_root_span",
]
