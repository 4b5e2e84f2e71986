"""A report row from a rollout record's parsed JSON, when that JSON is in the shape the store writes.

The store writes records with ``model_dump``, so every field the report reads already has the
exact type validation would give it (a ``float`` time, a status among the ``Literal``'s values).
:func:`row_of_record` checks that, and only then builds the :class:`RolloutRow` the public API
path (:func:`store_fs.report.report_scan.scan_rollout`) would build; for anything else it answers
None and the caller takes that path. Attempts the API would show with a fresher heartbeat time
read from heartbeat files (live and unresponsive ones) answer None too.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Final

from store_fs.report.report_scan import AttemptRow, RolloutRow, set_verdict_times

__all__ = ["row_of_record"]

_ROLLOUT_STATUSES: Final = frozenset(
    {"queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"}
)
# Attempt statuses whose record is what the API returns (no heartbeat file consulted).
_SETTLED: Final = frozenset({"succeeded", "failed", "timeout"})
_MODES: Final = frozenset({None, "train", "val", "test"})
_FLOAT_OR_NONE: Final = frozenset({float, type(None)})
_STR_OR_NONE: Final = frozenset({str, type(None)})
_DICT_OR_NONE: Final = frozenset({dict, type(None)})


# The keys the store always writes (``model_dump``); a record missing one takes the API path.
_ROLLOUT_FIELDS: Final = itemgetter(
    "rollout_id", "input", "status", "start_time", "end_time", "mode", "resources_id", "config", "metadata"
)
_ATTEMPT_FIELDS: Final = itemgetter(
    "rollout_id",
    "attempt_id",
    "sequence_id",
    "status",
    "start_time",
    "end_time",
    "last_heartbeat_time",
    "worker_id",
    "metadata",
)


def _rollout_ok(record: dict[str, Any], rollout_id: str) -> bool:
    try:
        rid, _input, status, start, end, mode, resources_id, config, metadata = _ROLLOUT_FIELDS(record)
    except KeyError:
        return False
    return (
        rid == rollout_id
        and status in _ROLLOUT_STATUSES
        and type(start) is float
        and type(end) in _FLOAT_OR_NONE
        and mode in _MODES
        and type(resources_id) in _STR_OR_NONE
        and type(config) is dict
        and type(metadata) in _DICT_OR_NONE
        and type(record.get("server_offsets", {})) is dict
        and type(record.get("attempts", [])) is list
    )


def _attempt_row(attempt: Any, rollout_id: str) -> AttemptRow | None:
    if type(attempt) is not dict:
        return None
    try:
        rid, attempt_id, seq, status, start, end, heartbeat, worker, metadata = _ATTEMPT_FIELDS(attempt)
    except KeyError:
        return None
    if not (
        rid == rollout_id
        and type(attempt_id) is str
        and type(seq) is int
        and status in _SETTLED
        and type(start) is float
        and type(end) in _FLOAT_OR_NONE
        and type(heartbeat) in _FLOAT_OR_NONE
        and type(worker) in _STR_OR_NONE
        and type(metadata) in _DICT_OR_NONE
    ):
        return None
    error = metadata.get("error") if metadata is not None else None
    return AttemptRow(
        rollout_id,
        seq,
        attempt_id,
        worker,
        status,
        start,
        end,
        heartbeat,
        None if error is None else str(error),
    )


def row_of_record(record: dict[str, Any], rollout_id: str) -> tuple[RolloutRow, list[AttemptRow]] | None:
    """(the report's row, every attempt of the record in order) of a record in the store's own
    shape; None for any other record (the caller reads that rollout through the API).

    The row holds the attempts ``scan_rollout`` shows (the latest alone when it is the first);
    its span digest is the caller's to fill in, from the spans of every attempt.
    """
    if not _rollout_ok(record, rollout_id):
        return None
    attempts: list[AttemptRow] = []
    for attempt in record.get("attempts", []):
        row = _attempt_row(attempt, rollout_id)
        if row is None:
            return None
        attempts.append(row)
    out = RolloutRow(
        rollout_id,
        record["status"],
        record["mode"],
        record["resources_id"],
        record["start_time"],
        record["end_time"],
    )
    if attempts:
        latest = attempts[-1]
        out.attempts = [latest] if latest.sequence_id == 1 else list(attempts)
        set_verdict_times(out)
    return out, attempts
