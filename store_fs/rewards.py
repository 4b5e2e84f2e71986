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
import math
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


def _number(raw: Any) -> float | None:
    """``raw`` as a float (NaN or an infinity included), or None when it holds no number.

    Numbers count, and so does text holding one (upstream's ``RewardDimension.value`` is a pydantic
    float, which reads ``"0.5"`` as 0.5; an OTLP exporter of another language, or ``agl spans add``,
    may store the value as text). Bools count as the numbers Python makes them (pydantic reads True
    as 1.0 too), but not text like ``"true"``. NaN and the infinities are no reward: a training row
    cannot hold them (JSON has none; Parquet would, unlike the same rows' JSON), so a rollout whose
    last reward is one reads as having none, ``ended`` ``no_reward``, wherever rewards are read
    (:func:`reward_reading` keeps them, for the readers that must stop at such a span).
    """
    if isinstance(raw, str):
        text = raw.strip(" \t\n\r")
        if not text.isascii():
            return None  # Python's float reads other scripts' digits; pydantic does not
        try:
            value = float(text)
        except ValueError:
            return None
    elif isinstance(raw, (int, float)):
        try:
            value = float(raw)
        except OverflowError:  # an int beyond a float's range: no value a row can hold either
            return math.inf
    else:
        return None
    return value


def _legacy_value(raw: Any) -> float | None:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)  # Python's json reads NaN and Infinity, which _number refuses
        except ValueError:
            return None
    if isinstance(raw, dict) and raw.get("type") == "reward":
        return _number(raw.get("value"))
    return None


def get_reward_value(span: Span) -> float | None:
    """The primary reward a span carries, in any of upstream's formats; None if it has none.

    A value counts when it is a finite number or text holding one (see :func:`_number`); NaN or an
    infinity is no reward.
    """
    value = reward_reading(span)
    return value if value is not None and math.isfinite(value) else None


def reward_reading(span: Span) -> float | None:
    """The primary reward value a span carries, NaN or an infinity included (a reward span
    whose value no training row can hold); None when it carries none (a value that holds no
    number at all: the next format is tried)."""
    dims = get_rewards_from_span(span)
    if dims:
        value = _number(dims[0].get("value"))
        if value is not None:
            return value
    for key in ("agentops.task.output", "agentops.entity.output"):
        value = _legacy_value(span.attributes.get(key))
        if value is not None:
            return value
    if span.name == ANNOTATION_SPAN_NAME:
        return _number(span.attributes.get("reward"))  # True is 1.0, as upstream reads it
    return None


def is_reward_span(span: Span) -> bool:
    return reward_reading(span) is not None


def find_reward_spans(spans: Sequence[Span]) -> list[Span]:
    return [s for s in spans if is_reward_span(s)]


def find_final_reward(spans: Sequence[Span]) -> float | None:
    """The reward of the last reward span (with spans in sequence order: the newest); None when
    that one's value is NaN or an infinity (no reward: never the reward of an earlier span)."""
    for span in reversed(spans):
        value = reward_reading(span)
        if value is not None:
            return value if math.isfinite(value) else None
    return None
