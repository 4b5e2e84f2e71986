"""``agl check --fix`` rebuilding the rollout index while other processes write.

The rebuild removes every index log, so the lines writers append meanwhile (to the
logs being removed) are gone; the records are not. Real processes: two runners
dequeue and finish rollouts while this process forces rebuilds with a corrupt line.
Afterwards the index must agree with the records without another ``--fix``. (The
runners make no new rollouts: ``--fix`` takes a rollout directory without a revision
for an enqueue a crash cut short, docs/behaviour.md.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import mp_index_workers
import pytest
from test_multiprocess import SPAWN, children, read_result
from test_rollout_index import dump, index_logs, reference

from store_fs import FileStore
from store_fs._disk.rollout_index import PRUNED, Entry
from store_fs.models import EnqueueRolloutRequest, RolloutStatus


def _corrupt_line(store: FileStore) -> None:
    logs = index_logs(store)
    with open(logs[0] if logs else store._index.log_path(), "ab") as f:
        f.write(b"not json\n")


ROLLOUTS = 1200  # enough work for the writers to outlast a rebuild or two on a busy machine


def test_a_rebuild_during_writes_keeps_every_rollout_indexed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    checker = FileStore(root)
    asyncio.run(checker.enqueue_many_rollouts([EnqueueRolloutRequest(input=i) for i in range(ROLLOUTS)]))
    go = SPAWN.Event()
    writers = [tmp_path / f"runner-{i}.json" for i in range(2)]
    rebuilds = 0
    with children() as kids:
        for i, out in enumerate(writers):
            kids.start(mp_index_workers.index_finisher, str(root), str(out), i, go)
        time.sleep(0.2)
        go.set()
        while any(p.is_alive() for p in kids.procs):
            _corrupt_line(checker)
            kinds = {p.kind for p in checker.check(fix=True) if p.fixed}
            # A rebuild counts when it began and ended with the writers writing (two in a row
            # asked for the same on an idle machine, and failed when one rebuild was slow).
            rebuilds += "corrupt-index-line" in kinds and any(p.is_alive() for p in kids.procs)
        kids.join(time.monotonic() + 60)
        assert [p.exitcode for p in kids.procs] == [0, 0]
    assert rebuilds >= 1  # the writers were still writing during a whole rebuild
    finished = [rid for out in writers for rid in read_result(out)["finished"]]
    assert len(set(finished)) == len(finished) == ROLLOUTS

    fresh = FileStore(root, create=False)
    stale = [p.detail for p in fresh.check() if p.kind != "temp-file"]
    assert stale == []
    statuses: list[RolloutStatus | None] = ["queuing", "preparing", "succeeded", "failed", None]
    for status in statuses:
        status_in = None if status is None else [status]
        got = dump(asyncio.run(fresh.query_rollouts(status_in=status_in)))
        assert got == asyncio.run(reference(fresh, status_in=status_in))
    assert asyncio.run(fresh.statistics())["total_rollouts"] == ROLLOUTS
    fresh.close()
    checker.close()


async def test_a_rebuild_keeps_the_tombstones_of_pruned_rollouts(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    kept = await store.enqueue_rollout(input=1)
    gone = "ro-00000000dead"
    tomb = Entry(gone, 4, PRUNED, kept.start_time, 0)
    store._index.append([tomb])  # as `agl prune` leaves it: no record, a tombstone
    _corrupt_line(store)
    assert {p.kind for p in store.check(fix=True)} == {"corrupt-index-line"}
    assert store._index.load().entries[gone] == tomb
    assert store.check() == []
    assert [r.rollout_id for r in await store.query_rollouts()] == [kept.rollout_id]
    store.close()


async def test_what_an_enqueue_in_flight_leaves_is_passed_over_for_the_grace(tmp_path: Path) -> None:
    """A pending token without its rollout, and a rollout directory without its first revision,
    are how every enqueue looks for a moment. ``check --fix`` took them for a crash's leftovers:
    it deleted the token (the rollout then stayed queuing, never dequeued) or moved the directory
    away with the revision linked meanwhile (a rollout whose enqueue returned was gone)."""
    store = FileStore(tmp_path / "store")
    layout = store.layout
    token_only = "ro-00000000aaaa"
    store._queue.publish_pending(token_only, 1)
    no_revision = "ro-00000000bbbb"
    layout.history_dir(no_revision).mkdir(parents=True)
    assert store.check(fix=True) == []  # default grace: the claim grace (30 s)
    assert [t.rollout_id for t in store._queue.list_pending()] == [token_only]
    assert layout.history_dir(no_revision).is_dir()
    found = store.check(fix=True, grace=0)  # after a crash, nothing running
    assert sorted((p.kind, p.fixed) for p in found) == [("no-record", True), ("orphan-pending", True)]
    assert store._queue.list_pending() == []
    assert not layout.rollout_dir(no_revision).exists()
    store.close()


def test_check_fix_beside_an_enqueuer_loses_no_rollout(tmp_path: Path) -> None:
    """Real processes: one enqueues rollouts one by one while this one runs ``check --fix`` in
    a loop. Every rollout whose enqueue returned is readable and dequeued exactly once."""
    root = tmp_path / "store"
    FileStore(root).close()
    go = SPAWN.Event()
    out = tmp_path / "enqueuer.json"
    checker = FileStore(root, create=False)
    checks = 0
    with children() as kids:
        kids.start(mp_index_workers.enqueuer, str(root), str(out), 300, go)
        time.sleep(0.2)
        go.set()
        while kids.procs[0].is_alive():
            found = checker.check(fix=True)
            assert [p for p in found if p.kind in ("no-record", "orphan-pending", "not-queued")] == []
            checks += 1
        kids.join(time.monotonic() + 60)
        assert [p.exitcode for p in kids.procs] == [0]
    assert checks >= 2
    enqueued = read_result(out)["enqueued"]
    assert len(enqueued) == 300
    drained: list[str] = []
    while (attempted := asyncio.run(checker.dequeue_rollout())) is not None:
        drained.append(attempted.rollout_id)
    assert sorted(drained) == sorted(enqueued)
    assert checker.check() == []
    checker.close()


async def test_an_enqueue_that_finishes_while_check_looks_is_not_taken_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check read no revision, then the enqueue linked revision 1 and made rollout.json before
    check asked whether an enqueue was in flight (no: rollout.json is there): the rollout, whose
    enqueue had returned, went to quarantine (seen once in CI). Check reads the revision again."""
    store = FileStore(tmp_path / "store")
    rid = (await store.enqueue_rollout(input=1)).rollout_id
    records = store._engine.records
    real_head = records.head
    missed: list[str] = []

    def head(rollout_id: str, **kwargs: Any) -> Any:
        if rollout_id == rid and not missed:
            missed.append(rollout_id)
            return None  # as read just before the revision was linked
        return real_head(rollout_id, **kwargs)

    monkeypatch.setattr(records, "head", head)
    assert store.check(fix=True) == []
    assert missed == [rid]
    assert (await store.get_rollout_by_id(rid)) is not None
    store.close()


