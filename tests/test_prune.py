"""agl prune: finished rollouts removed for good, crash-safely, while runners keep working."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import AGL, agl_env
from datasets_helpers import make_rollout

from store_fs import FakeClock, FileStore
from store_fs._disk.maintenance import maintenance_lock
from store_fs._disk.rollout_index import PRUNED
from store_fs.datasets import Cursor, RolloutFilter, view_rows
from store_fs.errors import MaintenanceBusyError
from store_fs.prune import prune_store

ANY = RolloutFilter.of(endings=None)
WORKERS = Path(__file__).with_name("prune_workers.py")


def _by_status(*statuses: Any) -> RolloutFilter:
    return RolloutFilter.of(status_in=statuses, endings=None)


async def _listed(store: FileStore) -> set[str]:
    return {r.rollout_id for r in await store.query_rollouts()}


async def _assert_gone(store: FileStore, rid: str) -> None:
    assert await store.get_rollout_by_id(rid) is None
    assert rid not in await _listed(store)
    assert rid not in {r.rollout_id for r in await store.query_rollouts(status_in=["failed", "succeeded"])}
    assert list(await store.query_rollouts(rollout_id_in=[rid])) == []
    assert list(await store.query_spans(rid)) == []
    assert list(await store.query_attempts(rid)) == []
    assert rid not in {r["rollout_id"] async for r in view_rows(store, "rollouts", ANY)}


async def test_a_dry_run_lists_what_would_go_and_its_size(store: FileStore) -> None:
    failed = await make_rollout(store, end="failed")
    await make_rollout(store)
    report = prune_store(store, _by_status("failed"), dry_run=True)
    assert [r.rollout_id for r in report.rollouts] == [failed]
    assert report.bytes > 1000  # the record's revisions and the span file
    assert await store.get_rollout_by_id(failed) is not None
    assert not store.layout.trash.exists()


async def test_pruned_rollouts_are_gone_from_every_query_count_and_export(store: FileStore) -> None:
    keep = await make_rollout(store)
    failed = await make_rollout(store, end="failed")
    cancelled = await make_rollout(store, end="cancelled")
    before = await store.statistics()
    report = prune_store(store, _by_status("failed", "cancelled"))
    assert sorted(r.rollout_id for r in report.rollouts) == sorted([failed, cancelled])
    for rid in (failed, cancelled):
        await _assert_gone(store, rid)
    after = await store.statistics()
    assert after["total_rollouts"] == before["total_rollouts"] - 2 == 1
    assert after["total_attempts"] == 1
    assert after["total_spans"] == before["total_spans"] // 3
    assert await _listed(store) == {keep}
    assert store.check() == []
    # The index holds tombstones, the change feed says what happened, the trash is empty.
    view = store._index.load()
    assert {view.entries[r].status for r in (failed, cancelled)} == {PRUNED}
    events = [json.loads(line) for p in store.layout.events.iterdir() for line in p.read_text().splitlines()]
    assert {e["rollout_id"] for e in events if e["status"] == PRUNED} == {failed, cancelled}
    assert list(store.layout.trash.iterdir()) == []
    # A fresh process agrees (nothing is cached).
    fresh = FileStore(store.root, create=False)
    assert await _listed(fresh) == {keep}
    assert (await fresh.statistics())["total_rollouts"] == 1


async def test_keep_last_per_resources_id_and_older_than(store: FileStore, clock: FakeClock) -> None:
    made: dict[str, list[str]] = {"rs-aaaaaaaaaaaa": [], "rs-bbbbbbbbbbbb": []}
    for _ in range(4):
        for resources in made:
            made[resources].append(await make_rollout(store, resources_id=resources))
            clock.advance(60)
    report = prune_store(store, ANY, keep_last=1, dry_run=True)
    assert sorted(r.rollout_id for r in report.rollouts) == sorted(
        made["rs-aaaaaaaaaaaa"][:3] + made["rs-bbbbbbbbbbbb"][:3]
    )
    # Finished over 5 minutes ago (A0, B0, A1), less the newest one of each version among those.
    old = RolloutFilter.of(endings=None, until=clock.time() - 300)
    report = prune_store(store, old, keep_last=1)
    assert [r.rollout_id for r in report.rollouts] == [made["rs-aaaaaaaaaaaa"][0]]
    assert len(await _listed(store)) == 7


async def test_queued_running_and_live_attempts_are_never_touched(store: FileStore) -> None:
    queued = (await store.enqueue_rollout(input={"q": 1})).rollout_id
    running = await make_rollout(store, end=None)
    # Succeeded by its second attempt while the first is alive again (a late span revived it).
    revived = await make_rollout(store, end=None)
    first = await store.get_latest_attempt(revived)
    assert first is not None
    second = await store.start_attempt(revived)
    await store.update_attempt(revived, second.attempt.attempt_id, status="succeeded")
    assert first.status == "running"  # its spans made it so
    report = prune_store(store, RolloutFilter.of(endings=None, status_in=["succeeded", "queuing", "running"]))
    assert report.rollouts == []
    assert {queued, running, revived} <= await _listed(store)


async def test_the_archive_puts_pruned_rollouts_back(store: FileStore, tmp_path: Path) -> None:
    failed = await make_rollout(store, end="failed")
    archive = tmp_path / "pruned.tar"
    prune_store(store, _by_status("failed"), archive=archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert any(n.endswith(f"{failed}/rollout.json") for n in names)
        assert all(n.startswith("rollouts/") for n in names)
        tar.extractall(store.root, filter="tar")
    with pytest.raises(FileExistsError):
        prune_store(store, _by_status("failed"), archive=archive)
    assert {p.kind for p in store.check()} == {"index-ahead"}  # the tombstone against the record
    store.check(fix=True)
    assert store.check() == []
    fresh = FileStore(store.root, create=False)
    assert failed in await _listed(fresh)
    assert (await fresh.statistics())["total_rollouts"] == 1
    assert [s.name for s in await fresh.query_spans(failed)][-1] == "agentlightning.annotation"


async def test_a_process_that_read_a_rollout_before_sees_it_gone(tmp_path: Path) -> None:
    reader = FileStore(tmp_path / "s")
    failed = await make_rollout(reader, end="failed")
    assert await reader.get_rollout_by_id(failed) is not None  # cached in this process
    prune_store(FileStore(tmp_path / "s", create=False), _by_status("failed"))
    await _assert_gone(reader, failed)
    assert (await reader.statistics())["total_rollouts"] == 0


async def test_an_idempotency_key_used_after_a_prune_makes_a_new_rollout(
    store: FileStore, clock: FakeClock
) -> None:
    first = await make_rollout(store, end="failed", idempotency_key="sample-7")
    prune_store(store, _by_status("failed"))
    clock.advance(1)
    again = await make_rollout(store, idempotency_key="sample-7")
    assert again == first  # the id comes from the key
    assert await _listed(store) == {again}
    assert (await store.statistics())["total_rollouts"] == 1
    assert store.check() == []


async def test_prune_is_refused_while_maintenance_runs(store: FileStore) -> None:
    await make_rollout(store, end="failed")
    script = "import sys,time\nfrom store_fs._disk.maintenance import maintenance_lock\n"
    script += "from store_fs._disk.layout import Layout\nfrom pathlib import Path\n"
    script += (
        "with maintenance_lock(Layout(Path(sys.argv[1]))):\n    print('held', flush=True); time.sleep(30)\n"
    )
    command = [sys.executable, "-c", script, str(store.root)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(MaintenanceBusyError):
                prune_store(store, _by_status("failed"))
        finally:
            holder.kill()
    with maintenance_lock(store.layout):
        pass  # released with its holder


def _interrupted_run(store: FileStore, rid: str) -> Path:
    """What a prune killed right after its rename leaves: the rollout in trash, no tombstone."""
    run = store.layout.trash / "20260101T000000Z-host-1"
    target = run / "rollouts" / rid[3:5] / rid
    target.parent.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"archive": None, "started": 0, "by": "host-1"}))
    os.rename(store.layout.rollout_dir(rid), target)
    return run


async def test_check_reports_and_finishes_an_interrupted_prune(store: FileStore) -> None:
    keep = await make_rollout(store)
    failed = await make_rollout(store, end="failed")
    run = _interrupted_run(store, failed)
    await _assert_gone(store, failed)  # already out of the store for every listing
    # Made a moment ago by another host's prune: it may still be running, no damage yet ...
    assert store.check() == []
    # ... unless nothing runs (after a crash), or once it changed nothing for the grace time.
    assert [p.kind for p in store.check(grace=0)] == ["unfinished-prune"]
    fixed = store.check(fix=True)
    assert [(p.kind, p.fixed) for p in fixed] == [("unfinished-prune", True)]
    assert not run.exists()
    assert store.check() == []
    assert (await store.statistics())["total_rollouts"] == 1
    assert await _listed(store) == {keep}


async def test_a_write_after_the_prune_is_reported_and_quarantined(store: FileStore) -> None:
    failed = await make_rollout(store, end="failed")
    prune_store(store, _by_status("failed"))
    late = store.layout.rollout_dir(failed) / "attempts" / "0001-at-00000000" / "heartbeat.host-1"
    late.parent.mkdir(parents=True)
    late.write_text("1 0 0\n")
    assert [p.kind for p in store.check()] == ["pruned-leftover"]
    assert [p.fixed for p in store.check(fix=True)] == [True]
    assert store.check() == []
    assert not store.layout.rollout_dir(failed).exists()


async def test_a_cursor_never_returns_a_pruned_rollout(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    failed = await make_rollout(store, end="failed")
    cursor = Cursor.start()
    prune_store(store, _by_status("failed"))
    assert cursor.finished(store) == []
    assert failed not in {r["rollout_id"] async for r in view_rows(store, "triplets", ANY)}
    store.close()


# -- real processes ------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_prune_while_runners_and_an_enqueuer_work(tmp_path: Path) -> None:
    root = tmp_path / "s"
    FileStore(root).close()
    seconds = 4.0
    logs = [tmp_path / f"runner{i}.jsonl" for i in range(2)] + [tmp_path / "enqueuer.jsonl"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKERS), "runner", str(root), str(logs[i]), str(seconds), f"w{i}"],
            env=_env(),
        )
        for i in range(2)
    ]
    procs.append(
        subprocess.Popen(
            [sys.executable, str(WORKERS), "enqueuer", str(root), str(logs[2]), str(seconds)], env=_env()
        )
    )
    pruned: list[str] = []
    store = FileStore(root, create=False)
    try:
        # Prune for as long as the workers work (their clock starts once they are up, which
        # takes a while on a loaded machine), then once more after they stopped.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            working = any(proc.poll() is None for proc in procs)
            time.sleep(0.2)
            report = prune_store(store, ANY, keep_last=5)
            pruned += [r.rollout_id for r in report.rollouts]
            assert all(r.status in ("succeeded", "failed") for r in report.rollouts)
            if not working:
                break
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=30)
            finally:
                proc.kill()
    events = [e for log in logs for e in _events(log)]
    assert [e for e in events if e["event"] == "error"] == []
    finished = {e["rollout_id"] for e in events if e["event"] == "finished"}
    enqueued = {e["rollout_id"] for e in events if e["event"] == "enqueued"}
    assert pruned, "the prunes removed nothing"
    assert set(pruned) <= finished  # only rollouts a runner had finished
    assert len(pruned) == len(set(pruned))
    present = asyncio.run(_listed(store))
    assert present == enqueued - set(pruned)
    assert store.check() == []
    assert asyncio.run(store.statistics())["total_rollouts"] == len(present)


async def _seed(root: Path, n: int) -> None:
    store = FileStore(root)
    for i in range(n):
        await make_rollout(store, calls=1, end="failed" if i % 3 == 0 else "succeeded")
    await store.enqueue_rollout(input={"q": "queued"})
    store.close()


def test_a_prune_killed_at_any_point_leaves_nothing_half_removed(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    asyncio.run(_seed(seed, 150))
    original = {p.name for bucket in (seed / "rollouts").iterdir() for p in bucket.iterdir()}
    for trial, delay in enumerate((0.0, 0.05, 0.15, 0.3, 0.6)):
        root = tmp_path / f"s{trial}"
        shutil.copytree(seed, root, symlinks=True)
        archive = tmp_path / f"a{trial}.tar"
        command = [sys.executable, str(WORKERS), "prune", str(root), str(archive)]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env()) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline().strip() == "start"
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
        _check_after_kill(root, original)
        _check_after_recovery(root, original, archive)


def _check_after_kill(root: Path, original: set[str]) -> None:
    store = FileStore(root, create=False)
    present = {p.name for bucket in (root / "rollouts").iterdir() for p in bucket.iterdir()}
    assert {p.kind for p in store.check()} <= {"unfinished-prune"}
    listed = asyncio.run(_listed(store))
    assert listed == present  # every rollout is there whole or not at all
    for rid in original - present:
        assert asyncio.run(store.get_rollout_by_id(rid)) is None


def _check_after_recovery(root: Path, original: set[str], archive: Path) -> None:
    store = FileStore(root, create=False)
    store.check(fix=True)
    assert store.check() == []
    present = {p.name for bucket in (root / "rollouts").iterdir() for p in bucket.iterdir()}
    assert asyncio.run(_listed(store)) == present
    assert asyncio.run(store.statistics())["total_rollouts"] == len(present)
    removed = original - present
    if removed:  # the archive holds exactly what went
        with tarfile.open(archive) as tar:
            archived = {n.split("/")[2] for n in tar.getnames() if n.count("/") >= 2}
        assert archived == removed
    assert not list(root.joinpath("trash").glob("*"))


async def test_a_rollout_that_changed_while_being_removed_is_put_back_with_what_was_written_meanwhile(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rollout changed (no longer finished) while prune moved it away, and a late writer
    made files under its old name meanwhile: prune logged "left in trash", reported it kept,
    then deleted the run's directory with it (found by an adversarial pass). It is put back,
    the late files merged into it; one both hold goes to quarantine."""
    import threading

    from store_fs._disk import fsio

    rid = await make_rollout(store, end="failed")
    before = [s.span_id for s in await store.query_spans(rid)]
    home = store.layout.rollout_dir(rid)
    (attempt_dir,) = (home / "attempts").iterdir()
    (span_log,) = attempt_dir.glob("spans.*.jsonl")
    late_span = json.loads(span_log.read_text().splitlines()[0])
    late_span.update(span_id="00000000000000ff", sequence_id=99, name="late")
    other = FileStore(store.root, create=False)
    real_move = fsio.move

    def move(source: Any, target: Any, **kwargs: Any) -> bool:
        if Path(source) == home:
            # Another process revives it first (a retry, an update), then writes late files.
            revive = other.update_rollout(rid, status="running")
            reviving = threading.Thread(target=asyncio.run, args=(revive,))
            reviving.start()
            reviving.join()
        moved: bool = real_move(source, target, **kwargs)
        if Path(source) == home:
            (home / "attempts" / attempt_dir.name).mkdir(parents=True)
            (home / "attempts" / attempt_dir.name / "heartbeat.late-1").write_text("1 0 0\n")
            # A writer whose open file was gone re-made its span log under the old name.
            (home / "attempts" / attempt_dir.name / span_log.name).write_text(json.dumps(late_span) + "\n")
            (home / "rollout.json").write_text('{"late": true}\n')
        return moved

    monkeypatch.setattr(fsio, "move", move)
    report = prune_store(store, _by_status("failed"))
    monkeypatch.undo()
    assert report.rollouts == []
    back = await store.get_rollout_by_id(rid)
    assert back is not None
    assert back.status == "running"
    assert sorted(s.span_id for s in await store.query_spans(rid)) == sorted([*before, "00000000000000ff"])
    assert (home / "attempts" / attempt_dir.name / "heartbeat.late-1").read_text() == "1 0 0\n"
    assert list(store.layout.trash.iterdir()) == []
    kept = [p for p in (store.root / "quarantine").rglob("rollout.json") if p.is_file()]
    assert [p.read_text() for p in kept] == ['{"late": true}\n']
    assert store.check() == []
    other.close()


