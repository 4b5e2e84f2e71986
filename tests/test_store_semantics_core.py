"""docs/behaviour.md §2, §6.4, §8: queue, rollouts, queries, attempts, workers.

Adapted to store_fs's deliberate deviations (typed not-found errors that subclass
ValueError, upstream's messages).
"""

from __future__ import annotations

import asyncio

import pytest

from store_fs import (
    AttemptedRollout,
    EnqueueRolloutRequest,
    FakeClock,
    FileStore,
    NotFoundError,
    PaginatedResult,
    Rollout,
    RolloutConfig,
    RolloutNotFoundError,
)

UNKNOWN_RID = "ro-000000000000"


# -- docs/behaviour.md §2.1-§2.2: enqueue, start, dequeue ----------------------------------------
async def test_b01_dequeue_empty_queue_returns_none_repeatedly(store: FileStore) -> None:
    assert await store.dequeue_rollout() is None
    assert await store.dequeue_rollout() is None
    assert await store.dequeue_many_rollouts(limit=3) == []


async def test_b02_enqueue_rollout_fields(store: FileStore, clock: FakeClock) -> None:
    meta = {"source": "unit", "n": 1}
    rollout = await store.enqueue_rollout(
        input={"q": "2+2"}, mode="train", resources_id="res-123", metadata=meta
    )
    assert rollout.rollout_id.startswith("ro-")
    assert len(rollout.rollout_id) == 15
    assert rollout.status == "queuing"
    assert rollout.input == {"q": "2+2"}
    assert rollout.mode == "train"
    assert rollout.resources_id == "res-123"  # not validated
    assert rollout.metadata == meta
    assert rollout.start_time == clock.time()
    assert rollout.end_time is None
    assert not isinstance(rollout, AttemptedRollout)


async def test_b02_enqueue_without_metadata_stores_empty_dict(store: FileStore) -> None:
    rollout = await store.enqueue_rollout(input=None)
    assert rollout.metadata == {}
    assert rollout.input is None
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None
    assert fetched.metadata == {}
    assert fetched.input is None


async def test_b03_start_rollout_creates_first_attempt(store: FileStore) -> None:
    started = await store.start_rollout(input="x", mode="val")
    assert isinstance(started, AttemptedRollout)
    assert started.status == "preparing"
    assert started.mode == "val"
    assert started.attempt.attempt_id.startswith("at-")
    assert len(started.attempt.attempt_id) == 11
    assert started.attempt.sequence_id == 1
    assert started.attempt.status == "preparing"
    assert started.attempt.rollout_id == started.rollout_id
    attempts = await store.query_attempts(started.rollout_id)
    assert [a.attempt_id for a in attempts] == [started.attempt.attempt_id]
    latest = await store.get_latest_attempt(started.rollout_id)
    assert latest is not None
    assert latest.attempt_id == started.attempt.attempt_id
    # start_rollout does not queue the rollout
    assert await store.dequeue_rollout() is None


async def test_b04_config_roundtrip(store: FileStore) -> None:
    cfg = RolloutConfig(timeout_seconds=12, max_attempts=3, retry_condition=["timeout"])
    queued = await store.enqueue_rollout(input=1, config=cfg)
    started = await store.start_rollout(input=2, config=cfg)
    for r in (queued, started):
        assert r.config == cfg
        fetched = await store.get_rollout_by_id(r.rollout_id)
        assert fetched is not None
        assert fetched.config.timeout_seconds == 12
        assert fetched.config.max_attempts == 3
        assert fetched.config.retry_condition == ["timeout"]


async def test_b04_config_is_copied(store: FileStore) -> None:
    cfg = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    rollout = await store.enqueue_rollout(input=1, config=cfg)
    cfg.retry_condition.append("timeout")
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None
    assert fetched.config.retry_condition == ["failed"]


async def test_b05_fifo_dequeue(store: FileStore) -> None:
    ids = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(5)]
    got = []
    for _ in range(5):
        r = await store.dequeue_rollout()
        assert r is not None
        assert r.status == "preparing"
        assert r.attempt.status == "preparing"
        assert r.attempt.sequence_id == 1
        got.append(r.rollout_id)
    assert got == ids
    assert await store.dequeue_rollout() is None


