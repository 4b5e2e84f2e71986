from __future__ import annotations

from store_fs import FileStore


async def test_enqueue_dequeue_complete(store: FileStore) -> None:
    rollout = await store.enqueue_rollout(input="q")
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    assert attempted.rollout_id == rollout.rollout_id
    await store.update_attempt(rollout.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    done = await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0)
    assert [r.status for r in done] == ["succeeded"]
