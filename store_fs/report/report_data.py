"""Gathering what a report shows, through the public ``FileStore`` API.

Rollouts are read page by page (``query_rollouts(limit=, offset=)``, which the rollout index
serves without reading other pages' records) and reduced to rows at once
(:mod:`store_fs.report.report_scan`). A store of one page is read through the caller's
``FileStore``; a bigger one through a fresh ``FileStore`` per page, because an instance keeps
every record it reads. With ``jobs`` > 1, a store of more than :data:`PARALLEL_MIN_ROLLOUTS`
rollouts is read by a pool of worker processes, a page at a time each, while one more process
runs ``check()``: reading every record and span file is the cost of a report, and it is I/O
and decoding, which parallelise across processes (Python threads would not). Pages are taken
in the default order (oldest first), so rollouts enqueued while the report is gathered land
on the last page, which reads to the end; a rollout met twice is kept once."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from store_fs.errors import RolloutNotFoundError
from store_fs.models import ResourcesUpdate, Span, Worker
from store_fs.report.report_scan import (
    RolloutRow,
    check_alone,
    scan_page,
    scan_page_alone,
    scan_page_in_worker,
    scan_rollout,
)

if TYPE_CHECKING:
    from store_fs._disk.check import Problem
    from store_fs.store import FileStore

__all__ = ["PARALLEL_MIN_ROLLOUTS", "ReportData", "ReportOptions", "Waterfall", "gather"]

#: Stores with more rollouts than this are read by worker processes (when ``jobs`` > 1).
PARALLEL_MIN_ROLLOUTS = 3000
#: Rollouts per page. Past one page, each page is read through a ``FileStore`` of its own, which
#: loads the rollout index again (about a second, and a transient peak of memory, at 100,000
#: rollouts) but drops the records the previous one cached (about 5 KB per rollout).
PAGE_ROLLOUTS = 25_000
#: At most this many spans of a rollout are drawn in its waterfall.
WATERFALL_MAX_SPANS = 300


@dataclass(frozen=True)
class ReportOptions:
    """What to put in a report and how to gather it.

    ``rollout_ids``: the rollouts whose span waterfall is drawn (default: the best and the
    worst final reward). ``run_check``: include ``check()``'s findings (it reads every file).
    ``jobs``: worker processes reading a store of more than :data:`PARALLEL_MIN_ROLLOUTS` rollouts
    (1: none). They are started with multiprocessing's ``spawn`` method, so a script that asks
    for them needs the usual ``if __name__ == "__main__":`` guard (``agl report`` uses one per
    CPU, at most 4).
    ``refresh_seconds``: make an open browser reload the page this often (``--watch``).
    """

    rollout_ids: tuple[str, ...] = ()
    run_check: bool = True
    jobs: int = 1
    refresh_seconds: int | None = None


@dataclass
class Waterfall:
    """The spans of one rollout to draw, and why it was chosen."""

    label: str
    row: RolloutRow
    spans: list[Span]


@dataclass
class ReportData:
    """Everything a report page is made from."""

    store: str
    generated_at: float
    rollouts: list[RolloutRow]
    resources: list[ResourcesUpdate]
    workers: list[Worker]
    problems: list[Problem] | None  # None: the check was not run
    waterfalls: list[Waterfall] = field(default_factory=list)
    options: ReportOptions = field(default_factory=ReportOptions)
    gather_seconds: float = 0.0


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


def _pages(total: int, size: int) -> list[tuple[int, int]]:
    """(offset, limit) of each page; the last reads to the end (rollouts enqueued meanwhile)."""
    offsets = list(range(0, total, size)) or [0]
    return [(offset, -1 if offset == offsets[-1] else size) for offset in offsets]


async def _read_in_process(
    store: FileStore, total: int, run_check: bool
) -> tuple[list[RolloutRow], list[Problem] | None]:
    """One page through ``store``; more, each through a store of its own (memory: one page)."""
    if total <= PAGE_ROLLOUTS:
        return await scan_page(store, 0, -1), (store.check() if run_check else None)
    rows: list[RolloutRow] = []
    for offset, limit in _pages(total, PAGE_ROLLOUTS):
        rows.extend(await scan_page_alone(str(store.root), offset, limit))
    return rows, (check_alone(str(store.root)) if run_check else None)


async def _read_in_pool(
    store: FileStore, total: int, jobs: int, run_check: bool
) -> tuple[list[RolloutRow], list[Problem] | None]:
    """Pages read by ``jobs`` worker processes, and the check by one more, all at once."""
    root = str(store.root)
    size = min(PAGE_ROLLOUTS, max(500, math.ceil(total / (jobs * 2))))
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    with ProcessPoolExecutor(max_workers=jobs + int(run_check), mp_context=context) as pool:
        check = loop.run_in_executor(pool, check_alone, root) if run_check else None
        pages = [
            loop.run_in_executor(pool, scan_page_in_worker, root, offset, limit)
            for offset, limit in _pages(total, size)
        ]
        rows = [row for chunk in await asyncio.gather(*pages) for row in chunk]
        problems = await check if check is not None else None
    return rows, problems


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
    total = (await store.query_rollouts(limit=1)).total
    if options.jobs > 1 and total > PARALLEL_MIN_ROLLOUTS:
        rows, problems = await _read_in_pool(store, total, options.jobs, options.run_check)
    else:
        rows, problems = await _read_in_process(store, total, options.run_check)
    rows = _dedupe(rows)
    resources = sorted(await store.query_resources(), key=lambda r: (r.create_time, r.resources_id))
    workers = list(await store.query_workers(sort_by="worker_id"))
    waterfalls = await _waterfalls(store, rows, options.rollout_ids)
    return ReportData(
        store=str(store.root),
        generated_at=time.time(),
        rollouts=rows,
        resources=resources,
        workers=workers,
        problems=problems,
        waterfalls=waterfalls,
        options=options,
        gather_seconds=time.perf_counter() - started,
    )
