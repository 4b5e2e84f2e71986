"""``agl data triplets|messages|rollouts``: a view of a store written out, once or as it grows.

:func:`export_view` writes the rows of one view to a binary stream (JSON Lines) or to a file
(JSON Lines, or Parquet for a name ending in ``.parquet``; published whole, see
:mod:`~store_fs.datasets.row_writers`). A big export builds its rows in worker processes
(:mod:`~store_fs.datasets.parallel_rows`), in the same order. With a cursor file it writes only
the rollouts that finished since the cursor (all of them the first time) and saves the cursor
once the rows are out; with ``follow`` it goes on writing rollouts as they finish, saving the
cursor after each batch, until interrupted or ``idle_timeout`` seconds pass with nothing new.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from store_fs.datasets.cursor import Cursor
from store_fs.datasets.parallel_rows import parallel_rows
from store_fs.datasets.rollout_filter import RolloutFilter
from store_fs.datasets.row_writers import JsonLinesSink, RowSink, open_sink
from store_fs.datasets.views import TrainingData, View, ViewCounts, candidate_ids

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["PARALLEL_FROM", "auto_jobs", "export_view"]

PARALLEL_FROM = 2000


async def _write_all(sink: RowSink, data: TrainingData, cursor_path: Path | None) -> None:
    if cursor_path is None:
        async for row in data.rows():
            sink.write(row)
        return
    await data.for_each_new(sink.write)  # row by row: a first run over a big store holds no list


def _write_parallel(sink: RowSink, data: TrainingData, redact: list[str], jobs: int, ids: list[str]) -> None:
    encode = isinstance(sink, JsonLinesSink)
    root = str(data.store.root)
    for payload, rollouts, rows, skipped, damaged in parallel_rows(
        root, data.view, data.filter, redact, ids, jobs=jobs, encode=encode
    ):
        if isinstance(payload, bytes):
            assert isinstance(sink, JsonLinesSink)
            sink.write_bytes(payload)
        else:
            for row in payload:
                sink.write(row)
        data.counts.rollouts += rollouts
        data.counts.rows += rows
        data.counts.skipped += skipped
        data.counts.damaged += damaged


def auto_jobs(candidates: int) -> int:
    """Worker processes for an export of ``candidates`` rollouts: one below ``PARALLEL_FROM``
    (starting workers costs about half a second), else one per CPU, at most 4."""
    if candidates < PARALLEL_FROM:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


async def _follow(
    sink: RowSink, data: TrainingData, cursor_path: Path | None, idle_timeout: float | None
) -> None:
    await data.for_each_new(sink.write)  # the backlog row by row, not as one first batch
    sink.flush()
    if cursor_path is not None:
        data.save_cursor(cursor_path)
    async for batch in data.follow(idle_timeout=idle_timeout):
        for row in batch:
            sink.write(row)
        sink.flush()
        if cursor_path is not None:
            data.save_cursor(cursor_path)


async def export_view(
    store: FileStore,
    view: View,
    flt: RolloutFilter | None = None,
    *,
    output: IO[bytes] | Path,
    redact: Iterable[str] = (),
    cursor: Path | None = None,
    follow: bool = False,
    idle_timeout: float | None = None,
    jobs: int | None = None,
) -> ViewCounts:
    """Write ``view``'s rows to ``output``; returns what was written (rollouts, rows, skipped).

    ``cursor``: a cursor file (see :class:`~store_fs.datasets.cursor.Cursor`); only rollouts
    finished since it are written, and it is saved after them. ``follow``: keep writing rollouts
    as they finish (needs a stream, not a file). ``jobs``: worker processes building rows
    (None: :func:`auto_jobs`; only for a whole export, without a cursor)."""
    if follow and isinstance(output, Path):
        raise ValueError("following writes to a stream (stdout), not to a file")
    data = TrainingData(
        store,
        view,
        flt,
        redact=redact,
        cursor=Cursor.load(cursor, missing="start") if cursor is not None else None,
    )
    sink = open_sink(output, view)
    try:
        if follow:
            await _follow(sink, data, cursor, idle_timeout)
        elif cursor is None and jobs != 1:
            ids = candidate_ids(store, data.filter)
            workers = auto_jobs(len(ids)) if jobs is None else jobs
            if workers > 1:
                _write_parallel(sink, data, list(redact), workers, ids)
            else:
                await _write_all(sink, data, cursor)
        else:
            await _write_all(sink, data, cursor)
    except BaseException:
        if isinstance(output, Path):
            sink.abort()
        else:
            sink.flush()
        raise
    sink.close()
    if cursor is not None and not follow:
        data.save_cursor(cursor)
    return data.counts
