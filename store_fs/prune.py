"""``agl prune``: remove finished rollouts from a store, for good, by age, status or count.

:func:`prune_store` takes the rollouts a :class:`~store_fs.datasets.rollout_filter.RolloutFilter`
selects among the *finished* ones (succeeded, failed, cancelled: a queued or running rollout, or
a finished one with a live attempt or a claim or decision token, is never touched), keeps the
newest ``keep_last`` of each resources id (newest by the time they finished), and removes the
rest: their directories, records, spans and heartbeats, and their index entries and pending
tokens. Removed rollouts are gone from every query, count (``statistics``) and export.

The on-disk protocol (one rename per rollout into ``trash/``, index tombstones, recovery after
a crash) is :mod:`store_fs._disk.removal`; the whole removal runs under the maintenance lock,
so it never overlaps a repair or another prune (:class:`~store_fs.errors.MaintenanceBusyError`).
Runners, algorithms and readers go on meanwhile: nothing on their paths takes the lock.
``dry_run`` takes no lock and changes nothing: it only says what would go, and its size.
With ``archive``, a tar of what was removed (paths as in the store) is written first:
``tar -xf ARCHIVE -C STORE && agl check --fix`` puts the rollouts back. Every rollout removed is
in an archive when one is asked for: a prune whose archive path is taken by the time it holds
the lock (the same command run again after an interrupted one, whose recovery writes the
interrupted run's archive there first) removes nothing and raises
:class:`~store_fs.errors.ConflictError`.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from store_fs._disk.maintenance import maintenance_lock
from store_fs._disk.removal import RemovalRun, in_flight_rollouts, recover
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES, TERMINAL_ROLLOUT_STATUSES
from store_fs.datasets.rollout_filter import RolloutFilter, ending_of
from store_fs.errors import ConflictError, CorruptRecordError
from store_fs.rewards import find_final_reward

if TYPE_CHECKING:
    from store_fs._disk.rollout_history import RolloutRecord
    from store_fs.store import FileStore

__all__ = ["PruneReport", "PrunedRollout", "prune_store"]


@dataclass(frozen=True)
class PrunedRollout:
    """A rollout removed (or, in a dry run, that would be)."""

    rollout_id: str
    status: str
    resources_id: str | None
    end_time: float | None
    bytes: int


@dataclass
class PruneReport:
    dry_run: bool
    rollouts: list[PrunedRollout] = field(default_factory=list)
    #: Selected but left in place: (rollout id, why): a live attempt or token, or it changed.
    kept: list[tuple[str, str]] = field(default_factory=list)
    #: Removals that an earlier, interrupted prune left unfinished and this one finished.
    recovered: list[str] = field(default_factory=list)
    archive: str | None = None

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.rollouts)


def _files(directory: Path) -> Iterator[os.stat_result]:
    for parent, _dirs, names in os.walk(directory):
        for name in names:
            try:
                yield os.lstat(os.path.join(parent, name))
            except FileNotFoundError:
                continue


def directory_bytes(directory: Path) -> int:
    """Bytes of the files under ``directory``, each inode once (history revisions and
    ``rollout.json`` are hard links of one file)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for st in _files(directory):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _removable(store: FileStore, record: RolloutRecord, flt: RolloutFilter) -> bool:
    if record.status not in TERMINAL_ROLLOUT_STATUSES or not flt.admits_record(record):
        return False
    live = any(a.status in LIVE_ATTEMPT_STATUSES for a in record.attempts)
    if live and record.status != "cancelled":  # cancelling took their tokens: nobody works on them
        return False
    if flt.endings is None:
        return True
    latest = record.latest()
    spans = store._spans.read([store._engine.attempt_dir(latest)]) if latest is not None else []
    final = find_final_reward(spans)
    return flt.admits_ending(ending_of(record.status, None if latest is None else latest.status, final))


