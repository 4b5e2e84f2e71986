"""Semantics a differential test against upstream's in-memory store found wrong (this session):
dequeue order after a late span revived a requeued rollout, and an attempt's
``last_heartbeat_time`` when it reaches a final status.
"""

from __future__ import annotations

from typing import Any

import pytest

from store_fs import FakeClock, FileStore, RolloutConfig, Span
from store_fs._disk import record_peek, rollout_history


def span(rid: str, aid: str, span_id: str = "1" * 16) -> Span:
    return Span.model_validate(
        {
            "rollout_id": rid, "attempt_id": aid, "sequence_id": 1, "trace_id": "0" * 32, "span_id": span_id,
            "parent_id": None, "name": "x", "status": {"status_code": "OK", "description": None},
            "attributes": {}, "events": [], "links": [], "start_time": 1.0, "end_time": 2.0, "context": None,
            "parent": None, "resource": {"attributes": {}, "schema_url": ""},
        }
    )  # fmt: skip


@pytest.mark.parametrize("run", range(5))  # the wrong order came from a random pick: several tries
async def test_a_late_span_reviving_a_requeued_rollout_keeps_dequeue_fifo(store: FileStore, run: int) -> None:
    config = RolloutConfig(max_attempts=2, retry_condition=["unresponsive"])
    a = await store.enqueue_rollout("A", config=config)
    b = await store.enqueue_rollout("B", config=config)
    await store.dequeue_rollout()
    b_attempt = await store.dequeue_rollout()
    assert b_attempt is not None
    for rollout in (a, b):
        await store.update_attempt(rollout.rollout_id, "latest", status="unresponsive")  # requeuing
    for i in range(10):
        await store.enqueue_rollout(i)
    again = await store.dequeue_rollout()  # A's second attempt; this process now holds a listing
    assert again is not None
    assert again.input == "A"
    # B's slow runner sends a span: B runs again and leaves the queue (its token discarded here).
    await store.add_span(span(b.rollout_id, b_attempt.attempt.attempt_id))
    taken = await store.dequeue_many_rollouts(limit=10)
    assert [d.input for d in taken] == list(range(10))


async def _running_with_a_heartbeat(store: FileStore, clock: FakeClock, how: str) -> tuple[str, str, float]:
    attempted = await store.start_rollout("x")
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    await store.update_attempt(rid, aid, status="running")  # explicit: no revision stamps the spans
    clock.advance(1)
    if how == "span":
        await store.add_span(span(rid, aid))
    else:
        await store.heartbeat(rid, aid)
    latest = await store.get_latest_attempt(rid)
    assert latest is not None
    assert latest.last_heartbeat_time is not None
    return rid, aid, latest.last_heartbeat_time


@pytest.mark.parametrize("how", ["span", "heartbeat"])
@pytest.mark.parametrize("final", ["succeeded", "failed", "timeout", "unresponsive"])
async def test_a_final_status_keeps_the_last_heartbeat_time(
    store: FileStore, clock: FakeClock, how: str, final: Any
) -> None:
    rid, aid, beat = await _running_with_a_heartbeat(store, clock, how)
    clock.advance(1)
    updated = await store.update_attempt(rid, aid, status=final)
    assert updated.last_heartbeat_time == beat
    latest = await store.get_latest_attempt(rid)
    assert latest is not None
    assert latest.last_heartbeat_time == beat
    (attempt,) = (await store.query_attempts(rid)).items
    assert attempt.last_heartbeat_time == beat


async def test_the_watchdogs_timeout_keeps_the_last_heartbeat_time(
    store: FileStore, clock: FakeClock
) -> None:
    attempted = await store.start_rollout("x", config=RolloutConfig(timeout_seconds=5))
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    await store.update_attempt(rid, aid, status="running")
    clock.advance(1)
    await store.heartbeat(rid, aid)
    beat = (await store.get_latest_attempt(rid)).last_heartbeat_time  # type: ignore[union-attr]
    assert beat is not None
    clock.advance(10)
    await store.query_rollouts()  # the watchdog runs before it (scan_debounce_seconds=0)
    latest = await store.get_latest_attempt(rid)
    assert latest is not None
    assert latest.status == "timeout"
    assert latest.last_heartbeat_time == beat


async def test_on_a_network_filesystem_a_lagging_record_is_not_taken_for_a_restored_store(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An NFS client may answer a listing and a lookup of the newest revision from its caches for
    seconds: a query read the record a revision behind its index line and warned that the store
    had been restored from an older copy, pointing at `agl check --fix` (found by a two-host
    stress run this session). On a local filesystem the warning stays: there it means that."""
    import os

    attempted = await store.start_rollout("x")
    await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    (history,) = store.root.glob(f"rollouts/*/{attempted.rollout_id}/history")
    newest = str(max(history.iterdir()))
    listdir, exists, read = os.listdir, os.path.exists, record_peek.read_identified_revision_file

    monkeypatch.setattr(os, "listdir", lambda p: [n for n in listdir(p) if f"{p}/{n}" != newest])
    monkeypatch.setattr(os.path, "exists", lambda p: str(p) != newest and exists(p))
    monkeypatch.setattr(
        rollout_history, "read_identified_revision_file", lambda p: None if p == newest else read(p)
    )
    for network, warned in ((True, False), (False, True)):
        caplog.clear()
        monkeypatch.setenv("AGL_NETWORK_FS", "1" if network else "0")
        cold = FileStore(store.root, create=False)
        try:
            await cold.query_rollouts(status_in=["succeeded"])
            assert ("index is ahead" in caplog.text) == warned, caplog.text
        finally:
            cold.close()
