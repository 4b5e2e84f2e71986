#!/usr/bin/env python
"""Reads that do not scan: ``agl stats`` after thousands of one-shot processes, and a cold
selective query on a big store, with and without log compaction.

Two parts (issue 18, item 4), run one after the other unless named:

``stats``
    Store A is written by ``--procs`` (default 2,000) one-shot processes running the shell loop
    of ``agl --help`` one command per process: ``agl enqueue``, ``agl dequeue --worker-id w<k>``,
    ``agl reward RID 0.9 --attempt AID``, ``agl complete RID AID`` (``--procs / 4`` rollouts).
    Each process is *forked from this script* and runs agl's CLI entry point (``run_cli``, the
    code ``agl`` runs) once, then exits: a new pid, hence a new per-writer log, per command, but
    no exec and no imports, so that building takes a minute rather than a quarter of an hour.
    Store B gets the same commands, in the same order, from one process. Then, each the median
    of ``--reps`` runs, interleaved across cases:

    * ``agl stats`` as a real subprocess (the ``agl`` console script), wall time;
    * ``FileStore(...).statistics()`` in a fresh interpreter (``python -c``), split into import,
      open and the call;

    on A as written with automatic compaction disabled (what every reader paid before
    compaction existed), on a fresh copy of A per run with automatic compaction on (the first
    reader compacts: the first ``agl stats`` after the loop), on A after ``FileStore.compact()``,
    and on B. Also the file counts under ``index/rollouts``, ``events`` and ``workers``.

``cold-query``
    A store of ``--n`` rollouts (default 100,000): all enqueued, dequeued and finished through the
    public API by ``--jobs`` processes, ``--failed`` (10) of them failed and the rest succeeded.
    Then the first ``query_rollouts(status_in=["failed"])`` of a fresh interpreter, median of
    ``--reps``, with the rollout index laid out as one log; as ``--logs`` (2,000) per-writer logs
    of exited writers (the same lines split up, as that many one-shot processes would leave them)
    read with automatic compaction off; the same, with it on (the first query compacts); and
    compacted into one segment by ``FileStore.compact()``. Reported: the whole fresh process
    (wall, from the parent), and inside it import, ``FileStore`` open and the query, against the
    100 ms target. The page cache is warm (the store was just written or read): "cold" means a
    fresh process, not a cold disk.

Usage::

    python benchmarks/bench_compaction.py                         # both parts, sizes of the issue
    python benchmarks/bench_compaction.py --quick                 # 200 processes, 10,000 rollouts
    python benchmarks/bench_compaction.py stats --procs 400
    python benchmarks/bench_compaction.py cold-query --reuse /var/tmp/q100k   # built once, then reused
    python benchmarks/bench_compaction.py --json                  # -> benchmarks/results/compaction.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agl_cli.main import cli_command, run_cli
from store_fs import EnqueueRolloutRequest, FileStore, __version__
from store_fs._disk import fsio, log_compaction, log_segments
from store_fs._disk.index_snapshot import SNAPSHOT_NAME
from store_fs._disk.rollout_index import INDEX_LOGS
from store_fs.models import AttemptStatus

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "compaction.json"
TARGET_QUERY_MS = 100.0
TARGET_STATS_RATIO = 1.3
WORKERS = 8  # distinct --worker-id values of the shell loop

# Children measured in a fresh interpreter. Each prints one JSON line; times in ms.
# argv: store, "1"/"0" (automatic compaction on/off)[, status].
_NO_AUTO = (
    "import store_fs._disk.log_compaction as _lc; _lc.AUTO_THRESHOLD = _lc.SNAPSHOT_EVERY_LINES = 1 << 60\n"
)
_CHILD = """
import sys, time
t0 = time.perf_counter()
import asyncio, json
from store_fs import FileStore
if sys.argv[2] == "0":
    {no_auto}
loop = asyncio.new_event_loop()
t1 = time.perf_counter()
store = FileStore(sys.argv[1], create=False)
t2 = time.perf_counter()
answer = loop.run_until_complete({call})
t3 = time.perf_counter()
print(json.dumps({{"import_ms": (t1 - t0) * 1e3, "open_ms": (t2 - t1) * 1e3, "call_ms": (t3 - t2) * 1e3,
                  "result": {result}}}))
