"""Child-process bodies for the multi-process test of tests/test_rollout_index.py ("spawn").

Top-level functions with picklable arguments only; each reports through a file
written whole (temporary file + rename), an ``{"error": ...}`` one if it failed.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from typing import Any

from mp_workers import write_json

from store_fs import FileStore
from store_fs.models import AttemptStatus, RolloutStatus

TERMINAL: tuple[RolloutStatus, ...] = ("succeeded", "failed")


def index_writer(root: str, out: str, index: int, n: int, go: Any) -> None:
    """Enqueue ``n`` rollouts; after every second one, dequeue one and finish it."""
    try:
        store = FileStore(root, create=False)
        go.wait(60)

        async def body() -> list[str]:
            mine: list[str] = []
            for i in range(n):
                mine.append((await store.enqueue_rollout(input={"writer": index, "i": i})).rollout_id)
                if i % 2:
                    attempted = await store.dequeue_rollout(worker_id=f"writer-{index}")
                    if attempted is not None:
                        status: AttemptStatus = "succeeded" if i % 4 == 1 else "failed"
                        await store.update_attempt(
                            attempted.rollout_id, attempted.attempt.attempt_id, status=status
                        )
            return mine

        write_json(out, {"enqueued": asyncio.run(body())})
        store.close()
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise


def index_reader(root: str, out: str, go: Any, stop: str) -> None:
    """List finished rollouts through the index until ``stop`` exists; report what was wrong.

    Finished is final in this workload, so a correct reader's count never goes down,
    and every rollout it lists must really be finished.
    """
    try:
        store = FileStore(root, create=False)
        go.wait(60)

        async def body() -> dict[str, Any]:
            rounds, last = 0, 0
            wrong: list[tuple[str, str | int]] = []
            shrank: list[tuple[int, int]] = []
            while not os.path.exists(stop):
                result = await store.query_rollouts(status_in=list(TERMINAL))
                wrong += [(r.rollout_id, r.status) for r in result.items if r.status not in TERMINAL]
                if result.total < last:
                    shrank.append((last, result.total))
                last = max(last, result.total)
                stats = await store.statistics()
                if stats["total_rollouts"] < result.total:
                    wrong.append(("statistics", stats["total_rollouts"]))
                rounds += 1
            return {"rounds": rounds, "last": last, "wrong": wrong, "shrank": shrank}

        write_json(out, asyncio.run(body()))
        store.close()
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise


def index_finisher(root: str, out: str, index: int, go: Any) -> None:
    """Dequeue and finish rollouts (succeeded and failed in turn) until the queue is empty:
    revisions and their index lines, no new rollout directories."""
    try:
        store = FileStore(root, create=False)
        go.wait(60)

        async def body() -> list[str]:
            finished: list[str] = []
            while (attempted := await store.dequeue_rollout(worker_id=f"finisher-{index}")) is not None:
                status: AttemptStatus = "succeeded" if len(finished) % 2 else "failed"
                await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=status)
                finished.append(attempted.rollout_id)
            return finished

        write_json(out, {"finished": asyncio.run(body())})
        store.close()
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise


def enqueuer(root: str, out: str, n: int, go: Any) -> None:
    """Enqueue ``n`` rollouts one call at a time; report their ids."""
    try:
        store = FileStore(root, create=False)
        go.wait(60)

        async def body() -> list[str]:
            return [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(n)]

        write_json(out, {"enqueued": asyncio.run(body())})
        store.close()
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise


def metadata_updater(root: str, out: str, rollout_ids: list[str], rounds: int, go: Any) -> None:
    """Update every rollout's metadata ``rounds`` times (a revision and an index line each)."""
    try:
        store = FileStore(root, create=False)
        go.wait(60)

        async def body() -> int:
            for i in range(rounds):
                for rollout_id in rollout_ids:
                    await store.update_rollout(rollout_id, metadata={"round": i})
            return rounds * len(rollout_ids)

        write_json(out, {"updates": asyncio.run(body())})
        store.close()
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise
