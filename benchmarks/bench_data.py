#!/usr/bin/env python
"""``agl data triplets`` beside upstream's ``TracerTraceToTriplet``, and following latency.

Builds a store of ``--n`` rollouts (default 100,000) of 10 spans each, shaped like the tracer's:
an agent span, 4 chat completions (``gen_ai.*`` attributes, 2 prompt messages, ~120 prompt and
~40 response token ids), 2 tool spans, a reward after the second call and a final reward. Then,
in one run:

* **agl**: ``export_view(store, "triplets")`` over the whole store, to /dev/null, in a fresh
  process (cold: nothing cached), with its wall time and peak RSS (``ru_maxrss``);
* **upstream**: the same spans of ``--sample`` rollouts (default 5,000) put into upstream's
  ``InMemoryLightningStore``, then for each rollout ``query_spans(rollout_id, "latest")`` and
  ``TracerTraceToTriplet().adapt(spans)``, timed (loading the store is not);
* the two alternately, ``--repeat`` times (default 3), each run's figures and load average
  printed, then the medians and the median of the runs' ratios;
* **follow**: a ``TrainingData.follow()`` reader on the big store while another process finishes
  ``--follow-n`` rollouts one by one: the delay from each commit to the reader's batch.

Usage::

    python benchmarks/bench_data.py                      # 100,000 rollouts (building takes minutes)
    python benchmarks/bench_data.py --n 5000 --sample 2000
    python benchmarks/bench_data.py --dir /tmp/big --keep    # keep the store; --reuse to measure it again
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from store_fs import FileStore, Span, __version__
from store_fs.rewards import reward_span

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "was",
    "for",
    "on",
    "are",
    "with",
    "they",
    "be",
]


def _text(n: int) -> str:
    return " ".join(random.choice(WORDS) for _ in range(n))


def _span(
    rid: str,
    aid: str,
    seq: int,
    name: str,
    attrs: dict[str, Any],
    start: float,
    end: float,
    parent: str | None,
) -> Span:
    span = Span.from_attributes(
        attributes=attrs,
        rollout_id=rid,
        attempt_id=aid,
        sequence_id=seq,
        name=name,
        start_time=start,
        end_time=end,
    )
    return span.model_copy(update={"parent_id": parent})


def _llm_attrs(call: int) -> dict[str, Any]:
    question, answer = _text(25), _text(8)
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-bench",
        "gen_ai.request.temperature": 0.7,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "You are a careful assistant.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": question,
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": answer,
        "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.response.id": f"chatcmpl-{random.getrandbits(48):012x}-{call}",
        "gen_ai.response.model": "gpt-bench",
        "gen_ai.usage.prompt_tokens": 120,
        "gen_ai.usage.completion_tokens": 40,
        "prompt_token_ids": [random.randrange(50000) for _ in range(120)],
        "response_token_ids": [random.randrange(50000) for _ in range(40)],
    }


def rollout_spans(rid: str, aid: str, now: float) -> list[Span]:
    agent = _span(rid, aid, 1, "agent.run", {"agent.name": "bench-agent"}, now, now + 1.0, None)
    spans = [agent]
    t = now + 0.01
    seq = 2
    for call in range(4):
        spans.append(
            _span(rid, aid, seq, "openai.chat.completion", _llm_attrs(call), t, t + 0.1, agent.span_id)
        )
        seq += 1
        t += 0.12
        if call in (0, 2):
            tool = {"tool.name": "search", "tool.parameters": '{"q": "x"}'}
            spans.append(_span(rid, aid, seq, "tool.search", tool, t, t + 0.02, agent.span_id))
            seq += 1
            t += 0.03
        if call == 1:
            mid = reward_span(0.5, rollout_id=rid, attempt_id=aid, sequence_id=seq, now=t)
            spans.append(mid.model_copy(update={"parent_id": agent.span_id}))
            seq += 1
            t += 0.01
    spans.append(reward_span(random.random(), rollout_id=rid, attempt_id=aid, sequence_id=seq, now=now + 1.1))
    return spans


async def _build_part(root: str, count: int, seed: int) -> None:
    random.seed(seed)
    store = FileStore(root, create=False, span_cache_bytes=0)
    for _ in range(count):
        rollout = await store.enqueue_rollout(input={"q": _text(5)}, mode="train")
        attempted = await store.start_attempt(rollout.rollout_id, worker_id="bench")
        spans = rollout_spans(rollout.rollout_id, attempted.attempt.attempt_id, time.time())
        await store.add_many_spans(spans)
        await store.update_attempt(rollout.rollout_id, attempted.attempt.attempt_id, status="succeeded")


def _build_worker(root: str, count: int, seed: int) -> None:
    asyncio.run(_build_part(root, count, seed))


def build(root: Path, n: int, workers: int) -> float:
    FileStore(root).close()
    start = time.perf_counter()
    parts = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build_worker, args=(str(root), parts[i], i)) for i in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"a builder failed (exit {proc.exitcode})")
    return time.perf_counter() - start


EXPORT = """
import asyncio, json, os, resource, sys, threading, time
from pathlib import Path
from store_fs import FileStore
from store_fs.datasets import export_view


