"""Waiting on a network filesystem (docs/format.md, "Wait"): the watchdog's pass runs beside the
waiter instead of before each look, records are read several at a time, and the answers are the
same as on a local disk. ``AGL_NETWORK_FS=1`` makes the store take its directory for one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from store_fs import FileStore


@pytest.fixture
def shared_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    monkeypatch.setenv("AGL_NETWORK_FS", "1")
    store = FileStore(tmp_path / "s", scan_debounce_seconds=0.0)
    assert store._ctx.shared_fs
    return store


async def test_a_slow_watchdog_pass_does_not_hold_the_waiter(shared_store: FileStore) -> None:
    store = shared_store
    r = await store.enqueue_rollout(input=1)
    passes: list[str] = []
    release = threading.Event()
    real_scan = store._reaper._scan

    def slow_scan(tracker: object) -> int:
        passes.append(threading.current_thread().name)
        release.wait(5)  # a pass stuck on a slow file server
        return real_scan(tracker)  # type: ignore[arg-type]

    store._reaper._scan = slow_scan  # type: ignore[method-assign]
    started = time.monotonic()
    assert await store.wait_for_rollouts(rollout_ids=[r.rollout_id], timeout=0.3) == []
    assert time.monotonic() - started < 2.0  # not the 5 s the pass would hold it
    assert passes == ["agl-reaper"]  # one pass, in its own thread (the next found it running)
    release.set()
    store.close()


async def test_many_finished_rollouts_are_read_together_and_all_returned(shared_store: FileStore) -> None:
    store = shared_store
    ids = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(20)]
    for _ in ids:
        attempt = await store.dequeue_rollout()
        assert attempt is not None
        await store.update_attempt(attempt.rollout_id, attempt.attempt.attempt_id, status="succeeded")
    done = await store.wait_for_rollouts(rollout_ids=ids, timeout=1.0)
    assert [r.rollout_id for r in done] == ids
    assert {r.status for r in done} == {"succeeded"}
    store.close()
