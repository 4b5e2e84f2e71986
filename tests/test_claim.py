"""Claiming from the queue: tokens are hints, the record decides (docs/format.md, "Claim").

A runner renames a pending token into ``claimed/`` before it reads the record, so the
record's compare-and-swap must turn away every token that no longer stands for a
claimable attempt, and a token whose record is not written yet must stay queued.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from store_fs import AttemptedRollout, FakeClock, FileStore


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def _old_token(store: FileStore, rollout_id: str, seq: int) -> str:
    """A pending token older than every other one (so it is tried first), as an enqueuer writes it."""
    name = f"{1:016d}-{rollout_id}-{seq}.json"
    (store.layout.pending / name).write_bytes(
        b'{"rollout_id": "%s", "sequence_id": %d}\n' % (rollout_id.encode(), seq)
    )
    return name


async def test_a_stale_token_is_dropped_and_never_makes_an_attempt(store: FileStore) -> None:
    first = await store.enqueue_rollout(input={"n": 1})
    second = await store.enqueue_rollout(input={"n": 2})
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    assert attempted.rollout_id == first.rollout_id
    _old_token(store, first.rollout_id, 1)  # a duplicate: attempt 1 exists already

    again = await store.dequeue_rollout(worker_id="w")
    assert again is not None
    assert again.rollout_id == second.rollout_id
    assert await store.dequeue_rollout(worker_id="w") is None  # tries the stale token, drops it

    assert _names(store.layout.pending) == []
    claimed = _names(store.layout.claimed)
    assert claimed == sorted(
        f"{a.rollout_id}.1.{a.attempt.attempt_id}.json" for a in (attempted, again)
    )  # the stale token went nowhere
    record = await store.get_rollout_by_id(first.rollout_id)
    assert record is not None
    assert record.status == "preparing"
    assert [a.attempt_id for a in list(await store.query_attempts(first.rollout_id))] == [
        attempted.attempt.attempt_id
    ]


async def test_a_token_whose_record_is_not_written_yet_stays_queued(store: FileStore) -> None:
    name = _old_token(store, "ro-0123456789ab", 1)  # an enqueue in flight: the record follows
    assert await store.dequeue_rollout() is None
    assert _names(store.layout.pending) == [name]
    assert _names(store.layout.claimed) == []


async def test_a_cancelled_rollout_is_never_claimed(store: FileStore) -> None:
    rollout = await store.enqueue_rollout(input={"n": 1})
    await store.update_rollout(rollout.rollout_id, status="cancelled")
    _old_token(store, rollout.rollout_id, 1)  # whatever token is left behind

    assert await store.dequeue_rollout() is None
    assert _names(store.layout.pending) == []
    assert _names(store.layout.claimed) == []
    assert list(await store.query_attempts(rollout.rollout_id)) == []


async def test_dequeue_makes_no_attempt_directory_until_the_attempt_writes(store: FileStore) -> None:
    await store.enqueue_rollout(input={"n": 1})
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    attempts = store.layout.attempts_dir(attempted.rollout_id)
    assert not attempts.exists()  # a claim costs no mkdir and no heartbeat file

    assert await store.heartbeat(attempted.rollout_id, attempted.attempt.attempt_id)
    assert [p.name for p in attempts.iterdir()] == [f"0001-{attempted.attempt.attempt_id}"]
    fetched = await store.get_latest_attempt(attempted.rollout_id)
    assert fetched is not None
    assert fetched.status == "preparing"


async def test_a_record_that_cannot_be_read_leaves_the_token_queued(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rollout = await store.enqueue_rollout(input={"n": 1})
    [name] = _names(store.layout.pending)
    real_update = store._records.update

    def failing(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(store._records, "update", real_update)  # once
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store._records, "update", failing)
    with pytest.raises(OSError, match="Input/output"):
        await store.dequeue_rollout()
    assert _names(store.layout.pending) == [name]  # its name, so its place in the queue
    assert _names(store.layout.claimed) == []
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    assert attempted.rollout_id == rollout.rollout_id


@pytest.mark.parametrize("status", ["cancelled", "succeeded"])
async def test_a_claimer_that_died_on_a_stale_token_adds_no_attempt(
    store: FileStore, clock: FakeClock, status: str
) -> None:
    rollout = await store.enqueue_rollout(input={"n": 1})
    await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    [name] = _names(store.layout.pending)  # the token the update left behind
    # A runner renamed it into claimed/ and was killed before reading the record.
    os.rename(store.layout.pending / name, store.layout.claimed / f"{rollout.rollout_id}.1.at-0000dead.json")
    store.reap()  # the reaper sees the claim...
    clock.advance(6)  # ...and past claim_grace_seconds, judges it
    store.reap()
    assert _names(store.layout.claimed) == []
    assert list(await store.query_attempts(rollout.rollout_id)) == []
    record = await store.get_rollout_by_id(rollout.rollout_id)
    assert record is not None
    assert record.status == status


async def test_a_stale_decision_is_closed_without_an_attempt(store: FileStore, clock: FakeClock) -> None:
    # The reaper expired the claim while the rollout was queued; then the rollout was closed.
    rollout = await store.enqueue_rollout(input={"n": 1})
    await store.update_rollout(rollout.rollout_id, status="succeeded")
    journal = store.layout.expired / f"{rollout.rollout_id}.1.at-0000dead.unresponsive.json"
    journal.write_bytes(b"{}\n")
    store.reap()
    clock.advance(6)
    store.reap()
    assert not journal.exists()
    assert list(await store.query_attempts(rollout.rollout_id)) == []


async def test_the_first_heartbeat_of_an_attempt_is_reported(store: FileStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input={"n": 1})
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    assert attempted.attempt.last_heartbeat_time is None
    clock.advance(2)
    assert await store.heartbeat(attempted.rollout_id, attempted.attempt.attempt_id)
    latest = await store.get_latest_attempt(attempted.rollout_id)
    assert latest is not None
    assert latest.last_heartbeat_time == clock.time()


async def test_changing_a_queried_rollout_changes_no_later_answer(store: FileStore) -> None:
    await store.enqueue_rollout(input={"n": 1})
    assert await store.dequeue_rollout() is not None
    [rollout] = list(await store.query_rollouts())
    assert isinstance(rollout, AttemptedRollout)
    rollout.attempt.status = "failed"
    rollout.attempt.worker_id = "mine"
    [again] = list(await store.query_rollouts(status_in=["preparing"]))
    assert isinstance(again, AttemptedRollout)
    assert again.attempt.status == "preparing"
    assert again.attempt.worker_id is None


async def test_a_worker_log_that_cannot_be_written_does_not_fail_a_committed_dequeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an adversarial pass: with workers/ not writable, dequeue recorded the attempt,
    then failed on the worker's log (exit 1): the attempt was nobody's, preparing for good."""
    store = FileStore(tmp_path / "s")
    try:
        queued = await store.enqueue_rollout(input="x")

        def unwritable(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", "workers/w1")

        monkeypatch.setattr(store._engine.workers, "sync", unwritable)
        attempted = await store.dequeue_rollout(worker_id="w1")
        assert attempted is not None
        assert attempted.rollout_id == queued.rollout_id
    finally:
        store.close()