def test_check_on_a_busy_store_finds_no_index_ahead_and_never_rebuilds_it(tmp_path: Path) -> None:
    """Real processes update rollouts while this one runs ``check``: it read a record, then the
    index, and a revision made with its line in between read as an index ahead of its record
    ("restored from an older copy?"): exit 7, and ``--fix`` rebuilt the whole index each time
    (found by an adversarial pass). Now an entry ahead is read again before it is a problem."""
    root = tmp_path / "store"
    checker = FileStore(root)
    rids = [
        r.rollout_id
        for r in asyncio.run(
            checker.enqueue_many_rollouts([EnqueueRolloutRequest(input=i) for i in range(20)])
        )
    ]
    go = SPAWN.Event()
    outs = [tmp_path / f"updater-{i}.json" for i in range(2)]
    kinds: list[str] = []
    checks = 0
    with children() as kids:
        for out in outs:
            kids.start(mp_index_workers.metadata_updater, str(root), str(out), rids, 40, go)
        time.sleep(0.2)
        go.set()
        while any(p.is_alive() for p in kids.procs):
            kinds += [p.kind for p in checker.check(fix=checks % 2 == 1)]
            checks += 1
        kids.join(time.monotonic() + 60)
        assert [p.exitcode for p in kids.procs] == [0, 0]
    assert checks >= 4
    assert [k for k in kinds if k in ("index-ahead", "corrupt-index-line")] == []
    assert checker.check() == []
    checker.close()


def test_a_dequeue_in_flight_is_not_reported_by_a_plain_check(tmp_path: Path) -> None:
    """Found by an adversarial pass: `agl check` on a busy store exited 7 now and then, naming a
    claim whose attempt a dequeue was recording that moment (or a completion's decision not yet
    applied). Tokens and decisions changed less than ``grace`` seconds ago are passed over, as
    an enqueue in flight already was; ``grace=0`` reports them at once."""
    import os

    from store_fs._disk.queue_tokens import ClaimToken

    store = FileStore(tmp_path / "s")
    try:
        rid = asyncio.run(store.enqueue_rollout(input="x")).rollout_id
        (pending,) = list(store.layout.pending.iterdir())
        claim = ClaimToken(rid, 1, "at-00000001")
        os.rename(pending, store.layout.claimed / claim.name)  # claimed; the attempt not written yet
        assert store.check() == []  # the default grace: a dequeue in flight
        assert [p.kind for p in store.check(grace=0)] == ["orphan-claim"]
    finally:
        store.close()