async def test_b06_dequeue_skips_finished(store: FileStore) -> None:
    a = await store.enqueue_rollout(input="a")
    b = await store.enqueue_rollout(input="b")
    c = await store.enqueue_rollout(input="c")
    await store.update_rollout(a.rollout_id, status="succeeded")
    await store.update_rollout(b.rollout_id, status="failed")
    got = await store.dequeue_rollout()
    assert got is not None
    assert got.rollout_id == c.rollout_id
    assert await store.dequeue_rollout() is None
    ra = await store.get_rollout_by_id(a.rollout_id)
    rb = await store.get_rollout_by_id(b.rollout_id)
    assert ra is not None
    assert ra.status == "succeeded"
    assert rb is not None
    assert rb.status == "failed"
    assert await store.get_latest_attempt(a.rollout_id) is None


async def test_b07_requeue_via_update_rollout(store: FileStore) -> None:
    r = await store.enqueue_rollout(input="x")
    first = await store.dequeue_rollout()
    assert first is not None
    await store.update_rollout(r.rollout_id, status="requeuing")
    again = await store.dequeue_rollout()
    assert again is not None
    assert again.rollout_id == r.rollout_id
    assert again.status == "preparing"
    attempts = await store.query_attempts(r.rollout_id)
    assert len(attempts) == 2
    latest = await store.get_latest_attempt(r.rollout_id)
    assert latest is not None
    assert latest.sequence_id == 2
    assert latest.status == "preparing"
    assert latest.attempt_id != first.attempt.attempt_id
    assert await store.dequeue_rollout() is None


async def test_b08_enqueue_many(store: FileStore) -> None:
    requests = [
        EnqueueRolloutRequest(input="a", mode="train", metadata={"i": 0}),
        EnqueueRolloutRequest(input="b", mode="val", config=RolloutConfig(max_attempts=4)),
        EnqueueRolloutRequest(input="c", mode="test", metadata={"i": 2}),
    ]
    out = await store.enqueue_many_rollouts(requests)
    assert [r.input for r in out] == ["a", "b", "c"]
    assert [r.mode for r in out] == ["train", "val", "test"]
    assert [r.status for r in out] == ["queuing"] * 3
    assert out[0].metadata == {"i": 0}
    assert out[1].config.max_attempts == 4
    assert out[2].metadata == {"i": 2}
    assert len({r.rollout_id for r in out}) == 3
    dequeued = [await store.dequeue_rollout() for _ in range(3)]
    assert [d.rollout_id for d in dequeued if d is not None] == [r.rollout_id for r in out]
    assert await store.enqueue_many_rollouts([]) == []


async def test_b09_dequeue_many(store: FileStore) -> None:
    ids = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(4)]
    first = await store.dequeue_many_rollouts(limit=2, worker_id="w")
    assert [r.rollout_id for r in first] == ids[:2]
    assert all(r.attempt.worker_id == "w" for r in first)
    assert all(r.status == "preparing" for r in first)
    rest = await store.dequeue_many_rollouts(limit=5, worker_id="w")
    assert [r.rollout_id for r in rest] == ids[2:]
    assert await store.dequeue_many_rollouts(limit=5, worker_id="w") == []


async def test_dequeue_many_limit_zero(store: FileStore) -> None:
    await store.enqueue_rollout(input=1)
    assert await store.dequeue_many_rollouts(limit=0) == []
    assert await store.dequeue_rollout() is not None


async def test_concurrent_dequeues_claim_each_rollout_once(store: FileStore) -> None:
    ids = {(await store.enqueue_rollout(input=i)).rollout_id for i in range(20)}
    results = await asyncio.gather(*(store.dequeue_rollout() for _ in range(30)))
    got = [r.rollout_id for r in results if r is not None]
    assert len(got) == 20
    assert set(got) == ids
    assert sum(r is None for r in results) == 10


async def test_concurrent_enqueues_unique_ids(store: FileStore) -> None:
    out = await asyncio.gather(*(store.enqueue_rollout(input=i) for i in range(25)))
    assert len({r.rollout_id for r in out}) == 25


# -- docs/behaviour.md §6.4: queries ---------------------------------------------------------
async def _three_mixed(store: FileStore) -> tuple[Rollout, Rollout, Rollout]:
    queued = await store.enqueue_rollout(input="q")
    running = await store.start_rollout(input="r")
    failed = await store.enqueue_rollout(input="f")
    await store.update_rollout(failed.rollout_id, status="failed")
    return queued, running, failed