"""


def _child(call: str, result: str) -> str:
    """A fresh-interpreter script timing import, open and ``call``, printing ``result``."""
    return _CHILD.format(no_auto=_NO_AUTO.strip().replace("\n", "\n    "), call=call, result=result)


STATS_CHILD = _child("store.statistics()", '{k: v for k, v in answer.items() if k != "uptime"}')
QUERY_CHILD = _child("store.query_rollouts(status_in=[sys.argv[3]])", "len(answer.items)")
# ``agl`` with automatic compaction off: the same entry point as the console script.
AGL_NO_AUTO = _NO_AUTO + "import sys\nfrom agl_cli.main import main\nsys.argv[0] = 'agl'\nmain()\n"


# -- processes ---------------------------------------------------------------------------


def run_forked(tasks: Sequence[Callable[[], None]], jobs: int) -> None:
    """Run each task in a process of its own (``os.fork``; it exits after the task), ``jobs`` at
    a time. Raises if any failed."""
    running: set[int] = set()
    failed = 0

    def wait_one() -> None:
        nonlocal failed
        pid, status = os.waitpid(-1, 0)
        running.discard(pid)
        failed += os.waitstatus_to_exitcode(status) != 0

    sys.stdout.flush()
    sys.stderr.flush()
    for task in tasks:
        while len(running) >= jobs:
            wait_one()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                task()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        running.add(pid)
    while running:
        wait_one()
    if failed:
        raise RuntimeError(f"{failed} of {len(tasks)} forked processes failed")


def cli(store: Path, args: list[str], out: Path | None = None) -> None:
    """One agl command in this process (``run_cli``, what the ``agl`` script runs), its stdout
    sent to ``out`` (or discarded)."""
    sys.stdout.flush()
    saved = os.dup(1)
    target = os.open(out if out is not None else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(target, 1)
        code = run_cli(["--store", str(store), "--json", "--quiet", *args])
        sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)
    if code != 0:
        raise RuntimeError(f"agl {' '.join(args)}: exit {code}")


def fresh_python(script: str, *args: str) -> tuple[float, dict[str, Any]]:
    """Run ``script`` in a new interpreter: (wall ms of the whole process, its JSON line)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script, *args], env=_env(), capture_output=True, text=True)
    wall = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"fresh interpreter on {args[0]} exited {proc.returncode}:\n{proc.stderr}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return wall, out


