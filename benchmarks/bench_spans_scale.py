#!/usr/bin/env python
"""query_spans for one rollout in a store holding a million spans, and bytes on disk per span.

Builds one store with ``--rollouts`` rollouts (default 1,000) of ``--spans`` spans
each (default 1,000: a million spans), each span carrying the same ~2.3 KB of
LLM-call attributes as ``compare.py``, written with ``add_many_spans`` by one
process. Then reports:

* bytes on disk per span: the span files' sizes over the span count, and the
  space the filesystem allocated for them (``st_blocks``);
* ``query_spans`` of one random rollout (1,000 spans), median of ``--reps``
  calls: on a reader that queried other rollouts before (warm) and on a new
  ``FileStore`` per call (cold, as a freshly started trainer);
* the same query on a store holding only that one rollout, to show the size of
  the store does not matter: a query reads only its rollout's span files.

Upstream's in-memory store is not measured at this size: a million such spans
is several gigabytes of Python objects in one process.

Usage::

    python benchmarks/bench_spans_scale.py                       # 1,000,000 spans, ~3 GB on disk
    python benchmarks/bench_spans_scale.py --rollouts 100        # 100,000 spans
    python benchmarks/bench_spans_scale.py --json out.json --dir /mnt/nfs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spans import span_dict

from store_fs import FileStore, Span


async def build(root: Path, rollouts: int, spans: int, batch: int = 500) -> tuple[list[str], float]:
    store = FileStore(root)
    ids: list[str] = []
    start = time.perf_counter()
    for r in range(rollouts):
        attempted = await store.start_rollout(input={"task": r})
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        for first in range(1, spans + 1, batch):
            last = min(spans, first + batch - 1)
            await store.add_many_spans(
                [Span.model_validate(span_dict(rid, aid, s)) for s in range(first, last + 1)]
            )
        # Finished, as most rollouts of a big store are (a live attempt is watched by every reaper).
        await store.update_attempt(rid, aid, status="succeeded")
        ids.append(rid)
        if (r + 1) % 100 == 0:
            print(f"  built {r + 1}/{rollouts} rollouts", file=sys.stderr)
    store.close()
    return ids, time.perf_counter() - start


def disk_usage(root: Path) -> tuple[int, int, int]:
    """(span files' bytes, bytes allocated to them, span files)."""
    size = allocated = files = 0
    for path in root.glob("rollouts/*/*/attempts/*/spans.*.jsonl"):
        st = path.stat()
        size += st.st_size
        allocated += st.st_blocks * 512
        files += 1
    return size, allocated, files


async def query_ms(store_of: Any, rid: str, expect: int) -> float:
    store = store_of()
    start = time.perf_counter()
    got = await store.query_spans(rid)
    elapsed = (time.perf_counter() - start) * 1000
    if len(got) != expect:
        raise RuntimeError(f"query_spans returned {len(got)} spans, not {expect}")
    return elapsed


async def measure(root: Path, ids: list[str], spans: int, reps: int) -> dict[str, Any]:
    warm_reader = FileStore(root, create=False)
    for rid in random.sample(ids, min(5, len(ids))):  # a reader that has been busy before
        await warm_reader.query_spans(rid)
    warm = [await query_ms(lambda: warm_reader, random.choice(ids), spans) for _ in range(reps)]
    cold_readers: list[FileStore] = []

    def cold() -> FileStore:
        cold_readers.append(FileStore(root, create=False))
        return cold_readers[-1]

    cold_ms = [await query_ms(cold, random.choice(ids), spans) for _ in range(reps)]
    for reader in [warm_reader, *cold_readers]:
        reader.close()
    return {"warm_ms": warm, "cold_ms": cold_ms}


async def run(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    big, small = base / "big", base / "small"
    ids, built = await build(big, args.rollouts, args.spans)
    size, allocated, files = disk_usage(big)
    total = args.rollouts * args.spans
    out: dict[str, Any] = {
        "rollouts": args.rollouts,
        "spans_per_rollout": args.spans,
        "spans": total,
        "build_seconds": built,
        "span_file_bytes": size,
        "span_file_allocated_bytes": allocated,
        "span_files": files,
        "bytes_per_span": size / total,
        "allocated_bytes_per_span": allocated / total,
        "big": await measure(big, ids, args.spans, args.reps),
    }
    small_ids, _ = await build(small, 1, args.spans)
    out["one_rollout_store"] = await measure(small, small_ids, args.spans, args.reps)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=1000, help="rollouts in the store (default 1,000)")
    parser.add_argument("--spans", type=int, default=1000, help="spans per rollout (default 1,000)")
    parser.add_argument("--reps", type=int, default=15, help="queries per measurement (default 15)")
    parser.add_argument("--json", metavar="PATH", help="also write raw results as JSON to PATH")
    parser.add_argument("--dir", metavar="DIR", help="where to create the stores")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="agl-spans-scale-", dir=args.dir))
    try:
        out = asyncio.run(run(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    big, small = out["big"], out["one_rollout_store"]
    print(f"{out['spans']:,} spans in {out['rollouts']:,} rollouts, built in {out['build_seconds']:.0f} s")
    print(
        f"bytes per span: {out['bytes_per_span']:,.0f} in the files, "
        f"{out['allocated_bytes_per_span']:,.0f} allocated ({out['span_files']} span files)"
    )
    for label, cell in ((f"store of {out['spans']:,} spans", big), ("store of one rollout", small)):
        print(
            f"query_spans ({args.spans:,} spans), {label}: warm {statistics.median(cell['warm_ms']):.1f} ms, "
            f"cold {statistics.median(cell['cold_ms']):.1f} ms (medians of {args.reps})"
        )
    if args.json:
        out["meta"] = {"cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
