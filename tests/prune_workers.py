"""Child-process bodies for tests/test_prune.py: runners and an enqueuer working on a store
while it is pruned, and a prune to be killed. Run as ``python prune_workers.py ROLE ...``.

Each role appends one JSON line per event to its output file with a single ``write(2)``, so a
child that is killed leaves every line it wrote before.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from store_fs import AttemptStatus, FileStore
from store_fs.datasets import RolloutFilter
from store_fs.prune import prune_store
from store_fs.rewards import reward_span


def _log(fd: int, **event: Any) -> None:
    os.write(fd, (json.dumps(event) + "\n").encode())


async def runner(root: str, out: str, seconds: float, worker: str) -> None:
    """Dequeue, store a reward span, and finish (every fifth fails) until ``seconds`` pass."""
    store = FileStore(root, create=False, scan_debounce_seconds=0.2)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        try:
            attempted = await store.dequeue_rollout(worker_id=worker)
            if attempted is None:
                await asyncio.sleep(0.01)
                continue
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            span = reward_span(0.5, rollout_id=rid, attempt_id=aid, sequence_id=1)
            await store.add_span(span)
            status: AttemptStatus = "failed" if done % 5 == 4 else "succeeded"
            await store.update_attempt(rid, aid, status=status)
            done += 1
            _log(fd, event="finished", rollout_id=rid, status=status)
        except Exception as err:  # reported, and the test fails on it
            _log(fd, event="error", error=f"{type(err).__name__}: {err}")
    _log(fd, event="stopped", done=done)


async def enqueuer(root: str, out: str, seconds: float) -> None:
    store = FileStore(root, create=False)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        try:
            resources = f"rs-{n % 2:012x}"
            rollout = await store.enqueue_rollout(input={"n": n}, resources_id=resources)
            _log(fd, event="enqueued", rollout_id=rollout.rollout_id)
            n += 1
        except Exception as err:
            _log(fd, event="error", error=f"{type(err).__name__}: {err}")
        await asyncio.sleep(0.005)
    _log(fd, event="stopped", done=n)


def prune(root: str, archive: str) -> None:
    store = FileStore(root, create=False)
    print("start", flush=True)
    report = prune_store(
        store, RolloutFilter.of(endings=None, status_in=["succeeded", "failed"]), archive=Path(archive)
    )
    print(json.dumps([r.rollout_id for r in report.rollouts]), flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "runner":
        asyncio.run(runner(args[0], args[1], float(args[2]), args[3]))
    elif role == "enqueuer":
        asyncio.run(enqueuer(args[0], args[1], float(args[2])))
    elif role == "prune":
        prune(args[0], args[1])
    else:
        raise SystemExit(f"unknown role {role}")