def vm_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(l.split()[1]) for l in f if l.startswith(field)), 0)
    except OSError:
        return 0


def children():
    try:
        with open(f"/proc/self/task/{threading.main_thread().native_id}/children") as f:
            return f.read().split()
    except OSError:
        return []


worker_peak = 0
done = threading.Event()


def sample():  # the workers' resident sets, every 0.2 s (their own: ru_maxrss counts the parent's)
    global worker_peak
    while not done.wait(0.2):
        for pid in children():
            worker_peak = max(worker_peak, vm_kb(pid, "VmRSS:"))


threading.Thread(target=sample, daemon=True).start()
store = FileStore(sys.argv[1], create=False)
start = time.perf_counter()
with open("/dev/null", "wb") as sink:
    counts = asyncio.run(export_view(store, "triplets", output=sink))
seconds = time.perf_counter() - start
done.set()
own = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
# VmHWM, not ru_maxrss: the latter keeps the RSS of the process this one was forked from.
print(json.dumps({"seconds": seconds, "rollouts": counts.rollouts, "rows": counts.rows,
                  "rss_mb": vm_kb("self", "VmHWM:") / 1024, "worker_rss_mb": worker_peak / 1024,
                  "cpu_s": cpu}))
"""


def measure_agl(root: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", EXPORT, str(root)], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    result["rollouts_per_s"] = result["rollouts"] / result["seconds"]
    result["triplets_per_s"] = result["rows"] / result["seconds"]
    result["load"] = (load + os.getloadavg()[0]) / 2
    return result


async def load_upstream(root: Path, sample: int) -> tuple[Any, list[str]]:
    """Upstream's in-memory store holding the spans of ``sample`` of our rollouts (not timed)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from agentlightning.store.memory import InMemoryLightningStore
    from agentlightning.types import Span as UpstreamSpan

    store = FileStore(root, create=False)
    ids = store.rollout_ids(status_in=["succeeded"])[:sample]
    upstream = InMemoryLightningStore()
    loaded: list[str] = []
    for rid in ids:
        attempted = await upstream.start_rollout(input={"q": rid})
        up_rid, up_aid = attempted.rollout_id, attempted.attempt.attempt_id
        spans = [
            UpstreamSpan.model_validate({**s.model_dump(), "rollout_id": up_rid, "attempt_id": up_aid})
            for s in await store.query_spans(rid, "latest")
        ]
        await upstream.add_many_spans(spans)
        loaded.append(up_rid)
    return upstream, loaded


async def measure_upstream(upstream: Any, loaded: list[str]) -> dict[str, Any]:
    """``query_spans(rollout_id, "latest")`` then ``TracerTraceToTriplet().adapt`` per rollout."""
    from agentlightning.adapter import TracerTraceToTriplet

    adapter = TracerTraceToTriplet()
    rows = 0
    load = os.getloadavg()[0]
    cpu = time.process_time()
    start = time.perf_counter()
    for rid in loaded:
        rows += len(adapter.adapt(await upstream.query_spans(rid, "latest")))
    seconds = time.perf_counter() - start
    return {
        "cpu_s": time.process_time() - cpu,
        "rollouts": len(loaded),
        "rows": rows,
        "seconds": seconds,
        "rollouts_per_s": len(loaded) / seconds,
        "triplets_per_s": rows / seconds,
        "load": (load + os.getloadavg()[0]) / 2,
    }


