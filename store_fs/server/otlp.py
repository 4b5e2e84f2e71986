"""OTLP/HTTP protobuf trace ingestion: ``ExportTraceServiceRequest`` → stored spans.

Mapping (docs/behaviour.md §9.5): rollout id, attempt id and sequence id are read from the
span's attributes, else from its resource's attributes (``agentlightning.rollout_id``,
``agentlightning.attempt_id``, ``agentlightning.span_sequence_id``); spans without a
rollout or attempt id are skipped and reported as rejected; spans without a valid
sequence id get one from the store in bulk.

One deliberate difference: attribute values the span model cannot hold (key-value lists,
arrays mixing types or nesting) are stored as JSON strings instead of failing the whole
request; bytes become lower-case hex as upstream does.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from pydantic import ValidationError

from store_fs.errors import ConflictError
from store_fs.models import (
    Event,
    Link,
    OtelResource,
    Span,
    SpanContext,
    StatusCode,
    TraceStatus,
    convert_timestamp,
)
from store_fs.store import FileStore

__all__ = ["PROTOBUF", "decode_body", "export", "spans_from_request"]

log = logging.getLogger("store_fs.server")

PROTOBUF = "application/x-protobuf"
ROLLOUT_KEY = "agentlightning.rollout_id"
ATTEMPT_KEY = "agentlightning.attempt_id"
SEQUENCE_KEY = "agentlightning.span_sequence_id"

_STATUS: dict[int, StatusCode] = {
    ProtoStatus.STATUS_CODE_UNSET: "UNSET",
    ProtoStatus.STATUS_CODE_OK: "OK",
    ProtoStatus.STATUS_CODE_ERROR: "ERROR",
}


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip/deflate); refuse output larger than ``limit`` (ValueError)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    # wbits 47 accepts gzip and zlib headers; a bounded output guards against zip bombs.
    wbits = 47 if encoding != "deflate" else zlib.MAX_WBITS
    out = bytearray()
    rest = body
    try:
        while True:  # gzip: one member after another, as gzip.decompress reads them
            inflater = zlib.decompressobj(wbits)
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit:
                raise ValueError(f"decompressed body larger than {limit} bytes")
            if not inflater.eof:  # cut short: its checksum never read
                raise ValueError(f"bad {encoding} body: it ends before its compressed data does")
            rest = inflater.unused_data
            if encoding == "deflate" or not rest.strip(b"\0"):  # trailing zeros: padding
                return bytes(out)
    except zlib.error as err:
        raise ValueError(f"bad {encoding} body: {err}") from None


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=5)


def _value(value: AnyValue) -> Any:
    """A Python value for an ``AnyValue``; None when it holds nothing."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attribute(value: Any) -> Any:
    """Fit a value into the span model's attribute types (scalars, homogeneous scalar lists)."""
    if isinstance(value, list):
        kinds = {type(v) for v in value}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            return value
        if kinds <= {int, float}:
            return [float(v) for v in value]
        return orjson.dumps(value).decode()
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return value


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        value = _value(kv.value)
        if value is not None:
            out[kv.key] = _attribute(value)
    return out


def _trace_state(text: str) -> dict[str, str]:
    """W3C ``tracestate`` header text → mapping (malformed members are dropped)."""
    out: dict[str, str] = {}
    for member in text.split(","):
        key, sep, value = member.strip().partition("=")
        if sep and key:
            out[key] = value
    return out


