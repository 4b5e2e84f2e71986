"""Real multi-process tests: many interpreters share one store directory, no server, no lock.

Children are started with the "spawn" method (a fresh interpreter each, as separate
runner processes would be) and run the bodies in ``tests/mp_workers.py``. They report
through files, so a child that is SIGKILLed leaves what it reported before it died.
Every test has a bounded deadline and kills and joins its children in a ``finally``.

The default variants are sized to finish in well under a minute each on two cores;
the ``stress`` variants (``pytest -m stress``) are bigger and slower.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mp_workers
import pytest

from store_fs import EnqueueRolloutRequest, FileStore, RolloutConfig

SPAWN = multiprocessing.get_context("spawn")


# -- helpers ------------------------------------------------------------------------
class Children:
    """Started child processes; see :func:`children`."""

    def __init__(self) -> None:
        self.procs: list[Any] = []

    def start(self, target: Callable[..., None], *args: Any) -> Any:
        proc = SPAWN.Process(target=target, args=args, daemon=True)
        proc.start()
        self.procs.append(proc)
        return proc

    def join(self, deadline: float) -> None:
        """Wait for every child until ``deadline`` (time.monotonic()); fail if any is late or failed."""
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        late = [p.pid for p in self.procs if p.is_alive()]
        assert not late, f"children {late} still running at the deadline"


@contextmanager
def children() -> Iterator[Children]:
    """Children that are killed (if still alive) and joined however the test ends."""
    kids = Children()
    try:
        yield kids
    finally:
        for proc in kids.procs:
            if proc.is_alive():
                proc.kill()
        for proc in kids.procs:
            proc.join(10)


def read_result(path: Path) -> dict[str, Any]:
    assert path.exists(), f"child wrote no result to {path.name}"
    result: dict[str, Any] = json.loads(path.read_text())
    assert "error" not in result, f"child failed:\n{result['error']}"
    return result


def queue_names(store: FileStore) -> dict[str, list[str]]:
    layout = store.layout
    dirs = {"pending": layout.pending, "claimed": layout.claimed, "done": layout.done}
    dirs["expired"] = layout.expired
    return {k: sorted(n for n in os.listdir(d) if not n.startswith(".")) for k, d in dirs.items()}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- a. many processes drain one queue ----------------------------------------------
def _drain(tmp_path: Path, n_rollouts: int, n_procs: int, timeout: float) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    try:
        requests = [EnqueueRolloutRequest(input={"i": i}) for i in range(n_rollouts)]
        enqueued = [r.rollout_id for r in run(store.enqueue_many_rollouts(requests))]
        assert len(set(enqueued)) == n_rollouts

        go = SPAWN.Event()
        outs = [tmp_path / f"drain-{i}.json" for i in range(n_procs)]
        with children() as kids:
            for i, out in enumerate(outs):
                kids.start(mp_workers.drain_worker, str(root), str(out), i, go)
            time.sleep(0.2)
            started = time.monotonic()
            go.set()
            kids.join(started + timeout)
            wall = time.monotonic() - started
            assert [p.exitcode for p in kids.procs] == [0] * n_procs
        results = [read_result(out) for out in outs]
        print(
            f"\n{n_procs} processes drained {n_rollouts} rollouts in {wall:.1f} s "
            f"({n_rollouts / wall:.0f} rollouts/s; per child {[len(r['claims']) for r in results]})"
        )

        claims = [tuple(c) for r in results for c in r["claims"]]
        per_rollout = Counter(rid for rid, _, _ in claims)
        twice = {rid: n for rid, n in per_rollout.items() if n > 1}
        assert not twice, f"{len(twice)} rollouts claimed more than once, e.g. {list(twice.items())[:5]}"
        lost = set(enqueued) - set(per_rollout)
        assert not lost, f"{len(lost)} rollouts never claimed, e.g. {sorted(lost)[:5]}"
        assert set(per_rollout) == set(enqueued)
        assert all(seq == 1 for _, _, seq in claims)
        claimed_attempt = {rid: aid for rid, aid, _ in claims}

        fresh = FileStore(root, create=False)
        rollouts = run(fresh.query_rollouts())
        assert rollouts.total == n_rollouts
        not_done = [(r.rollout_id, r.status) for r in rollouts if r.status != "succeeded"]
        assert not not_done, f"{len(not_done)} rollouts not succeeded, e.g. {not_done[:5]}"

        async def attempts_of_all() -> list[Any]:
            return [await fresh.query_attempts(rid) for rid in enqueued]

        for rid, attempts in zip(enqueued, run(attempts_of_all()), strict=True):
            assert [(a.attempt_id, a.status) for a in attempts] == [(claimed_attempt[rid], "succeeded")]
        assert queue_names(fresh) == {"pending": [], "claimed": [], "done": [], "expired": []}
        fresh.close()
    finally:
        store.close()


def test_eight_processes_drain_2000_rollouts_each_exactly_once(tmp_path: Path) -> None:
    _drain(tmp_path, n_rollouts=2000, n_procs=8, timeout=100)


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_stress_sixteen_processes_drain_6000_rollouts(tmp_path: Path) -> None:
    _drain(tmp_path, n_rollouts=6000, n_procs=16, timeout=840)


# -- b. SIGKILL mid-attempt, then concurrent reapers --------------------------------
def _killed_and_retried(tmp_path: Path, n_doomed: int, per_child: int, n_reapers: int) -> None:
    root = tmp_path / "store"
    unresponsive = 1.0
    config = RolloutConfig(
        unresponsive_seconds=unresponsive, retry_condition=["unresponsive"], max_attempts=2
    )
    store = FileStore(root)
    try:
        n_rollouts = n_doomed * per_child
        requests = [EnqueueRolloutRequest(input={"i": i}, config=config) for i in range(n_rollouts)]
        enqueued = {r.rollout_id for r in run(store.enqueue_many_rollouts(requests))}

        claim_files = [tmp_path / f"claims-{i}.jsonl" for i in range(n_doomed)]
        with children() as kids:
            # Every other child adds spans first (attempt "running"); the rest stay "preparing".
            doomed = [
                kids.start(mp_workers.claim_and_hang, str(root), str(path), per_child, 3 * (i % 2))
                for i, path in enumerate(claim_files)
            ]
            deadline = time.monotonic() + 60
            lines: list[list[dict[str, Any]]] = [[] for _ in doomed]
            while not all(any(x.get("ready") for x in got) for got in lines):
                assert time.monotonic() < deadline, "doomed children never got ready"
                for i, (proc, path) in enumerate(zip(doomed, claim_files, strict=True)):
                    error = Path(str(path) + ".error")
                    assert not error.exists(), json.loads(error.read_text())["error"]
                    assert proc.is_alive(), f"doomed child {i} exited with {proc.exitcode}"
                    if path.exists():
                        lines[i] = [json.loads(x) for x in path.read_text().splitlines()]
                time.sleep(0.05)
            for proc in doomed:
                os.kill(proc.pid, signal.SIGKILL)
            for proc in doomed:
                proc.join(10)
                assert proc.exitcode == -signal.SIGKILL
        killed = {x["rollout_id"]: x["attempt_id"] for got in lines for x in got if "rollout_id" in x}
        assert set(killed) == enqueued, "the doomed children should have claimed every rollout"

        # Their attempts are still live: nobody has judged them yet.
        before = queue_names(store)
        assert len(before["claimed"]) == n_rollouts
        assert not before["pending"]

        go = SPAWN.Event()
        reaper_outs = [tmp_path / f"reaper-{i}.json" for i in range(n_reapers)]
        with children() as kids:
            for out in reaper_outs:
                kids.start(mp_workers.reap_loop, str(root), str(out), unresponsive + 3.0, 0.2, go)
            time.sleep(0.2)
            go.set()
            kids.join(time.monotonic() + 60)
            assert [p.exitcode for p in kids.procs] == [0] * n_reapers
        reaped = [read_result(out) for out in reaper_outs]
        assert all(r["scans"] > 1 for r in reaped), reaped
        # Each dead attempt was expired by exactly one of the concurrent reapers.
        assert sum(r["expired"] for r in reaped) == n_rollouts, reaped

        drainer = FileStore(root, create=False, scan_debounce_seconds=0)
        try:

            async def drain() -> list[tuple[str, str, int]]:
                got = []
                while (attempted := await drainer.dequeue_rollout(worker_id="survivor")) is not None:
                    got.append(
                        (attempted.rollout_id, attempted.attempt.attempt_id, attempted.attempt.sequence_id)
                    )
                    await drainer.update_attempt(
                        attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded"
                    )
                    assert len(got) <= 2 * n_rollouts, "the queue never runs dry"
                return got

            retried = run(drain())
            assert Counter(rid for rid, _, _ in retried) == Counter(enqueued), (
                "each rollout retried exactly once"
            )
            assert all(seq == 2 for _, _, seq in retried)
            second = {rid: aid for rid, aid, _ in retried}

            # Reaping again (everything is finished now) changes nothing.
            assert drainer.reap() == 0

            async def final() -> list[tuple[Any, Any]]:
                return [
                    (await drainer.get_rollout_by_id(rid), await drainer.query_attempts(rid))
                    for rid in sorted(enqueued)
                ]

            for rollout, attempts in run(final()):
                rid = rollout.rollout_id
                assert rollout.status == "succeeded", rid
                assert [(a.attempt_id, a.sequence_id, a.status) for a in attempts] == [
                    (killed[rid], 1, "unresponsive"),
                    (second[rid], 2, "succeeded"),
                ], rid
            assert queue_names(drainer) == {"pending": [], "claimed": [], "done": [], "expired": []}
        finally:
            drainer.close()
    finally:
        store.close()


def test_sigkilled_attempts_become_unresponsive_and_are_retried_once(tmp_path: Path) -> None:
    _killed_and_retried(tmp_path, n_doomed=3, per_child=2, n_reapers=3)


@pytest.mark.stress
@pytest.mark.timeout(300)
def test_stress_sigkilled_attempts_with_many_reapers(tmp_path: Path) -> None:
    _killed_and_retried(tmp_path, n_doomed=6, per_child=10, n_reapers=6)


# -- c. readers never see a partial file --------------------------------------------
def _no_partial_reads(tmp_path: Path, seconds: float) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    try:
        attempted = run(store.start_rollout(input={"task": "rewrite me"}))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        go = SPAWN.Event()
        writer_out, reader_out = tmp_path / "writer.json", tmp_path / "reader.json"
        with children() as kids:
            kids.start(mp_workers.rewrite_loop, str(root), rid, aid, str(writer_out), seconds, go)
            kids.start(mp_workers.read_loop, str(root), rid, aid, str(reader_out), seconds, go)
            time.sleep(0.2)
            go.set()
            kids.join(time.monotonic() + seconds + 60)
            assert [p.exitcode for p in kids.procs] == [0, 0]
        written, read = read_result(writer_out), read_result(reader_out)
        print(f"\nwriter: {written}; reader: {read['counts']}")
        assert read["errors"] == [], "\n".join(read["errors"][:3])
        assert written["updates"] > 10
        assert written["spans"] > 30
        assert min(read["counts"].values()) > 5, read["counts"]

        fresh = FileStore(root, create=False)
        spans = run(fresh.query_spans(rid))
        assert [s.sequence_id for s in spans] == list(range(1, written["spans"] + 1))
        history = fresh.layout.history_dir(rid)
        newest = max(n for n in os.listdir(history) if not n.startswith("."))
        assert fresh.layout.mirror_file(rid).read_bytes() == (history / newest).read_bytes()
        assert json.loads((history / newest).read_text())["metadata"]["i"] == written["updates"]
        fresh.close()
    finally:
        store.close()


def test_readers_never_see_partial_files(tmp_path: Path) -> None:
    _no_partial_reads(tmp_path, seconds=4.0)


@pytest.mark.stress
@pytest.mark.timeout(300)
def test_stress_readers_never_see_partial_files(tmp_path: Path) -> None:
    _no_partial_reads(tmp_path, seconds=30.0)


# -- d. span sequence ids from several processes ------------------------------------
def _sequence_ids(tmp_path: Path, per_proc: int, batches: list[int]) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    try:
        attempted = run(store.start_rollout(input=None))
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        # No counter yet: the children race to make it with their first allocations.
        assert not store.layout.span_seq_dir(rid).exists()
        go = SPAWN.Event()
        outs = [tmp_path / f"seq-{i}.json" for i in range(len(batches))]
        with children() as kids:
            for out, batch in zip(outs, batches, strict=True):
                kids.start(
                    mp_workers.allocate_sequence_ids, str(root), rid, aid, str(out), per_proc, batch, go
                )
            time.sleep(0.2)
            go.set()
            kids.join(time.monotonic() + 90)
            assert [p.exitcode for p in kids.procs] == [0] * len(batches)
        got = [read_result(out)["ids"] for out in outs]
        for ids in got:
            assert len(ids) == per_proc
            assert ids == sorted(ids)  # each process sees its own numbers increase
        everything = sorted(i for ids in got for i in ids)
        total = per_proc * len(batches)
        dupes = [i for i, n in Counter(everything).items() if n > 1]
        assert not dupes, f"sequence ids issued twice: {dupes[:10]}"
        assert everything == list(range(1, total + 1))
        assert run(store.get_next_span_sequence_id(rid, aid)) == total + 1
    finally:
        store.close()


def test_span_sequence_ids_from_four_processes_are_distinct_and_dense(tmp_path: Path) -> None:
    _sequence_ids(tmp_path, per_proc=250, batches=[1, 1, 1, 1])


def test_span_sequence_ids_single_and_batched_allocations_mixed(tmp_path: Path) -> None:
    _sequence_ids(tmp_path, per_proc=210, batches=[1, 1, 7, 3])


@pytest.mark.stress
@pytest.mark.timeout(600)
def test_stress_span_sequence_ids_from_eight_processes(tmp_path: Path) -> None:
    _sequence_ids(tmp_path, per_proc=2500, batches=[1, 1, 1, 1, 1, 1, 5, 2])
