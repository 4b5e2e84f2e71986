#!/usr/bin/env python
"""Throughput of ``store_fs.FileStore`` on a local directory.

Measures, each with ``durability="process"`` (the default) and ``durability="fsync"``:

* ``enqueue``        enqueue_rollout calls per second (one process);
* ``dequeue x1``     dequeue_rollout calls per second, one process draining a full queue;
* ``dequeue x4``     the same with four processes draining one queue at once (aggregate);
                     both start from a queue of the same length (a dequeue lists the queue);
* ``add_span``       add_span calls per second, spans carrying ~2.3 KB of attributes;
* ``query_spans``    milliseconds per query_spans of one rollout holding 1,000 spans.

Every measurement runs on a fresh store in a temporary directory, is repeated
(``--reps``, default 3) and reported as the median (min and max shown too), timed
with ``time.perf_counter``. Untimed set-up (filling the queue, writing the spans to
query) happens before the clock starts.

Usage::

    python benchmarks/bench_store.py                 # about a minute or two
    python benchmarks/bench_store.py --quick         # smaller sizes, 2 repetitions
    python benchmarks/bench_store.py --json out.json # also write raw results
    python benchmarks/bench_store.py --dir /mnt/nfs  # benchmark another filesystem
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from store_fs import (
    EnqueueRolloutRequest,
    FileStore,
    OtelResource,
    Span,
    SpanContext,
    TraceStatus,
    __version__,
)

DURABILITIES = ("process", "fsync")
QUERY_SPANS = 1000


# -- realistic spans ------------------------------------------------------------------
_PROMPT = (
    "You are a careful assistant that answers questions about a SQL database. "
    "Think step by step, write the query, check it against the schema and answer concisely. "
) * 5
_COMPLETION = (
    "SELECT c.name, COUNT(o.id) AS orders FROM customers c JOIN orders o ON o.customer_id = c.id "
    "WHERE o.created_at >= '2024-01-01' GROUP BY c.name ORDER BY orders DESC LIMIT 10; "
) * 4


def span_attributes(i: int) -> dict[str, Any]:
    """Attributes shaped like an LLM-call span from an OpenTelemetry instrumentation (~2.3 KB)."""
    return {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "Qwen/Qwen2.5-7B-Instruct",
        "gen_ai.response.model": "Qwen/Qwen2.5-7B-Instruct",
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.max_tokens": 1024,
        "gen_ai.usage.prompt_tokens": 412 + i % 50,
        "gen_ai.usage.completion_tokens": 96 + i % 17,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": _PROMPT,
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": f"Question {i}: which customers ordered most since January?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": _COMPLETION,
        "gen_ai.completion.0.finish_reason": "stop",
        "llm.request.type": "chat",
        "agentlightning.operation": "llm_call",
        "http.status_code": 200,
        "token_ids.prompt": list(range(i, i + 24)),
    }


def make_span(rollout_id: str, attempt_id: str, seq: int) -> Span:
    trace_id, span_id = f"{seq:032x}", f"{seq:016x}"
    now = time.time()
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=None,
        name="openai.chat",
        status=TraceStatus(status_code="OK"),
        attributes=span_attributes(seq),
        events=[],
        links=[],
        start_time=now,
        end_time=now + 0.5,
        context=SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_state={}),
        parent=None,
        resource=OtelResource(attributes={"service.name": "bench"}, schema_url=""),
    )


# -- measurements ---------------------------------------------------------------------
@dataclass
class Result:
    name: str
    durability: str
    n: int
    unit: str  # "ops/s" (higher is better) or "ms/query" (lower is better)
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


class Bench:
    def __init__(self, base: Path, durability: str) -> None:
        self.base = base
        self.durability = durability

    def fresh(self) -> FileStore:
        root = Path(tempfile.mkdtemp(prefix="bench-", dir=self.base)) / "store"
        return FileStore(root, durability=self.durability)  # type: ignore[arg-type]

    @staticmethod
    def cleanup(store: FileStore) -> None:
        store.close()
        shutil.rmtree(store.root.parent, ignore_errors=True)

    async def enqueue(self, n: int) -> float:
        store = self.fresh()
        try:
            start = time.perf_counter()
            for i in range(n):
                await store.enqueue_rollout(input={"question": f"task {i}"})
            return n / (time.perf_counter() - start)
        finally:
            self.cleanup(store)

    async def _fill(self, store: FileStore, n: int) -> None:
        requests = [EnqueueRolloutRequest(input={"question": f"task {i}"}) for i in range(n)]
        await store.enqueue_many_rollouts(requests)

    async def dequeue_one(self, n: int) -> float:
        store = self.fresh()
        try:
            await self._fill(store, n)
            start = time.perf_counter()
            got = 0
            while await store.dequeue_rollout(worker_id="bench-worker") is not None:
                got += 1
            elapsed = time.perf_counter() - start
            assert got == n, f"dequeued {got} of {n}"
            return n / elapsed
        finally:
            self.cleanup(store)

    async def dequeue_many(self, n: int, procs: int) -> float:
        store = self.fresh()
        try:
            await self._fill(store, n)
            ctx = multiprocessing.get_context("spawn")
            go, results = ctx.Event(), ctx.Queue()
            children = [
                ctx.Process(target=_dequeue_child, args=(str(store.root), self.durability, i, go, results))
                for i in range(procs)
            ]
            try:
                for child in children:
                    child.start()
                time.sleep(0.5)  # let the interpreters start before the clock does
                go.set()
                spans = [results.get(timeout=600) for _ in children]
            finally:
                for child in children:
                    if child.is_alive():
                        child.join(5)
                    if child.is_alive():
                        child.kill()
                        child.join()
            errors = [s for s in spans if isinstance(s, str)]
            assert not errors, errors[0]
            got = sum(s[2] for s in spans)
            assert got == n, f"dequeued {got} of {n}"
            # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes.
            return n / (max(s[1] for s in spans) - min(s[0] for s in spans))
        finally:
            self.cleanup(store)

    async def add_span(self, n: int) -> float:
        store = self.fresh()
        try:
            attempted = await store.start_rollout(input={"question": "spans"})
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            spans = [make_span(rid, aid, seq) for seq in range(1, n + 1)]
            start = time.perf_counter()
            for span in spans:
                await store.add_span(span)
            return n / (time.perf_counter() - start)
        finally:
            self.cleanup(store)

    async def query_spans(self, queries: int) -> float:
        store = self.fresh()
        try:
            attempted = await store.start_rollout(input={"question": "spans"})
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            for first in range(1, QUERY_SPANS + 1, 100):
                await store.add_many_spans([make_span(rid, aid, s) for s in range(first, first + 100)])
            reader = FileStore(store.root, create=False)  # a separate reader, as a trainer would be
            times = []
            for _ in range(queries):
                start = time.perf_counter()
                result = await reader.query_spans(rid)
                times.append(time.perf_counter() - start)
                assert len(result) == QUERY_SPANS
            reader.close()
            return statistics.median(times) * 1000
        finally:
            self.cleanup(store)


def _dequeue_child(root: str, durability: str, index: int, go: Any, results: Any) -> None:
    """Drain the queue; report (start, end, count) or an error string."""
    try:
        store = FileStore(root, create=False, durability=durability)  # type: ignore[arg-type]

        async def drain() -> tuple[float, float, int]:
            go.wait(120)
            start = time.perf_counter()
            got = 0
            while await store.dequeue_rollout(worker_id=f"bench-worker-{index}") is not None:
                got += 1
            return start, time.perf_counter(), got

        results.put(asyncio.run(drain()))
        store.close()
    except BaseException as err:  # report, don't hang the parent
        results.put(f"child {index}: {err!r}")
        raise


# -- driver ---------------------------------------------------------------------------
def sizes(quick: bool) -> dict[str, dict[str, int]]:
    """Operations per repetition, by benchmark and durability."""
    full = {
        "enqueue": {"process": 1000, "fsync": 300},
        "dequeue x1": {"process": 1000, "fsync": 300},
        "dequeue x4": {"process": 1000, "fsync": 300},
        "add_span": {"process": 2000, "fsync": 500},
        "query_spans": {"process": 20, "fsync": 20},
    }
    if quick:
        return {k: {d: max(5, v // 4) for d, v in per.items()} for k, per in full.items()}
    return full


def run_all(base: Path, reps: int, quick: bool, only: set[str] | None) -> list[Result]:
    out: list[Result] = []
    plan: list[tuple[str, str, Callable[[Bench, int], Any]]] = [
        ("enqueue", "ops/s", lambda b, n: b.enqueue(n)),
        ("dequeue x1", "ops/s", lambda b, n: b.dequeue_one(n)),
        ("dequeue x4", "ops/s", lambda b, n: b.dequeue_many(n, 4)),
        ("add_span", "ops/s", lambda b, n: b.add_span(n)),
        ("query_spans", "ms/query", lambda b, n: b.query_spans(n)),
    ]
    table = sizes(quick)
    for durability in DURABILITIES:
        bench = Bench(base, durability)
        for name, unit, fn in plan:
            if only and name.split()[0] not in only and name not in only:
                continue
            n = table[name][durability]
            result = Result(name, durability, n, unit)
            for _ in range(reps):
                result.values.append(asyncio.run(fn(bench, n)))
            print(f"  {name:<12} {durability:<8} median {result.median:10.1f} {unit}", file=sys.stderr)
            out.append(result)
    return out


def render(results: list[Result]) -> str:
    header = f"{'benchmark':<12} {'durability':<10} {'n/rep':>6} {'median':>10} {'min':>10} {'max':>10}  unit"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<12} {r.durability:<10} {r.n:>6} {r.median:>10.1f} "
            f"{min(r.values):>10.1f} {max(r.values):>10.1f}  {r.unit}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and 2 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write raw results as JSON to PATH")
    parser.add_argument("--dir", metavar="DIR", help="where to create the temporary stores")
    parser.add_argument(
        "--only",
        action="append",
        choices=["enqueue", "dequeue", "add_span", "query_spans"],
        help="run only this benchmark (repeatable)",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (2 if args.quick else 3)
    if reps < 1:
        parser.error("--reps must be at least 1")

    base = Path(tempfile.mkdtemp(prefix="agl-bench-", dir=args.dir))
    sample = make_span("ro-000000000000", "at-00000000", 1)
    attr_bytes = len(json.dumps(sample.attributes))
    print(
        f"store_fs {__version__} on {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; stores under {base}; span attributes {attr_bytes} B; "
        f"{reps} repetitions{' (quick)' if args.quick else ''}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    try:
        results = run_all(base, reps, args.quick, set(args.only) if args.only else None)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    total = time.perf_counter() - started
    print(render(results))
    print(f"(total {total:.1f} s)")
    if args.json:
        payload = {
            "meta": {
                "store_fs": __version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "dir": args.dir or tempfile.gettempdir(),
                "reps": reps,
                "quick": args.quick,
                "span_attribute_bytes": attr_bytes,
                "query_spans_per_rollout": QUERY_SPANS,
                "total_seconds": total,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "results": [{**asdict(r), "median": r.median} for r in results],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
