"""Pure status rules: how attempt outcomes move a rollout (docs/behaviour.md §2.3-§2.5).

These functions change a :class:`RolloutRecord` in memory; callers store the
result with a compare-and-swap, so the rules apply atomically.

Deliberate deviation from upstream: ``cancelled`` is sticky. Attempt updates
and spans never move a cancelled rollout (upstream lets a late ``succeeded``
overwrite the cancellation); only an explicit ``update_rollout(status=...)``
does.
"""

from __future__ import annotations

from store_fs._disk.rollout_history import RolloutRecord
from store_fs.models import Attempt, AttemptStatus, RolloutConfig, RolloutStatus

__all__ = [
    "FINAL_ATTEMPT_STATUSES",
    "LIVE_ATTEMPT_STATUSES",
    "TERMINAL_ROLLOUT_STATUSES",
    "keep_heartbeat",
    "mark_running",
    "rollout_status_for",
    "set_attempt_status",
    "superseded",
]

LIVE_ATTEMPT_STATUSES: frozenset[str] = frozenset({"preparing", "running"})
FINAL_ATTEMPT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "timeout", "unresponsive"})
TERMINAL_ROLLOUT_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


def keep_heartbeat(attempt: Attempt, beat: float | None) -> None:
    """Before an attempt leaves the live statuses: record in it the newest heartbeat from its
    heartbeat files (``beat``), which readers stop consulting once it has a final status, so
    that its ``last_heartbeat_time`` stays what it was (upstream keeps the field as is)."""
    if beat is not None and (attempt.last_heartbeat_time is None or beat > attempt.last_heartbeat_time):
        attempt.last_heartbeat_time = beat


def rollout_status_for(attempt: Attempt, config: RolloutConfig) -> RolloutStatus:
    """The rollout status implied by its latest attempt."""
    status = attempt.status
    if status in ("preparing", "running", "succeeded"):
        return status
    retry = status in config.retry_condition and attempt.sequence_id < config.max_attempts
    return "requeuing" if retry else "failed"


def _propagate(record: RolloutRecord, attempt: Attempt, now: float) -> None:
    latest = record.latest()
    if latest is None or latest.attempt_id != attempt.attempt_id or record.status == "cancelled":
        return
    new = rollout_status_for(attempt, record.config)
    if new != record.status:
        record.status = new
        if new in TERMINAL_ROLLOUT_STATUSES:
            record.end_time = now


def set_attempt_status(record: RolloutRecord, attempt: Attempt, status: AttemptStatus, now: float) -> None:
    """Set an attempt's status as ``update_attempt`` does, then re-derive the rollout status.

    ``succeeded``/``failed`` stamp the attempt's ``end_time``. The rollout follows only
    from its latest attempt.
    """
    attempt.status = status
    if status in ("succeeded", "failed"):
        attempt.end_time = now
    _propagate(record, attempt, now)


def touch_attempt(record: RolloutRecord, attempt: Attempt, now: float) -> None:
    """Re-derive the rollout from an attempt changed in other fields (upstream recomputes on any update)."""
    _propagate(record, attempt, now)


def superseded(record: RolloutRecord, attempt: Attempt) -> bool:
    """Whether ``attempt`` was settled by the watchdog (``timeout``, ``unresponsive``) and a newer
    attempt has started: its retry runs, so nothing of it may land any more (a late span, or
    its outcome, would come after its retry's and read as the rollout's)."""
    if attempt.status not in ("timeout", "unresponsive"):
        return False
    latest = record.latest()
    return latest is not None and latest.sequence_id > attempt.sequence_id


def mark_running(record: RolloutRecord, attempt: Attempt, now: float) -> bool:
    """A span arrived for ``attempt``: the heartbeat rule. Returns whether anything changed.
    An ``unresponsive`` attempt comes back to life only while it is the latest (its retry not
    started: :func:`superseded`)."""
    changed = False
    latest = record.latest()
    is_latest = latest is not None and latest.attempt_id == attempt.attempt_id
    if attempt.status == "preparing" or (attempt.status == "unresponsive" and is_latest):
        attempt.status = "running"
        changed = True
    # Upstream also means to promote "queuing" but misspells it; like upstream we do not.
    if is_latest and record.status in ("preparing", "requeuing"):
        record.status = "running"
        changed = True
    if changed:
        attempt.last_heartbeat_time = now
    return changed
