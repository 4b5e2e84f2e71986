"""Rewards in upstream's span format, written and read.

A reward is an *annotation span* (name ``agentlightning.annotation``, status OK,
start = end) whose attributes flatten the reward's dimensions:
``agentlightning.reward.<i>.name`` / ``agentlightning.reward.<i>.value``, the
primary dimension first. Readers also accept upstream's two older formats (an
AgentOps ``{"type": "reward", "value": x}`` output, and a plain ``reward``
attribute on an annotation span), so rewards written by any upstream version
are found.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from store_fs.models import Span, SpanCoreFields, TraceStatus

__all__ = [
    "ANNOTATION_SPAN_NAME",
    "find_final_reward",
    "find_reward_spans",
    "get_reward_value",
    "get_rewards_from_span",
    "is_reward_span",
    "reward_attributes",
    "reward_core_fields",
    "reward_span",
]

ANNOTATION_SPAN_NAME = "agentlightning.annotation"
_PREFIX = "agentlightning.reward."


def reward_attributes(
    reward: float | Mapping[str, float], *, primary_key: str | None = None
) -> dict[str, Any]:
    """Flattened reward attributes; a mapping needs ``primary_key``, which comes first."""
    if isinstance(reward, Mapping):
        if primary_key is None:
            raise ValueError("a reward with several dimensions needs primary_key")
        if primary_key not in reward:
            raise ValueError(f"primary_key {primary_key!r} is not among the reward's dimensions")
        dims = [(primary_key, reward[primary_key])] + [(k, v) for k, v in reward.items() if k != primary_key]
    elif isinstance(reward, (int, float)):
        dims = [("primary", reward)]
    else:
        raise TypeError(f"a reward must be a number or a mapping of numbers, not {type(reward).__name__}")
    attributes: dict[str, Any] = {}
    for i, (name, value) in enumerate(dims):
        if not isinstance(value, (int, float)):
            raise ValueError(f"reward dimension {name!r} is not a number: {value!r}")
        attributes[f"{_PREFIX}{i}.name"] = name
        attributes[f"{_PREFIX}{i}.value"] = float(value)
    return attributes


def reward_core_fields(
    reward: float | Mapping[str, float], *, primary_key: str | None = None
) -> SpanCoreFields:
    now = time.time()
    return SpanCoreFields(
        name=ANNOTATION_SPAN_NAME,
        status=TraceStatus(status_code="OK"),
        attributes=reward_attributes(reward, primary_key=primary_key),
        start_time=now,
        end_time=now,
    )


def reward_span(
    reward: float | Mapping[str, float],
    *,
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    primary_key: str | None = None,
    now: float | None = None,
) -> Span:
    """A stored-ready reward span, exactly as upstream's runner writes a returned float."""
    stamp = time.time() if now is None else now
    return Span.from_attributes(
        attributes=reward_attributes(reward, primary_key=primary_key),
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        name=ANNOTATION_SPAN_NAME,
        start_time=stamp,
        end_time=stamp,
    )


def get_rewards_from_span(span: Span) -> list[dict[str, Any]]:
    """All dimensions ``[{"name", "value"}]`` of the span's flattened reward attributes."""
    dims: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        if not key.startswith(_PREFIX):
            continue
        index, _, field = key[len(_PREFIX) :].partition(".")
        if index.isdigit() and field in ("name", "value"):
            dims.setdefault(int(index), {})[field] = value
    return [dims[i] for i in sorted(dims)]


def _legacy_value(raw: Any) -> float | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if isinstance(raw, dict) and raw.get("type") == "reward" and isinstance(raw.get("value"), (int, float)):
        return float(raw["value"])
    return None


def get_reward_value(span: Span) -> float | None:
    """The primary reward a span carries, in any of upstream's formats; None if it has none."""
    dims = get_rewards_from_span(span)
    if dims and isinstance(dims[0].get("value"), (int, float)):
        return float(dims[0]["value"])
    for key in ("agentops.task.output", "agentops.entity.output"):
        value = _legacy_value(span.attributes.get(key))
        if value is not None:
            return value
    legacy = span.attributes.get("reward")
    if (
        span.name == ANNOTATION_SPAN_NAME
        and isinstance(legacy, (int, float))
        and not isinstance(legacy, bool)
    ):
        return float(legacy)
    return None


def is_reward_span(span: Span) -> bool:
    return get_reward_value(span) is not None


def find_reward_spans(spans: Sequence[Span]) -> list[Span]:
    return [s for s in spans if is_reward_span(s)]


def find_final_reward(spans: Sequence[Span]) -> float | None:
    """The reward of the last reward span (with spans in sequence order: the newest)."""
    for span in reversed(spans):
        value = get_reward_value(span)
        if value is not None:
            return value
    return None