def wall_ms(command: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-3:])} exited {proc.returncode}:\n{proc.stderr}")
    return (time.perf_counter() - start) * 1000


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def agl_command() -> list[str]:
    """The ``agl`` console script beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("agl")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("agl")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys\nfrom agl_cli.main import main\nsys.argv[0] = 'agl'\nmain()\n"]


# -- measurements ------------------------------------------------------------------------


@dataclass
class Series:
    """Repeated measurements of one case (ms)."""

    name: str
    ms: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)  # import/open/call, for fresh_python
    result: Any = None

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    def part(self, key: str) -> float:
        return statistics.median(self.parts[key]) if self.parts.get(key) else float("nan")

    def add_child(self, wall: float, out: dict[str, Any]) -> None:
        self.ms.append(wall)
        for key in ("import_ms", "open_ms", "call_ms"):
            self.parts.setdefault(key, []).append(float(out[key]))
        self.result = out["result"]

    def to_json(self) -> dict[str, Any]:
        medians = {k: self.part(k) for k in self.parts}
        return {**asdict(self), "median": self.median, "part_medians": medians}


def file_counts(store: Path) -> dict[str, int]:
    counts = {}
    for name in ("index/rollouts", "events", "workers"):
        counts[name] = sum(len(files) for _, _, files in os.walk(store / name))
    counts["all"] = sum(len(files) for _, _, files in os.walk(store))
    return counts


def _fmt_counts(c: dict[str, int]) -> str:
    return f"{c['index/rollouts']:>7} {c['events']:>7} {c['workers']:>8} {c['all']:>7}"


# -- part 1: agl stats after many one-shot processes -------------------------------------


def shell_loop(rollouts: int) -> list[list[tuple[str, ...]]]:
    """The phases of the loop: each a list of commands (run in any order) as tuples, where
    ``<out:i>`` marks the dequeue whose output later commands refer to as ``<rid:i>``/``<aid:i>``."""
    return [
        [("enqueue", json.dumps({"task": i})) for i in range(rollouts)],
        [("dequeue", "--worker-id", f"w{i % WORKERS}", f"<out:{i}>") for i in range(rollouts)],
        [("reward", f"<rid:{i}>", "0.9", "--attempt", f"<aid:{i}>") for i in range(rollouts)],
        [("complete", f"<rid:{i}>", f"<aid:{i}>") for i in range(rollouts)],
    ]


def _resolve(command: tuple[str, ...], outputs: Path) -> tuple[list[str], Path | None]:
    args: list[str] = []
    out: Path | None = None
    for arg in command:
        if arg.startswith("<") and arg.endswith(">"):
            what, _, index = arg[1:-1].partition(":")
            if what == "out":
                out = outputs / f"{index}.json"
                continue
            dequeued = json.loads((outputs / f"{index}.json").read_text())
            arg = dequeued["rollout_id"] if what == "rid" else dequeued["attempt"]["attempt_id"]
        args.append(arg)
    return args, out


def build_many(store: Path, phases: list[list[tuple[str, ...]]], jobs: int, outputs: Path) -> int:
    """Store A: ``agl init``, then every command in a forked process of its own. Returns the
    number of processes (``init`` not counted)."""
    outputs.mkdir(parents=True, exist_ok=True)
    cli_command()  # typer's command tree, built once here rather than in every child (~30 ms)
    run_forked([lambda: cli(store, ["init", str(store)])], 1)
    count = 0
    for phase in phases:

        def task(command: tuple[str, ...]) -> Callable[[], None]:
            def run() -> None:
                args, out = _resolve(command, outputs)
                cli(store, args, out)

            return run

        run_forked([task(c) for c in phase], jobs)
        count += len(phase)
    return count


def build_one(store: Path, phases: list[list[tuple[str, ...]]], outputs: Path) -> None:
    """Store B: the same commands, in the same order, all in one (forked) process."""
    outputs.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        cli(store, ["init", str(store)])
        for phase in phases:
            for command in phase:
                args, out = _resolve(command, outputs)
                cli(store, args, out)

    run_forked([run], 1)


def compact_in_child(store: Path) -> float:
    """``FileStore.compact()`` in a forked process (so that this one never opens a store);
    returns its wall time in seconds."""
    start = time.perf_counter()

    def run() -> None:
        FileStore(store, create=False).compact()

    run_forked([run], 1)
    return time.perf_counter() - start


@dataclass
class StatsCase:
    name: str
    store: Path
    fresh_copy: bool  # measure a new copy each run (its first reader may compact it)
    auto: bool  # automatic compaction on in the measuring process


def part_stats(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    rollouts = max(1, args.procs // 4)
    phases = shell_loop(rollouts)
    procs = sum(len(p) for p in phases)
    a_auto, a_raw, b = base / "A-auto", base / "A-raw", base / "B"
    print(
        f"\n== agl stats: store A written by {procs} one-shot processes, store B by one ==\n"
        f"A's processes are forked from this benchmark, each running agl's CLI entry (run_cli) for one\n"
        f"command and exiting: a fresh pid (a new per-writer log) each, but no exec/imports; they are not\n"
        f"separate `agl` invocations. The loop, {rollouts} times: agl enqueue; agl dequeue --worker-id w<k>;"
        f"\nagl reward RID 0.9 --attempt AID; agl complete RID AID ({args.jobs} processes at a time).\n"
        f"A-auto: as written with automatic compaction on (readers among the writers compact); A-raw: the\n"
        f"same loop with it off in every writer (one log per process, as before compaction existed).",
        flush=True,
    )
    built: dict[str, float] = {}
    for name, store in (("A-auto", a_auto), ("A-raw", a_raw)):
        start = time.perf_counter()
        with auto_compaction(name == "A-auto"):
            build_many(store, phases, args.jobs, base / f"out-{name}")
        built[name] = time.perf_counter() - start
    start = time.perf_counter()
    build_one(b, phases, base / "out-B")
    built["B"] = time.perf_counter() - start
    print(
        f"built A-auto in {built['A-auto']:.1f} s ({procs / built['A-auto']:.0f} processes/s), "
        f"A-raw in {built['A-raw']:.1f} s, B in {built['B']:.1f} s",
        flush=True,
    )
    compacted = _fresh_copy(a_raw, base / "A-raw-compacted")
    compact_s = compact_in_child(compacted)
    print(f"FileStore.compact() of A-raw: {compact_s * 1000:.0f} ms (a forked process, wall)", flush=True)

    cases = [
        StatsCase("A-raw, auto-compaction off", a_raw, False, False),
        StatsCase("A-raw, first reader compacts", a_raw, True, True),
        StatsCase("A-raw after compact()", compacted, False, True),
        StatsCase("A-auto, first reader", a_auto, True, True),
        StatsCase("B (one process)", b, False, True),
    ]
    counts: dict[str, dict[str, int]] = {
        "A-raw": file_counts(a_raw),
        "A-raw after compact()": file_counts(compacted),
        "A-auto as written": file_counts(a_auto),
        "B": file_counts(b),
    }
    agl, agl_no_auto = agl_command(), [sys.executable, "-c", AGL_NO_AUTO]
    agl_series = {c.name: Series(c.name) for c in cases}
    proc_series = {c.name: Series(c.name) for c in cases}
    for rep in range(args.reps):
        for i, case in enumerate(cases):
            store = _fresh_copy(case.store, base / f"run-{i}") if case.fresh_copy else case.store
            command = agl if case.auto else agl_no_auto
            agl_series[case.name].ms.append(wall_ms([*command, "--store", str(store), "stats"]))
            store = _fresh_copy(case.store, base / f"run-{i}") if case.fresh_copy else case.store
            proc_series[case.name].add_child(
                *fresh_python(STATS_CHILD, str(store), "1" if case.auto else "0")
            )
            if case.fresh_copy:
                counts.setdefault(f"{case.name.split(',')[0]} after its first reader", file_counts(store))
                shutil.rmtree(store, ignore_errors=True)
        print(f"  repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)

    print(f"\n{'files':<34} {'index':>7} {'events':>7} {'workers':>8} {'all':>7}")
    for name, c in counts.items():
        print(f"  {name:<32} {_fmt_counts(c)}")
    base_agl, base_proc = agl_series["B (one process)"].median, proc_series["B (one process)"].median
    base_call = proc_series["B (one process)"].part("call_ms")
    print(
        f"\n{'case (median of ' + str(args.reps) + ', ms)':<30} {'agl stats':>9} {'xB':>5}"
        f"  | fresh python: {'total':>6} {'xB':>5} {'import':>6} {'open':>5} {'stats()':>7} {'xB':>5}"
    )
    ratios: dict[str, dict[str, float]] = {}
    for case in cases:
        s, p = agl_series[case.name], proc_series[case.name]
        r = ratios[case.name] = {
            "agl_stats": s.median / base_agl,
            "fresh_process": p.median / base_proc,
            "statistics_call": p.part("call_ms") / base_call,
        }
        print(
            f"{case.name:<30} {s.median:>9.0f} {r['agl_stats']:>5.2f}  |               {p.median:>6.0f} "
            f"{r['fresh_process']:>5.2f} {p.part('import_ms'):>6.0f} {p.part('open_ms'):>5.1f} "
            f"{p.part('call_ms'):>7.1f} {r['statistics_call']:>5.2f}"
        )
    results = {name: s.result for name, s in proc_series.items()}
    same = len({json.dumps(r, sort_keys=True) for r in results.values()}) == 1
    print(
        f"xB = ratio to B (target for agl stats: within {TARGET_STATS_RATIO}x). "
        f"statistics() agree across cases: {'yes' if same else 'NO'} ({results['B (one process)']})"
    )
    if not same:
        print(f"  differing results: {results}")
    return {
        "procs": procs,
        "rollouts": rollouts,
        "jobs": args.jobs,
        "build_seconds": built,
        "compact_seconds": compact_s,
        "file_counts": counts,
        "agl_stats": [s.to_json() for s in agl_series.values()],
        "fresh_python_statistics": [s.to_json() for s in proc_series.values()],
        "ratios_to_B": ratios,
        "statistics_agree": same,
    }


@contextlib.contextmanager
def auto_compaction(on: bool) -> Iterator[None]:
    """Automatic compaction on or off in this process and the processes it forks meanwhile."""
    saved = log_compaction.AUTO_THRESHOLD, log_compaction.SNAPSHOT_EVERY_LINES
    if not on:
        log_compaction.AUTO_THRESHOLD = log_compaction.SNAPSHOT_EVERY_LINES = 1 << 60
    try:
        yield
    finally:
        log_compaction.AUTO_THRESHOLD, log_compaction.SNAPSHOT_EVERY_LINES = saved


def _fresh_copy(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, symlinks=True)
    return target


# -- part 2: a cold selective query on a big store ---------------------------------------


def build_big(store: Path, n: int, failed: int, jobs: int, batch: int) -> None:
    """``n`` rollouts enqueued, dequeued and finished by ``jobs`` forked processes; ``failed`` of
    them failed (by the first process), the rest succeeded."""
    run_forked([lambda: FileStore(store).close()], 1)
    shares = [n // jobs + (1 if k < n % jobs else 0) for k in range(jobs)]

    def filler(k: int) -> Callable[[], None]:
        async def fill() -> None:
            fs = FileStore(store, create=False)
            first = sum(shares[:k])
            for lo in range(first, first + shares[k], batch):
                hi = min(first + shares[k], lo + batch)
                await fs.enqueue_many_rollouts(
                    [EnqueueRolloutRequest(input={"task": i}) for i in range(lo, hi)]
                )
            to_fail = failed if k == 0 else 0
            while attempted := await fs.dequeue_many_rollouts(limit=500, worker_id=f"builder-{k}"):
                for a in attempted:
                    fail = to_fail > 0
                    to_fail -= fail
                    status: AttemptStatus = "failed" if fail else "succeeded"
                    await fs.update_attempt(a.rollout_id, a.attempt.attempt_id, status=status)
            fs.close()

        return lambda: asyncio.run(fill())

    run_forked([filler(k) for k in range(jobs)], jobs)


def index_lines(store: Path) -> bytes:
    """Every line of the rollout index, each once, whatever its layout."""
    return b"".join(c.data for c in log_segments.read_all(store / "index" / "rollouts", INDEX_LOGS))


def lay_out_index(store: Path, lines: bytes, logs: int) -> int:
    """Replace the rollout index's logs and snapshot by ``logs`` per-writer logs of exited writers
    (pids above the system's maximum, so never alive) holding ``lines`` between them; returns
    ``logs``."""
    directory = store / "index" / "rollouts"
    for entry in os.scandir(directory):
        if INDEX_LOGS.matches(entry.name) or entry.name == SNAPSHOT_NAME:
            os.unlink(entry.path)
    rows = lines.splitlines(keepends=True)
    first_pid = _pid_max() + 1
    per = -(-len(rows) // logs)
    for k in range(logs):
        (directory / f"{fsio.host_tag()}-{first_pid + k}.jsonl").write_bytes(
            b"".join(rows[k * per : (k + 1) * per])
        )
    return logs


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 1 << 22


def part_query(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    print(
        f"\n== cold selective query: query_rollouts(status_in=['failed']) in a fresh interpreter, "
        f"{args.failed} matches among {args.n} rollouts ==",
        flush=True,
    )
    store = Path(args.reuse) if args.reuse else base / "big"
    built: float | None = None
    if args.reuse and (store / "FORMAT.json").exists():
        print(f"reusing the store at {store} (built by an earlier run)", flush=True)
    else:
        start = time.perf_counter()
        build_big(store, args.n, args.failed, args.jobs, 1000)
        built = time.perf_counter() - start
        print(f"built {args.n} rollouts in {built:.0f} s ({args.jobs} processes)", flush=True)
    lines = index_lines(store)
    n_lines = lines.count(b"\n")
    print(f"rollout index: {n_lines} lines, {len(lines) / 1e6:.1f} MB", flush=True)

    compact_s: list[float] = []

    def compacted() -> int:
        lay_out_index(store, lines, args.logs)
        compact_s.append(compact_in_child(store))
        return sum(1 for e in os.scandir(store / "index" / "rollouts") if e.name != "complete.json")

    # (name, prepare the index and return its file count, automatic compaction on)
    cases: list[tuple[str, Callable[[], int], bool]] = [
        ("index: 1 log, auto off", lambda: lay_out_index(store, lines, 1), False),
        (f"index: {args.logs} logs, auto off", lambda: lay_out_index(store, lines, args.logs), False),
        (f"index: {args.logs} logs, compacts", lambda: lay_out_index(store, lines, args.logs), True),
        ("index: compact() (segment+snapshot)", compacted, True),
    ]
    series = {name: Series(name) for name, *_ in cases}
    files: dict[str, int] = {}
    try:
        for rep in range(args.reps):
            for name, prepare, auto in cases:
                files[name] = prepare()
                series[name].add_child(*fresh_python(QUERY_CHILD, str(store), "1" if auto else "0", "failed"))
            print(f"  repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    finally:
        lay_out_index(store, lines, 1)  # a reused store is left as it was built: one log
    print(
        f"\n{'case (median of ' + str(args.reps) + ', ms)':<37} {'files':>5} {'process':>8} "
        f"{'import':>7} {'open':>6} {'query':>7} {'min':>7} {'max':>7} {'found':>5}  "
        f"target {TARGET_QUERY_MS:.0f} ms"
    )
    for name, *_ in cases:
        s = series[name]
        q = s.parts["call_ms"]
        verdict = "met" if s.part("call_ms") <= TARGET_QUERY_MS else "missed"
        print(
            f"{name:<37} {files[name]:>5} {s.median:>8.0f} {s.part('import_ms'):>7.0f} "
            f"{s.part('open_ms'):>6.1f} {s.part('call_ms'):>7.1f} {min(q):>7.1f} {max(q):>7.1f} "
            f"{s.result:>5}  {verdict}"
        )
    print(
        "process = the whole fresh interpreter (wall, from the parent); query = the first "
        "query_rollouts call alone; the 'compacts' row includes the compaction (and index snapshot)\n"
        "that query starts.\n"
        f"FileStore.compact() of {args.logs} index logs (+ events, workers): median "
        f"{statistics.median(compact_s) * 1000:.0f} ms (a forked process, wall)"
    )
    return {
        "n": args.n,
        "failed": args.failed,
        "logs": args.logs,
        "index_lines": n_lines,
        "index_bytes": len(lines),
        "build_seconds": built,
        "compact_seconds": compact_s,
        "files": files,
        "query": [s.to_json() for s in series.values()],
    }


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help="stats and/or cold-query (default: both)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: 200 processes, 10,000 rollouts")
    parser.add_argument("--procs", type=int, default=None, help="one-shot processes writing A (2,000)")
    parser.add_argument("--n", type=int, default=None, help="rollouts of the query store (100,000)")
    parser.add_argument("--failed", type=int, default=10, help="rollouts the query matches (10)")
    parser.add_argument("--logs", type=int, default=None, help="index logs of the 'many logs' cases (2,000)")
    parser.add_argument("--reps", type=int, default=5, help="runs per measurement (5)")
    parser.add_argument("--jobs", type=int, default=2, help="processes building at a time (2)")
    parser.add_argument(
        "--json",
        nargs="?",
        const=str(DEFAULT_JSON),
        metavar="PATH",
        help=f"write results (default {DEFAULT_JSON})",
    )
    parser.add_argument("--dir", metavar="DIR", help="where to create the stores")
    parser.add_argument("--keep", action="store_true", help="keep the stores (their path is printed)")
    parser.add_argument(
        "--reuse", metavar="PATH", help="the query store: built there if absent, else reused as it is"
    )
    args = parser.parse_args(argv)
    args.procs = args.procs or (200 if args.quick else 2000)
    args.n = args.n or (10_000 if args.quick else 100_000)
    args.logs = args.logs or (200 if args.quick else 2000)
    parts = args.parts or ["stats", "cold-query"]
    if not set(parts) <= {"stats", "cold-query"}:
        parser.error(f"unknown part(s): {', '.join(sorted(set(parts) - {'stats', 'cold-query'}))}")
    if min(args.procs, args.n, args.logs, args.reps, args.jobs) < 1 or not 0 < args.failed < args.n:
        parser.error("sizes must be at least 1, and --failed below --n")

    base = Path(tempfile.mkdtemp(prefix="agl-compaction-", dir=args.dir))
    load = os.getloadavg()
    print(
        f"store_fs {__version__} on {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; stores under {base}",
        flush=True,
    )
    out: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if "stats" in parts:
            out["stats"] = part_stats(args, base)
        if "cold-query" in parts:
            out["cold_query"] = part_query(args, base)
    finally:
        if args.keep:
            print(f"stores kept under {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    took = time.perf_counter() - started
    print(f"\ntotal {took:.0f} s; load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        payload = {
            "meta": {
                "store_fs": __version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "dir": args.dir or tempfile.gettempdir(),
                "reps": args.reps,
                "quick": args.quick,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "loadavg_end": load,
            },
            **out,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
