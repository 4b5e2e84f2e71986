"""Finished spans → one OTLP/HTTP protobuf request, each span carrying its sequence id.

The span delivery of :mod:`store_fs.tracing.rollout_binding` numbers spans itself, in the
order they were emitted, and sends the numbers along as the
``agentlightning.span_sequence_id`` attribute, which the server takes instead of
allocating one (upstream's OTLP mapping; ``store_fs.server.otlp``). So spans exported by
OTLP are ordered exactly like spans stored by ``add_span``.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan

from store_fs.models import Span

__all__ = ["ATTEMPT_KEY", "ROLLOUT_KEY", "SEQUENCE_KEY", "encode_request"]

ROLLOUT_KEY = "agentlightning.rollout_id"
ATTEMPT_KEY = "agentlightning.attempt_id"
SEQUENCE_KEY = "agentlightning.span_sequence_id"


def _numbered(readable: ReadableSpan, span: Span) -> ReadableSpan:
    """A copy of ``readable`` whose attributes name its rollout, attempt and sequence id."""
    attributes = dict(readable.attributes or {})
    attributes.update(
        {ROLLOUT_KEY: span.rollout_id, ATTEMPT_KEY: span.attempt_id, SEQUENCE_KEY: span.sequence_id}
    )
    return ReadableSpan(
        name=readable.name,
        context=readable.context,
        parent=readable.parent,
        resource=readable.resource,
        attributes=attributes,
        events=readable.events,
        links=readable.links,
        kind=readable.kind,
        status=readable.status,
        start_time=readable.start_time,
        end_time=readable.end_time,
        instrumentation_scope=readable.instrumentation_scope,
    )


def encode_request(items: Sequence[tuple[ReadableSpan, Span]]) -> bytes:
    """A serialized ``ExportTraceServiceRequest`` of the SDK spans, numbered as their stored twins."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    request = encode_spans([_numbered(readable, span) for readable, span in items])
    body: bytes = request.SerializeToString()
    return body
