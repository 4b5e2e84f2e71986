"""The rollout index snapshot (store_fs/_disk/index_snapshot.py, docs/format.md "The rollout
index"): a cold reader that lists one status merges only that status's section, and every answer
equals the one read from the logs alone, also after changes and compactions since the snapshot."""

from __future__ import annotations

from pathlib import Path

from compaction_workers import finish_in_a_process

from store_fs import FileStore
from store_fs._disk.index_snapshot import SNAPSHOT_NAME


async def _finish(store: FileStore, status: str) -> str:
    r = await store.enqueue_rollout(input=status)
    a = await store.dequeue_rollout()
    assert a is not None
    assert a.rollout_id == r.rollout_id
    await store.update_attempt(r.rollout_id, a.attempt.attempt_id, status=status)  # type: ignore[arg-type]
    return r.rollout_id


async def _listing(root: Path, status: str) -> list[str]:
    fresh = FileStore(root, create=False)
    try:
        return sorted(r.rollout_id for r in await fresh.query_rollouts(status_in=[status]))  # type: ignore[list-item]
    finally:
        fresh.close()


async def _answers(root: Path) -> dict[str, object]:
    """Every status's listing and the counts, each from a fresh process-like store."""
    out: dict[str, object] = {}
    for status in ("queuing", "preparing", "succeeded", "failed"):
        out[status] = await _listing(root, status)
    fresh = FileStore(root, create=False)
    stats = await fresh.statistics()
    fresh.close()
    out["counts"] = (stats["total_rollouts"], stats["total_attempts"])
    return out


def _without_snapshot(root: Path) -> None:
    (root / "index" / "rollouts" / SNAPSHOT_NAME).unlink(missing_ok=True)


async def test_a_cold_listing_merges_only_the_status_it_asks_for(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    failed = sorted([await _finish(store, "failed") for _ in range(3)])
    succeeded = [await _finish(store, "succeeded") for _ in range(5)]
    report = store.compact()
    assert report.snapshot
    snapshot = store.layout.rollout_index / SNAPSHOT_NAME
    assert snapshot.exists()

    fresh = FileStore(store.root, create=False)
    assert sorted(r.rollout_id for r in await fresh.query_rollouts(status_in=["failed"])) == failed
    view = fresh._index._view()
    assert view.snapshot is not None  # the other sections are still on disk
    assert set(view.snapshot.sections) == {"succeeded"}
    assert not set(succeeded) & set(view.entries)
    stats = await fresh.statistics()  # counting merges everything
    assert (stats["total_rollouts"], stats["total_attempts"]) == (8, 8)
    assert view.snapshot is None
    fresh.close()
    store.close()


async def test_changes_after_the_snapshot_win_over_it(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    for _ in range(3):
        await _finish(store, "succeeded")
    waiting = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(3)]
    assert store.compact().snapshot
    # After the snapshot: one queued rollout is dequeued and fails, another is dequeued.
    for _ in range(2):
        a = await store.dequeue_rollout()
        assert a is not None
    latest = await store.get_latest_attempt(waiting[0])
    assert latest is not None
    await store.update_attempt(waiting[0], latest.attempt_id, status="failed")
    expected = await _answers(store.root)
    assert expected["failed"] == [waiting[0]]
    assert expected["preparing"] == [waiting[1]]
    assert expected["queuing"] == [waiting[2]]
    _without_snapshot(store.root)
    assert await _answers(store.root) == expected
    store.close()


async def test_compactions_after_the_snapshot_are_followed(tmp_path: Path, monkeypatch: object) -> None:
    import store_fs._disk.log_compaction as log_compaction

    store = FileStore(tmp_path / "s")
    await _finish(store, "failed")
    assert store.compact().snapshot
    # Later writers exit; a compaction absorbs their logs but (few lines) keeps the snapshot.
    for status in ("succeeded", "failed", "succeeded"):
        finish_in_a_process(store.root, status)
    setattr(log_compaction, "SNAPSHOT_EVERY_LINES", 10**9)  # noqa: B010 - keep the old snapshot
    try:
        report = store.compact()
    finally:
        setattr(log_compaction, "SNAPSHOT_EVERY_LINES", 20_000)  # noqa: B010
    assert not report.snapshot
    expected = await _answers(store.root)
    assert len(expected["failed"]) == 2  # type: ignore[arg-type]
    _without_snapshot(store.root)
    assert await _answers(store.root) == expected
    store.close()


async def test_a_damaged_snapshot_is_ignored(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    for status in ("failed", "succeeded"):
        await _finish(store, status)
    assert store.compact().snapshot
    expected = await _answers(store.root)
    snapshot = store.layout.rollout_index / SNAPSHOT_NAME
    for damage in (b"", b"{not json\n", b'{"agl_index_snapshot": 1, "position": 3}\n'):
        snapshot.write_bytes(damage)
        assert await _answers(store.root) == expected
    store.close()


async def test_a_rebuilt_index_drops_the_snapshot(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    rid = await _finish(store, "failed")
    assert store.compact().snapshot
    store._index.remove()  # what check --fix does before rebuilding
    assert not (store.layout.rollout_index / SNAPSHOT_NAME).exists()
    store.check(fix=True)
    assert await _listing(store.root, "failed") == [rid]
    store.close()


async def test_a_waiter_merges_only_the_finished_sections_and_later_lines_win(tmp_path: Path) -> None:
    """``finished_among`` (what ``wait_for_rollouts`` asks at every change) on a cold view:
    the terminal sections of the snapshot are merged, the rest stays on disk, and a rollout the
    snapshot holds as finished but that was put back in the queue since is not finished."""
    store = FileStore(tmp_path / "s")
    done = [await _finish(store, "succeeded") for _ in range(3)]
    failed = await _finish(store, "failed")
    queued = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(2)]
    assert store.compact().snapshot
    await store.update_rollout(done[0], status="requeuing")  # after the snapshot: newer
    late = (await store.enqueue_rollout(input="late")).rollout_id
    attempted = await store.start_attempt(late)
    await store.update_attempt(late, attempted.attempt.attempt_id, status="succeeded")

    fresh = FileStore(store.root, create=False)
    try:
        asked = {*done, failed, *queued, late}
        found = fresh._index.finished_among(asked, ("succeeded", "failed", "cancelled"))
        assert found is not None
        assert {rid: e.status for rid, e in found.items()} == {
            done[1]: "succeeded",
            done[2]: "succeeded",
            failed: "failed",
            late: "succeeded",
        }
        view = fresh._index._view()
        assert view.snapshot is not None
        assert set(view.snapshot.sections) == {"queuing"}
        waited = await fresh.wait_for_rollouts(rollout_ids=sorted(asked), timeout=0)
        assert sorted(r.rollout_id for r in waited) == sorted(found)
    finally:
        fresh.close()
        store.close()
