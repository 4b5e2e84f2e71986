"""Worker logs (store_fs/_disk/worker_logs.py): per-process change logs folded by time.

The reference model applies each change to a dict in call order; the store must
fold its logs (across writers, through compactions) to the same state.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mp_worker_logs import churn_worker

from store_fs import FakeClock, init_store
from store_fs._disk import worker_logs as workers
from store_fs._disk.context import Context
from store_fs._disk.layout import Layout
from store_fs._disk.worker_logs import WorkerStore, fold_lines
from store_fs.models import Attempt, Worker


@dataclass
class _TaggedContext(Context):
    """A context whose writer tag the test sets, to play several processes in one."""

    tag: str = "host-1"

    @property
    def writer(self) -> str:
        return self.tag


def _store(root: Path, clock: FakeClock) -> tuple[WorkerStore, _TaggedContext]:
    init_store(root)
    ctx = _TaggedContext(layout=Layout(root), clock=clock)
    return WorkerStore(ctx), ctx


def _attempt(status: str, n: int) -> Attempt:
    return Attempt(
        rollout_id=f"ro-{n:012x}",
        attempt_id=f"at-{n:08x}",
        sequence_id=1,
        start_time=0.0,
        worker_id="w",
        status="running" if status == "busy" else status,
    )


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["busy", "succeeded", "timeout", "idle", "beat"]),
        st.sampled_from(["host-1", "host-2", "other-7"]),
        st.booleans(),
        st.floats(min_value=0.001, max_value=5.0),
    ),
    max_size=40,
)


def _reference(state: dict[str, Any], op: str, n: int, flag: bool, now: float) -> None:
    """Upstream's worker rules, applied in call order."""
    if op == "beat":
        state["last_heartbeat_time"] = now
        if flag:
            state["heartbeat_stats"] = {"n": n}
    elif op == "idle":
        if state.get("status") != "idle":
            state["last_idle_time"] = now
        state.update(status="idle", last_dequeue_time=now)
    else:
        if flag:
            state["last_dequeue_time"] = now
        if op == "busy":
            state.update(status="busy", last_busy_time=now)
            state.update(current_rollout_id=f"ro-{n:012x}", current_attempt_id=f"at-{n:08x}")
        else:
            state.update(status="idle" if op == "succeeded" else "unknown", last_idle_time=now)
            state.update(current_rollout_id=None, current_attempt_id=None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS, compact_at=st.sampled_from([64, 400, 1 << 20]))
def test_fold_matches_the_rules_across_writers_and_compactions(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, bool, float]], compact_at: int
) -> None:
    root = tmp_path_factory.mktemp("w") / "store"
    clock = FakeClock()
    store, ctx = _store(root, clock)
    expected: dict[str, Any] = {}
    original = workers.COMPACT_BYTES
    workers.COMPACT_BYTES = compact_at  # type: ignore[misc]
    try:
        for n, (op, tag, flag, step) in enumerate(ops):
            clock.advance(step)
            ctx.tag = tag
            now = clock.time()
            if op == "beat":
                store.heartbeat("w", {"n": n} if flag else None)
            elif op == "idle":
                store.mark_idle("w")
            else:
                store.sync(_attempt(op, n), dequeue=flag)
            _reference(expected, op, n, flag, now)
    finally:
        workers.COMPACT_BYTES = original  # type: ignore[misc]
    got = store.get("w")
    if not ops:
        assert got is None
        return
    assert got is not None
    assert got == Worker(worker_id="w", **expected)
    if compact_at == 64:  # every append compacted: each log holds at most one line per field
        for log in (root / "workers" / "w").iterdir():
            assert len(log.read_bytes().splitlines()) <= 9