def _select(store: FileStore, flt: RolloutFilter, keep_last: int | None) -> list[RolloutRecord]:
    statuses = (
        TERMINAL_ROLLOUT_STATUSES if flt.status_in is None else flt.status_in & TERMINAL_ROLLOUT_STATUSES
    )
    ids = (
        sorted(flt.rollout_id_in) if flt.rollout_id_in is not None else store.rollout_ids(status_in=statuses)
    )
    chosen: list[RolloutRecord] = []
    for rollout_id in ids:
        try:
            record = store._records.get(rollout_id)
        except CorruptRecordError:
            continue  # `agl check` reports it; a prune never removes what it cannot read
        if record is not None and _removable(store, record, flt):
            chosen.append(record)
    if keep_last is None:
        return chosen
    by_resources: dict[str | None, list[RolloutRecord]] = {}
    for record in chosen:
        by_resources.setdefault(record.resources_id, []).append(record)
    out: list[RolloutRecord] = []
    for group in by_resources.values():
        group.sort(key=lambda r: (r.end_time or 0.0, r.start_time, r.rollout_id), reverse=True)
        out += group[keep_last:]
    out.sort(key=lambda r: (r.start_time, r.rollout_id))
    return out


def _entry(store: FileStore, record: RolloutRecord, directory: Path) -> PrunedRollout:
    return PrunedRollout(
        record.rollout_id, record.status, record.resources_id, record.end_time, directory_bytes(directory)
    )


def _check_archive_destination(archive: Path) -> None:
    """Raise unless a new file can be made at ``archive``: it is written after the rollouts are
    moved to the trash, and a removal that cannot write its archive cannot finish (the next
    repair or prune would try the same path again)."""
    if os.path.lexists(archive):  # a dangling symbolic link too: the archive is linked, never replaced
        raise FileExistsError(errno.EEXIST, "an archive is never overwritten", str(archive))
    probe = archive.with_name(f".{archive.name}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise type(err)(err.errno, f"cannot write the archive there ({err.strerror})", str(archive)) from None
    os.unlink(probe)


def prune_store(
    store: FileStore,
    flt: RolloutFilter,
    *,
    keep_last: int | None = None,
    dry_run: bool = False,
    archive: Path | None = None,
) -> PruneReport:
    """Remove the finished rollouts ``flt`` selects, less the newest ``keep_last`` per resources
    id (see the module's docstring). ``flt.endings`` of ``None`` means any ending."""
    if keep_last is not None and keep_last < 0:
        raise ValueError("keep_last must be 0 or more")
    if archive is not None:
        _check_archive_destination(archive)
    report = PruneReport(dry_run=dry_run, archive=None if archive is None else str(archive))
    if dry_run:
        for record in _select(store, flt, keep_last):
            report.rollouts.append(_entry(store, record, store.layout.rollout_dir(record.rollout_id)))
        return report
    ctx, index, queue = store._ctx, store._index, store._queue
    with maintenance_lock(store.layout):
        report.recovered = recover(ctx, index, queue)
        if archive is not None and os.path.lexists(archive):
            # Checked again: the recovery just done may have written an interrupted run's
            # archive at this very path. This run's would then never be written.
            by = (
                "an interrupted prune, finished first, wrote its archive there"
                if report.recovered
                else "made meanwhile"
            )
            raise ConflictError(
                f"the archive {archive} exists now ({by}; an archive is never overwritten): "
                "nothing more was removed; run again with another archive path"
            )
        selected = _select(store, flt, keep_last)
        in_flight = in_flight_rollouts(queue)
        run = RemovalRun.begin(ctx, index, queue, archive)
        try:
            for record in selected:
                if record.rollout_id in in_flight:
                    report.kept.append((record.rollout_id, "an attempt of it is being decided"))
                    continue
                size = directory_bytes(store.layout.rollout_dir(record.rollout_id))
                removed = run.remove(record.rollout_id)
                if removed is None:
                    report.kept.append((record.rollout_id, "it changed or went away meanwhile"))
                    continue
                report.rollouts.append(
                    PrunedRollout(
                        record.rollout_id, removed.status, record.resources_id, record.end_time, size
                    )
                )
            run.finish()
        finally:
            run.close()
        if report.rollouts:
            # A removed rollout's id may come back (an idempotency key enqueued again) and reach
            # the revision number of a row agl report kept for the old one: that row would be
            # shown for the new rollout (found by an adversarial pass).
            shutil.rmtree(store.layout.report_cache, ignore_errors=True)
    return report
