"""One root span per attempt: every span of the attempt descends from it.

:func:`rollout_root_span` opens the root (``<label>.session``, the name upstream's AgentOps
tracer gives its per-rollout session span) in a fresh OpenTelemetry trace, makes it current
for the block, and registers it with the attempt's :class:`RolloutBinding` through
:func:`adopt_root_span`. From then on the binding hangs every span it stores that has no
parent under the root (same trace id, ``parent_id`` = the root's span id): spans the runner
builds after the block (the reward of a returned float), spans an agent returns, spans
started with an explicit empty context. Spans started inside the block are children of the
root (or of its descendants) by OpenTelemetry's own context propagation, threads and tasks
started with a copied context included.

A tracer whose framework opens its own per-rollout span (the AgentOps tracer: agentops'
``start_trace``) can skip :func:`rollout_root_span` and call :func:`adopt_root_span` with
that span's context, so the binding re-parents orphans under it instead.

Upstream's adapters are unaffected apart from the tree's top: ``TraceTree.from_spans`` finds
one real root where it used to build a virtual one over several parentless spans, and the
root carries no ``gen_ai.*``, agent or reward attributes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from store_fs.tracing.rollout_binding import RolloutBinding

__all__ = ["ROOT_SUFFIX", "adopt_root_span", "rollout_root_span"]

ROOT_SUFFIX = ".session"


def adopt_root_span(binding: RolloutBinding, span_context: trace.SpanContext) -> None:
    """Make the span of ``span_context`` the root the binding hangs parentless spans under."""
    binding.root = (f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}")


@contextlib.contextmanager
def rollout_root_span(tracer: trace.Tracer, binding: RolloutBinding, label: str) -> Iterator[trace.Span]:
    """The attempt's root span, current inside the block, ended (and so stored) on exit.

    Status OK when the block completes, ERROR (with the exception recorded) when an
    exception escapes it; the exception propagates.
    """
    span = tracer.start_span(f"{label}{ROOT_SUFFIX}", context=otel_context.Context(), kind=SpanKind.INTERNAL)
    adopt_root_span(binding, span.get_span_context())
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    else:
        span.set_status(Status(StatusCode.OK))
    finally:
        span.end()
