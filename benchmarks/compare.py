#!/usr/bin/env python
"""Our stores side by side with upstream Agent-lightning 0.3's, measured in one run.

Runs each workload on every backend (see ``backends.py``), interleaved: for each
repetition, every backend once, in turn, so that a noisy neighbour on a shared
machine slows all of them alike rather than deciding the verdict. Reports
medians and the ratio to upstream's HTTP store (``up-http``), where a ratio
above 1 always means "better than upstream HTTP" (faster, or lower latency).

Needs the bench extra: ``pip install -e '.[upstream]'`` (agentlightning==0.3.0).

Usage::

    python benchmarks/compare.py                      # everything, 3 repetitions (~15 min)
    python benchmarks/compare.py --quick              # smaller sizes, 2 repetitions
    python benchmarks/compare.py --only loop --only add_span --backends fs,up-http
    python benchmarks/compare.py --json benchmarks/results/latest.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import workloads
from backends import BACKENDS, BASELINE, Backend, Deployment, deployed

Workload = Callable[[Deployment, int], Awaitable[dict[str, Any]]]

# name -> (function, operations per repetition, operations per repetition with fsync)
PLAN: dict[str, tuple[Workload, int, int]] = {
    "enqueue": (workloads.enqueue, 1000, 300),
    "dequeue x1": (lambda d, n: workloads.dequeue(d, n, 1), 1000, 300),
    "dequeue x4": (lambda d, n: workloads.dequeue(d, n, 4), 1000, 300),
    "add_span": (workloads.add_span, 2000, 500),
    "add_span x4": (lambda d, n: workloads.add_span_writers(d, n, 4), 4000, 2000),
    "query_spans": (workloads.query_spans, 20, 20),
    "wait wake-up": (workloads.wake_up, 20, 20),
    "loop": (lambda d, n: workloads.loop(d, n, 4), 1000, 1000),
    "runner start-up": (workloads.startup, 1, 1),
}


def size(name: str, backend: Backend, scale: float) -> int:
    _, n, n_fsync = PLAN[name]
    n = n_fsync if backend.durability == "fsync" else n
    return n if name == "runner start-up" else max(5, round(n * scale))


async def measure(name: str, backend: Backend, base: Path, scale: float, settle: float) -> dict[str, Any]:
    fn = PLAN[name][0]
    n = size(name, backend, scale)
    with deployed(backend, base) as dep:
        result = await fn(dep, n)
    if settle:
        # The last measurement leaves dirty pages behind: write them out untimed, so they
        # do not slow whichever backend runs next.
        os.sync()
        time.sleep(settle)
    return {"n": n, **result}


def measure_in_child(name: str, backend: Backend, base: Path, scale: float, settle: float) -> dict[str, Any]:
    """One measurement in a fresh interpreter: the measuring process (the algorithm, or
    everything for up-mem) starts clean every time, so one measurement's leftovers (a
    big heap for the garbage collector to walk, open stores) cannot slow the next."""
    args = ["--measure", name, backend.name, "--dir", str(base)]
    args += ["--scale", str(scale), "--settle", str(settle)]
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:  # keep going: one broken backend must not lose the rest
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    outcome: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return outcome


def run(
    backends: list[Backend], names: list[str], reps: int, scale: float, base: Path, settle: float
) -> dict[str, Any]:
    """results[workload][backend] = {"runs": [...], "median": float}"""
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        per = results.setdefault(name, {b.name: {"runs": []} for b in backends})
        for rep in range(reps):
            # Rotate the order every repetition so no backend always runs first.
            order = backends[rep % len(backends) :] + backends[: rep % len(backends)]
            for backend in order:
                outcome = measure_in_child(name, backend, base, scale, settle)
                per[backend.name]["runs"].append(outcome)
                shown = f"{outcome['value']:.2f}" if "value" in outcome else outcome["error"][:120]
                print(f"  {name:<16} {backend.name:<9} rep {rep + 1}: {shown}", file=sys.stderr)
        for cell in per.values():
            values = [r["value"] for r in cell["runs"] if "value" in r]
            cell["median"] = statistics.median(values) if values else None
            cold = [r["cold_ms"] for r in cell["runs"] if "cold_ms" in r]
            if cold:
                cell["cold_median_ms"] = statistics.median(cold)
    return results


def ratio(name: str, value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or value == 0 or baseline == 0:
        return None
    lower_better = workloads.UNITS[name] in workloads.LOWER_IS_BETTER
    return baseline / value if lower_better else value / baseline


def render(results: dict[str, Any], backends: list[Backend]) -> str:
    """A markdown table: median per backend, and its ratio to upstream HTTP."""
    names = [b.name for b in backends]
    head = "| workload | unit | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for name, per in results.items():
        baseline = per.get(BASELINE, {}).get("median")
        cells = []
        for b in names:
            median = per[b]["median"]
            if median is None:
                cells.append("failed")
                continue
            text = f"{median:,.1f}" if median >= 10 else f"{median:.2f}"
            r = ratio(name, median, baseline)
            if r is not None and b != BASELINE:
                text += f" ({r:.1f}x)"
            cells.append(text)
        lines.append(f"| {name} | {workloads.UNITS[name]} | " + " | ".join(cells) + " |")
        cold = {b: per[b].get("cold_median_ms") for b in names if per[b].get("cold_median_ms") is not None}
        if cold:
            row = [f"{cold[b]:.2f}" if b in cold else "n/a" for b in names]
            lines.append("| query_spans, first in a new process | ms | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cli_timings(reps: int) -> dict[str, Any]:
    """Wall time of whole commands: our ``agl`` and upstream's, a fresh interpreter each."""
    agl = str(Path(sys.executable).with_name("agl"))
    upstream = [sys.executable, "-c", "import sys; from agentlightning.cli import main; sys.exit(main())"]
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        subprocess.run([agl, "--store", store, "init"], check=True, capture_output=True)
        commands = {
            "agl --help (ours)": [agl, "--help"],
            "agl enqueue (ours)": [agl, "--store", store, "enqueue", '{"question": "2+2"}'],
            "agl --help (upstream)": [*upstream, "--help"],
        }
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
        out: dict[str, Any] = {}
        for label, cmd in commands.items():
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, env=env)
                times.append((time.perf_counter() - start) * 1000)
            out[label] = {"runs_ms": times, "median_ms": statistics.median(times)}
            print(f"  {label:<24} {statistics.median(times):8.1f} ms", file=sys.stderr)
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "agl": version("agl"),
        "agentlightning": version("agentlightning"),
        "load_before": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the sizes and 2 repetitions")
    parser.add_argument(
        "--scale", type=float, default=None, help="multiply the sizes (default 1, --quick 0.25)"
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3)")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated, of: " + ", ".join(BACKENDS)
    )
    parser.add_argument(
        "--only", action="append", choices=[*PLAN, "cli"], help="run only this workload (repeatable)"
    )
    parser.add_argument("--json", metavar="PATH", help="write raw results as JSON to PATH")
    parser.add_argument("--dir", metavar="DIR", help="where to create the temporary stores")
    parser.add_argument("--settle", type=float, default=1.0, help="rest after sync between measurements (s)")
    parser.add_argument("--measure", nargs=2, metavar=("WORKLOAD", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # one measurement, printed as JSON (see measure_in_child)
        name, backend_name = args.measure
        base = Path(args.dir or tempfile.gettempdir())
        outcome = asyncio.run(measure(name, BACKENDS[backend_name], base, args.scale or 1.0, args.settle))
        print(json.dumps(outcome))
        return 0
    reps = args.reps or (2 if args.quick else 3)
    try:
        backends = [BACKENDS[name] for name in args.backends.split(",")]
    except KeyError as err:
        parser.error(f"unknown backend {err}")
    names = [n for n in PLAN if not args.only or n in args.only]
    scale = args.scale if args.scale is not None else 0.25 if args.quick else 1.0
    if reps < 1 or scale <= 0:
        parser.error("--reps and --scale must be positive")

    meta = machine()
    print(f"{meta['cpus']} CPUs ({meta['cpu']}), Python {meta['python']}, reps {reps}", file=sys.stderr)
    started = time.perf_counter()
    # Every store of the run is deleted at the end, after the last timing (see Deployment.close).
    with tempfile.TemporaryDirectory(prefix="agl-compare-", dir=args.dir) as tmp:
        results = run(backends, names, reps, scale, Path(tmp), args.settle)
        cli = cli_timings(max(reps, 5)) if not args.only or "cli" in args.only else {}
    meta["total_seconds"] = time.perf_counter() - started
    meta["reps"], meta["scale"], meta["settle"] = reps, scale, args.settle

    print(render(results, backends))
    for label, timing in cli.items():
        print(f"{label}: {timing['median_ms']:.0f} ms")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "units": workloads.UNITS, "results": results, "cli": cli}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