def _in_another_process(root: Path, body: str) -> str:
    lines = "".join(f"    {line}\n" for line in body.strip().splitlines())
    code = (
        "import asyncio\nfrom store_fs import FileStore\n"
        f"s = FileStore({str(root)!r})\nasync def m():\n{lines}asyncio.run(m())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_a_process_that_read_a_pruned_rollout_sees_the_one_recreated_under_its_id(
    tmp_path: Path,
) -> None:
    """A long-lived process (an algorithm, a server worker) read a rollout at revision 4; it
    was pruned, and another process re-created it with the same idempotency key, up to its own
    revision 4. The long-lived process kept returning the old record, and its next update was
    built on it, overwriting the new rollout (found by an adversarial pass). The cached
    revision's file identity tells the new file from the old one."""
    root = tmp_path / "store"
    mine = FileStore(root)
    rid = (await mine.enqueue_rollout({"v": "old"}, idempotency_key="K")).rollout_id
    run_to_rev_4 = (
        "r = await s.dequeue_rollout(worker_id='w')\n"
        "await s.update_attempt(r.rollout_id, r.attempt.attempt_id, status='running')\n"
    )
    _in_another_process(
        root, run_to_rev_4 + "await s.update_attempt(r.rollout_id, r.attempt.attempt_id, status='succeeded')"
    )
    old = await mine.get_rollout_by_id(rid)
    assert old is not None
    assert (old.status, old.input) == ("succeeded", {"v": "old"})
    pruned = subprocess.run(
        [AGL, "--store", str(root), "-q", "prune", "--rollout", rid], env=agl_env(root), timeout=60
    )
    assert pruned.returncode == 0
    _in_another_process(
        root,
        "await s.enqueue_rollout({'v': 'new'}, idempotency_key='K')\n"
        + run_to_rev_4
        + "await s.update_attempt(r.rollout_id, r.attempt.attempt_id, metadata={'n': 1})",
    )
    seen = await mine.get_rollout_by_id(rid)
    assert seen is not None
    assert (seen.status, seen.input) == ("running", {"v": "new"})
    assert (await mine.enqueue_rollout({"v": "x"}, idempotency_key="K")).input == {"v": "new"}
    await mine.update_rollout(rid, metadata={"tag": "mine"})
    after = _in_another_process(
        root, f"r = await s.get_rollout_by_id({rid!r})\nprint(r.status, r.input['v'], r.metadata)"
    )
    assert after == "running new {'tag': 'mine'}"
    assert mine.check() == []
    mine.close()


