"""Spans as stored and served: OpenTelemetry spans plus rollout, attempt and sequence ids."""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import ConfigDict

from store_fs.models.model_base import AglModel

__all__ = [
    "AttributeValue",
    "Attributes",
    "Event",
    "Link",
    "OtelResource",
    "Span",
    "SpanContext",
    "SpanCoreFields",
    "StatusCode",
    "TraceStatus",
    "convert_timestamp",
]

AttributeValue = str | bool | int | float | list[str] | list[bool] | list[int] | list[float]
Attributes = dict[str, AttributeValue]
TraceState = dict[str, str]
StatusCode = Literal["UNSET", "OK", "ERROR"]

VIRTUAL_SPAN_NAME = "agentlightning.virtual"


def convert_timestamp(timestamp: float | None) -> float | None:
    """Seconds from an OpenTelemetry timestamp: falsy → None; above 1e12 it is nanoseconds."""
    if not timestamp:
        return None
    return timestamp / 1_000_000_000 if timestamp > 1e12 else float(timestamp)


def _trace_hex(value: int) -> str:
    return f"{value:032x}"


def _span_hex(value: int) -> str:
    return f"{value:016x}"


class SpanContext(AglModel):
    model_config = ConfigDict(extra="allow")

    trace_id: str
    span_id: str
    is_remote: bool
    trace_state: TraceState

    @classmethod
    def from_opentelemetry(cls, src: Any) -> SpanContext:
        return cls(
            trace_id=_trace_hex(src.trace_id),
            span_id=_span_hex(src.span_id),
            is_remote=bool(src.is_remote),
            trace_state=dict(src.trace_state or {}),
        )


class TraceStatus(AglModel):
    model_config = ConfigDict(extra="allow")

    status_code: StatusCode
    description: str | None = None

    @classmethod
    def from_opentelemetry(cls, src: Any) -> TraceStatus:
        return cls(status_code=src.status_code.name, description=src.description)


class Event(AglModel):
    model_config = ConfigDict(extra="allow")

    name: str
    attributes: Attributes
    timestamp: float | None = None

    @classmethod
    def from_opentelemetry(cls, src: Any) -> Event:
        return cls(
            name=src.name,
            attributes=dict(src.attributes or {}),
            timestamp=convert_timestamp(src.timestamp),
        )


class Link(AglModel):
    model_config = ConfigDict(extra="allow")

    context: SpanContext
    attributes: Attributes | None = None

    @classmethod
    def from_opentelemetry(cls, src: Any) -> Link:
        attributes = dict(src.attributes) if src.attributes else None
        return cls(context=SpanContext.from_opentelemetry(src.context), attributes=attributes)


class OtelResource(AglModel):
    attributes: Attributes
    schema_url: str

    @classmethod
    def from_opentelemetry(cls, src: Any) -> OtelResource:
        return cls(attributes=dict(src.attributes or {}), schema_url=src.schema_url or "")


class SpanCoreFields(AglModel):
    """What an emitter knows about a span before it is bound to a rollout."""

    name: str
    status: TraceStatus
    attributes: Attributes
    start_time: float | None
    end_time: float | None


class Span(AglModel):
    """One stored span. Unknown keys are kept (``extra="allow"``) and round-trip unchanged."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    attempt_id: str
    sequence_id: int
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    status: TraceStatus
    attributes: Attributes
    events: list[Event]
    links: list[Link]
    start_time: float | None
    end_time: float | None
    context: SpanContext | None
    parent: SpanContext | None
    resource: OtelResource

    @classmethod
    def from_opentelemetry(cls, src: Any, rollout_id: str, attempt_id: str, sequence_id: int) -> Span:
        """Convert an OpenTelemetry ``ReadableSpan``.

        Besides upstream's fields, the span kind and instrumentation scope are kept as
        extra keys (as strings, like upstream); process-local noise such as locks and
        samplers, which upstream also stringifies, is left out.
        """
        context = src.get_span_context()
        parent = src.parent
        extras: dict[str, Any] = {}
        for key in ("kind", "instrumentation_scope"):
            value = getattr(src, key, None)
            if value is not None:
                extras[key] = str(value)
        return cls(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=sequence_id,
            trace_id=_trace_hex(context.trace_id if context else 0),
            span_id=_span_hex(context.span_id if context else 0),
            parent_id=_span_hex(parent.span_id) if parent else None,
            name=src.name,
            status=TraceStatus.from_opentelemetry(src.status),
            attributes=dict(src.attributes or {}),
            events=[Event.from_opentelemetry(e) for e in src.events or ()],
            links=[Link.from_opentelemetry(link) for link in src.links or ()],
            start_time=convert_timestamp(src.start_time),
            end_time=convert_timestamp(src.end_time),
            context=SpanContext.from_opentelemetry(context) if context else None,
            parent=SpanContext.from_opentelemetry(parent) if parent else None,
            resource=OtelResource.from_opentelemetry(src.resource),
            **extras,
        )

    @classmethod
    def from_attributes(
        cls,
        *,
        attributes: Attributes,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        sequence_id: int | None = None,
        name: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        parent_id: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        resource: OtelResource | None = None,
        status: TraceStatus | None = None,
    ) -> Span:
        """A synthetic span; missing ids are random (trace/span) or empty (rollout/attempt)."""
        trace_id = trace_id or _trace_hex(secrets.randbits(128) or 1)
        span_id = span_id or _span_hex(secrets.randbits(64) or 1)

        def ctx(sid: str) -> SpanContext:
            return SpanContext(trace_id=trace_id, span_id=sid, is_remote=False, trace_state={})

        return cls(
            rollout_id=rollout_id or "",
            attempt_id=attempt_id or "",
            sequence_id=sequence_id or 0,
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            name=name or VIRTUAL_SPAN_NAME,
            status=status or TraceStatus(status_code="OK"),
            attributes=attributes,
            events=[],
            links=[],
            start_time=start_time,
            end_time=end_time,
            context=ctx(span_id),
            parent=ctx(parent_id) if parent_id else None,
            resource=resource or OtelResource(attributes={}, schema_url=""),
        )

    @classmethod
    def from_core_fields(
        cls,
        core: SpanCoreFields,
        *,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        sequence_id: int | None = None,
    ) -> Span:
        return cls.from_attributes(
            attributes=core.attributes,
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=sequence_id,
            name=core.name,
            start_time=core.start_time or time.time(),
            end_time=core.end_time,
            status=core.status,
        )