def test_compaction_keeps_the_log_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "COMPACT_BYTES", 1024)
    clock = FakeClock()
    store, _ = _store(tmp_path / "store", clock)
    for n in range(500):
        clock.advance(0.01)
        store.sync(_attempt("busy" if n % 2 else "succeeded", n), dequeue=True)
    (log,) = (tmp_path / "store" / "workers" / "w").iterdir()
    assert log.stat().st_size <= 1024 + 400
    got = store.get("w")
    assert got is not None
    assert got.status == "busy"
    assert got.current_attempt_id == f"at-{499:08x}"


def test_older_builds_records_are_the_base_layer(tmp_path: Path) -> None:
    clock = FakeClock()
    store, _ = _store(tmp_path / "store", clock)
    directory = tmp_path / "store" / "workers" / "w"
    directory.mkdir(parents=True)
    (directory / "status.json").write_text('{"status": "busy", "last_busy_time": 1.0}\n')
    (directory / "heartbeat.json").write_text('{"last_heartbeat_time": 2.0, "heartbeat_stats": {"a": 1}}\n')
    got = store.get("w")
    assert got is not None
    assert got.status == "busy"
    assert got.heartbeat_stats == {"a": 1}
    store.mark_idle("w")
    got = store.get("w")
    assert got is not None
    assert (got.status, got.last_busy_time, got.last_heartbeat_time) == ("idle", 1.0, 2.0)
    assert got.last_idle_time == clock.time()


def test_a_line_being_written_is_ignored(tmp_path: Path) -> None:
    clock = FakeClock()
    store, ctx = _store(tmp_path / "store", clock)
    store.sync(_attempt("busy", 1))
    log = tmp_path / "store" / "workers" / "w" / f"log.{ctx.writer}.jsonl"
    with log.open("ab") as f:
        f.write(b'{"t": 99999999999, "status": "id')
    got = store.get("w")
    assert got is not None
    assert got.status == "busy"


@pytest.mark.parametrize("line", [b"not json\n", b'{"status": "idle"}\n', b"[1, 2]\n"])
def test_a_corrupt_line_is_skipped_with_a_warning_and_reported(
    tmp_path: Path, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    store, ctx = _store(tmp_path / "store", clock)
    store.sync(_attempt("busy", 1))
    (written,) = (tmp_path / "store" / "workers" / "w").glob("log.*.jsonl")
    log = written.with_name(f"log.{ctx.writer}.jsonl")  # as another process's log
    log.write_bytes(b'{"t": 0.5, "status": "busy"}\n' + line)
    size = len(b'{"t": 0.5, "status": "busy"}\n')
    clock.advance(1.0)
    store.mark_idle("w")  # a good line after the bad one is still read
    with caplog.at_level(logging.WARNING):
        got = store.get("w")
    assert got is not None
    assert got.status == "idle"
    assert f"corrupt worker log line in {log} at byte {size}" in caplog.text
    assert [(b.path, b.offset) for b in store.bad_lines(log.parent)] == [(log, size)]


def test_fold_breaks_ties_by_order() -> None:
    assert fold_lines([(1.0, 1, {"a": 2}), (1.0, 0, {"a": 1, "b": 1}), (0.5, 2, {"b": 0})]) == {
        "a": 2,
        "b": 1,
    }


# -- several processes ----------------------------------------------------------------
def test_readers_never_see_a_torn_state_while_processes_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    init_store(root)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=churn_worker, args=(str(root), "shared", 300)) for _ in range(2)]
    for p in procs:
        p.start()
    reader = WorkerStore(Context(layout=Layout(root), clock=FakeClock()))
    seen = 0
    try:
        while any(p.is_alive() for p in procs):
            got = reader.get("shared")
            if got is not None:
                seen += 1
                assert got.status in ("busy", "idle")
                assert (got.current_rollout_id is None) == (got.current_attempt_id is None)
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    final = reader.get("shared")
    assert final is not None
    assert final.heartbeat_stats == {"n": 299}
    assert final.status == "idle"
    assert len(list((root / "workers" / "shared").iterdir())) == 2  # one log per process
    assert seen > 0
