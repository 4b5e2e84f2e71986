"""Rewards read off span rows (name and attributes) rather than span objects.

:func:`reward_of` is :func:`store_fs.rewards.get_reward_value` for a span given by its name and
attributes, which are all that function reads; :func:`final_reward` is
:func:`store_fs.rewards.find_final_reward` over rows. Most spans carry no attribute a reward
could be read from, which a C-level scan of their keys tells; the few others are read by
``store_fs.rewards`` itself, given a stand-in holding just those two fields, so there is one
reading of upstream's reward formats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, Final, cast

from store_fs.datasets._span_rows import SpanRow
from store_fs.models import Span
from store_fs.rewards import get_reward_value, reward_reading

__all__ = ["final_reward", "may_hold_reward", "reward_of"]

# Every key get_reward_value reads starts with one of these.
_REWARD_KEYS: Final = ("agentlightning.reward.", "agentops.task.output", "agentops.entity.output", "reward")


class _Named:
    """What :func:`~store_fs.rewards.get_reward_value` reads of a span: its name and attributes
    (a span object costs ten times as much to make)."""

    __slots__ = ("attributes", "name")

    def __init__(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.name = name
        self.attributes = attributes


def may_hold_reward(attributes: Mapping[str, Any]) -> bool:
    """False when no attribute could carry a reward (most spans)."""
    return any(map(str.startswith, attributes, repeat(_REWARD_KEYS)))


def reward_of(name: str, attributes: Mapping[str, Any]) -> float | None:
    """The primary reward of the span named ``name`` with ``attributes``; None if it has none."""
    if not may_hold_reward(attributes):
        return None
    return get_reward_value(cast(Span, _Named(name, attributes)))


def final_reward(rows: Sequence[SpanRow]) -> float | None:
    """The reward of the last row that has one (rows in sequence order: the newest); None when
    that one's value is NaN or an infinity, as :func:`~store_fs.rewards.find_final_reward`."""
    for row in reversed(rows):
        if not may_hold_reward(row[3]):
            continue
        value = reward_reading(cast(Span, _Named(row[2], row[3])))
        if value is not None:
            return value if math.isfinite(value) else None
    return None
