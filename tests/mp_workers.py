"""Child-process bodies for tests/test_multiprocess.py (started with the "spawn" method).

Every function here is a top-level function taking only picklable arguments, so a
spawned interpreter can import this module and run it. Results go to files named
by the caller, written whole (temporary file + rename) or appended one line per
event, so a child that is SIGKILLed leaves everything it reported before dying.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any

from store_fs import FileStore, Span, TraceStatus
from store_fs.models import OtelResource, SpanContext


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def append_line(fd: int, obj: Any) -> None:
    """Append one JSON line with a single write(2) (survives SIGKILL of the writer)."""
    os.write(fd, (json.dumps(obj) + "\n").encode())


def make_span(rollout_id: str, attempt_id: str, sequence_id: int, *, pad: int = 64) -> Span:
    """A plain span with ``pad`` bytes of attribute payload."""
    trace_id = f"{sequence_id:032x}"
    span_id = f"{sequence_id:016x}"
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=None,
        name=f"span-{sequence_id}",
        status=TraceStatus(status_code="OK"),
        attributes={"payload": "x" * pad, "n": sequence_id},
        events=[],
        links=[],
        start_time=time.time(),
        end_time=time.time(),
        context=SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_state={}),
        parent=None,
        resource=OtelResource(attributes={"service.name": "mp-test"}, schema_url=""),
    )


def _wait(go: Any, timeout: float = 60.0) -> None:
    if go is not None and not go.wait(timeout):
        raise TimeoutError("start signal never came")


def _guarded(out: str | Path, body: Any) -> None:
    """Run ``body()`` (a coroutine factory); on any exception report it in ``out`` and exit 1."""
    try:
        asyncio.run(body())
    except BaseException:
        write_json(out, {"error": traceback.format_exc()})
        raise


# -- a. many dequeuers --------------------------------------------------------------
def drain_worker(root: str, out: str, index: int, go: Any) -> None:
    """Dequeue until the queue is empty, completing each attempt as succeeded.

    Reports ``{"claims": [[rollout_id, attempt_id, sequence_id], ...]}``.
    """

    async def body() -> None:
        store = FileStore(root, create=False)
        worker = f"worker-{index}"
        claims: list[list[Any]] = []
        _wait(go)
        started = time.perf_counter()
        while True:
            attempted = await store.dequeue_rollout(worker_id=worker)
            if attempted is None:
                break
            claims.append([attempted.rollout_id, attempted.attempt.attempt_id, attempted.attempt.sequence_id])
            await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")
        elapsed = time.perf_counter() - started
        store.close()
        write_json(out, {"claims": claims, "elapsed": elapsed})

    _guarded(out, body)


# -- b. SIGKILL mid-attempt ---------------------------------------------------------
def claim_and_hang(root: str, claims_path: str, count: int, spans: int) -> None:
    """Dequeue ``count`` rollouts, add ``spans`` spans to each, report them, then hang.

    Each claim is appended to ``claims_path`` as one line once it is fully set up; a
    final ``{"ready": true}`` line tells the parent it may kill this process.
    """

    async def body() -> None:
        store = FileStore(root, create=False)
        fd = os.open(claims_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for _ in range(count):
            attempted = await store.dequeue_rollout(worker_id=f"doomed-{os.getpid()}")
            if attempted is None:
                break
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            for _ in range(spans):
                seq = await store.get_next_span_sequence_id(rid, aid)
                await store.add_span(make_span(rid, aid, seq))
            append_line(fd, {"rollout_id": rid, "attempt_id": aid, "spans": spans, "pid": os.getpid()})
        append_line(fd, {"ready": True, "pid": os.getpid()})
        while True:  # the parent SIGKILLs us here
            time.sleep(3600)

    _guarded(claims_path + ".error", body)


def reap_loop(root: str, out: str, seconds: float, grace: float, go: Any) -> None:
    """Run ``store.reap()`` in a tight loop for ``seconds``; report how many it expired."""

    async def body() -> None:
        store = FileStore(root, create=False, scan_debounce_seconds=0, claim_grace_seconds=grace)
        _wait(go)
        expired = scans = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            # Only explicit scans: implicit ones (inside query calls) would not be counted.
            expired += store.reap()
            scans += 1
        write_json(out, {"expired": expired, "scans": scans})

    _guarded(out, body)


# -- c. readers never see partial files ---------------------------------------------
def rewrite_loop(root: str, rollout_id: str, attempt_id: str, out: str, seconds: float, go: Any) -> None:
    """Rewrite the rollout's metadata and append spans for ``seconds``."""

    async def body() -> None:
        store = FileStore(root, create=False)
        _wait(go)
        deadline = time.monotonic() + seconds
        updates = spans = 0
        while time.monotonic() < deadline:
            updates += 1
            # Large enough that a torn write would be visible as truncated JSON.
            await store.update_rollout(
                rollout_id, metadata={"i": updates, "pad": "m" * (8000 + updates % 997)}
            )
            for _ in range(3):
                seq = await store.get_next_span_sequence_id(rollout_id, attempt_id)
                await store.add_span(make_span(rollout_id, attempt_id, seq, pad=3000 + seq % 501))
                spans += 1
        store.close()
        write_json(out, {"updates": updates, "spans": spans})

    _guarded(out, body)


