"""Filesystem operations per rollout, and loop throughput, on two simulated NFS clients.

    .venv/bin/python benchmarks/bench_nfs.py [--rollouts N] [--latencies 0,1,5] [--runners 1,4] [--trace DIR]

Mounts ``tests/nfs_fuse.py`` twice over one backing directory (host A: the algorithm,
host B: the runners; attribute/entry/negative caches of 1 s, like ``actimeo=1``) and
counts the requests each mount's filesystem receives (each one would be an NFS round
trip; ``lookup`` covers LOOKUP and GETATTR of a path, see tests/nfs_fuse.py):

1. per rollout on B, for one runner doing dequeue -> 5 spans -> complete, by phase, with
   the spans sent one by one (upstream's runner) and as one batch (agl's runner);
2. on A, the algorithm's enqueue and its ``wait_for_rollouts`` while B's runner works
   (per rollout and per second of waiting);
3. loop throughput (rollouts/s: N rollouts queued, then runners released; from their
   release to the last completion) with 0, 1 and 5 ms injected per request, for 1 and 4
   runner processes on B, and the same on the local disk for reference.

Needs /dev/fuse, the Debian package fuse3 and ``pip install mfusepy`` (the test extra).
Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import nfs_workers
from mp_workers import make_span
from two_hosts import mounted_two_hosts, ops_delta, unavailable_reason

from store_fs import FileStore

SPANS = 5
CACHE: dict[str, Any] = {"attr_timeout": 1.0, "entry_timeout": 1.0, "negative_timeout": 1.0}
SHOWN = (
    "lookup",
    "getattr",
    "readdir",
    "open",
    "create",
    "read",
    "write",
    "rename",
    "link",
    "unlink",
    "mkdir",
)


def fmt(counts: Mapping[str, float], per: float) -> str:
    total = sum(v for k, v in counts.items() if k not in ("flush", "release", "opendir"))
    cells = " ".join(f"{k}={counts.get(k, 0) / per:.1f}" for k in SHOWN if counts.get(k))
    return f"{total / per:6.1f} requests  ({cells})"


async def _enqueue(store: FileStore, n: int) -> list[str]:
    return [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(n)]


def _marker(trace: Path | None) -> Callable[[str, str], None]:
    """``mark(host, text)``: a line of ours in the host's trace, between the requests before
    it and after it (nothing when not tracing)."""

    def mark(host: str, text: str) -> None:
        if trace is not None:
            with open(trace / f"host-{host}.trace", "a") as f:
                f.write(f"# {text}\n")

    return mark


def ops_per_rollout(base: Path, n: int, latency_ms: float, trace: Path | None = None) -> None:
    os.environ["AGL_NETWORK_FS"] = "1"  # docs/nfs.md: what users of an unrecognised network FS set
    mark = _marker(trace)
    with mounted_two_hosts(base, latency_ms=latency_ms, trace_dir=trace, **CACHE) as hosts:
        algo = FileStore(hosts.a.path / "store", watch_mode="poll")
        runner = FileStore(hosts.b.path / "store", create=False, watch_mode="poll")
        try:
            a0 = hosts.a.ops()
            mark("a", "enqueue")
            ids = asyncio.run(_enqueue(algo, 2 * n))
            enqueue = ops_delta(a0, hosts.a.ops())
            time.sleep(1.2)  # B's caches of the new store expire, as between real hosts
            phases: Counter[str] = Counter()
            per_phase: dict[str, Counter[str]] = {
                p: Counter() for p in ("dequeue", "spans", "complete", "batched")
            }

            async def add_spans(rid: str, aid: str, batched: bool) -> None:
                if batched:  # as agl's runner sends what the tracer collected meanwhile
                    seqs = await runner.get_many_span_sequence_ids([(rid, aid)] * SPANS)
                    await runner.add_many_spans([make_span(rid, aid, seq) for seq in seqs])
                    return
                for _ in range(SPANS):  # as upstream's runner does, span by span
                    seq = await runner.get_next_span_sequence_id(rid, aid)
                    await runner.add_span(make_span(rid, aid, seq))

            async def work() -> None:
                for i in range(2 * n):
                    b0 = hosts.b.ops()
                    mark("b", f"dequeue {i}")
                    attempted = await runner.dequeue_rollout(worker_id="bench")
                    assert attempted is not None
                    b1 = hosts.b.ops()
                    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
                    mark("b", f"{SPANS} spans{', batched' if i >= n else ''} {i}")
                    await add_spans(rid, aid, batched=i >= n)
                    b2 = hosts.b.ops()
                    mark("b", f"complete {i}")
                    await runner.update_attempt(rid, aid, status="succeeded")
                    b3 = hosts.b.ops()
                    if i >= n:
                        per_phase["batched"].update(ops_delta(b1, b2))
                        continue
                    per_phase["dequeue"].update(ops_delta(b0, b1))
                    per_phase["spans"].update(ops_delta(b1, b2))
                    per_phase["complete"].update(ops_delta(b2, b3))

            async def wait() -> float:
                started = time.monotonic()
                done = await algo.wait_for_rollouts(rollout_ids=ids, timeout=600)
                assert len(done) == 2 * n
                return time.monotonic() - started

            async def both() -> float:
                a1 = hosts.a.ops()
                mark("a", "wait")
                waiting = asyncio.create_task(wait())
                await asyncio.to_thread(lambda: asyncio.run(work()))
                seconds = await waiting
                phases.update(ops_delta(a1, hosts.a.ops()))
                return seconds

            seconds = asyncio.run(both())
            print(f"\n== requests per rollout, {latency_ms:g} ms per request, {n} rollouts, one runner on B")
            print(f"  A enqueue              {fmt(enqueue, 2 * n)}")
            labels = {
                "dequeue": "B dequeue",
                "spans": f"B {SPANS} spans",
                "complete": "B complete",
                "batched": f"B {SPANS} spans, batched",
            }
            for name, counts in per_phase.items():
                print(f"  {labels[name]:<22} {fmt(counts, n)}")
            one_by_one = sum((per_phase[p] for p in ("dequeue", "spans", "complete")), Counter())
            print(f"  B whole rollout        {fmt(one_by_one, n)}")
            batched = one_by_one - per_phase["spans"] + per_phase["batched"]
            print(f"  B rollout, batched     {fmt(batched, n)}")
            print(f"  A wait (per rollout)   {fmt(phases, 2 * n)}")
            print(f"  A wait (per second)    {fmt(phases, seconds)}   over {seconds:.1f} s")
        finally:
            algo.close()
            runner.close()


def throughput(base: Path | None, n: int, latency_ms: float, runners: int) -> float:
    """Rollouts per second for ``runners`` processes on B draining ``n`` rollouts."""
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        if base is None:
            os.environ["AGL_NETWORK_FS"] = "0"
            root_a = root_b = tmpdir / "store"
            ctx: Any = None
        else:
            os.environ["AGL_NETWORK_FS"] = "1"
            ctx = mounted_two_hosts(base, latency_ms=latency_ms, **CACHE)
            hosts = ctx.__enter__()
            root_a, root_b = hosts.a.path / "store", hosts.b.path / "store"
        procs = []
        try:
            algo = FileStore(root_a, watch_mode="poll")
            ids = asyncio.run(_enqueue(algo, n))
            go, stop = tmpdir / "go", tmpdir / "stop"
            outs = [tmpdir / f"r{i}.json" for i in range(runners)]
            for i, out in enumerate(outs):
                proc = spawn.Process(
                    target=nfs_workers.bench_runner,
                    args=(str(root_b), str(out), f"w{i}", SPANS, str(go), str(stop), {}),
                    daemon=True,
                )
                proc.start()
                procs.append(proc)
            time.sleep(2.0)  # interpreters up and stores open: time the loop, not the start-up
            started = time.time()
            go.touch()
            done = asyncio.run(algo.wait_for_rollouts(rollout_ids=ids, timeout=900))
            stop.touch()
            for proc in procs:
                proc.join(60)
            algo.close()
            assert len(done) == n, f"only {len(done)} of {n} rollouts finished"
            results = [json.loads(out.read_text()) for out in outs]
            assert all("error" not in r for r in results), results
            assert sum(r["done"] for r in results) == n, results
            last: float = max(r["last"] for r in results if r["done"])
            return n / (last - started)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join(10)
            if ctx is not None:
                ctx.__exit__(None, None, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=40, help="rollouts per measurement")
    parser.add_argument("--latencies", default="0,1,5", help="ms per request, comma separated")
    parser.add_argument("--runners", default="1,4", help="runner processes on B, comma separated")
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="write each host's requests, with their paths and the phases, to DIR/<latency>/host-<a|b>.trace",
    )
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot mount the test filesystem: {reason}", file=sys.stderr)
        return 1
    latencies = [float(x) for x in args.latencies.split(",")]
    runner_counts = [int(x) for x in args.runners.split(",")]
    base = Path(tempfile.mkdtemp(prefix="bench_nfs-"))
    try:
        for i, latency in enumerate(latencies):
            trace = None if args.trace is None else args.trace / f"{latency:g}ms"
            ops_per_rollout(base / f"ops{i}", args.rollouts, latency, trace)
        what = f"enqueue on A, N runners on B, {SPANS} spans each, {args.rollouts} rollouts"
        print(f"\n== loop throughput: {what}")
        print(f"  {'filesystem':<26}" + "".join(f"{f'{r} runner(s)':>14}" for r in runner_counts))
        rows: list[tuple[str, Path | None, float]] = [("local disk (no FUSE)", None, 0.0)]
        rows += [(f"two hosts, {lat:g} ms/request", base / f"tp{i}", lat) for i, lat in enumerate(latencies)]
        for label, where, latency in rows:
            cells = []
            for r in runner_counts:
                sub = None if where is None else where / f"r{r}"
                cells.append(f"{throughput(sub, args.rollouts, latency, r):10.1f} r/s")
            print(f"  {label:<26}" + "".join(f"{c:>14}" for c in cells), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
