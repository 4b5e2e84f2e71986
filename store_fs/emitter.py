"""Emit rewards, messages and annotations from inside an agent, in upstream's span formats.

With ``propagate=True`` (the default) the span goes to the store through the
tracer whose trace context the caller runs in: agl's, or, under upstream
Agent-lightning's runner, upstream's active tracer; outside one that is an error.
With ``propagate=False`` the span's fields are only returned.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from store_fs.models import SpanCoreFields, TraceStatus
from store_fs.rewards import ANNOTATION_SPAN_NAME, reward_attributes
from store_fs.tracing.rollout_binding import lose_unattributed
from store_fs.tracing.tracer import active_tracer
from store_fs.tracing.upstream_bridge import upstream_active_tracer
from store_fs.upstream_compat import retyped

__all__ = ["emit_annotation", "emit_message", "emit_reward"]

MESSAGE_SPAN_NAME = "agentlightning.message"


def _emit(name: str, attributes: dict[str, Any], propagate: bool, *, ok: bool = True) -> SpanCoreFields:
    """The span, recorded by the active tracer unless not ``propagate``. ``ok``: its status is
    OK, as upstream sets for annotations (rewards); a message's is left UNSET, as upstream's.
    The result is also upstream's ``SpanCoreFields`` when upstream is loaded: an agent run by
    upstream's runner may return it."""
    status = TraceStatus(status_code="OK" if ok else "UNSET")
    if not propagate:
        now = time.time()
        core = SpanCoreFields(name=name, status=status, attributes=attributes, start_time=now, end_time=now)
        return retyped(core)
    found = active_tracer()
    if found is not None:
        return retyped(found[0].create_span(name, attributes, status=status))
    upstream = upstream_active_tracer()
    if upstream is not None:  # under upstream's runner: its tracer records the span
        core = upstream.create_span(name=name, attributes=attributes, status=status if ok else None)
        return retyped(SpanCoreFields.model_validate(core.model_dump()))
    if lose_unattributed(f"{name!r} emitted"):
        raise RuntimeError(
            f"{name!r} emitted outside any rollout's trace context while several rollouts run in "
            "this process: each of them fails (start threads with contextvars.copy_context().run, "
            "or use asyncio.to_thread)"
        )
    raise RuntimeError(
        f"no active tracer to record {name!r}: emit inside a runner's rollout, or propagate=False"
    )


def emit_reward(
    reward: float | Mapping[str, float],
    *,
    primary_key: str | None = None,
    attributes: dict[str, Any] | None = None,
    propagate: bool = True,
) -> SpanCoreFields:
    """Record a reward (a number, or named dimensions with ``primary_key`` first)."""
    if isinstance(reward, bool):
        reward = float(reward)
    attrs = {**reward_attributes(reward, primary_key=primary_key), **(attributes or {})}
    return _emit(ANNOTATION_SPAN_NAME, attrs, propagate)


def emit_annotation(annotation: dict[str, Any], *, propagate: bool = True) -> SpanCoreFields:
    """Record arbitrary attributes as an annotation span."""
    return _emit(ANNOTATION_SPAN_NAME, dict(annotation), propagate)


def emit_message(
    text: str, *, attributes: dict[str, Any] | None = None, propagate: bool = True
) -> SpanCoreFields:
    """Record a free-text message."""
    attrs = {"agentlightning.message.body": text, **(attributes or {})}
    return _emit(MESSAGE_SPAN_NAME, attrs, propagate, ok=False)
