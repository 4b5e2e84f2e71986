"""A view's rows made by worker processes, a chunk of rollouts each, in the store's order.

Building rows is pure Python work on each rollout's spans, one rollout at a time, so a big export
is CPU-bound in one process. :func:`parallel_rows` hands chunks of rollout ids to ``jobs`` worker
processes (started with ``spawn``: a process that may hold threads is never forked), each with its
own store object, and yields their results in chunk order, so the output is the same as a
sequential export's. For JSON Lines, workers return the encoded lines (one ``bytes`` per chunk:
little to copy between processes); for other sinks, the rows.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson

from store_fs.datasets.redaction import Redactor
from store_fs.datasets.rollout_filter import RolloutFilter
from store_fs.datasets.views import View, ViewCounts, rollout_rows

__all__ = ["CHUNK", "Chunk", "parallel_rows"]

CHUNK = 256
_LINE = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE

# (rows: encoded JSON Lines or row dicts, rollouts, rows, skipped, damaged)
Chunk = tuple[bytes | list[dict[str, Any]], int, int, list[tuple[str, str]], list[tuple[str, str]]]

_STORES: dict[str, Any] = {}  # per worker process: its store object


def _store(root: str) -> Any:
    store = _STORES.get(root)
    if store is None:
        from store_fs.store import FileStore

        store = _STORES[root] = FileStore(root, create=False, span_cache_bytes=0)
    return store


def _chunk(
    root: str, view: View, flt: RolloutFilter, redact: Sequence[str], ids: list[str], encode: bool
) -> Chunk:
    store = _store(root)
    redactor = Redactor(redact)
    counts = ViewCounts()

    async def rows() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for rollout_id in ids:
            out += await rollout_rows(store, rollout_id, view, flt, redactor=redactor, counts=counts)
        return out

    made = asyncio.run(rows())
    payload: bytes | list[dict[str, Any]] = (
        b"".join(orjson.dumps(r, option=_LINE) for r in made) if encode else made
    )
    return payload, counts.rollouts, counts.rows, counts.skipped, counts.damaged


def _exit_with(parent: int) -> None:
    """In a worker: exit once ``parent`` (the exporting process) is gone. Killed with -9, it
    can tell no worker to stop, and one blocked writing its result would wait for good."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="agl-export-parent-watch", daemon=True).start()


def parallel_rows(
    root: str,
    view: View,
    flt: RolloutFilter,
    redact: Sequence[str],
    ids: Sequence[str],
    *,
    jobs: int,
    encode: bool,
) -> Iterator[Chunk]:
    """The chunks of ``ids`` made by ``jobs`` worker processes, in order."""
    chunks = [list(ids[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
    ) as pool:
        futures = []
        window = jobs * 4  # chunks in flight: enough to keep workers busy, few to hold in memory
        for i, chunk in enumerate(chunks):
            futures.append(pool.submit(_chunk, root, view, flt, list(redact), chunk, encode))
            if i >= window:
                yield futures.pop(0).result()
        for future in futures:
            yield future.result()
