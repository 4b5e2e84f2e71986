#!/usr/bin/env python
"""Latency of listing and counting queries on a store holding many rollouts.

Builds one store with ``--n`` rollouts (default 100,000) through the public API:
``enqueue_many_rollouts`` in batches, then ``--active`` of them (default 2 %)
dequeued, half of those marked ``running`` and half ``succeeded`` with
``update_attempt``. Then measures, each as the median of ``--reps`` calls (min and
max shown too), timed with ``time.perf_counter``:

* ``query running``        query_rollouts(status_in=["running"])            (~1 % of the store)
* ``query succeeded 100``  query_rollouts(status_in=["succeeded"], limit=100)
* ``query queuing 100``    query_rollouts(status_in=["queuing"], limit=100)  (~98 % match)
* ``statistics``           statistics()
* ``dequeue``              dequeue_rollout()
* ``get_rollout_by_id``    get_rollout_by_id() of a random rollout

on the instance that built the store (warm: its caches are filled), and the three
queries and ``statistics`` on a *cold* instance: a new ``FileStore`` per call, as a
freshly started trainer or ``agl`` command would be. A cold instance's first
watched call also runs its first reaper pass, which lists the whole queue; that
pass is timed on its own as ``reaper pass (cold)``.

Usage::

    python benchmarks/bench_scale.py                  # N=100,000 (building takes a few minutes)
    python benchmarks/bench_scale.py --n 20000 --reps 5
    python benchmarks/bench_scale.py --json out.json --dir /mnt/nfs --keep
    python benchmarks/bench_scale.py --upstream       # the same on upstream's in-memory store
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from store_fs import EnqueueRolloutRequest, FileStore, __version__


@dataclass
class Result:
    name: str
    ms: list[float] = field(default_factory=list)
    items: int | None = None  # what the call returned (rows or total), as a sanity check

    @property
    def median(self) -> float:
        return statistics.median(self.ms)


async def build(root: Path | None, n: int, active: int, batch: int) -> tuple[Any, float]:
    """A store with ``n`` rollouts, ``active`` of them dequeued (half running, half succeeded).

    ``root`` None builds upstream's ``InMemoryLightningStore`` the same way instead.
    """
    request: Any = EnqueueRolloutRequest
    if root is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
        from agentlightning.store.memory import InMemoryLightningStore
        from agentlightning.types import EnqueueRolloutRequest as request

        store: Any = InMemoryLightningStore()
    else:
        store = FileStore(root)
    start = time.perf_counter()
    for first in range(0, n, batch):
        requests = [request(input={"task": i}) for i in range(first, min(n, first + batch))]
        await store.enqueue_many_rollouts(requests)
    for i in range(active):
        attempted = await store.dequeue_rollout(worker_id="bench")
        assert attempted is not None
        status = "running" if i % 2 == 0 else "succeeded"
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=status)
    return store, time.perf_counter() - start


async def timed(name: str, reps: int, call: Callable[[], Awaitable[Any]]) -> Result:
    result = Result(name)
    for _ in range(reps):
        start = time.perf_counter()
        out = await call()
        result.ms.append((time.perf_counter() - start) * 1000)
        result.items = _size(out)
    print(f"  {name:<28} median {result.median:10.2f} ms", file=sys.stderr)
    return result


def _size(out: Any) -> int | None:
    if hasattr(out, "total"):
        return int(out.total)
    if isinstance(out, dict) and "total_rollouts" in out:
        return int(out["total_rollouts"])
    return None


def queries(store_of: Callable[[], Any]) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """The listing and counting calls, each on the store ``store_of()`` returns."""
    return [
        ("query running", lambda: store_of().query_rollouts(status_in=["running"])),
        ("query succeeded 100", lambda: store_of().query_rollouts(status_in=["succeeded"], limit=100)),
        ("query queuing 100", lambda: store_of().query_rollouts(status_in=["queuing"], limit=100)),
        ("statistics", lambda: store_of().statistics()),
    ]


async def measure(store: Any, reps: int, ids: list[str]) -> list[Result]:
    out: list[Result] = []
    print("warm (the instance that built the store):", file=sys.stderr)
    for name, call in queries(lambda: store):
        out.append(await timed(name, reps, call))
    out.append(await timed("dequeue", reps, lambda: store.dequeue_rollout(worker_id="bench")))
    out.append(await timed("get_rollout_by_id", reps, lambda: store.get_rollout_by_id(random.choice(ids))))
    if not isinstance(store, FileStore):
        return out  # upstream's in-memory store has no cold start to measure
    print("cold (a new FileStore per call):", file=sys.stderr)

    def cold() -> FileStore:
        return FileStore(store.root, create=False)

    for name, call in queries(cold):
        out.append(await timed(f"{name} (cold)", reps, call))

    async def reap() -> int:
        return cold().reap()

    out.append(await timed("reaper pass (cold)", reps, reap))
    return out


def render(results: list[Result]) -> str:
    header = f"{'measurement (ms)':<30} {'median':>10} {'min':>10} {'max':>10}  {'rows/total':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        items = "" if r.items is None else str(r.items)
        lines.append(f"{r.name:<30} {r.median:>10.2f} {min(r.ms):>10.2f} {max(r.ms):>10.2f}  {items:>10}")
    return "\n".join(lines)


async def run(args: argparse.Namespace, base: Path) -> tuple[float, list[Result]]:
    store, built = await build(None if args.upstream else base / "store", args.n, args.active, args.batch)
    print(f"built {args.n} rollouts in {built:.1f} s", file=sys.stderr)
    ids = [r.rollout_id for r in (await store.query_rollouts(limit=1000)).items]
    return built, await measure(store, args.reps, ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="rollouts in the store (default 100,000)")
    parser.add_argument("--active", type=int, default=None, help="rollouts dequeued (default n/50)")
    parser.add_argument("--batch", type=int, default=1000, help="enqueue_many_rollouts batch size")
    parser.add_argument("--reps", type=int, default=5, help="calls per measurement (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write raw results as JSON to PATH")
    parser.add_argument("--dir", metavar="DIR", help="where to create the store")
    parser.add_argument("--keep", action="store_true", help="keep the store (its path is printed)")
    parser.add_argument("--upstream", action="store_true", help="measure upstream's in-memory store instead")
    args = parser.parse_args(argv)
    if args.n < 1 or args.reps < 1 or args.batch < 1:
        parser.error("--n, --reps and --batch must be at least 1")
    args.active = max(2, args.n // 50) if args.active is None else args.active
    if args.active + args.reps > args.n:
        parser.error("--active plus --reps must not exceed --n (the dequeue measurement needs a queue)")

    base = Path(tempfile.mkdtemp(prefix="agl-scale-", dir=args.dir))
    print(
        f"store_fs {__version__} on {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; store under {base}; n={args.n}, active={args.active}, reps={args.reps}",
        file=sys.stderr,
    )
    try:
        built, results = asyncio.run(run(args, base))
    finally:
        if args.keep:
            print(f"store kept at {base / 'store'}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"build: {args.n} rollouts in {built:.1f} s ({args.n / built:.0f} rollouts/s)")
    print(render(results))
    if args.json:
        payload = {
            "meta": {
                "store_fs": __version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "dir": args.dir or tempfile.gettempdir(),
                "n": args.n,
                "active": args.active,
                "reps": args.reps,
                "build_seconds": built,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "results": [{**asdict(r), "median": r.median} for r in results],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