async def test_a_commit_racing_prunes_move_of_a_revived_rollout_waits_for_it_to_come_back(
    tmp_path: Path,
) -> None:
    """Prune moves a rollout out, sees it was revived, and puts it back; a runner's commit that
    met the moment raised a raw FileNotFoundError (CLI: 'agl: [Errno 2]', exit 1), and its
    decision waited for a reaper (an adversarial pass). The write now looks again meanwhile."""
    import threading

    store = FileStore(tmp_path / "store")
    rid = (await store.enqueue_rollout(input=1)).rollout_id
    first = await store.dequeue_rollout(worker_id="w")
    assert first is not None
    await store.update_attempt(rid, first.attempt.attempt_id, status="succeeded")
    await store.update_rollout(rid, status="requeuing")  # agl rollouts retry
    second = await store.dequeue_rollout(worker_id="w")
    assert second is not None
    home = store.layout.rollout_dir(rid)
    aside = tmp_path / "trash" / rid
    aside.parent.mkdir()
    records = store._records
    real_try = records._try_write

    def moved_out_then_back(*args: Any, **kwargs: Any) -> bool:
        records._try_write = real_try  # type: ignore[method-assign]
        os.rename(home, aside)  # prune's move, right before the commit's revision
        threading.Timer(0.05, os.rename, (aside, home)).start()  # its verify puts it back
        return real_try(*args, **kwargs)

    records._try_write = moved_out_then_back  # type: ignore[method-assign]
    done = await store.update_attempt(rid, second.attempt.attempt_id, status="succeeded")
    assert done.status == "succeeded"
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None
    assert rollout.status == "succeeded"
    assert store.check() == []
    store.close()


