"""The report's default data health check: what can be found without reading the store twice.

``agl check`` (``FileStore.check``) reads every record and every span file once more after the
report has read them, validates every record, walks the whole tree for temporary files and
compares the rollout index with every record: at 100,000 rollouts, minutes. The report's rows
were just made from those same records and span files (:mod:`store_fs.report.report_fastscan`),
so :func:`quick_check` reports, with ``agl check``'s kinds, paths and wording:

* from that reading: ``corrupt-span`` (complete span lines that do not parse, are not objects, or
  whose first copy of a ``span_id`` does not validate), ``torn-tail`` (bytes after the last
  newline of a finished attempt's span file) and ``corrupt-record`` (a newest revision that does
  not parse or validate);
* from the queue, the trash and the index marker, which are small: ``unapplied-decision``,
  ``orphan-claim``, ``orphan-pending``, ``not-queued``, ``unfinished-prune`` and
  ``index-incomplete``.

It does not look for what :data:`NOT_QUICK` lists (leftovers in the tree, the index's
line-by-line agreement with the records, worker logs, the resources' own files), and takes
records that are in the store's own shape as valid without validating their other fields:
``agl report --full-check`` runs ``agl check`` itself for those. A span log that cannot be
read is named too (``wrong-file-type`` for a directory in its place).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from store_fs._disk import fsio
from store_fs._disk.check import IN_FLIGHT_GRACE, Problem
from store_fs._disk.layout import Layout
from store_fs._disk.queue_tokens import ClaimToken, JournalEntry, PendingToken
from store_fs._disk.record_peek import newest_revision
from store_fs._disk.removal import run_directories
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES
from store_fs.errors import CorruptRecordError
from store_fs.report._span_digest import BadSpanLine
from store_fs.report.report_scan import RolloutRow

__all__ = ["NOT_QUICK", "QUICK_ONLY_FOR", "quick_check"]

#: What ``agl check`` looks for and :func:`quick_check` does not (shown on the page).
NOT_QUICK: Final = (
    "stale-mirror",
    "untracked-attempt",
    "temp-file",
    "no-record",
    "pruned-leftover",
    "wrong-file-type",
    "misplaced-directory",
    "no-span-counter",
    "stale-index",
    "index-ahead",
    "corrupt-index-line",
    "corrupt-worker-log",
    "corrupt-resource-object",
    "corrupt-resource-pointer",
    "corrupt-resource-version",
    "empty-resources-id",
)

#: Kinds of :data:`NOT_QUICK` that the quick check reports in one place all the same.
QUICK_ONLY_FOR: Final = {"wrong-file-type": "reported for span logs only"}


def _span_problems(bad: Iterable[BadSpanLine]) -> list[Problem]:
    bad = list(bad)
    files = sorted((b for b in bad if b.kind is not None), key=lambda b: b.path)
    lines = sorted((b for b in bad if b.kind is None and not b.torn), key=lambda b: (b.path, b.offset))
    tails = sorted((b for b in bad if b.kind is None and b.torn), key=lambda b: b.path)
    return (
        [Problem(b.kind or "", b.path, b.detail) for b in files]
        + [Problem("corrupt-span", b.path, f"byte {b.offset}: {b.detail}") for b in lines]
        + [Problem("torn-tail", b.path, b.detail) for b in tails]
    )


class _Records:
    """Each rollout's status and attempts as the report read them; a record read when a queue
    token names a rollout the report did not read (created since)."""

    def __init__(self, layout: Layout, rows: Sequence[RolloutRow]) -> None:
        self.layout = layout
        self.rows = {row.rollout_id: row for row in rows}

    def attempt_status(self, token: ClaimToken) -> tuple[bool, str | None]:
        """(whether the rollout exists, the status of the token's attempt or None)."""
        row = self.rows.get(token.rollout_id)
        if row is not None:
            return True, next((a.status for a in row.attempts if a.attempt_id == token.attempt_id), None)
        found = newest_revision(self.layout, token.rollout_id)
        if found is None:
            return False, None
        attempts = found[1].get("attempts")
        statuses = [a.get("status") for a in attempts or [] if isinstance(a, dict)]
        ids = [a.get("attempt_id") for a in attempts or [] if isinstance(a, dict)]
        status = next((s for s, i in zip(statuses, ids, strict=True) if i == token.attempt_id), None)
        return True, None if status is None else str(status)

    def exists(self, rollout_id: str) -> bool:
        if rollout_id in self.rows:
            return True
        return Path(f"{self.layout.rollout_dir_str(rollout_id)}/history/00000001.json").exists()


def _journal_problems(layout: Layout, grace: float) -> list[Problem]:
    out: list[Problem] = []
    for kind, directory in (("done", layout.done), ("expired", layout.expired)):
        for name in fsio.list_names(directory):
            entry = JournalEntry.parse(kind, directory / name)  # type: ignore[arg-type]
            if entry is not None and not _in_flight(entry.path, grace):  # a completion in flight
                out.append(Problem("unapplied-decision", str(entry.path), f"{entry.kind} {entry.outcome}"))
    return out


def _claim_problems(
    layout: Layout, records: _Records, claimed: Sequence[ClaimToken], grace: float
) -> list[Problem]:
    out: list[Problem] = []
    for token in claimed:
        if _in_flight(layout.claimed / token.name, grace):
            continue  # a dequeue in flight: its attempt is being recorded (rows were read before)
        try:
            _exists, status = records.attempt_status(token)
        except CorruptRecordError as err:  # the page shows the damage instead of failing
            out.append(Problem("corrupt-record", err.path, err.reason))
            continue
        if status in LIVE_ATTEMPT_STATUSES:
            continue
        detail = "no attempt recorded; the reaper expires it" if status is None else f"attempt is {status}"
        out.append(Problem("orphan-claim", str(layout.claimed / token.name), detail))
    return out


def _in_flight(token: Path, grace: float) -> bool:
    """A token changed less than ``grace`` seconds ago belongs to an enqueue, a dequeue or a
    completion in flight, not to damage, as ``agl check`` judges it: the report's rows were read
    before the queue was listed (on a busy store it showed false problems; an adversarial pass)."""
    try:
        return grace > 0 and time.time() - token.stat().st_ctime < grace
    except OSError:
        return True  # gone meanwhile


def _pending_problems(
    layout: Layout,
    records: _Records,
    pending: Sequence[PendingToken],
    claimed: Sequence[ClaimToken],
    grace: float,
) -> list[Problem]:
    trashed = _trashed(layout)
    out = [
        Problem("orphan-pending", str(layout.pending / token.name), "no such rollout")
        for token in pending
        if token.rollout_id not in trashed
        and not records.exists(token.rollout_id)
        and not _in_flight(layout.pending / token.name, grace)
    ]
    waiting = {(t.rollout_id, t.sequence_id) for t in pending}
    owners = {t.rollout_id for t in claimed}
    suspects = []
    for row in records.rows.values():
        # A row holds every attempt of a retried rollout, and the only one otherwise.
        next_try = (row.rollout_id, len(row.attempts) + 1)
        if (
            row.status in ("queuing", "requeuing")
            and next_try not in waiting
            and row.rollout_id not in owners
        ):
            suspects.append(row)
    if suspects:
        # The rows were read before the queue was listed: one dequeued (and maybe finished)
        # since has no token any more. Such a rollout is read again, the queue listed again.
        waiting_now = {(t.rollout_id, t.sequence_id) for t in _pending_tokens(layout)}
    for row in suspects:
        try:
            found = newest_revision(layout, row.rollout_id)
        except CorruptRecordError:
            continue  # damaged since: the next report names it
        record = found[1] if found is not None else {}
        attempts = record.get("attempts")
        if record.get("status") not in ("queuing", "requeuing") or not isinstance(attempts, list):
            continue
        if (row.rollout_id, len(attempts) + 1) in waiting_now:
            continue
        mirror = str(layout.mirror_file(row.rollout_id))
        out.append(Problem("not-queued", mirror, f"{row.status} but no pending token"))
    return out


def _pending_tokens(layout: Layout) -> list[PendingToken]:
    return [t for t in map(PendingToken.parse, sorted(fsio.list_names(layout.pending))) if t is not None]


def _queue_problems(layout: Layout, records: _Records, grace: float) -> list[Problem]:
    claimed = [t for t in map(ClaimToken.parse, fsio.list_names(layout.claimed)) if t is not None]
    pending = _pending_tokens(layout)
    return (
        _journal_problems(layout, grace)
        + _claim_problems(layout, records, claimed, grace)
        + _pending_problems(layout, records, pending, claimed, grace)
    )


def _trash_runs(layout: Layout) -> list[Path]:
    return run_directories(layout.trash)


def _trashed(layout: Layout) -> set[str]:
    """Ids of the rollouts unfinished removal runs hold."""
    return {
        rollout.name
        for run in _trash_runs(layout)
        for bucket in fsio.iter_dirs(run / "rollouts")
        for rollout in fsio.iter_dirs(Path(bucket.path))
    }


def quick_check(
    layout: Layout,
    rows: Sequence[RolloutRow],
    bad_spans: Iterable[BadSpanLine],
    corrupt_records: Iterable[tuple[str, str]],
    grace: float = IN_FLIGHT_GRACE,
) -> list[Problem]:
    """The problems found by the report's reading (``rows``, ``bad_spans``, ``corrupt_records``
    from :func:`~store_fs.report.report_fastscan.scan_buckets`) and in the queue, the trash and
    the index marker, as :class:`~store_fs._disk.check.Problem` objects like ``agl check``'s
    (``grace`` as its: a newer queue token without its rollout is an enqueue in flight)."""
    detail = "a prune was interrupted: its rollouts are out of the store, their removal unfinished"
    out = [Problem("unfinished-prune", str(run), detail) for run in _trash_runs(layout)]
    out += _queue_problems(layout, _Records(layout, rows), grace)
    out += [Problem("corrupt-record", path, reason) for path, reason in sorted(corrupt_records)]
    out += _span_problems(bad_spans)
    if not layout.rollout_index_marker.exists():
        marker = layout.rollout_index_marker.name
        where = str(layout.rollout_index)
        out.append(Problem("index-incomplete", where, f"no {marker}: listings read every record"))
    return out
