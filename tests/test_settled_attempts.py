"""An attempt the watchdog settled, and whose retry has started, stays settled.

Found by an adversarial pass: a runner stalled past ``unresponsive_seconds`` wakes up after its
rollout was retried. Its late span made the old attempt ``running`` again (upstream's
span-as-heartbeat rule), so its heartbeat said "still yours" and its ``succeeded`` was taken:
the rollout succeeded twice, and the stale attempt's reward, stored last, became the reward a
reader of the rollout's spans finds. A retried attempt's late spans are now refused, so nothing
of it lands after its retry's. Before the retry is dequeued the old attempt is still the latest,
and upstream's rule stands: a span revives it and the retry is dropped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from store_fs import ConflictError, FakeClock, FileStore, Span
from store_fs.models import RolloutConfig
from store_fs.rewards import find_final_reward, reward_span

CONFIG = RolloutConfig(unresponsive_seconds=1, max_attempts=3, retry_condition=["unresponsive"])


def _reward(rollout_id: str, attempt_id: str, sequence_id: int, value: float) -> Span:
    return reward_span(value, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=sequence_id)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> FileStore:
    return FileStore(tmp_path / "store", clock=clock, scan_debounce_seconds=0, claim_grace_seconds=0)


async def _stalled(store: FileStore, clock: FakeClock) -> tuple[str, str]:
    """A rollout whose first attempt was found unresponsive (the rollout is requeuing)."""
    rollout = await store.enqueue_rollout(input={"q": 1}, config=CONFIG)
    first = await store.dequeue_rollout(worker_id="stalled")
    assert first is not None
    clock.advance(2)
    store.reap()
    assert [a.status for a in await store.query_attempts(rollout.rollout_id)] == ["unresponsive"]
    return rollout.rollout_id, first.attempt.attempt_id


async def test_a_retried_attempts_late_span_and_outcome_are_refused(
    store: FileStore, clock: FakeClock
) -> None:
    rid, stale = await _stalled(store, clock)
    retry = await store.dequeue_rollout(worker_id="fresh")
    assert retry is not None
    fresh = retry.attempt.attempt_id
    await store.add_span(_reward(rid, fresh, await store.get_next_span_sequence_id(rid, fresh), 0.1))
    await store.update_attempt(rid, fresh, status="succeeded")

    late = _reward(rid, stale, await store.get_next_span_sequence_id(rid, stale), -1.0)
    with pytest.raises(ConflictError, match="retried"):
        await store.add_span(late)
    assert await store.heartbeat(rid, stale) is False  # so its runner lets go
    with pytest.raises(ConflictError):
        await store.update_attempt(rid, stale, status="succeeded")
    assert [a.status for a in await store.query_attempts(rid)] == ["unresponsive", "succeeded"]
    assert find_final_reward(list(await store.query_spans(rid))) == 0.1


async def test_before_its_retry_is_dequeued_a_late_span_still_revives_the_attempt(
    store: FileStore, clock: FakeClock
) -> None:
    rid, stale = await _stalled(store, clock)
    await store.add_span(_reward(rid, stale, await store.get_next_span_sequence_id(rid, stale), 0.7))
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None
    assert rollout.status == "running"
    assert [a.status for a in await store.query_attempts(rid)] == ["running"]
    assert await store.dequeue_rollout() is None  # the retry it had queued is dropped
    await store.update_attempt(rid, stale, status="succeeded")
    assert find_final_reward(list(await store.query_spans(rid))) == 0.7