async def test_a_revision_whose_directory_moved_after_its_link_is_not_written_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a durable store the link is followed by the directory's sync: prune's move between the
    two made the sync fail, the write was taken as not done, and its change applied again on the
    revision it had made (two attempts for one start_attempt; found in review)."""
    import threading

    from store_fs._disk import fsio

    store = FileStore(tmp_path / "store", durability="fsync")
    rid = (await store.enqueue_rollout(input=1)).rollout_id
    home = store.layout.rollout_dir(rid)
    aside = tmp_path / "aside"
    real_sync = fsio.fsync_dir
    moved: list[bool] = []

    def moved_before_the_sync(path: Any) -> None:
        if not moved and str(path).startswith(str(home)) and str(path).endswith("history"):
            moved.append(True)
            os.rename(home, aside)
            threading.Timer(0.05, os.rename, (aside, home)).start()
        real_sync(path)

    monkeypatch.setattr(fsio, "fsync_dir", moved_before_the_sync)
    attempted = await store.start_attempt(rid, worker_id="w")
    monkeypatch.undo()
    assert moved
    time.sleep(0.1)
    attempts = await store.query_attempts(rid)
    assert [a.attempt_id for a in attempts] == [attempted.attempt.attempt_id]
    store.close()


async def test_damage_behind_a_cached_record_is_named_as_damage(tmp_path: Path) -> None:
    """From review: with the identity check, a link loop in place of a cached rollout's
    history/ raised a raw OSError instead of the CorruptRecordError a fresh read gives."""
    from store_fs.errors import CorruptRecordError

    store = FileStore(tmp_path / "store")
    rid = (await store.enqueue_rollout(input=1)).rollout_id
    assert await store.get_rollout_by_id(rid) is not None  # cached
    history = store.layout.history_dir(rid)
    shutil.rmtree(history)
    history.symlink_to(history)  # a loop
    with pytest.raises(CorruptRecordError, match="symbolic link loop"):
        await store.get_rollout_by_id(rid)
    store.close()
