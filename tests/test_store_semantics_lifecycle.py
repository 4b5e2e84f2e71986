"""docs/behaviour.md §2.4 and §2.7, plus retries, watchdog (fake clock), waiting,
sticky cancellation, id validation and statistics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import pytest

from store_fs import (
    AttemptNotFoundError,
    ConflictError,
    FakeClock,
    FileStore,
    InvalidIdError,
    NotFoundError,
    PromptTemplate,
    Rollout,
    RolloutConfig,
    RolloutNotFoundError,
    Span,
)
from store_fs._disk.reaper import Reaper

UNKNOWN_RID = "ro-000000000000"


def make_span(rollout_id: str, attempt_id: str, seq: int) -> Span:
    return Span.from_attributes(
        attributes={"i": seq}, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq, name="s"
    )


async def status_of(store: FileStore, rollout_id: str) -> str:
    r = await store.get_rollout_by_id(rollout_id)
    assert r is not None
    return r.status


# -- docs/behaviour.md §2.7: update_attempt ------------------------------------------------------
async def test_b38_fail_only_attempt(store: FileStore, clock: FakeClock) -> None:
    r = await store.start_rollout(input=1)
    clock.advance(3)
    attempt = await store.update_attempt(r.rollout_id, r.attempt.attempt_id, status="failed")
    assert attempt.status == "failed"
    assert attempt.end_time is not None
    assert attempt.end_time >= attempt.start_time
    assert attempt.end_time == clock.time()
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "failed"
    assert rollout.end_time is not None
    assert rollout.end_time >= attempt.end_time


async def test_b38_running_leaves_end_time_unset(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    attempt = await store.update_attempt(r.rollout_id, r.attempt.attempt_id, status="running")
    assert attempt.status == "running"
    assert attempt.end_time is None
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "running"
    assert rollout.end_time is None


async def test_b38_latest_targets_highest_sequence(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    second = await store.start_attempt(r.rollout_id)
    updated = await store.update_attempt(r.rollout_id, "latest", status="succeeded", metadata={"m": 1})
    assert updated.attempt_id == second.attempt.attempt_id
    assert updated.sequence_id == 2
    assert updated.metadata == {"m": 1}
    first = (await store.query_attempts(r.rollout_id))[0]
    assert first.status == "preparing"
    assert first.metadata is None
    assert await status_of(store, r.rollout_id) == "succeeded"


async def test_update_attempt_fields(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    aid = r.attempt.attempt_id
    out = await store.update_attempt(r.rollout_id, aid, last_heartbeat_time=123.0, metadata={"x": 1})
    assert out.last_heartbeat_time == 123.0
    assert out.metadata == {"x": 1}
    out = await store.update_attempt(r.rollout_id, aid, metadata=None)
    assert out.metadata is None
    assert out.last_heartbeat_time == 123.0
    out = await store.update_attempt(r.rollout_id, aid, status="succeeded")
    assert out.end_time is not None
    # no transition validation
    out = await store.update_attempt(r.rollout_id, aid, status="running")
    assert out.status == "running"
    with pytest.raises(ValueError, match="status"):
        await store.update_attempt(r.rollout_id, aid, status="bogus")  # type: ignore[arg-type]


async def test_update_attempt_recomputes_rollout_even_for_metadata(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    await store.update_rollout(r.rollout_id, status="succeeded")
    await store.update_attempt(r.rollout_id, "latest", metadata={"note": "x"})
    assert await status_of(store, r.rollout_id) == "preparing"


# -- docs/behaviour.md §2.4: propagation from the latest attempt only ------------------------------------
async def test_b39_older_attempt_does_not_move_rollout(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    await store.start_attempt(r.rollout_id)
    await store.update_attempt(r.rollout_id, r.attempt.attempt_id, status="succeeded")
    assert await status_of(store, r.rollout_id) == "preparing"
    await store.update_attempt(r.rollout_id, r.attempt.attempt_id, status="failed")
    assert await status_of(store, r.rollout_id) == "preparing"


async def test_b39_retry_condition_requeues(store: FileStore) -> None:
    cfg = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    r = await store.start_rollout(input=1, config=cfg)
    await store.update_attempt(r.rollout_id, "latest", status="failed")
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "requeuing"
    assert rollout.end_time is None
    again = await store.dequeue_rollout()
    assert again is not None
    assert again.rollout_id == r.rollout_id
    assert again.attempt.sequence_id == 2


async def test_b39_start_attempt_ignores_max_attempts(store: FileStore) -> None:
    r = await store.start_rollout(input=1)  # max_attempts=1
    await store.update_attempt(r.rollout_id, "latest", status="failed")
    assert await status_of(store, r.rollout_id) == "failed"
    new = await store.start_attempt(r.rollout_id)
    assert new.attempt.sequence_id == 2
    assert new.status == "preparing"
    latest = await store.get_latest_attempt(r.rollout_id)
    assert latest is not None
    assert latest.attempt_id == new.attempt.attempt_id
    assert new.end_time is not None  # not cleared


async def test_b39_errors(store: FileStore) -> None:
    with pytest.raises(RolloutNotFoundError, match=r"^Rollout nonexistent not found$"):
        await store.start_attempt("nonexistent")
    with pytest.raises(RolloutNotFoundError, match=f"^Rollout {UNKNOWN_RID} not found$"):
        await store.start_attempt(UNKNOWN_RID)
    with pytest.raises(RolloutNotFoundError, match=f"^Rollout {UNKNOWN_RID} not found$"):
        await store.update_attempt(UNKNOWN_RID, "latest", status="failed")
    queued = await store.enqueue_rollout(input=1)
    with pytest.raises(NotFoundError, match=f"No attempts found for rollout {queued.rollout_id}") as info:
        await store.update_attempt(queued.rollout_id, "at-00000000", status="failed")
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="No attempts found"):
        await store.update_attempt(queued.rollout_id, "latest", status="failed")
    started = await store.start_rollout(input=2)
    with pytest.raises(
        AttemptNotFoundError, match=f"^Attempt at-00000000 not found for rollout {started.rollout_id}$"
    ):
        await store.update_attempt(started.rollout_id, "at-00000000", status="failed")


# -- the status machine with retries ----------------------------------------------------------
async def test_retries_until_max_attempts(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(max_attempts=3, retry_condition=["failed"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    for seq in (1, 2):
        got = await store.dequeue_rollout(worker_id="w")
        assert got is not None
        assert got.rollout_id == r.rollout_id
        assert got.attempt.sequence_id == seq
        await store.update_attempt(r.rollout_id, got.attempt.attempt_id, status="failed")
        assert await status_of(store, r.rollout_id) == "requeuing"
    last = await store.dequeue_rollout(worker_id="w")
    assert last is not None
    assert last.attempt.sequence_id == 3
    clock.advance(1)
    await store.update_attempt(r.rollout_id, last.attempt.attempt_id, status="failed")
    final = await store.get_rollout_by_id(r.rollout_id)
    assert final is not None
    assert final.status == "failed"
    assert final.end_time == clock.time()
    assert await store.dequeue_rollout() is None
    assert [a.status for a in await store.query_attempts(r.rollout_id)] == ["failed"] * 3


async def test_status_not_in_retry_condition_fails(store: FileStore) -> None:
    cfg = RolloutConfig(max_attempts=5, retry_condition=["timeout"])
    r = await store.start_rollout(input=1, config=cfg)
    await store.update_attempt(r.rollout_id, "latest", status="failed")
    assert await status_of(store, r.rollout_id) == "failed"
    assert await store.dequeue_rollout() is None


async def test_retry_then_success(store: FileStore) -> None:
    cfg = RolloutConfig(max_attempts=2, retry_condition=["failed", "unresponsive"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    first = await store.dequeue_rollout()
    assert first is not None
    await store.update_attempt(r.rollout_id, "latest", status="unresponsive")
    assert await status_of(store, r.rollout_id) == "requeuing"
    second = await store.dequeue_rollout()
    assert second is not None
    assert second.attempt.sequence_id == 2
    await store.update_attempt(r.rollout_id, "latest", status="succeeded")
    assert await status_of(store, r.rollout_id) == "succeeded"
    assert await store.dequeue_rollout() is None


async def test_requeued_rollout_revived_by_old_attempt_span_is_skipped(store: FileStore) -> None:
    cfg = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    got = await store.dequeue_rollout()
    assert got is not None
    await store.update_attempt(r.rollout_id, got.attempt.attempt_id, status="failed")
    assert await status_of(store, r.rollout_id) == "requeuing"
    await store.add_span(make_span(r.rollout_id, got.attempt.attempt_id, 1))
    assert await status_of(store, r.rollout_id) == "running"
    assert await store.dequeue_rollout() is None


async def test_span_for_old_attempt_after_retry_keeps_rollout_preparing(store: FileStore) -> None:
    cfg = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    first = await store.dequeue_rollout()
    assert first is not None
    await store.update_attempt(r.rollout_id, "latest", status="failed")
    second = await store.dequeue_rollout()
    assert second is not None
    assert second.attempt.sequence_id == 2
    await store.add_span(make_span(r.rollout_id, first.attempt.attempt_id, 1))
    assert await status_of(store, r.rollout_id) == "preparing"
    latest = await store.get_latest_attempt(r.rollout_id)
    assert latest is not None
    assert latest.attempt_id == second.attempt.attempt_id


# -- the watchdog (docs/behaviour.md §3) ---------------------------------------------------------------
async def test_b40_timeout_requeues(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(timeout_seconds=0.1, max_attempts=2, retry_condition=["timeout"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    got = await store.dequeue_rollout(worker_id="w")
    assert got is not None
    await store.add_span(make_span(r.rollout_id, got.attempt.attempt_id, 1))
    clock.advance(0.15)
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "requeuing"
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "timeout"
    assert attempt.end_time is None
    worker = await store.get_worker_by_id("w")
    assert worker is not None
    assert worker.status == "unknown"
    assert worker.current_rollout_id is None
    retry = await store.dequeue_rollout(worker_id="w")
    assert retry is not None
    assert retry.rollout_id == r.rollout_id
    assert retry.attempt.sequence_id == 2
    clock.advance(0.15)
    final = await store.get_rollout_by_id(r.rollout_id)
    assert final is not None
    assert final.status == "failed"
    assert final.end_time == clock.time()
    assert [a.status for a in await store.query_attempts(r.rollout_id)] == ["timeout", "timeout"]


async def test_b40_unresponsive_fails_when_not_retried(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=0.2, max_attempts=2, retry_condition=["timeout"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    got = await store.dequeue_rollout(worker_id="w")
    assert got is not None
    await store.add_span(make_span(r.rollout_id, got.attempt.attempt_id, 1))
    clock.advance(0.3)
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "unresponsive"
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "failed"
    assert rollout.end_time is not None
    worker = await store.get_worker_by_id("w")
    assert worker is not None
    assert worker.status == "unknown"
    assert worker.current_rollout_id is None
    assert worker.current_attempt_id is None


async def test_unresponsive_without_any_heartbeat(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=5, max_attempts=2, retry_condition=["unresponsive"])
    r = await store.start_rollout(input=1, config=cfg)
    clock.advance(4)
    assert await status_of(store, r.rollout_id) == "preparing"
    clock.advance(2)
    assert await status_of(store, r.rollout_id) == "requeuing"
    attempt = (await store.query_attempts(r.rollout_id))[0]
    assert attempt.status == "unresponsive"


async def test_spans_keep_attempt_responsive(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=5)
    r = await store.start_rollout(input=1, config=cfg)
    aid = r.attempt.attempt_id
    for i in range(1, 5):
        clock.advance(3)
        await store.add_span(make_span(r.rollout_id, aid, i))
        assert await status_of(store, r.rollout_id) == "running"
    clock.advance(3)
    assert await status_of(store, r.rollout_id) == "running"
    clock.advance(3)  # 6 s of silence
    assert await status_of(store, r.rollout_id) == "failed"
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "unresponsive"


async def test_explicit_heartbeat_keeps_attempt_alive(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=5)
    r = await store.start_rollout(input=1, config=cfg)
    for _ in range(3):
        clock.advance(3)
        assert await store.heartbeat(r.rollout_id, r.attempt.attempt_id) is True
        assert await status_of(store, r.rollout_id) == "preparing"
    clock.advance(6)
    assert await status_of(store, r.rollout_id) == "failed"
    assert await store.heartbeat(r.rollout_id, r.attempt.attempt_id) is False


async def test_heartbeat_from_update_attempt_counts(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=5)
    r = await store.start_rollout(input=1, config=cfg)
    clock.advance(4)
    await store.update_attempt(r.rollout_id, "latest", last_heartbeat_time=clock.time())
    clock.advance(4)
    assert await status_of(store, r.rollout_id) == "preparing"


async def test_worker_heartbeat_is_not_attempt_heartbeat(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=5)
    r = await store.start_rollout(input=1, config=cfg, worker_id="w")
    clock.advance(3)
    await store.update_worker("w", heartbeat_stats={"alive": True})
    clock.advance(3)
    assert await status_of(store, r.rollout_id) == "failed"


async def test_timeout_wins_over_unresponsive(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(timeout_seconds=5, unresponsive_seconds=5)
    r = await store.start_rollout(input=1, config=cfg)
    clock.advance(10)
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "timeout"


async def test_timeout_measured_from_attempt_start(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(timeout_seconds=10)
    r = await store.enqueue_rollout(input=1, config=cfg)
    clock.advance(50)  # queued time does not count
    assert await status_of(store, r.rollout_id) == "queuing"
    got = await store.dequeue_rollout()
    assert got is not None
    clock.advance(9)
    await store.add_span(make_span(r.rollout_id, got.attempt.attempt_id, 1))
    assert await status_of(store, r.rollout_id) == "running"
    clock.advance(2)  # spans do not extend the timeout
    assert await status_of(store, r.rollout_id) == "failed"


async def test_finished_attempts_are_not_reaped(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(timeout_seconds=1, unresponsive_seconds=1)
    r = await store.start_rollout(input=1, config=cfg)
    await store.update_attempt(r.rollout_id, "latest", status="succeeded")
    clock.advance(100)
    assert store.reap() == 0
    assert await status_of(store, r.rollout_id) == "succeeded"
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "succeeded"


async def test_reap_explicit(tmp_path: Path, clock: FakeClock) -> None:
    s = FileStore(tmp_path / "lazy", clock=clock, scan_debounce_seconds=1000, claim_grace_seconds=5)
    try:
        cfg = RolloutConfig(timeout_seconds=5)
        a = await s.start_rollout(input=1, config=cfg)  # consumes the first (immediate) scan
        b = await s.start_rollout(input=2, config=cfg)
        await s.start_rollout(input=3)  # no limits: never reaped
        clock.advance(6)
        # debounced: the watched methods do not scan yet
        assert (await s.get_rollout_by_id(a.rollout_id)).status == "preparing"  # type: ignore[union-attr]
        assert s.reap() == 2
        assert (await s.get_rollout_by_id(a.rollout_id)).status == "failed"  # type: ignore[union-attr]
        assert (await s.get_rollout_by_id(b.rollout_id)).status == "failed"  # type: ignore[union-attr]
        assert s.reap() == 0
    finally:
        s.close()


async def test_watchdog_debounce(tmp_path: Path, clock: FakeClock) -> None:
    s = FileStore(tmp_path / "deb", clock=clock, scan_debounce_seconds=10, claim_grace_seconds=5)
    try:
        r = await s.start_rollout(input=1, config=RolloutConfig(timeout_seconds=1))  # first scan
        clock.advance(2)
        assert (await s.get_rollout_by_id(r.rollout_id)).status == "preparing"  # type: ignore[union-attr]
        clock.advance(7.5)  # 9.5 s since the last scan
        assert (await s.get_rollout_by_id(r.rollout_id)).status == "preparing"  # type: ignore[union-attr]
        clock.advance(0.5)  # interval fully elapsed
        assert (await s.get_rollout_by_id(r.rollout_id)).status == "failed"  # type: ignore[union-attr]
    finally:
        s.close()


async def test_reaper_passes_from_several_threads_take_turns(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = FileStore(tmp_path / "threads", clock=clock, scan_debounce_seconds=1000, claim_grace_seconds=5)
    try:
        cfg = RolloutConfig(timeout_seconds=5)
        started = [await s.start_rollout(input=i, config=cfg) for i in range(20)]
        clock.advance(6)
        # Passes share their bookkeeping: record how many ever run at once.
        active, most, guard = [0], [0], threading.Lock()
        real_scan = Reaper._scan

        def watched_scan(self: Reaper, tracker: Any) -> int:
            with guard:
                active[0] += 1
                most[0] = max(most[0], active[0])
            try:
                threading.Event().wait(0.02)  # room for another thread to barge in
                return real_scan(self, tracker)
            finally:
                with guard:
                    active[0] -= 1

        monkeypatch.setattr(Reaper, "_scan", watched_scan)
        start = threading.Barrier(4)

        def reap() -> int:
            start.wait(10)
            return sum(s.reap() for _ in range(3))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            expired = list(pool.map(lambda _: reap(), range(4)))
        assert most[0] == 1
        assert sum(expired) == 20  # each attempt expired by exactly one pass
        for r in started:
            assert (await s.get_rollout_by_id(r.rollout_id)).status == "failed"  # type: ignore[union-attr]
    finally:
        s.close()


async def test_unwatched_methods_do_not_reap(store: FileStore, clock: FakeClock) -> None:
    r = await store.start_rollout(input=1, config=RolloutConfig(timeout_seconds=1))
    clock.advance(5)
    await store.add_resources({"p": PromptTemplate(template="t", engine="f-string")})
    await store.get_latest_resources()
    await store.update_worker("w")
    assert store.reap() == 1  # still live until now
    assert await status_of(store, r.rollout_id) == "failed"


# -- wait_for_rollouts --------------------------------------------------------------------------
async def test_b40_wait_returns_finished_immediately(store: FileStore) -> None:
    a = await store.start_rollout(input="a")
    b = await store.enqueue_rollout(input="b")
    await store.update_attempt(a.rollout_id, "latest", status="succeeded")
    await store.update_rollout(b.rollout_id, status="cancelled")
    done = await asyncio.wait_for(
        store.wait_for_rollouts(rollout_ids=[b.rollout_id, a.rollout_id], timeout=None), timeout=10
    )
    assert [r.rollout_id for r in done] == [b.rollout_id, a.rollout_id]
    assert [r.status for r in done] == ["cancelled", "succeeded"]
    assert all(type(r) is Rollout for r in done)
    dup = await store.wait_for_rollouts(rollout_ids=[a.rollout_id, a.rollout_id], timeout=0)
    assert [r.rollout_id for r in dup] == [a.rollout_id, a.rollout_id]


async def test_b40_wait_timeout_zero_and_unknown(store: FileStore) -> None:
    pending = await store.start_rollout(input=1)
    assert await store.wait_for_rollouts(rollout_ids=[pending.rollout_id], timeout=0) == []
    unknown = await asyncio.wait_for(
        store.wait_for_rollouts(rollout_ids=["nonexistent", UNKNOWN_RID], timeout=None), timeout=10
    )
    assert unknown == []


async def test_b40_wait_timeout_returns_finished_subset(store: FileStore, clock: FakeClock) -> None:
    done = await store.start_rollout(input=1)
    await store.update_attempt(done.rollout_id, "latest", status="failed")
    pending = await store.start_rollout(input=2)
    task = asyncio.create_task(
        store.wait_for_rollouts(rollout_ids=[pending.rollout_id, done.rollout_id, UNKNOWN_RID], timeout=1)
    )
    await asyncio.sleep(0.3)
    assert not task.done()
    clock.advance(2)  # a wait's deadline is on the real clock: this changes nothing
    result = await asyncio.wait_for(task, timeout=10)
    assert [r.rollout_id for r in result] == [done.rollout_id]
    assert result[0].status == "failed"


async def test_b40_wait_wakes_concurrent_waiters(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    waiters = [
        asyncio.create_task(store.wait_for_rollouts(rollout_ids=[r.rollout_id], timeout=None))
        for _ in range(2)
    ]
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waiters)
    await store.update_attempt(r.rollout_id, "latest", status="succeeded")
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=15)
    for res in results:
        assert [x.rollout_id for x in res] == [r.rollout_id]
        assert res[0].status == "succeeded"


async def test_b40_wait_none_is_cancellable(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    task = asyncio.create_task(store.wait_for_rollouts(rollout_ids=[r.rollout_id], timeout=None))
    await asyncio.sleep(0.3)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await status_of(store, r.rollout_id) == "preparing"


async def test_wait_sees_watchdog_timeout(store: FileStore, clock: FakeClock) -> None:
    r = await store.start_rollout(input=1, config=RolloutConfig(timeout_seconds=2))
    task = asyncio.create_task(store.wait_for_rollouts(rollout_ids=[r.rollout_id], timeout=60))
    await asyncio.sleep(0.3)
    clock.advance(3)
    result = await asyncio.wait_for(task, timeout=10)
    assert [x.status for x in result] == ["failed"]


# -- sticky cancellation ---------------------------------------------------------------------------
async def test_cancel_queued_rollout_is_never_dequeued(store: FileStore, clock: FakeClock) -> None:
    a = await store.enqueue_rollout(input="a")
    b = await store.enqueue_rollout(input="b")
    clock.advance(1)
    cancelled = await store.update_rollout(a.rollout_id, status="cancelled")
    assert cancelled.status == "cancelled"
    assert cancelled.end_time == clock.time()
    got = await store.dequeue_rollout()
    assert got is not None
    assert got.rollout_id == b.rollout_id
    assert await store.dequeue_rollout() is None
    assert await store.dequeue_many_rollouts(limit=5) == []
    assert await status_of(store, a.rollout_id) == "cancelled"
    assert await store.get_latest_attempt(a.rollout_id) is None


async def test_cancel_rollout_helper(store: FileStore) -> None:
    a = await store.enqueue_rollout(input="a")
    out = await store.cancel_rollout(a.rollout_id)
    assert out.status == "cancelled"
    assert await store.dequeue_rollout() is None


async def test_cancel_running_is_sticky(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    got = await store.dequeue_rollout(worker_id="w")
    assert got is not None
    aid = got.attempt.attempt_id
    await store.add_span(make_span(r.rollout_id, aid, 1))
    assert await store.heartbeat(r.rollout_id, aid) is True
    await store.update_rollout(r.rollout_id, status="cancelled")
    assert await store.heartbeat(r.rollout_id, aid) is False
    updated = await store.update_attempt(r.rollout_id, aid, status="succeeded")
    assert updated.status == "succeeded"
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "cancelled"
    assert await store.heartbeat(r.rollout_id, aid) is False
    await store.update_attempt(r.rollout_id, "latest", metadata={"late": True})
    assert await status_of(store, r.rollout_id) == "cancelled"


async def test_cancelled_is_sticky_against_spans_and_start_attempt(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    await store.update_rollout(r.rollout_id, status="cancelled")
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
    assert await status_of(store, r.rollout_id) == "cancelled"
    with pytest.raises(ConflictError) as info:
        await store.start_attempt(r.rollout_id)
    assert isinstance(info.value, ValueError)
    assert len(await store.query_attempts(r.rollout_id)) == 1
    await store.update_attempt(r.rollout_id, "latest", status="failed")
    assert await status_of(store, r.rollout_id) == "cancelled"


async def test_cancelled_rollout_is_not_reaped(store: FileStore, clock: FakeClock) -> None:
    r = await store.start_rollout(
        input=1, config=RolloutConfig(timeout_seconds=1, max_attempts=3, retry_condition=["timeout"])
    )
    await store.update_rollout(r.rollout_id, status="cancelled")
    clock.advance(10)
    store.reap()
    assert await status_of(store, r.rollout_id) == "cancelled"
    assert await store.dequeue_rollout() is None


async def test_explicit_update_rollout_can_leave_cancelled(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    await store.update_rollout(r.rollout_id, status="cancelled")
    await store.update_rollout(r.rollout_id, status="queuing")
    got = await store.dequeue_rollout()
    assert got is not None
    assert got.rollout_id == r.rollout_id


# -- ids ------------------------------------------------------------------------------------------
UNSAFE_IDS = ["../etc", "..", ".hidden", "a/b", "ro-000000000000/x", "a\x00b"]


@pytest.mark.parametrize("bad", UNSAFE_IDS)
async def test_unsafe_ids_raise_invalid_id(store: FileStore, bad: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        await store.get_rollout_by_id(bad)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidIdError):
        await store.update_rollout(bad, status="failed")
    with pytest.raises(InvalidIdError):
        await store.update_worker(bad)
    with pytest.raises(InvalidIdError):
        await store.update_resources(bad, {"p": PromptTemplate(template="t", engine="f-string")})
    with pytest.raises(InvalidIdError):
        await store.dequeue_rollout(worker_id=bad)
    r = await store.start_rollout(input=1)
    with pytest.raises(InvalidIdError):
        await store.update_attempt(r.rollout_id, bad, status="failed")
    assert not any(p.name == "etc" for p in store.root.parent.iterdir())


async def test_malformed_but_safe_rollout_ids(store: FileStore) -> None:
    for rid in ("nonexistent", "ro-XYZ", "ro-0000000000000", "RO-000000000000"):
        assert await store.get_rollout_by_id(rid) is None
        assert await store.get_latest_attempt(rid) is None
        assert len(await store.query_attempts(rid)) == 0
        assert len(await store.query_spans(rid)) == 0
        with pytest.raises(RolloutNotFoundError, match=f"Rollout {rid} not found"):
            await store.update_rollout(rid, status="failed")
        with pytest.raises(RolloutNotFoundError):
            await store.start_attempt(rid)
        with pytest.raises(RolloutNotFoundError):
            await store.update_attempt(rid, "latest", status="failed")
        with pytest.raises(RolloutNotFoundError):
            await store.heartbeat(rid, "at-00000000")


# -- statistics and capabilities ---------------------------------------------------------------------
async def test_statistics_counts(store: FileStore, clock: FakeClock) -> None:
    before = await store.statistics()
    assert before["name"] == "FileStore"
    r = await store.start_rollout(input=1, worker_id="w")
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
    await store.add_resources({"p": PromptTemplate(template="t", engine="f-string")})
    clock.advance(5)
    after = await store.statistics()
    for key in ("total_rollouts", "total_attempts", "total_spans", "total_resources", "total_workers"):
        assert after[key] == before[key] + 1, key
    assert after["uptime"] > before["uptime"]
    assert store.capabilities["async_safe"] is True


async def test_a_late_outcome_does_not_overwrite_the_watchdogs_verdict(
    store: FileStore, clock: FakeClock
) -> None:
    # docs/deviations.md: upstream lets a late "succeeded" overwrite "timeout" after the retry was
    # queued, so one rollout could succeed twice.
    cfg = RolloutConfig(timeout_seconds=5, max_attempts=2, retry_condition=["timeout"])
    r = await store.enqueue_rollout(input=1, config=cfg)
    got = await store.dequeue_rollout()
    assert got is not None
    clock.advance(6)
    assert await status_of(store, r.rollout_id) == "requeuing"
    with pytest.raises(ConflictError, match="timeout"):
        await store.update_attempt(r.rollout_id, got.attempt.attempt_id, status="succeeded")
    attempt = (await store.query_attempts(r.rollout_id)).items[0]
    assert attempt.status == "timeout"
    assert await status_of(store, r.rollout_id) == "requeuing"
    # Other overwrites stay upstream's: a person may turn a failure into a success.
    retry = await store.dequeue_rollout()
    assert retry is not None
    await store.update_attempt(r.rollout_id, retry.attempt.attempt_id, status="failed")
    await store.update_attempt(r.rollout_id, retry.attempt.attempt_id, status="succeeded")
    assert await status_of(store, r.rollout_id) == "succeeded"
