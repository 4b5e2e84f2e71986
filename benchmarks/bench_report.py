#!/usr/bin/env python
"""How long ``agl report`` takes, and how big the page is, on a store of many rollouts.

Builds one store with ``--n`` rollouts (default 100,000) through the public API: ``--versions``
resource versions (default 20) published along the way, each rollout dequeued by one of
``--workers`` workers (default 8), given an agent span with an LLM call inside it and a reward
span, and completed; one in 20 fails with one of three error messages instead. Then writes the
report from a fresh process each time (as the ``agl report`` command does), for each ``--jobs``
value, each data health setting of ``--checks`` (``quick``: the default quick check, ``none``:
``--no-check``, ``full``: ``--full-check``) and each setting of the report row cache of
``--caches`` (``off``: ``--no-cache``; ``first``: the store's ``cache/`` removed, so the report
reads everything and fills it; ``next``: the cache the previous report left), ``--repeat`` times
interleaved, and prints for each the median wall time, the CPU time of the report process and its
workers, the size of the page, the peak memory of the report process and of its worker processes,
and the load average when it started (the machine is shared: CPU time moves less than wall time).

Usage::

    python benchmarks/bench_report.py                     # N=100,000 (building takes several minutes)
    python benchmarks/bench_report.py --n 10000 --jobs 1,2
    python benchmarks/bench_report.py --dir /tmp/big --keep   # keep the store for another run
    python benchmarks/bench_report.py --dir /tmp/big --reuse  # measure a store kept before
    python benchmarks/bench_report.py --dir /tmp/big --keep --build-only   # build it, measure later
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from store_fs import EnqueueRolloutRequest, FileStore, PromptTemplate, Span, __version__
from store_fs.rewards import reward_span

ERRORS = ("ValueError: could not parse the answer", "TimeoutError: LLM call took too long", "KeyError: 'q'")


def _spans(rollout_id: str, attempt_id: str, seq: int, now: float, reward: float | None) -> list[Span]:
    agent = Span.from_attributes(
        attributes={"agent": "bench"},
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        name="agent.run",
        start_time=now,
        end_time=now + 0.05,
    )
    llm = Span.from_attributes(
        attributes={
            "gen_ai.request.model": "gpt-bench",
            "gen_ai.usage.input_tokens": random.randint(50, 500),
            "gen_ai.usage.output_tokens": random.randint(5, 200),
        },
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq + 1,
        name="openai.chat.completion",
        parent_id=agent.span_id,
        trace_id=agent.trace_id,
        start_time=now + 0.01,
        end_time=now + 0.04,
    )
    spans = [agent, llm]
    if reward is not None:
        spans.append(
            reward_span(reward, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq + 2, now=now)
        )
    return spans


async def build(root: Path, n: int, versions: int, workers: int, batch: int = 1000) -> float:
    """The store: ``n`` rollouts in ``versions`` resource versions, run by ``workers`` workers."""
    store = FileStore(root)
    started = time.perf_counter()
    per_version = max(1, n // versions)
    done = 0
    for v in range(versions):
        update = await store.add_resources(
            {"main_prompt": PromptTemplate(template=f"Version {v}: answer {{q}} briefly.", engine="f-string")}
        )
        count = per_version if v < versions - 1 else n - done
        for first in range(0, count, batch):
            size = min(batch, count - first)
            await store.enqueue_many_rollouts(
                [
                    EnqueueRolloutRequest(input={"q": done + first + i}, resources_id=update.resources_id)
                    for i in range(size)
                ]
            )
        for i in range(count):
            attempted = await store.dequeue_rollout(worker_id=f"worker-{(done + i) % workers}")
            assert attempted is not None
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            failed = random.random() < 0.05
            reward = None if failed else min(1.0, max(0.0, random.gauss(0.3 + 0.5 * v / versions, 0.15)))
            seq = (await store.get_many_span_sequence_ids([(rid, aid)] * (2 if failed else 3)))[0]
            await store.add_many_spans(_spans(rid, aid, seq, time.time(), reward))
            if failed:
                await store.update_attempt(
                    rid, aid, status="failed", metadata={"error": random.choice(ERRORS)}
                )
            else:
                await store.update_attempt(rid, aid, status="succeeded")
        done += count
        print(f"  built {done:,} rollouts ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return time.perf_counter() - started


#: ``--checks`` values: (run_check, full_check) of ``ReportOptions``.
CHECKS = {"quick": (True, False), "none": (False, False), "full": (True, True)}
#: ``--caches`` values: ``off`` (``--no-cache``), ``first`` (the store's ``cache/`` removed before:
#: the first report, which fills it) and ``next`` (the cache as the previous report left it).
CACHES = ("off", "first", "next")


def measure_once(root: str, out: str, jobs: int, check: str, cache: str = "off") -> dict[str, Any]:
    """One report in this (fresh) process; the figures as a dict."""
    from store_fs.report import ReportOptions, write_report

    if cache == "first":
        shutil.rmtree(Path(root) / "cache", ignore_errors=True)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    run_check, full_check = CHECKS[check]
    options = ReportOptions(jobs=jobs, run_check=run_check, full_check=full_check, cache=cache != "off")
    result = write_report(FileStore(root, create=False), out, options)
    seconds = time.perf_counter() - started
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "jobs": jobs,
        "check": check,
        "cache": cache,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime, 2),
        "load": round(load, 1),
        "bytes": result.bytes,
        "rollouts": result.rollouts,
        "problems": result.problems,
        "peak_rss_mb": round(me.ru_maxrss / 1024, 1),
        "worker_peak_rss_mb": round(children.ru_maxrss / 1024, 1),
    }


def measure(root: Path, jobs: int, check: str, cache: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); from bench_report import measure_once; "
            "print(json.dumps(measure_once(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])))"
        )
        here = str(Path(__file__).resolve().parent)
        report = str(Path(tmp) / "report.html")
        args = [sys.executable, "-c", code, here, str(root), report, str(jobs), check, cache]
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time, with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["runs_seconds"] = [r["seconds"] for r in runs]
    middle["median_seconds"] = statistics.median(r["seconds"] for r in runs)
    return middle


def render(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'jobs':>4} {'check':>6} {'cache':>6} {'seconds':>9} {'CPU s':>7} {'load':>5} {'page MB':>8} "
        f"{'RSS MB':>7} {'workers MB':>10}  runs"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        runs = ", ".join(f"{s:.1f}" for s in r.get("runs_seconds", [r["seconds"]]))
        lines.append(
            f"{r['jobs']:>4} {r['check']:>6} {r.get('cache', 'off'):>6} "
            f"{r.get('median_seconds', r['seconds']):>9.2f} "
            f"{r['cpu_seconds']:>7.1f} {r['load']:>5.1f} {r['bytes'] / 1e6:>8.2f} "
            f"{r['peak_rss_mb']:>7.0f} {r['worker_peak_rss_mb']:>10.0f}  {runs}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs", default="1,4", help="comma-separated --jobs values to measure")
    parser.add_argument(
        "--checks", default="quick,none,full", help="comma-separated data health settings: quick, none, full"
    )
    parser.add_argument(
        "--caches", default="first,next", help="comma-separated report row cache settings: off, first, next"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measure each setting this many times")
    parser.add_argument("--dir", type=Path, help="where to build the store (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the store afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure the store already in --dir")
    parser.add_argument("--build-only", action="store_true", help="build the store and stop (with --keep)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    random.seed(19)
    parent = args.dir or Path(tempfile.mkdtemp(prefix="agl-bench-report-"))
    root = parent / "store" if not args.reuse or not (parent / "FORMAT.json").exists() else parent
    build_seconds = None
    caches = [c for c in args.caches.split(",") if c]
    if unknown := set(caches) - set(CACHES):
        parser.error(f"--caches: unknown {', '.join(sorted(unknown))} (choose from {', '.join(CACHES)})")
    settings = [
        (int(j), c, k) for j in args.jobs.split(",") for c in args.checks.split(",") if c for k in caches
    ]
    try:
        if not args.reuse:
            print(f"building {args.n:,} rollouts in {root} ...", file=sys.stderr)
            build_seconds = asyncio.run(build(root, args.n, args.versions, args.workers))
        if args.build_only:
            return
        runs: dict[tuple[int, str, str], list[dict[str, Any]]] = {setting: [] for setting in settings}
        for _round in range(args.repeat):  # interleaved: each round measures every setting once
            for jobs, check, cache in settings:
                figures = measure(root, jobs, check, cache)
                print(f"  jobs={jobs} check={check} cache={cache}: {figures}", file=sys.stderr)
                runs[(jobs, check, cache)].append(figures)
        results = [median_of(runs[setting]) for setting in settings]
        print(render(results))
        if args.json:
            machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "agl": __version__}
            doc = {"n": args.n, "build_seconds": build_seconds, "machine": machine, "results": results}
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
    finally:
        if not args.keep and not args.reuse:
            shutil.rmtree(parent if args.dir is None else root, ignore_errors=True)


if __name__ == "__main__":
    main()
