"""Which rollouts a data view or a prune takes: :class:`RolloutFilter`, and how a rollout ended.

How a rollout *ended* (:func:`ending_of`) is read from its status, its latest attempt and its
final reward (the last reward among the latest attempt's spans):

========================  ================================================================
``succeeded``             status ``succeeded`` with a reward
``no_reward``             status ``succeeded`` but no reward span in the latest attempt
``failed``                status ``failed``; the latest attempt failed (or there is none)
``timeout``               status ``failed``; the latest attempt timed out
``unresponsive``          status ``failed``; the latest attempt went silent
``cancelled``             status ``cancelled``
``None``                  not finished (queuing, preparing, running, requeuing)
========================  ================================================================

Data views keep ``succeeded`` and ``no_reward`` unless asked for others
(:data:`DEFAULT_ENDINGS`): failed rollouts stay out of training data unless wanted.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

from store_fs._disk.ids import check_rollout_id
from store_fs.models import RolloutMode, RolloutStatus

__all__ = [
    "DEFAULT_ENDINGS",
    "ENDINGS",
    "Ending",
    "RolloutFilter",
    "ending_of",
    "parse_time",
]

Ending = Literal["succeeded", "no_reward", "failed", "timeout", "unresponsive", "cancelled"]
ENDINGS: tuple[Ending, ...] = get_args(Ending)
DEFAULT_ENDINGS: frozenset[Ending] = frozenset({"succeeded", "no_reward"})


def ending_of(status: str, latest_attempt_status: str | None, final_reward: float | None) -> Ending | None:
    """How a rollout ended (see the module's table); None while it is not finished."""
    if status == "cancelled":
        return "cancelled"
    if status == "failed":
        if latest_attempt_status in ("timeout", "unresponsive"):
            return latest_attempt_status  # type: ignore[return-value]
        return "failed"
    if status == "succeeded":
        return "succeeded" if final_reward is not None else "no_reward"
    return None


class RolloutLike(Protocol):
    """A rollout record, or anything with its fields the filter reads."""

    @property
    def rollout_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def resources_id(self) -> str | None: ...
    @property
    def mode(self) -> str | None: ...
    @property
    def end_time(self) -> float | None: ...


def _frozen(values: Iterable[Any] | None) -> frozenset[Any] | None:
    return None if values is None else frozenset(values)


@dataclass(frozen=True)
class RolloutFilter:
    """Conditions a rollout must meet, all of them (``None``: no condition).

    ``since``/``until`` bound the time the rollout finished (``end_time``; ``since`` inclusive,
    ``until`` exclusive): a rollout that has not finished matches neither. ``endings`` is
    checked last, since it needs the final reward (the spans); ``None`` takes every rollout,
    finished or not.
    """

    status_in: frozenset[RolloutStatus] | None = None
    resources_id_in: frozenset[str | None] | None = None
    rollout_id_in: frozenset[str] | None = None
    mode_in: frozenset[RolloutMode | None] | None = None
    since: float | None = None
    until: float | None = None
    endings: frozenset[Ending] | None = DEFAULT_ENDINGS

    @classmethod
    def of(
        cls,
        *,
        status_in: Iterable[RolloutStatus] | None = None,
        resources_id_in: Iterable[str | None] | None = None,
        rollout_id_in: Iterable[str] | None = None,
        mode_in: Iterable[RolloutMode | None] | None = None,
        since: float | None = None,
        until: float | None = None,
        endings: Iterable[Ending] | None = DEFAULT_ENDINGS,
    ) -> RolloutFilter:
        """A filter from any iterables (``endings=None``: every rollout, finished or not)."""
        unknown = set(endings or ()) - set(ENDINGS)
        if unknown:
            raise ValueError(f"unknown ending(s) {sorted(unknown)}; known: {', '.join(ENDINGS)}")
        bad_status = set(status_in or ()) - set(get_args(RolloutStatus))
        if bad_status:
            raise ValueError(f"unknown status(es) {sorted(bad_status)}")
        rollout_ids = _frozen(rollout_id_in)
        for rollout_id in rollout_ids or ():
            check_rollout_id(rollout_id)  # one that cannot name a rollout is a typo, not "no match"
        return cls(
            status_in=_frozen(status_in),
            resources_id_in=_frozen(resources_id_in),
            rollout_id_in=rollout_ids,
            mode_in=_frozen(mode_in),
            since=since,
            until=until,
            endings=_frozen(endings),
        )

    def admits_record(self, rollout: RolloutLike) -> bool:
        """Every condition that the rollout record alone decides (all but ``endings``)."""
        if self.status_in is not None and rollout.status not in self.status_in:
            return False
        if self.rollout_id_in is not None and rollout.rollout_id not in self.rollout_id_in:
            return False
        if self.resources_id_in is not None and rollout.resources_id not in self.resources_id_in:
            return False
        if self.mode_in is not None and rollout.mode not in self.mode_in:
            return False
        return self._admits_time(rollout.end_time)

    def _admits_time(self, end_time: float | None) -> bool:
        if self.since is None and self.until is None:
            return True
        if end_time is None:
            return False
        if self.since is not None and end_time < self.since:
            return False
        return self.until is None or end_time < self.until

    def admits_ending(self, ending: Ending | None) -> bool:
        return self.endings is None or ending in self.endings

    def needs_finished(self) -> bool:
        """True when only finished rollouts can match (so unfinished ones need not be read)."""
        return self.endings is not None or self.since is not None or self.until is not None

    def statuses(self) -> Collection[RolloutStatus] | None:
        """Statuses worth listing: ``status_in``, narrowed to finished ones when only those match."""
        finished: frozenset[RolloutStatus] = frozenset({"succeeded", "failed", "cancelled"})
        if self.endings is not None:
            finished = frozenset(s for s in finished if _status_can_end(s, self.endings))
        if not self.needs_finished():
            return self.status_in
        return finished if self.status_in is None else self.status_in & finished


def _status_can_end(status: str, endings: frozenset[Ending]) -> bool:
    possible = {
        "succeeded": {"succeeded", "no_reward"},
        "failed": {"failed", "timeout", "unresponsive"},
        "cancelled": {"cancelled"},
    }[status]
    return bool(possible & endings)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, *, now: float | None = None) -> float:
    """A point in time from the command line: seconds since the epoch (``1712345678.5``), a
    duration ago (``90s``, ``30m``, ``12h``, ``7d``, ``2w``), or an ISO 8601 date or time
    (``2026-12-01``, ``20261201``, ``2026-12-01T08:00``; UTC unless it names an offset). Eight
    digits that make a date are that date, not seconds in August 1970."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        current = time.time() if now is None else now
        return current - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if len(text) == 8 and text.isdigit() and text.isascii():
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, "%Y%m%d").replace(tzinfo=UTC).timestamp()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"not a time: {text!r} (not a finite number)")
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (give seconds since the epoch, a duration like 7d, or an ISO date)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