async def test_b10_query_rollouts_status_filter(store: FileStore) -> None:
    queued, running, failed = await _three_mixed(store)
    everything = await store.query_rollouts()
    assert {r.rollout_id for r in everything} == {queued.rollout_id, running.rollout_id, failed.rollout_id}
    assert everything.total == 3
    only_q = await store.query_rollouts(status_in=["queuing"])
    assert [r.rollout_id for r in only_q] == [queued.rollout_id]
    assert len(await store.query_rollouts(status_in=[])) == 0
    with pytest.warns(DeprecationWarning, match="'status' is deprecated"):
        legacy = await store.query_rollouts(status=[])
    assert len(legacy) == 0
    assert legacy.total == 0
    with pytest.warns(DeprecationWarning, match="'status' is deprecated"):
        legacy_q = await store.query_rollouts(status=["queuing"])
    assert [r.rollout_id for r in legacy_q] == [queued.rollout_id]


async def test_b10_default_order_is_insertion(store: FileStore, clock: FakeClock) -> None:
    ids = []
    for i in range(4):
        ids.append((await store.enqueue_rollout(input=i)).rollout_id)
        clock.advance(1)
    assert [r.rollout_id for r in await store.query_rollouts()] == ids


async def test_b11_new_params_win_over_legacy(store: FileStore) -> None:
    queued, running, failed = await _three_mixed(store)
    with pytest.warns(DeprecationWarning, match="'status' is deprecated"):
        res = await store.query_rollouts(status_in=["failed"], status=["queuing"])
    assert [r.rollout_id for r in res] == [failed.rollout_id]
    with pytest.warns(DeprecationWarning, match="'rollout_ids' is deprecated"):
        res = await store.query_rollouts(rollout_id_in=[running.rollout_id], rollout_ids=[queued.rollout_id])
    assert [r.rollout_id for r in res] == [running.rollout_id]
    res = await store.query_rollouts(rollout_id_in=[queued.rollout_id, UNKNOWN_RID, "bogus"])
    assert [r.rollout_id for r in res] == [queued.rollout_id]
    # Filter values that cannot name a rollout match none, whatever the filter logic (an
    # empty or '..' string raised InvalidIdError on one path only: an adversarial pass).
    for logic in ("and", "or"):
        res = await store.query_rollouts(
            rollout_id_in=["", "..", "a/b", queued.rollout_id], filter_logic=logic
        )
        assert [r.rollout_id for r in res] == [queued.rollout_id]


async def test_b12_filter_logic_and_or(store: FileStore) -> None:
    queued, running, failed = await _three_mixed(store)
    needle = queued.rollout_id[3:]
    assert needle not in failed.rollout_id
    assert needle not in running.rollout_id
    res_and = await store.query_rollouts(status_in=["failed"], rollout_id_contains=needle, filter_logic="and")
    assert len(res_and) == 0
    assert res_and.total == 0
    res_or = await store.query_rollouts(status_in=["failed"], rollout_id_contains=needle, filter_logic="or")
    assert {r.rollout_id for r in res_or} == {failed.rollout_id, queued.rollout_id}
    # rollout_id_in and rollout_id_contains are separate pool entries
    res_or2 = await store.query_rollouts(
        rollout_id_in=[running.rollout_id], rollout_id_contains=needle, filter_logic="or"
    )
    assert {r.rollout_id for r in res_or2} == {running.rollout_id, queued.rollout_id}
    # no filters at all: everything, whatever the logic
    assert (await store.query_rollouts(filter_logic="or")).total == 3


async def test_b13_pagination(store: FileStore, clock: FakeClock) -> None:
    ids = []
    for i in range(3):
        ids.append((await store.enqueue_rollout(input=i)).rollout_id)
        clock.advance(1)
    page = await store.query_rollouts(limit=1, offset=1)
    assert isinstance(page, PaginatedResult)
    assert page.limit == 1
    assert page.offset == 1
    assert page.total == 3
    assert len(page) == 1
    assert page[0].rollout_id == ids[1]
    assert [r.rollout_id for r in page.items] == [ids[1]]
    empty = await store.query_rollouts(offset=10)
    assert len(empty) == 0
    assert empty.total == 3
    zero = await store.query_rollouts(limit=0)
    assert len(zero) == 0
    assert zero.total == 3
    assert zero.limit == 0


