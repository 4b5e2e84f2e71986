"""Child-process bodies for tests/test_compaction.py: short-lived writers, a follower that reads
the store as it changes, compactors (one looping, others to be SIGKILLed) and a holder of the
maintenance lock. Run as ``python compaction_workers.py ROLE ARGS...``.

Each role appends one JSON line per event to its output file with a single ``write(2)``, so a
child that is killed leaves every line it wrote before. Roles that loop stop when the stop file
the test names exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from store_fs import AttemptStatus, FileStore, Span
from store_fs._disk.layout import Layout
from store_fs._disk.maintenance import maintenance_lock
from store_fs.datasets import Cursor
from store_fs.errors import MaintenanceBusyError
from store_fs.live import EventReader


def _open(out: str) -> int:
    return os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _log(fd: int, **event: Any) -> None:
    os.write(fd, (json.dumps(event) + "\n").encode())


async def writer(root: str, out: str, rollouts: int, worker: str, salt: int) -> None:
    """Enqueue ``rollouts`` rollouts, then dequeue as many (any writer's), add a span to each and
    finish it (every third fails), then exit: one index log, one event log and one worker log of a
    process that is gone, for the compactors."""
    fd = _open(out)
    try:
        store = FileStore(root, create=False)
        for i in range(rollouts):
            rollout = await store.enqueue_rollout(input={"worker": worker, "salt": salt, "i": i})
            _log(fd, event="enqueued", rollout_id=rollout.rollout_id)
        for i in range(rollouts):
            attempted = await store.dequeue_rollout(worker_id=worker)
            if attempted is None:
                break
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            _log(fd, event="dequeued", rollout_id=rid, worker=worker)
            span = Span.from_attributes(
                rollout_id=rid, attempt_id=aid, sequence_id=1, name="step", attributes={"i": i}
            )
            await store.add_span(span)
            status: AttemptStatus = "failed" if (salt + i) % 3 == 2 else "succeeded"
            await store.update_attempt(rid, aid, status=status)
            _log(fd, event="finished", rollout_id=rid, status=status)
        store.close()
    except Exception:
        _log(fd, event="error", error=traceback.format_exc())


async def follower(root: str, out: str, stop: str) -> None:
    """Follow finished rollouts (a :class:`Cursor`) and the change feed (:class:`EventReader`)
    until ``stop`` exists, then read once more. Every finished rollout reported must be listed by
    ``query_rollouts`` right after (an index line hidden by a compaction would fail that)."""
    fd = _open(out)
    try:
        store = FileStore(root, create=False)
        cursor = Cursor.start()
        events = EventReader(store.layout.events)
        seen: set[str] = set()
        reads = 0
        while True:
            last = os.path.exists(stop)  # looked at before reading: the final read follows it
            finished = cursor.finished(store)
            new_events = events.read_new()
            reads += 1
            if finished:
                _log(fd, event="finished", rollout_ids=finished)
            if new_events:
                _log(fd, event="events", events=new_events)
            seen.update(finished)
            listed = {r.rollout_id for r in await store.query_rollouts(status_in=["succeeded", "failed"])}
            if not seen <= listed:
                _log(fd, event="error", error=f"finished but not listed: {sorted(seen - listed)}")
            if last:
                break
            await asyncio.sleep(0.02)
        _log(fd, event="done", reads=reads)
    except Exception:
        _log(fd, event="error", error=traceback.format_exc())


def compactor(root: str, out: str, stop: str) -> None:
    """Compact in a loop until ``stop`` exists; log the totals."""
    fd = _open(out)
    totals = {"runs": 0, "busy": 0, "segments": 0, "absorbed": 0, "removed": 0}
    try:
        store = FileStore(root, create=False)
        while not os.path.exists(stop):
            try:
                report = store.compact()
            except MaintenanceBusyError:
                totals["busy"] += 1
                time.sleep(0.005)
                continue
            totals["runs"] += 1
            totals["segments"] += report.segments
            totals["absorbed"] += report.absorbed
            totals["removed"] += report.removed
            time.sleep(0.3)  # leaves work for the compactors that are killed
    except Exception:
        _log(fd, event="error", error=traceback.format_exc())
    _log(fd, event="totals", **totals)


def victim(root: str, out: str) -> None:
    """Say ``ready`` on stdout and wait for a line on stdin, then compact without pause until
    killed, logging ``begin`` before each compaction and what it did after (a last line
    ``begin``: killed in a compaction). Its writes are fsynced, as on a store opened with
    ``durability="fsync"``: slower compactions, so that more kills land inside one."""
    fd = _open(out)
    store = FileStore(root, create=False, durability="fsync")
    print("ready", flush=True)
    sys.stdin.readline()
    while True:
        _log(fd, event="begin")
        try:
            report = store.compact()
        except MaintenanceBusyError:
            _log(fd, event="busy")
            time.sleep(0.001)
            continue
        _log(fd, event="end", absorbed=report.absorbed, removed=report.removed)


async def finish(root: str, status: str, worker_id: str) -> None:
    """Run one rollout to ``status`` (dequeued as ``worker_id`` when not empty), then exit."""
    store = FileStore(root, create=False)
    r = await store.enqueue_rollout(input=1)
    a = await store.dequeue_rollout(worker_id=worker_id or None)
    assert a is not None
    await store.update_attempt(r.rollout_id, a.attempt.attempt_id, status=status)  # type: ignore[arg-type]


def finish_in_a_process(root: Path, status: str, worker_id: str = "") -> None:
    """:func:`finish` in a process of its own, which is gone when this returns (its logs are
    a dead writer's, for compaction)."""
    command = [sys.executable, __file__, "finish", str(root), status, worker_id]
    subprocess.run(command, check=True, timeout=60)


def hold(root: str) -> None:
    """Hold the maintenance lock, say ``held`` on stdout, and sleep until killed."""
    with maintenance_lock(Layout(Path(root))):
        print("held", flush=True)
        time.sleep(3600)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "writer":
        asyncio.run(writer(args[0], args[1], int(args[2]), args[3], int(args[4])))
    elif role == "follower":
        asyncio.run(follower(args[0], args[1], args[2]))
    elif role == "compactor":
        compactor(args[0], args[1], args[2])
    elif role == "victim":
        victim(args[0], args[1])
    elif role == "finish":
        asyncio.run(finish(args[0], args[1], args[2]))
    elif role == "hold":
        hold(args[0])
    else:
        raise SystemExit(f"unknown role {role}")
