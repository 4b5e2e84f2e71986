"""Log compaction (issue 18): the per-writer logs of exited processes (rollout index, change feed,
worker logs) merged into segments, with real processes.

a. Many one-shot ``agl`` processes on one store leave a log file per kind per process; after
   compaction (explicit ``agl compact``, or automatic: a reader that meets more than 32 index
   logs) the store holds at most 64 log files and a full export is identical before and after.
b. Compaction concurrent with short-lived writer processes, a follower (a datasets ``Cursor`` and
   an ``EventReader``), a compactor looping and compactors SIGKILLed at random moments: nothing
   is lost or seen twice.
c. Maintenance never overlaps: while one process holds the lock, ``agl compact``, ``agl check
   --fix`` and ``agl prune`` exit 6 with one line; a SIGKILLed holder does not block the next.

Children run ``tests/compaction_workers.py`` (or the ``agl`` command) and are killed in a
``finally`` however a test ends. The stress variants (``pytest -m stress``) are the full-size runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl, Result, assert_error

from store_fs import FileStore
from store_fs._disk.change_feed import EVENT_LOGS
from store_fs._disk.log_segments import SEGMENT_MARK, scan
from store_fs._disk.rollout_index import INDEX_LOGS
from store_fs._disk.worker_logs import WORKER_LOGS
from store_fs.errors import ExitCode
from store_fs.live import EventReader

WORKERS = Path(__file__).with_name("compaction_workers.py")
#: The per-writer logs (and their segments) that compaction bounds.
LOG_GLOBS = ("index/rollouts/*.jsonl", "events/*.jsonl", "workers/*/log*.jsonl")
MAX_LOG_FILES = 64
BUSY = int(ExitCode.CONFLICT)  # 6: the maintenance lock is held


# -- helpers --------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def log_files(root: Path) -> list[Path]:
    return sorted(p for pattern in LOG_GLOBS for p in root.glob(pattern) if not p.name.startswith("."))


def plain_logs(root: Path) -> list[Path]:
    """Per-writer logs not yet compacted into a segment."""
    return [p for p in log_files(root) if SEGMENT_MARK not in p.name]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def dead_writers_logs(root: Path) -> list[Path]:
    """Plain logs whose writer (``<host>-<pid>``, this host) has exited: compaction takes them all."""
    out = []
    for path in plain_logs(root):
        stem = path.name[: -len(".jsonl")]
        writer = stem[len("log.") :] if stem.startswith("log.") else stem
        pid = writer.partition(".")[0].rpartition("-")[2]  # <host>-<pid>[.<instance>]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            out.append(path)
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def started(
    *args: str, stdout: int | None = None, stdin: int | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``python compaction_workers.py ARGS``, killed (if still running) and reaped however the test ends."""
    command = [sys.executable, str(WORKERS), *args]
    proc = subprocess.Popen(command, stdin=stdin, stdout=stdout, text=True, env=_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def held_lock(root: Path) -> Iterator[subprocess.Popen[str]]:
    """A process holding the store's maintenance lock (and sleeping) for the block."""
    with started("hold", str(root), stdout=subprocess.PIPE) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        yield holder


def parallel(calls: list[Callable[[], Any]], workers: int = 3) -> list[Any]:
    """Run ``calls`` on a few threads (each typically runs one agl process); their results in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


# -- a. a thousand one-shot agl processes ------------------------------------------------------


def _lane(agl: Agl, lane: int, rounds: int) -> int:
    """One runner's life as a shell loop of one-shot agl calls; returns the number of calls."""
    calls = 0
    for k in range(rounds):
        agl.ok("enqueue", json.dumps({"lane": lane, "k": k}))
        attempted = agl.dequeue(f"w{lane}")
        rid, aid = attempted["rollout_id"], attempted["attempt"]["attempt_id"]
        spans = "".join(
            json.dumps({"name": "step", "attributes": {"lane": lane, "k": k, "j": j}}) + "\n"
            for j in range(2)
        )
        agl.ok("spans", "add", rid, aid, input=spans)
        agl.ok("reward", rid, str(0.25 * (k % 4)), "--attempt", aid)
        if _fails(lane, k):
            agl.ok("fail", rid, aid, "--error", "boom")
        else:
            agl.ok("complete", rid, aid)
        calls += 5
    return calls


def _fails(lane: int, k: int) -> bool:
    """Whether round ``k`` of lane ``lane`` fails its attempt (a third of them, from round 1 of lane 1)."""
    return (lane + k) % 3 == 2


def full_export(agl: Agl) -> dict[str, Any]:
    """What the store holds, as the CLI shows it: rollouts with attempts and spans, the change
    feed (with each event's writer), the workers and the counts (less the reader's uptime)."""
    exported, events, workers, stats = parallel(
        [
            lambda: agl.ok("export", "--all").lines(),
            lambda: agl.ok("events").lines(),
            lambda: agl.ok("workers", "list").lines(),
            lambda: agl.ok("stats").json(),
        ]
    )
    stats.pop("uptime")
    return {
        "rollouts": sorted(exported, key=lambda r: r["rollout_id"]),
        "events": sorted(events, key=lambda e: (e["time"], e["rollout_id"], e["status"], e["writer"])),
        "workers": sorted(workers, key=lambda w: w["worker_id"]),
        "stats": stats,
    }


def index_logs(root: Path) -> list[Path]:
    return [p for p in plain_logs(root) if p.parent.name == "rollouts"]


def _one_shot_store(tmp_path: Path, lanes: int, rounds: int, over: int) -> tuple[Agl, int, int]:
    """A store written by ``lanes`` concurrent shell loops of ``rounds`` rounds of one-shot agl
    calls each, plus rollouts left queued: one, or as many as it takes for more than ``over``
    per-writer index logs. Returns the agl runner, the number of calls and of queued rollouts."""
    root = tmp_path / "s"
    FileStore(root).close()
    agl = Agl(root, tmp_path)
    lane_calls: list[Callable[[], int]] = [partial(_lane, agl, lane, rounds) for lane in range(lanes)]
    calls = sum(parallel(lane_calls, workers=lanes))
    queued = 0
    while queued == 0 or len(index_logs(root)) <= over:
        agl.ok("enqueue", json.dumps({"left": "queued", "n": queued}))
        queued += 1
    return agl, calls + queued, queued


def _check_export(export: dict[str, Any], lanes: int, rounds: int, queued: int) -> None:
    """The export says what the calls did (so comparing two exports compares something)."""
    finished = lanes * rounds
    rollouts = export["rollouts"]
    assert len(rollouts) == finished + queued
    statuses = Counter(r["status"] for r in rollouts)
    failed = sum(_fails(lane, k) for lane in range(lanes) for k in range(rounds))
    assert statuses == Counter({"succeeded": finished - failed, "failed": failed, "queuing": queued})
    for r in rollouts:
        if r["status"] != "queuing":
            assert [len(r["attempts"]), len(r["spans"])] == [1, 3], r["rollout_id"]
    # queuing, preparing, running, then succeeded or failed; the queued ones' queuing
    assert len(export["events"]) == 4 * finished + queued
    assert len({e["writer"] for e in export["events"]}) > lanes  # one writer per process
    idle = [(f"w{i}", "idle") for i in range(lanes)]
    assert [(w["worker_id"], w["status"]) for w in export["workers"]] == idle
    assert export["stats"]["total_spans"] == 3 * finished


def _one_shot_test(tmp_path: Path, lanes: int, rounds: int, automatic: bool) -> None:
    started_at = time.monotonic()
    # Automatic compaction starts when a reader meets more than 32 index logs; the one-shot calls'
    # own reads may have compacted meanwhile, so as many more enqueues as that takes are made.
    agl, calls, queued = _one_shot_store(tmp_path, lanes, rounds, over=32 if automatic else 0)
    root = agl.store
    written = time.monotonic() - started_at
    files_before = log_files(root)
    plain_before = plain_logs(root)
    # Readers are not blocked by a held maintenance lock, and do not compact while it is held.
    with held_lock(root):
        before = full_export(agl)
        assert log_files(root) == files_before
    _check_export(before, lanes, rounds, queued)
    if automatic:
        # A reader that meets more than 32 index logs compacts by itself (under the lock).
        assert len(index_logs(root)) > 32
        agl.ok("rollouts", "list", "--status", "succeeded")
        after_files = log_files(root)
        assert dead_writers_logs(root) == []  # it took every log of an exited writer
        assert len(after_files) <= MAX_LOG_FILES, f"{len(after_files)} log files after automatic compaction"
        assert [p for p in after_files if SEGMENT_MARK in p.name]
        assert full_export(agl) == before
    summary = agl.ok("compact").json()
    assert summary["directories"] == 2 + lanes  # index, events, one per worker
    if not automatic:
        # Every log was of an exited process: all were taken, and removed once copied.
        assert summary["absorbed"] >= len(plain_before) > 0
        assert summary["removed"] == summary["absorbed"]
        assert summary["segments"] >= 2 + lanes
    after_files = log_files(root)
    assert len(after_files) <= MAX_LOG_FILES
    assert dead_writers_logs(root) == []
    after = full_export(agl)
    assert after == before
    res = agl("check")
    assert res.code == 0, str(res)
    print(
        f"\n{calls} one-shot agl calls in {written:.1f} s; log files {len(files_before)} "
        f"({len(plain_before)} per-writer) -> {len(after_files)}; total {time.monotonic() - started_at:.1f} s"
    )


@pytest.mark.timeout(300)  # about 15 s on two idle cores; the margin is for busy machines
def test_one_shot_agl_calls_then_agl_compact_keep_the_export(tmp_path: Path) -> None:
    _one_shot_test(tmp_path, lanes=2, rounds=2, automatic=False)


@pytest.mark.stress
@pytest.mark.timeout(3600)  # 1,000 agl processes: 5-15 minutes on two cores
def test_a_thousand_one_shot_agl_calls_then_automatic_compaction(tmp_path: Path) -> None:
    _one_shot_test(tmp_path, lanes=3, rounds=67, automatic=True)


# -- b. compaction concurrent with writers and readers, and SIGKILLed ------------------------


def interrupted_compactions(root: Path) -> int:
    """Traces of compactions killed midway: a segment's temporary file, or a log that a segment
    holds whole but that is still there (killed between publishing and removing)."""
    found = 0
    for directory, kind in [(root / "index" / "rollouts", INDEX_LOGS), (root / "events", EVENT_LOGS)] + [
        (d, WORKER_LOGS) for d in (root / "workers").glob("*")
    ]:
        listing = scan(directory, kind)
        found += sum(
            log.segment is None and listing.covered.get((log.name, log.ino), -1) >= log.size
            for log in listing.files.values()
        )
        found += sum(1 for p in directory.glob(".*.tmp"))
    return found


class Victims:
    """Compactors started one after another and SIGKILLed 0-50 ms after they start compacting
    (which they do once logs of exited writers are there, so that the kills land in real work)."""

    def __init__(self, root: Path, out: Path, seed: int) -> None:
        self.root = root
        self.out = out
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0
        self.interrupted = 0  # kills that left an interrupted compaction behind
        self.early_exits: list[int | None] = []
        self.failure: BaseException | None = None
        self.current: subprocess.Popen[str] | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                out = self.out / f"victim{self.kills}.jsonl"
                pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
                with started("victim", str(self.root), str(out), **pipes) as proc:
                    self.current = proc
                    assert proc.stdin is not None
                    assert proc.stdout is not None
                    if proc.stdout.readline().strip() != "ready":
                        self.early_exits.append(proc.wait(10))
                        continue
                    work = time.monotonic() + 1.0
                    while not dead_writers_logs(self.root) and time.monotonic() < work:
                        time.sleep(0.005)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    time.sleep(self.rng.uniform(0.0, 0.05))
                    if proc.poll() is not None:
                        self.early_exits.append(proc.returncode)
                        continue
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    self.kills += 1
                    self.interrupted += interrupted_compactions(self.root) > 0
        except BaseException as err:  # reported by the test
            self.failure = err

    def __enter__(self) -> Victims:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        current = self.current
        if current is not None and current.poll() is None:
            current.kill()
            current.wait(10)


def _history_transitions(store: FileStore, rollout_id: str) -> list[tuple[str, str, str | None]]:
    """The status changes a rollout's revisions imply: (rollout_id, status, previous)."""
    out: list[tuple[str, str, str | None]] = []
    previous: str | None = None
    for path in sorted(store.layout.history_dir(rollout_id).glob("*.json")):
        status = json.loads(path.read_bytes())["status"]
        if status != previous:
            out.append((rollout_id, status, previous))
        previous = status
    return out


def _event_key(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["rollout_id"], e["status"], e["previous"], e["time"], e["writer"])


def _concurrent_test(tmp_path: Path, seconds: float, per_writer: int, at_once: int, strict: bool) -> None:
    root = tmp_path / "s"
    FileStore(root).close()
    stop = tmp_path / "stop"
    follower_out, compactor_out = tmp_path / "follower.jsonl", tmp_path / "compactor.jsonl"
    writer_outs: list[Path] = []
    writers: list[subprocess.Popen[bytes]] = []
    started_at = time.monotonic()
    with (
        started("follower", str(root), str(follower_out), str(stop)) as follower,
        started("compactor", str(root), str(compactor_out), str(stop)) as compactor,
    ):
        try:
            with Victims(root, tmp_path, seed=int(started_at)) as victims:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if sum(w.poll() is None for w in writers) < at_once:
                        n = len(writers)
                        out = tmp_path / f"writer{n}.jsonl"
                        writer_outs.append(out)
                        command = [sys.executable, str(WORKERS), "writer", str(root), str(out)]
                        command += [str(per_writer), f"w{n % 4}", str(n)]
                        writers.append(subprocess.Popen(command, env=_env()))
                    time.sleep(0.02)
                for w in writers:
                    assert w.wait(60) == 0
            assert victims.failure is None, victims.failure
            stop.touch()
            assert follower.wait(60) == 0
            assert compactor.wait(60) == 0
        finally:
            for w in writers:
                if w.poll() is None:
                    w.kill()
                w.wait(10)
    wall = time.monotonic() - started_at

    # What the writers did.
    records = [e for out in writer_outs for e in _lines(out)]
    assert [e["error"] for e in records if e["event"] == "error"] == []
    enqueued = [e["rollout_id"] for e in records if e["event"] == "enqueued"]
    finished = {e["rollout_id"]: e["status"] for e in records if e["event"] == "finished"}
    dequeued = [e["rollout_id"] for e in records if e["event"] == "dequeued"]
    assert len(set(enqueued)) == len(enqueued)
    assert set(finished) <= set(enqueued)
    assert sorted(dequeued) == sorted(finished)  # each claimed once, each claim finished

    # The compactors had work while the others ran.
    totals = [e for e in _lines(compactor_out) if e["event"] == "totals"]
    assert [e for e in _lines(compactor_out) if e["event"] == "error"] == []
    assert len(totals) == 1
    assert totals[0]["runs"] > 0, totals
    assert totals[0]["absorbed"] > 0, totals
    assert victims.kills > 0
    assert victims.early_exits == []  # killed, never failed
    victim_logs = [_lines(tmp_path / f"victim{i}.jsonl") for i in range(victims.kills)]
    killed_in_compaction = sum(bool(log) and log[-1]["event"] == "begin" for log in victim_logs)
    victims_absorbed = sum(e.get("absorbed", 0) for log in victim_logs for e in log)
    assert victims_absorbed > 0  # they were killed among real compactions
    if strict:
        assert victims.interrupted > 0  # some were killed midway

    # The follower reported each finished rollout once and saw each event once.
    seen = _lines(follower_out)
    assert [e["error"] for e in seen if e["event"] == "error"] == []
    assert seen
    assert seen[-1]["event"] == "done"
    reported = Counter(rid for e in seen if e["event"] == "finished" for rid in e["rollout_ids"])
    assert [rid for rid, n in reported.items() if n > 1] == []
    assert set(reported) == set(finished)
    followed = Counter(_event_key(ev) for e in seen if e["event"] == "events" for ev in e["events"])

    store = FileStore(root, create=False)
    fresh = Counter(_event_key(e) for e in EventReader(store.layout.events).read_new())
    assert followed == fresh
    implied = Counter(t for rid in enqueued for t in _history_transitions(store, rid))
    assert Counter((rid, status, previous) for rid, status, previous, _, _ in fresh.elements()) == implied
    assert sum(implied.values()) >= len(enqueued) + 3 * len(finished)

    # Queries and counts agree with what the writers did.
    rollouts = asyncio.run(store.query_rollouts())
    assert sorted(r.rollout_id for r in rollouts) == sorted(enqueued)
    expected = {rid: finished.get(rid, "queuing") for rid in enqueued}
    assert {r.rollout_id: r.status for r in rollouts} == expected
    for status in ("succeeded", "failed"):
        listed = asyncio.run(store.query_rollouts(status_in=[status]))
        assert sorted(r.rollout_id for r in listed) == sorted(r for r, s in finished.items() if s == status)
    stats = asyncio.run(store.statistics())
    assert (stats["total_rollouts"], stats["total_attempts"], stats["total_spans"]) == (
        len(enqueued),
        len(finished),
        len(finished),
    )
    used = sorted({f"w{n % 4}" for n in range(len(writers))})
    workers = asyncio.run(store.query_workers())
    assert sorted((w.worker_id, w.status) for w in workers) == [(w, "idle") for w in used]

    # One more compaction leaves no log of an exited writer, and changes nothing read.
    store.compact()
    assert dead_writers_logs(root) == []
    assert len(log_files(root)) <= MAX_LOG_FILES
    assert Counter(_event_key(e) for e in EventReader(store.layout.events).read_new()) == fresh
    res = Agl(root, tmp_path)("check")
    assert res.code == 0, str(res)
    store.close()
    print(
        f"\n{len(writers)} writers, {len(enqueued)} rollouts ({len(finished)} finished), "
        f"{sum(fresh.values())} events in {wall:.1f} s; compactor {totals[0]}; "
        f"{victims.kills} compactors killed ({killed_in_compaction} in a compaction; "
        f"{victims_absorbed} logs absorbed by them; {victims.interrupted} left a compaction half done)"
    )


def test_compaction_alongside_writers_a_follower_and_killed_compactors(tmp_path: Path) -> None:
    _concurrent_test(tmp_path, seconds=3.0, per_writer=3, at_once=2, strict=False)


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_compaction_alongside_writers_a_follower_and_killed_compactors_long(tmp_path: Path) -> None:
    _concurrent_test(tmp_path, seconds=60.0, per_writer=4, at_once=3, strict=True)


# -- c. one maintenance process at a time ------------------------------------------------------


def _wait_until_refused(proc: subprocess.Popen[str]) -> None:
    """Until ``agl -v`` has tried the maintenance lock and found it held (filelock's debug log)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "not acquired" in line and "maintenance.lock" in line:
            return
    raise AssertionError(f"agl exited ({proc.wait(10)}) without waiting for the lock")


def test_maintenance_commands_wait_for_none_and_a_killed_holder_blocks_nothing(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FileStore(root).close()
    written = tmp_path / "writer.jsonl"
    with started("writer", str(root), str(written), "3", "w1", "0") as writer:
        assert writer.wait(60) == 0
    finished = {e["rollout_id"]: e["status"] for e in _lines(written) if e["event"] == "finished"}
    assert sorted(finished.values()) == ["failed", "succeeded", "succeeded"]
    agl = Agl(root, tmp_path)
    files = log_files(root)
    assert len(files) == 3  # index, events, worker log of the exited writer
    with held_lock(root) as holder:
        refused: list[Result] = parallel(
            [
                lambda: agl("compact"),
                lambda: agl("check", "--fix"),
                lambda: agl("prune", "--status", "succeeded"),
            ]
        )
        for res in refused:
            assert_error(res, BUSY, "maintenance")
        assert log_files(root) == files  # nothing was compacted
        listed = agl.ok("rollouts", "list").lines()  # nor pruned
        assert {r["rollout_id"]: r["status"] for r in listed} == finished
        # A compaction told to wait goes ahead once the holder is SIGKILLed.
        waiting = agl.popen("--verbose", "compact", "--wait", "60")
        try:
            _wait_until_refused(waiting)
            assert waiting.poll() is None  # waiting for the lock
            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait(10)
    assert waiting.returncode == 0, err
    summary = json.loads(out)
    assert summary["absorbed"] == len(files)
    assert summary["segments"] == 3
    # The next ones are not blocked either.
    res = agl("check", "--fix")
    assert res.code == 0, str(res)
    assert agl.ok("compact").json()["absorbed"] == 0


# -- a dead writer's torn last line ---------------------------------------------------------------


def test_a_torn_last_line_of_a_dead_writer_duplicates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FileStore(root).close()
    with (
        started("writer", str(root), str(tmp_path / "w0.jsonl"), "1", "w0", "0") as w0,
        started("writer", str(root), str(tmp_path / "w1.jsonl"), "1", "w1", "0") as w1,
    ):
        assert [w0.wait(60), w1.wait(60)] == [0, 0]
    first = sorted((root / "events").glob("*.jsonl"))[0]
    # The first log's writer died in the middle of a long line, longer than the next log's first:
    # its cover in the segment runs past its copy (the torn bytes are quarantined, not copied),
    # which must not make readers take the next log's first line as the torn log's.
    torn = json.dumps({"rollout_id": "ro-000000000000", "status": "running", "pad": "x" * 200})
    with first.open("a") as f:
        f.write(torn)
    before = Counter(_event_key(e) for e in EventReader(root / "events").read_new())
    assert sum(before.values()) == 2 * 4
    FileStore(root, create=False).compact()
    assert not plain_logs(root)
    after = Counter(_event_key(e) for e in EventReader(root / "events").read_new())
    assert after == before
    assert len(list((root / "quarantine").rglob("*"))) > 1  # the torn bytes were kept aside