async def test_query_rollouts_sorting(store: FileStore, clock: FakeClock) -> None:
    a = await store.enqueue_rollout(input=1, mode="val")
    clock.advance(1)
    b = await store.enqueue_rollout(input=2)  # mode None
    clock.advance(1)
    c = await store.enqueue_rollout(input=3, mode="train")
    asc = await store.query_rollouts(sort_by="mode", sort_order="asc")
    assert [r.rollout_id for r in asc] == [b.rollout_id, c.rollout_id, a.rollout_id]
    desc = await store.query_rollouts(sort_by="mode", sort_order="desc")
    assert [r.rollout_id for r in desc] == [a.rollout_id, c.rollout_id, b.rollout_id]
    by_time = await store.query_rollouts(sort_by="start_time", sort_order="desc")
    assert [r.rollout_id for r in by_time] == [c.rollout_id, b.rollout_id, a.rollout_id]
    with pytest.raises(ValueError, match="sort_by"):
        await store.query_rollouts(sort_by="no_such_field")
    with pytest.raises(ValueError, match=r"[Ll]imit"):
        await store.query_rollouts(limit=-2)


async def test_b14_attempted_vs_plain_rollouts(store: FileStore) -> None:
    plain = await store.enqueue_rollout(input="p")
    started = await store.start_rollout(input="s")
    await store.start_attempt(started.rollout_id)
    third = await store.start_attempt(started.rollout_id)
    fetched_plain = await store.get_rollout_by_id(plain.rollout_id)
    assert fetched_plain is not None
    assert not isinstance(fetched_plain, AttemptedRollout)
    assert not hasattr(fetched_plain, "attempt")
    fetched = await store.get_rollout_by_id(started.rollout_id)
    assert isinstance(fetched, AttemptedRollout)
    assert fetched.attempt.sequence_id == 3
    assert fetched.attempt.attempt_id == third.attempt.attempt_id
    by_id = {r.rollout_id: r for r in await store.query_rollouts()}
    assert not isinstance(by_id[plain.rollout_id], AttemptedRollout)
    listed = by_id[started.rollout_id]
    assert isinstance(listed, AttemptedRollout)
    assert listed.attempt.sequence_id == 3


async def test_b15_get_rollout_by_unknown_id(store: FileStore) -> None:
    assert await store.get_rollout_by_id("nonexistent") is None
    assert await store.get_rollout_by_id(UNKNOWN_RID) is None


async def test_b16_query_attempts_sort_and_page(store: FileStore) -> None:
    r = await store.start_rollout(input="x")
    await store.start_attempt(r.rollout_id)
    await store.start_attempt(r.rollout_id)
    asc = await store.query_attempts(r.rollout_id)
    assert [a.sequence_id for a in asc] == [1, 2, 3]
    desc = await store.query_attempts(r.rollout_id, sort_order="desc")
    assert [a.sequence_id for a in desc] == [3, 2, 1]
    page = await store.query_attempts(r.rollout_id, limit=1, offset=1)
    assert [a.sequence_id for a in page] == [2]
    assert page.total == 3
    assert len(await store.query_attempts(r.rollout_id, offset=10)) == 0
    zero = await store.query_attempts(r.rollout_id, limit=0)
    assert len(zero) == 0
    assert zero.total == 3


async def test_query_attempts_unknown_rollout_is_empty(store: FileStore) -> None:
    assert len(await store.query_attempts(UNKNOWN_RID)) == 0
    assert len(await store.query_attempts("nonexistent")) == 0
    assert await store.get_latest_attempt(UNKNOWN_RID) is None
    queued = await store.enqueue_rollout(input=1)
    assert await store.get_latest_attempt(queued.rollout_id) is None
    assert (await store.query_attempts(queued.rollout_id)).total == 0


# -- docs/behaviour.md §2.6: update_rollout --------------------------------------------------
async def test_b17_update_rollout_persists_fields(store: FileStore) -> None:
    r = await store.enqueue_rollout(input="old", mode="val")
    cfg = RolloutConfig(timeout_seconds=5, max_attempts=2, retry_condition=["failed"])
    updated = await store.update_rollout(
        r.rollout_id,
        status="running",
        mode="train",
        resources_id="new-resources",
        config=cfg,
        metadata={"k": "v"},
        input={"new": True},
    )
    assert updated.status == "running"
    fetched = await store.get_rollout_by_id(r.rollout_id)
    assert fetched is not None
    assert fetched.status == "running"
    assert fetched.mode == "train"
    assert fetched.resources_id == "new-resources"
    assert fetched.config == cfg
    assert fetched.metadata == {"k": "v"}
    assert fetched.input == {"new": True}
    assert fetched.end_time is None


