"""Child-process bodies for tests/test_two_hosts.py and benchmarks/bench_nfs.py ("spawn").

Each process opens the store through one host's mount (``root`` is a path under that
host's mount point), with that host's clock: :class:`SkewedClock` shifts the wall clock
by the host's offset (its monotonic clock is its own anyway). Events go to a JSON-lines
file, one ``write(2)`` per line (on the local disk, not the mount), so a SIGKILLed child
leaves everything it reported. Helpers come from ``tests/mp_workers.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from pathlib import Path
from typing import Any

from mp_workers import append_line, make_span, write_json

from store_fs import FileStore


class SkewedClock:
    """The real clocks, with the wall clock ``offset`` seconds off (a host whose NTP is off)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


def open_store(root: str, skew: float, options: dict[str, Any]) -> FileStore:
    return FileStore(root, create=False, clock=SkewedClock(skew), watch_mode="poll", **options)


def _events(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def runner(
    root: str,
    events: str,
    host: str,
    worker_id: str,
    skew: float,
    options: dict[str, Any],
    spans: int,
    work_seconds: float,
    heartbeat_every: float,
    stop_file: str,
    deadline_s: float,
) -> None:
    """Dequeue and run rollouts until ``stop_file`` exists (or ``deadline_s`` passes).

    Per rollout: ``claim``; ``spans`` spans spread over ``work_seconds`` with an explicit
    heartbeat at least every ``heartbeat_every`` s (a ``lost`` event and the attempt
    abandoned if the store says its token was taken); ``committed`` after
    ``update_attempt(succeeded)`` returned, with the span ids it added.
    """
    fd = _events(events)

    async def body() -> None:
        store = open_store(root, skew, options)
        deadline = time.monotonic() + deadline_s
        base = {"host": host, "worker": worker_id, "pid": os.getpid()}
        while time.monotonic() < deadline and not os.path.exists(stop_file):
            attempted = await store.dequeue_rollout(worker_id=worker_id)
            if attempted is None:
                await asyncio.sleep(0.02)
                continue
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            ev = {**base, "rollout_id": rid, "attempt_id": aid, "seq": attempted.attempt.sequence_id}
            append_line(fd, {**ev, "event": "claim", "t": time.time()})
            added: list[str] = []
            last_beat = time.monotonic()
            alive = True
            for _ in range(spans):
                await asyncio.sleep(work_seconds / max(spans, 1))
                if time.monotonic() - last_beat >= heartbeat_every:
                    last_beat = time.monotonic()
                    if not await store.heartbeat(rid, aid):
                        alive = False
                        break
                seq = await store.get_next_span_sequence_id(rid, aid)
                span = make_span(rid, aid, seq)
                if await store.add_span(span) is not None:
                    added.append(span.span_id)
            if alive and not await store.heartbeat(rid, aid):
                alive = False
            if not alive:
                append_line(fd, {**ev, "event": "lost", "spans": added, "t": time.time()})
                continue
            append_line(fd, {**ev, "event": "committing", "spans": added, "t": time.time()})
            await store.update_attempt(rid, aid, status="succeeded")
            append_line(fd, {**ev, "event": "committed", "spans": added, "t": time.time()})
        store.close()

    try:
        asyncio.run(body())
    except BaseException:
        append_line(
            fd, {"event": "error", "host": host, "worker": worker_id, "error": traceback.format_exc()}
        )
        raise


def doomed(
    root: str, events: str, host: str, skew: float, options: dict[str, Any], count: int, spans: int
) -> None:
    """Claim ``count`` rollouts, add ``spans`` spans to each, report ``ready``, then hang (SIGKILL me)."""
    fd = _events(events)

    async def body() -> None:
        store = open_store(root, skew, options)
        worker = f"doomed-{host}-{os.getpid()}"
        got = 0
        deadline = time.monotonic() + 30
        while got < count and time.monotonic() < deadline:
            attempted = await store.dequeue_rollout(worker_id=worker)
            if attempted is None:
                await asyncio.sleep(0.02)
                continue
            got += 1
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            added = []
            for _ in range(spans):
                seq = await store.get_next_span_sequence_id(rid, aid)
                span = make_span(rid, aid, seq)
                await store.add_span(span)
                added.append(span.span_id)
            append_line(
                fd,
                {
                    "event": "doomed-claim",
                    "host": host,
                    "worker": worker,
                    "pid": os.getpid(),
                    "rollout_id": rid,
                    "attempt_id": aid,
                    "seq": attempted.attempt.sequence_id,
                    "spans": added,
                    "t": time.time(),
                },
            )
        append_line(fd, {"event": "ready", "host": host, "pid": os.getpid(), "claimed": got})
        while True:
            time.sleep(3600)

    try:
        asyncio.run(body())
    except BaseException:
        append_line(fd, {"event": "error", "host": host, "error": traceback.format_exc()})
        raise


def agent(root: str, conn: Any, skew: float, options: dict[str, Any]) -> None:
    """A store in a process of one host, driven step by step through a Pipe.

    Commands (tuples): ("dequeue", worker) -> [rid, aid, seq] | None; ("span", rid, aid) ->
    span_id; ("commit", rid, aid) -> None; ("reap",) -> number expired; ("status", rid) ->
    [status, [[attempt_id, seq, status], ...]]; ("stop",). Errors come back as
    {"error": traceback}.
    """

    async def body() -> None:
        store = open_store(root, skew, options)
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            try:
                op = cmd[0]
                if op == "stop":
                    conn.send(None)
                    break
                if op == "dequeue":
                    a = await store.dequeue_rollout(worker_id=cmd[1])
                    reply: Any = (
                        None if a is None else [a.rollout_id, a.attempt.attempt_id, a.attempt.sequence_id]
                    )
                elif op == "span":
                    seq = await store.get_next_span_sequence_id(cmd[1], cmd[2])
                    span = make_span(cmd[1], cmd[2], seq)
                    await store.add_span(span)
                    reply = span.span_id
                elif op == "commit":
                    await store.update_attempt(cmd[1], cmd[2], status="succeeded")
                    reply = None
                elif op == "reap":
                    reply = store.reap()
                elif op == "status":
                    r = await store.get_rollout_by_id(cmd[1])
                    attempts = await store.query_attempts(cmd[1])
                    reply = [
                        r.status if r else None,
                        [[a.attempt_id, a.sequence_id, a.status] for a in attempts],
                    ]
                else:
                    reply = {"error": f"unknown command {op}"}
            except Exception:
                reply = {"error": traceback.format_exc()}
            conn.send(reply)
        store.close()

    asyncio.run(body())


def bench_runner(
    root: str, out: str, worker_id: str, spans: int, go_file: str, stop_file: str, options: dict[str, Any]
) -> None:
    """Benchmark loop: once ``go_file`` exists, dequeue -> ``spans`` spans -> complete, as fast
    as it goes, until ``stop_file`` exists. Reports how many it did and when the last ended."""

    async def body() -> None:
        store = open_store(root, 0.0, options)
        while not os.path.exists(go_file):
            await asyncio.sleep(0.002)
        done = 0
        last = time.time()
        while not os.path.exists(stop_file):
            attempted = await store.dequeue_rollout(worker_id=worker_id)
            if attempted is None:
                await asyncio.sleep(0.005)
                continue
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            for _ in range(spans):
                seq = await store.get_next_span_sequence_id(rid, aid)
                await store.add_span(make_span(rid, aid, seq))
            await store.update_attempt(rid, aid, status="succeeded")
            done += 1
            last = time.time()
        store.close()
        write_json(out, {"done": done, "last": last})

    try:
        asyncio.run(body())
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise


def ensure_dir(path: str | Path) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