def _sequence(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _convert(
    span: ProtoSpan, attrs: dict[str, Any], resource: OtelResource, ids: tuple[str, str], seq: int
) -> Span:
    trace_id = span.trace_id.hex().rjust(32, "0")
    span_id = span.span_id.hex().rjust(16, "0")
    return Span(
        rollout_id=ids[0],
        attempt_id=ids[1],
        sequence_id=seq,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=span.parent_span_id.hex() or None,
        name=span.name,
        status=TraceStatus(
            status_code=_STATUS.get(span.status.code, "UNSET"), description=span.status.message or None
        ),
        attributes=attrs,
        events=[
            Event(
                name=e.name,
                attributes=_attributes(e.attributes),
                timestamp=convert_timestamp(e.time_unix_nano),
            )
            for e in span.events
        ],
        links=[
            Link(
                context=SpanContext(
                    trace_id=link.trace_id.hex().rjust(32, "0"),
                    span_id=link.span_id.hex().rjust(16, "0"),
                    is_remote=False,
                    trace_state=_trace_state(link.trace_state),
                ),
                attributes=_attributes(link.attributes) or None,
            )
            for link in span.links
        ],
        start_time=convert_timestamp(span.start_time_unix_nano),
        end_time=convert_timestamp(span.end_time_unix_nano),
        context=SpanContext(
            trace_id=trace_id, span_id=span_id, is_remote=False, trace_state=_trace_state(span.trace_state)
        ),
        parent=None,
        resource=resource,
    )


async def spans_from_request(store: FileStore, request: ExportTraceServiceRequest) -> tuple[list[Span], int]:
    """Convert every span of ``request``; returns the spans and how many were skipped.

    Raises the store's not-found errors when a span names an unknown rollout (sequence
    ids are allocated before anything is stored, so nothing is stored then).
    """
    pending: list[tuple[ProtoSpan, dict[str, Any], OtelResource, tuple[str, str], int | None]] = []
    skipped = 0
    for resource_spans in request.resource_spans:
        res_attrs = _attributes(resource_spans.resource.attributes)
        resource = OtelResource(attributes=res_attrs, schema_url=resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = _attributes(span.attributes)
                rollout_id = attrs.get(ROLLOUT_KEY, res_attrs.get(ROLLOUT_KEY))
                attempt_id = attrs.get(ATTEMPT_KEY, res_attrs.get(ATTEMPT_KEY))
                if not isinstance(rollout_id, str) or not isinstance(attempt_id, str):
                    skipped += 1
                    continue
                seq = _sequence(attrs.get(SEQUENCE_KEY, res_attrs.get(SEQUENCE_KEY)))
                pending.append((span, attrs, resource, (rollout_id, attempt_id), seq))
    if skipped:
        log.warning("OTLP: %d span(s) without %s / %s skipped", skipped, ROLLOUT_KEY, ATTEMPT_KEY)
    missing = [ids for _, _, _, ids, seq in pending if seq is None]
    allocated = iter(await store.get_many_span_sequence_ids(missing)) if missing else iter(())
    spans = [
        _convert(span, attrs, resource, ids, seq if seq is not None else next(allocated))
        for span, attrs, resource, ids, seq in pending
    ]
    return spans, skipped


async def _store(store: FileStore, spans: list[Span]) -> tuple[int, str]:
    """Store ``spans``; returns how many were refused, and why. An exporter's batch mixes
    attempts: the spans of one the store refuses (its retry has started, docs/behaviour.md §5.3)
    are left out and counted, instead of taking the other attempts' spans with them."""
    try:
        await store.add_many_spans(spans)
        return 0, ""
    except ConflictError:
        pass
    groups: dict[tuple[str, str], list[Span]] = {}
    for span in spans:
        groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
    refused, why = 0, ""
    for group in groups.values():
        try:
            await store.add_many_spans(group)
        except ConflictError as err:
            refused, why = refused + len(group), str(err)
    return refused, why


async def export(store: FileStore, payload: bytes) -> bytes:
    """Store the spans of a serialized ``ExportTraceServiceRequest``; returns the serialized reply.

    Raises ValueError for an unparsable payload and the store's errors for unknown ids.
    """
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(payload)
    except Exception as err:  # protobuf raises its own DecodeError; any failure means a bad body
        raise ValueError(f"unparsable ExportTraceServiceRequest: {err}") from None
    try:
        spans, skipped = await spans_from_request(store, request)
    except ValidationError as err:
        raise ValueError(f"span does not fit the span model: {err.errors()[0]['msg']}") from None
    refused, why = await _store(store, spans) if spans else (0, "")
    response = ExportTraceServiceResponse()
    if skipped or refused:
        response.partial_success.rejected_spans = skipped + refused
        reasons = [f"spans need {ROLLOUT_KEY} and {ATTEMPT_KEY} attributes"] if skipped else []
        response.partial_success.error_message = "; ".join([*reasons, *([why] if refused else [])])
    reply: bytes = response.SerializeToString()
    return reply