async def test_update_rollout_explicit_none_and_noop(store: FileStore) -> None:
    r = await store.enqueue_rollout(input="x", mode="train", metadata={"a": 1})
    cleared = await store.update_rollout(r.rollout_id, mode=None)
    assert cleared.mode is None
    assert cleared.metadata == {"a": 1}  # untouched
    same = await store.update_rollout(r.rollout_id)
    assert same.rollout_id == r.rollout_id
    assert same.input == "x"
    assert same.status == "queuing"
    with pytest.raises(ValueError, match="status"):
        await store.update_rollout(r.rollout_id, status="bogus")  # type: ignore[arg-type]


async def test_b18_update_unknown_rollout_raises_not_found(store: FileStore) -> None:
    for rid in ("nonexistent", UNKNOWN_RID):
        with pytest.raises(RolloutNotFoundError, match=f"^Rollout {rid} not found$") as info:
            await store.update_rollout(rid, status="failed")
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, NotFoundError)


async def test_b19_terminal_status_sets_end_time(store: FileStore, clock: FakeClock) -> None:
    r = await store.enqueue_rollout(input="x")
    clock.advance(2.5)
    done = await store.update_rollout(r.rollout_id, status="succeeded")
    assert done.end_time is not None
    assert done.end_time > done.start_time
    assert done.end_time == clock.time()
    fetched = await store.get_rollout_by_id(r.rollout_id)
    assert fetched is not None
    assert fetched.end_time == done.end_time


async def test_update_rollout_requeue_from_terminal(store: FileStore) -> None:
    r = await store.enqueue_rollout(input="x")
    await store.update_rollout(r.rollout_id, status="failed")
    assert await store.dequeue_rollout() is None
    await store.update_rollout(r.rollout_id, status="queuing")
    got = await store.dequeue_rollout()
    assert got is not None
    assert got.rollout_id == r.rollout_id
    assert got.end_time is not None  # never cleared


# -- docs/behaviour.md §8: workers ---------------------------------------------------------
async def test_b20_update_worker(store: FileStore, clock: FakeClock) -> None:
    w = await store.update_worker("worker-1", heartbeat_stats={"cpu": 0.5})
    assert w.worker_id == "worker-1"
    assert w.status == "unknown"
    assert w.heartbeat_stats == {"cpu": 0.5}
    assert isinstance(w.last_heartbeat_time, float)
    first = w.last_heartbeat_time
    clock.advance(1)
    w2 = await store.update_worker("worker-1")
    assert w2.heartbeat_stats == {"cpu": 0.5}
    assert w2.last_heartbeat_time is not None
    assert w2.last_heartbeat_time >= first
    assert w2.last_heartbeat_time == clock.time()
    with pytest.raises(TypeError):
        await store.update_worker("worker-1", heartbeat_stats=None)  # type: ignore[arg-type]
    got = await store.get_worker_by_id("worker-1")
    assert got is not None
    assert got.heartbeat_stats == {"cpu": 0.5}
    assert await store.get_worker_by_id("nobody") is None


async def _assert_busy(store: FileStore, worker_id: str, rollout_id: str, attempt_id: str) -> None:
    w = await store.get_worker_by_id(worker_id)
    assert w is not None
    assert w.status == "busy"
    assert w.current_rollout_id == rollout_id
    assert w.current_attempt_id == attempt_id
    assert w.last_busy_time is not None


async def _assert_idle_after_success(
    store: FileStore, worker_id: str, rollout_id: str, attempt_id: str
) -> None:
    await store.update_attempt(rollout_id, attempt_id, status="succeeded")
    w = await store.get_worker_by_id(worker_id)
    assert w is not None
    assert w.status == "idle"
    assert w.current_rollout_id is None
    assert w.current_attempt_id is None
    assert w.last_idle_time is not None


async def test_b21_worker_sync_start_rollout(store: FileStore) -> None:
    r = await store.start_rollout(input="x", worker_id="w-start")
    assert r.attempt.worker_id == "w-start"
    await _assert_busy(store, "w-start", r.rollout_id, r.attempt.attempt_id)
    await _assert_idle_after_success(store, "w-start", r.rollout_id, r.attempt.attempt_id)


