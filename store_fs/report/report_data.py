"""Gathering what a report shows: rows of every rollout, resources, workers, findings, waterfalls.

Rollouts are read straight from their files (:mod:`store_fs.report.report_fastscan`: the newest
revision of each record as JSON, span lines judged and counted without span objects), giving the
rows the public API would give; anything not in the store's own shape is read through the API.
With ``jobs`` > 1, a store of more than :data:`PARALLEL_MIN_ROLLOUTS` rollouts is read by a pool
of worker processes, each taking a share of the fan-out directories (``rollouts/<2 hex>/``):
reading is file reads and JSON, which parallelise across processes (Python threads would not).
Resources, workers and the waterfalls' spans come through the public API.

Data health is, by default, :func:`~store_fs.report.report_health.quick_check` (what that
reading found, plus the queue, the trash and the index marker); ``full_check`` runs
``FileStore.check()`` instead, which reads every file again (in one more worker process, beside
the readers, when there is a pool)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from store_fs._disk import fsio
from store_fs.errors import CorruptRecordError, RolloutNotFoundError
from store_fs.models import ResourcesUpdate, Span, Worker
from store_fs.report.report_fastscan import FastScan, buckets, scan_buckets, scan_buckets_in_worker
from store_fs.report.report_health import quick_check
from store_fs.report.report_scan import RolloutRow, check_alone, scan_rollout

if TYPE_CHECKING:
    from store_fs._disk.check import Problem
    from store_fs.store import FileStore

__all__ = ["PARALLEL_MIN_ROLLOUTS", "ReportData", "ReportOptions", "Waterfall", "gather"]

#: Stores with more rollouts than this are read by worker processes (when ``jobs`` > 1): below
#: it, starting the processes (a fresh interpreter each) costs more than they save.
PARALLEL_MIN_ROLLOUTS = 5000
#: Shares of the fan-out directories per worker process: several each, so a worker slowed by
#: the rest of the machine holds back less of the work.
SHARES_PER_JOB = 4
#: At most this many spans of a rollout are drawn in its waterfall.
WATERFALL_MAX_SPANS = 300


@dataclass(frozen=True)
class ReportOptions:
    """What to put in a report and how to gather it.

    ``rollout_ids``: the rollouts whose span waterfall is drawn (default: the best and the
    worst final reward). ``run_check``: include a data health section; ``full_check``: make it
    ``check()``'s findings (which reads every file again) instead of the quick check's
    (:mod:`store_fs.report.report_health`).
    ``jobs``: worker processes reading a store of more than :data:`PARALLEL_MIN_ROLLOUTS` rollouts
    (1: none). They are started with multiprocessing's ``spawn`` method, so a script that asks
    for them needs the usual ``if __name__ == "__main__":`` guard (``agl report`` uses one per
    CPU, at most 4).
    ``refresh_seconds``: make an open browser reload the page this often (``--watch``).
    ``cache``: use and update the rows of settled rollouts kept in the store by earlier reports
    (``cache/report-rows/``, :mod:`store_fs.report._row_cache`); False reads every rollout.
    """

    rollout_ids: tuple[str, ...] = ()
    run_check: bool = True
    full_check: bool = False
    jobs: int = 1
    refresh_seconds: int | None = None
    cache: bool = True


@dataclass
class Waterfall:
    """The spans of one rollout to draw, and why it was chosen."""

    label: str
    row: RolloutRow
    spans: list[Span]


@dataclass(repr=False)
class ReportData:
    """Everything a report page is made from. ``check_scope``: ``"quick"`` or ``"full"`` (None:
    not checked)."""

    store: str
    generated_at: float
    rollouts: list[RolloutRow]
    resources: list[ResourcesUpdate]
    workers: list[Worker]
    problems: list[Problem] | None  # None: the check was not run
    waterfalls: list[Waterfall] = field(default_factory=list)
    options: ReportOptions = field(default_factory=ReportOptions)
    gather_seconds: float = 0.0
    check_scope: str | None = None

    def __repr__(self) -> str:
        # Short on purpose: asyncio.run (Python 3.11) formats the repr of its main task's
        # result when it ends, and a generated repr would spell out every row.
        return f"ReportData({self.store!r}, {len(self.rollouts)} rollouts)"


async def _check_requested(store: FileStore, rollout_ids: Sequence[str]) -> None:
    """Unknown ``--rollout`` ids fail before any reading starts."""
    for rollout_id in rollout_ids:
        if await store.get_rollout_by_id(rollout_id) is None:
            raise RolloutNotFoundError(rollout_id)


def _dedupe(rows: Sequence[RolloutRow]) -> list[RolloutRow]:
    by_id: dict[str, RolloutRow] = {}
    for row in rows:
        by_id[row.rollout_id] = row
    return sorted(by_id.values(), key=lambda r: (r.start_time, r.rollout_id))


def _count(root: str, names: list[str]) -> int:
    """Entries under the fan-out directories: about the number of rollouts, for the choice of a pool."""
    total = 0
    for name in names:
        try:
            total += len(os.listdir(f"{root}/rollouts/{name}"))
        except (FileNotFoundError, NotADirectoryError):
            pass
    return total


@dataclass
class _Read:
    """What the reading phase gathers."""

    scan: FastScan
    problems: list[Problem] | None
    resources: list[ResourcesUpdate]
    workers: list[Worker]


async def _registry(store: FileStore, scan: FastScan) -> tuple[list[ResourcesUpdate], list[Worker]]:
    """Resource versions (oldest first) and workers, through the API. A damaged version is left
    out and named among ``scan``'s corrupt records (the page's health section), rather than
    taking the whole page with it."""
    try:
        found = list(await store.query_resources())
    except CorruptRecordError:
        found = []
        for entry in fsio.iter_dirs(store.layout.resource_ids):
            try:
                one = await store.get_resources_by_id(entry.name)
            except CorruptRecordError as err:
                scan.corrupt_records.append((err.path, err.reason))
                continue
            if one is not None:
                found.append(one)
    resources = sorted(found, key=lambda r: (r.create_time, r.resources_id))
    return resources, list(await store.query_workers(sort_by="worker_id"))


async def _read_in_process(store: FileStore, names: list[str], full_check: bool, cache: bool) -> _Read:
    scan = await scan_buckets(str(store.root), names, cache=cache)
    problems = store.check() if full_check else None
    return _Read(scan, problems, *await _registry(store, scan))


async def _read_in_pool(
    store: FileStore, names: list[str], jobs: int, full_check: bool, cache: bool
) -> _Read:
    """Shares of the fan-out directories read by ``jobs`` worker processes, and the full check
    by one more, all at once; resources and workers meanwhile, here (the store's first API call
    in a process costs a second or more on a big store: it runs the reaper's sweep)."""
    root = str(store.root)
    shares = max(1, min(len(names), jobs * SHARES_PER_JOB))
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(max_workers=jobs + int(full_check), mp_context=context) as pool:
        check = loop.run_in_executor(pool, check_alone, root) if full_check else None
        parts = [
            loop.run_in_executor(pool, scan_buckets_in_worker, root, names[i::shares], cache)
            for i in range(shares)
        ]
        scan = FastScan()
        resources, workers = await _registry(store, scan)
        for part in await asyncio.gather(*parts):
            scan.extend(part)
        problems = await check if check is not None else None
    return _Read(scan, problems, resources, workers)


async def _waterfalls(
    store: FileStore, rows: Sequence[RolloutRow], requested: Sequence[str]
) -> list[Waterfall]:
    """The requested rollouts, else the best and the worst final reward."""
    picks: list[tuple[str, str]] = [("requested", rid) for rid in requested]
    if not picks:
        rewarded = [r for r in rows if r.reward is not None]
        if rewarded:
            best = max(rewarded, key=lambda r: r.reward or 0.0)
            worst = min(rewarded, key=lambda r: r.reward or 0.0)
            picks = [("best reward", best.rollout_id)]
            if worst.rollout_id != best.rollout_id:
                picks.append(("worst reward", worst.rollout_id))
    out: list[Waterfall] = []
    by_id = {r.rollout_id: r for r in rows}
    for label, rollout_id in picks:
        row = by_id.get(rollout_id)
        if row is None:  # requested, and enqueued after the listing was read
            rollout = await store.get_rollout_by_id(rollout_id)
            if rollout is None:
                raise RolloutNotFoundError(rollout_id)
            row = await scan_rollout(store, rollout)
        spans = list(await store.query_spans(rollout_id, limit=WATERFALL_MAX_SPANS))
        out.append(Waterfall(label, row, spans))
    return out


async def gather(store: FileStore, options: ReportOptions | None = None) -> ReportData:
    """Read the store into a :class:`ReportData` (rows, resources, workers, findings, waterfalls).

    Raises :class:`~store_fs.errors.RolloutNotFoundError` for an unknown requested rollout
    before reading anything else.
    """
    options = options or ReportOptions()
    started = time.perf_counter()
    await _check_requested(store, options.rollout_ids)
    names = buckets(store.layout)
    full = options.run_check and options.full_check
    if options.jobs > 1 and _count(str(store.root), names) > PARALLEL_MIN_ROLLOUTS:
        read = await _read_in_pool(store, names, options.jobs, full, options.cache)
    else:
        read = await _read_in_process(store, names, full, options.cache)
    rows = _dedupe(read.scan.rows)
    problems = read.problems
    if options.run_check and not full:
        problems = quick_check(store.layout, rows, read.scan.bad_spans, read.scan.corrupt_records)
    waterfalls = await _waterfalls(store, rows, options.rollout_ids)
    return ReportData(
        store=str(store.root),
        generated_at=time.time(),
        rollouts=rows,
        resources=read.resources,
        workers=read.workers,
        problems=problems,
        waterfalls=waterfalls,
        options=options,
        gather_seconds=time.perf_counter() - started,
        check_scope=None if not options.run_check else "full" if full else "quick",
    )