async def side_by_side(root: Path, sample: int, repeat: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """agl's export and upstream's adapter, alternately, ``repeat`` times (the machine's load
    moves; alternating lets both sides share it)."""
    upstream, loaded = await load_upstream(root, sample)
    runs = []
    for i in range(repeat):
        ours = measure_agl(root)  # blocks the loop: nothing else runs on it meanwhile
        theirs = await measure_upstream(upstream, loaded)
        ratio = ours["triplets_per_s"] / theirs["triplets_per_s"]
        ours_cpu = ours["cpu_s"] / ours["rollouts"] * 1e6
        theirs_cpu = theirs["cpu_s"] / theirs["rollouts"] * 1e6
        print(
            f"run {i + 1}: agl {ours['rollouts_per_s']:,.0f} rollouts/s in {ours['seconds']:.1f} s, "
            f"{ours_cpu:,.0f} us CPU per rollout, all processes (load {ours['load']:.1f}, peak RSS "
            f"{ours['rss_mb']:.0f} MB, largest worker {ours['worker_rss_mb']:.0f} MB); upstream "
            f"{theirs['rollouts_per_s']:,.0f} rollouts/s, {theirs_cpu:,.0f} us CPU per rollout "
            f"(load {theirs['load']:.1f}); ratio {ratio:.1f}x, CPU per rollout {theirs_cpu / ours_cpu:.1f}x",
            flush=True,
        )
        runs.append((ours, theirs))
    return runs


FINISHER = """
import asyncio, sys, time
from store_fs import FileStore
async def main():
    store = FileStore(sys.argv[1], create=False)
    for line in sys.stdin:
        rid, aid = line.split()
        await store.update_attempt(rid, aid, status="succeeded")
        print(time.time(), flush=True)
asyncio.run(main())
"""


async def measure_follow(root: Path, count: int) -> dict[str, Any]:
    from store_fs.datasets import Cursor, TrainingData

    store = FileStore(root, create=False)
    pending = []
    for _ in range(count):
        rollout = await store.enqueue_rollout(input={"q": "follow"})
        attempted = await store.start_attempt(rollout.rollout_id, worker_id="bench")
        await store.add_many_spans(
            rollout_spans(rollout.rollout_id, attempted.attempt.attempt_id, time.time())
        )
        pending.append((rollout.rollout_id, attempted.attempt.attempt_id))
    data = TrainingData(store, "triplets", cursor=Cursor.now(store))
    arrived: dict[str, float] = {}

    async def follow() -> None:
        async for batch in data.follow(idle_timeout=15):
            for row in batch:
                arrived.setdefault(row["rollout_id"], time.time())
            if len(arrived) == count:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FINISHER, str(root), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    delays = []
    for rid, aid in pending:
        proc.stdin.write(f"{rid} {aid}\n".encode())
        await proc.stdin.drain()
        finished = float((await proc.stdout.readline()).decode())
        for _ in range(400):
            if rid in arrived:
                break
            await asyncio.sleep(0.005)
        delays.append(arrived.get(rid, float("inf")) - finished)
        await asyncio.sleep(0.2)
    proc.stdin.close()
    await proc.wait()
    await task
    return {
        "count": count,
        "median_s": statistics.median(delays),
        "max_s": max(delays),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=5000)
    parser.add_argument("--follow-n", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="agl and upstream alternately, N times")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="agl-bench-data-"))
    root = base / "store"
    print(
        f"agl {__version__}, Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs"
    )
    if not args.reuse:
        shutil.rmtree(root, ignore_errors=True)
        built = build(root, args.n, args.workers)
        print(f"built {args.n:,} rollouts x 10 spans in {built:.0f} s")
    runs = asyncio.run(side_by_side(root, args.sample, args.repeat))
    ours = [r[0] for r in runs]
    theirs = [r[1] for r in runs]
    med = statistics.median
    print(
        f"agl data triplets ({len(runs)} run(s), medians): {ours[0]['rollouts']:,} rollouts, "
        f"{ours[0]['rows']:,} triplets: {med(o['rollouts_per_s'] for o in ours):,.0f} rollouts/s, "
        f"{med(o['triplets_per_s'] for o in ours):,.0f} triplets/s, "
        f"peak RSS {max(o['rss_mb'] for o in ours):.0f} MB "
        f"(largest worker {max(o['worker_rss_mb'] for o in ours):.0f} MB)"
    )
    print(
        f"upstream TracerTraceToTriplet (in-memory store, {theirs[0]['rollouts']:,} rollouts): "
        f"{med(t['rollouts_per_s'] for t in theirs):,.0f} rollouts/s, "
        f"{med(t['triplets_per_s'] for t in theirs):,.0f} triplets/s"
    )
    ratios = [o["triplets_per_s"] / t["triplets_per_s"] for o, t in runs]
    cpu = [(t["cpu_s"] / t["rollouts"]) / (o["cpu_s"] / o["rollouts"]) for o, t in runs]
    print(f"CPU per rollout, upstream / agl: median {med(cpu):.1f}x")
    print(
        f"ratio agl / upstream: median {med(ratios):.1f}x (runs: {', '.join(f'{r:.1f}' for r in ratios)}); "
        f"load average {min(o['load'] for o in ours):.1f} to {max(o['load'] for o in ours):.1f}"
    )
    follow = asyncio.run(measure_follow(root, args.follow_n))
    print(
        f"follow: {follow['count']} rollouts finished one by one in another process: "
        f"median {follow['median_s'] * 1000:.0f} ms, max {follow['max_s'] * 1000:.0f} ms to the reader"
    )
    if not args.keep and args.dir is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