async def test_b21_worker_sync_dequeue(store: FileStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    r = await store.dequeue_rollout(worker_id="w-deq")
    assert r is not None
    assert r.attempt.worker_id == "w-deq"
    await _assert_busy(store, "w-deq", r.rollout_id, r.attempt.attempt_id)
    w = await store.get_worker_by_id("w-deq")
    assert w is not None
    assert w.last_dequeue_time == clock.time()
    await _assert_idle_after_success(store, "w-deq", r.rollout_id, r.attempt.attempt_id)


async def test_b21_worker_sync_start_attempt(store: FileStore) -> None:
    q = await store.enqueue_rollout(input="x")
    r = await store.start_attempt(q.rollout_id, worker_id="w-att")
    assert r.attempt.sequence_id == 1
    assert r.attempt.worker_id == "w-att"
    await _assert_busy(store, "w-att", r.rollout_id, r.attempt.attempt_id)
    await _assert_idle_after_success(store, "w-att", r.rollout_id, r.attempt.attempt_id)
    # the queue entry of the started rollout became stale
    assert await store.dequeue_rollout() is None


async def test_worker_failed_attempt_makes_idle(store: FileStore) -> None:
    r = await store.start_rollout(input="x", worker_id="w-f")
    await store.update_attempt(r.rollout_id, "latest", status="failed")
    w = await store.get_worker_by_id("w-f")
    assert w is not None
    assert w.status == "idle"
    assert w.current_rollout_id is None


async def test_empty_dequeue_marks_worker_idle(store: FileStore, clock: FakeClock) -> None:
    assert await store.dequeue_rollout(worker_id="lonely") is None
    w = await store.get_worker_by_id("lonely")
    assert w is not None
    assert w.status == "idle"
    assert w.last_idle_time == clock.time()
    assert w.last_dequeue_time == clock.time()
    clock.advance(3)
    assert await store.dequeue_many_rollouts(limit=2, worker_id="lonely") == []
    w = await store.get_worker_by_id("lonely")
    assert w is not None
    assert w.last_dequeue_time == clock.time()
    assert w.last_idle_time == clock.time() - 3  # already idle: not re-stamped


async def test_update_attempt_with_worker_id_syncs_worker(store: FileStore) -> None:
    r = await store.start_rollout(input="x")
    await store.update_attempt(r.rollout_id, r.attempt.attempt_id, worker_id="late")
    await _assert_busy(store, "late", r.rollout_id, r.attempt.attempt_id)


async def test_b22_sync_keeps_heartbeat_fields(store: FileStore, clock: FakeClock) -> None:
    w = await store.update_worker("w", heartbeat_stats={"gpu": 3})
    beat = w.last_heartbeat_time
    clock.advance(5)
    r = await store.start_rollout(input="x", worker_id="w")
    after = await store.get_worker_by_id("w")
    assert after is not None
    assert after.status == "busy"
    assert after.heartbeat_stats == {"gpu": 3}
    assert after.last_heartbeat_time == beat
    clock.advance(5)
    await store.update_attempt(r.rollout_id, "latest", status="succeeded")
    done = await store.get_worker_by_id("w")
    assert done is not None
    assert done.status == "idle"
    assert done.heartbeat_stats == {"gpu": 3}
    assert done.last_heartbeat_time == beat


async def test_b23_query_workers(store: FileStore) -> None:
    await store.enqueue_rollout(input="x")
    busy = await store.dequeue_rollout(worker_id="gpu-busy")
    assert busy is not None
    await store.update_worker("cpu-1", heartbeat_stats={"cpu": 1})  # unknown
    assert await store.dequeue_rollout(worker_id="idle-2") is None  # idle
    everyone = await store.query_workers()
    assert {w.worker_id for w in everyone} == {"gpu-busy", "cpu-1", "idle-2"}
    assert [w.worker_id for w in await store.query_workers(status_in=["busy"])] == ["gpu-busy"]
    assert [w.worker_id for w in await store.query_workers(status_in=["idle"])] == ["idle-2"]
    assert [w.worker_id for w in await store.query_workers(worker_id_contains="cpu")] == ["cpu-1"]
    assert len(await store.query_workers(status_in=["busy"], worker_id_contains="cpu")) == 0
    either = await store.query_workers(status_in=["busy"], worker_id_contains="cpu", filter_logic="or")
    assert {w.worker_id for w in either} == {"gpu-busy", "cpu-1"}
    asc = await store.query_workers(sort_by="worker_id")
    assert [w.worker_id for w in asc] == ["cpu-1", "gpu-busy", "idle-2"]
    desc = await store.query_workers(sort_by="worker_id", sort_order="desc")
    assert [w.worker_id for w in desc] == ["idle-2", "gpu-busy", "cpu-1"]
    page = await store.query_workers(sort_by="worker_id", limit=1, offset=1)
    assert [w.worker_id for w in page] == ["gpu-busy"]
    assert page.total == 3
    assert page.limit == 1
    assert page.offset == 1
    assert len(await store.query_workers(offset=5)) == 0