def _check_record(data: bytes, rollout_id: str) -> int:
    from store_fs._disk.rollout_history import RolloutRecord

    record = RolloutRecord.model_validate(json.loads(data))
    if record.rollout_id != rollout_id:
        raise AssertionError(f"record names {record.rollout_id}, expected {rollout_id}")
    meta = record.metadata or {}
    if meta:
        pad = meta["pad"]
        if pad != "m" * len(pad) or len(pad) != 8000 + meta["i"] % 997:
            raise AssertionError(f"metadata of revision {meta.get('i')} is damaged")
    return int(meta.get("i", 0))


def read_loop(root: str, rollout_id: str, attempt_id: str, out: str, seconds: float, go: Any) -> None:
    """Read mirror, history files, raw span files and query_spans for ``seconds``.

    Reports counts and every failure (a failure is any read that does not parse or validate).
    """

    async def body() -> None:
        store = FileStore(root, create=False)
        layout = store.layout
        mirror = layout.mirror_file(rollout_id)
        history = layout.history_dir(rollout_id)
        attempt_dir = layout.attempts_dir(rollout_id)
        errors: list[str] = []
        counts = {"mirror": 0, "history": 0, "span_lines": 0, "queries": 0}
        seen_history: dict[str, bytes] = {}
        last_mirror = 0
        last_spans = 0
        _wait(go)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(errors) < 20:
            try:
                data = mirror.read_bytes()
                i = _check_record(data, rollout_id)
                if i < last_mirror:
                    errors.append(f"mirror went back from revision {last_mirror} to {i}")
                last_mirror = max(last_mirror, i)
                counts["mirror"] += 1

                names = [n for n in os.listdir(history) if not n.startswith(".")]  # dot: temp files
                fresh = [n for n in names if n not in seen_history]
                # Every new revision, plus one already seen (to check it never changes).
                for name in fresh + random.sample(sorted(seen_history), min(1, len(seen_history))):
                    data = (history / name).read_bytes()
                    _check_record(data, rollout_id)
                    if name in seen_history and seen_history[name] != data:
                        errors.append(f"history file {name} changed after it appeared")
                    seen_history[name] = data
                    counts["history"] += 1

                # The attempt's directory appears with its first span or heartbeat.
                for directory in attempt_dir.iterdir() if attempt_dir.exists() else ():
                    for path in directory.glob("spans.*.jsonl"):
                        raw = path.read_bytes()
                        complete = raw[: raw.rfind(b"\n") + 1]
                        for line in complete.splitlines():
                            Span.model_validate(json.loads(line))
                            counts["span_lines"] += 1

                result = await store.query_spans(rollout_id, attempt_id)
                spans = list(result)
                if len(spans) < last_spans:
                    errors.append(f"query_spans went back from {last_spans} to {len(spans)} spans")
                last_spans = len(spans)
                seqs = [s.sequence_id for s in spans]
                if seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
                    errors.append("query_spans returned unsorted or duplicate sequence ids")
                for span in spans:
                    if span.attributes["payload"] != "x" * (3000 + span.sequence_id % 501):
                        errors.append(f"span {span.sequence_id} has a damaged payload")
                counts["queries"] += 1
            except Exception:
                errors.append(traceback.format_exc())
        write_json(out, {"counts": counts, "errors": errors, "last_spans": last_spans})

    _guarded(out, body)


# -- d. span sequence ids -----------------------------------------------------------
def allocate_sequence_ids(
    root: str, rollout_id: str, attempt_id: str, out: str, count: int, batch: int, go: Any
) -> None:
    """Allocate ``count`` span sequence ids (one by one, or ``batch`` at a time if > 1)."""

    async def body() -> None:
        store = FileStore(root, create=False)
        _wait(go)
        got: list[int] = []
        while len(got) < count:
            if batch > 1:
                n = min(batch, count - len(got))
                got.extend(await store.get_many_span_sequence_ids([(rollout_id, attempt_id)] * n))
            else:
                got.append(await store.get_next_span_sequence_id(rollout_id, attempt_id))
        write_json(out, {"ids": got})

    _guarded(out, body)
