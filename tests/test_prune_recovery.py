"""Recovering an interrupted ``agl prune``: what the next prune or ``agl check --fix`` finds in
``trash/`` is finished without bringing a removed rollout back, without removing a rollout no
archive holds, and without stopping on a damaged ``run.json``."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl, assert_error
from datasets_helpers import make_rollout

from store_fs import FileStore
from store_fs._disk import fsio
from store_fs._disk.removal import RemovalRun
from store_fs.datasets import RolloutFilter
from store_fs.errors import ConflictError
from store_fs.prune import prune_store

ANY = RolloutFilter.of(endings=None)


async def _listed(store: FileStore) -> set[str]:
    return {r.rollout_id for r in await store.query_rollouts()}


def _archived(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return {name.split("/")[2] for name in tar.getnames() if name.count("/") >= 2}


def _stop_inside_a_history(path: Path) -> str:
    """What a delete of run ``path`` stopped part-way leaves: one rollout without its mirror and
    its newest revision (ext4 lists ``history/`` newest first), the older ones still there."""
    history = min(path.glob("rollouts/*/*/history"))
    (history.parent / "rollout.json").unlink()
    max(history.iterdir()).unlink()
    return history.parent.name


async def _assert_removed_for_good(store: FileStore, removed: set[str], kept: set[str]) -> None:
    for rid in removed:
        assert await store.get_rollout_by_id(rid) is None
        assert not store.layout.rollout_dir(rid).exists()
    assert await _listed(store) == kept
    assert (await store.statistics())["total_rollouts"] == len(kept)
    assert store.check() == []
    assert list(store.layout.trash.iterdir()) == []


# -- stopped while deleting ------------------------------------------------------------------


@pytest.mark.parametrize("finished_by", ["check --fix", "the next prune"])
async def test_a_prune_stopped_while_deleting_its_trash_brings_no_rollout_back(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, finished_by: str
) -> None:
    """Ctrl-C during the final delete left a rollout with only its older revisions (running,
    a live attempt): recovery took it for one that changed while being removed and put it back,
    stuck at that old revision, after its 'pruned' event (found by an adversarial pass)."""
    keep = await make_rollout(store, end=None)
    removed = {await make_rollout(store, end=end) for end in ("succeeded", "failed")}
    real_rmtree = shutil.rmtree
    stopped: list[str] = []

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if not stopped and Path(path).parent == store.layout.trash:
            stopped.append(_stop_inside_a_history(Path(path)))
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        prune_store(store, ANY)
    assert [p.kind for p in store.check()] == ["unfinished-prune"]
    if finished_by == "check --fix":
        assert [(p.kind, p.fixed) for p in store.check(fix=True)] == [("unfinished-prune", True)]
    else:
        report = prune_store(store, ANY)
        assert report.rollouts == []
        assert [line.endswith("finished deleting") for line in report.recovered] == [True]
    await _assert_removed_for_good(store, removed, {keep})


def test_a_prune_killed_while_deleting_its_trash_brings_no_rollout_back(tmp_path: Path) -> None:
    """The same with a real SIGKILL: no ``finally`` runs, the lock dies with the process."""
    root = tmp_path / "s"
    store = FileStore(root)
    removed = {asyncio.run(make_rollout(store, end=end)) for end in ("succeeded", "failed", "cancelled")}
    store.close()
    child = (
        "import os, shutil, signal, sys\nfrom pathlib import Path\n"
        "from store_fs import FileStore\nfrom store_fs.datasets import RolloutFilter\n"
        "from store_fs.prune import prune_store\n"
        "def rmtree(path, *args, **kwargs):\n"
        "    history = min(Path(path).glob('rollouts/*/*/history'))\n"
        "    (history.parent / 'rollout.json').unlink()\n"
        "    max(history.iterdir()).unlink()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "shutil.rmtree = rmtree\n"
        "prune_store(FileStore(sys.argv[1], create=False), RolloutFilter.of(endings=None))\n"
    )
    killed = subprocess.run([sys.executable, "-c", child, str(root)], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    Agl(root, tmp_path).ok("check", "--fix")
    asyncio.run(_assert_removed_for_good(FileStore(root, create=False), removed, set()))


async def test_a_half_deleted_run_an_older_build_left_brings_no_rollout_back(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older build deleted the run's directory where it was (no ``.deleting`` rename): a
    rollout whose tombstone is in the index stays removed, whatever revision is left."""
    removed = {await make_rollout(store, end="failed")}

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # before deleting anything

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        prune_store(store, ANY)
    monkeypatch.undo()
    (run,) = store.layout.trash.iterdir()
    if run.name.endswith(".deleting"):  # this build renamed it first; an older one did not
        run = run.rename(run.with_name(run.name[1:].removesuffix(".deleting")))
    body = json.loads((run / "run.json").read_text())
    body.pop("archived", None)
    (run / "run.json").write_text(json.dumps(body))
    _stop_inside_a_history(run)
    store.check(fix=True)
    await _assert_removed_for_good(store, removed, set())


# -- archives ----------------------------------------------------------------------------------


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, removals: int) -> None:
    real_remove = RemovalRun.remove
    calls = 0

    def remove(self: RemovalRun, rollout_id: str) -> Any:
        nonlocal calls
        calls += 1
        if calls > removals:
            raise KeyboardInterrupt
        return real_remove(self, rollout_id)

    monkeypatch.setattr(RemovalRun, "remove", remove)


@pytest.mark.parametrize("run_again_by", ["agl", "prune_store"])
async def test_the_same_archived_prune_run_again_after_an_interruption_refuses(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_again_by: str
) -> None:
    """The rerun's recovery wrote the first run's archive at the path; the rerun then took the
    path for its own archive, removed the rest and said they were archived (adversarial pass)."""
    made = {await make_rollout(store) for _ in range(5)}
    archive = tmp_path / "pruned.tar"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        prune_store(store, ANY, archive=archive)
    monkeypatch.undo()
    assert not archive.exists()
    if run_again_by == "agl":
        res = Agl(store.root, tmp_path)("prune", "--status", "succeeded", "--archive", str(archive))
        assert_error(res, 6, str(archive), "nothing more was removed")
    else:
        with pytest.raises(ConflictError, match="nothing more was removed"):
            prune_store(store, ANY, archive=archive)
    # Every rollout is in the store or in the archive: none is in neither.
    archived = _archived(archive)
    assert len(archived) == 2
    assert await _listed(store) == made - archived
    assert store.check() == []
    assert list(store.layout.trash.iterdir()) == []


async def test_a_file_made_at_the_archive_path_during_a_prune_is_never_taken_for_its_archive(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = {await make_rollout(store) for _ in range(2)}
    archive = tmp_path / "pruned.tar"
    real_remove = RemovalRun.remove

    def remove(self: RemovalRun, rollout_id: str) -> Any:
        if not archive.exists():
            archive.write_text("someone else's\n")
        return real_remove(self, rollout_id)

    monkeypatch.setattr(RemovalRun, "remove", remove)
    with pytest.raises(ConflictError, match="move that file away"):
        prune_store(store, ANY, archive=archive)
    monkeypatch.undo()
    assert archive.read_text() == "someone else's\n"
    assert await _listed(store) == set()  # out of the store, waiting in the trash
    assert [p.kind for p in store.check()] == ["unfinished-prune"]
    with pytest.raises(ConflictError):
        store.check(fix=True)
    archive.rename(tmp_path / "theirs.txt")
    store.check(fix=True)
    assert _archived(archive) == made
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    await _assert_removed_for_good(store, made, set())


async def test_an_archive_linked_into_place_before_a_crash_is_known_as_the_runs_own(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between linking the archive into place and recording it in run.json: the
    temporary name still links to the same file, so recovery neither refuses nor rewrites."""
    made = {await make_rollout(store) for _ in range(2)}
    archive = tmp_path / "pruned.tar"
    real_publish = fsio.publish

    def publish(path: Path, data: bytes, **kwargs: Any) -> None:
        if path.name == "run.json" and json.loads(data).get("archived") is True:
            raise KeyboardInterrupt
        real_publish(path, data, **kwargs)

    monkeypatch.setattr(fsio, "publish", publish)
    with pytest.raises(KeyboardInterrupt):
        prune_store(store, ANY, archive=archive)
    monkeypatch.undo()
    written = archive.stat()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pruned.tar.")]
    assert [p.fixed for p in store.check(fix=True)] == [True]
    assert archive.stat().st_mtime_ns == written.st_mtime_ns  # not written again
    assert _archived(archive) == made
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    await _assert_removed_for_good(store, made, set())


# -- a damaged run.json ------------------------------------------------------------------------


def _interrupted_run(store: FileStore, rids: list[str], run_file: bytes | None) -> Path:
    """What a prune killed right after moving ``rids`` leaves, with ``run_file`` as run.json."""
    run = store.layout.trash / "20260101T000000Z-host-1"
    (run / "rollouts").mkdir(parents=True)
    if run_file is not None:
        (run / "run.json").write_bytes(run_file)
    for rid in rids:
        target = run / "rollouts" / rid[3:5] / rid
        target.parent.mkdir(exist_ok=True)
        store.layout.rollout_dir(rid).rename(target)
    return run


@pytest.mark.parametrize(
    "run_file",
    [b'{"archive": "/tmp/x', b"", None, b"[1]", b'{"archive": 7}'],
    ids=["torn", "empty", "missing", "not-an-object", "not-a-path"],
)
async def test_a_run_whose_run_file_cannot_be_used_is_finished_keeping_its_rollouts(
    store: FileStore, run_file: bytes | None
) -> None:
    """A torn run.json stopped every `agl check --fix` and prune ("unexpected JSONDecodeError",
    naming no file); one missing or of another shape lost the rollouts of a run that may have
    wanted an archive. Their removal is finished, and they are kept in quarantine."""
    keep = await make_rollout(store)
    removed = await make_rollout(store, end="failed")
    run = _interrupted_run(store, [removed], run_file)
    assert [(p.kind, p.fixed) for p in store.check(fix=True)] == [("unfinished-prune", True)]
    (kept,) = (store.root / "quarantine").glob(f"*/trash/{run.name}")
    assert (kept / "rollouts" / removed[3:5] / removed / "rollout.json").is_file()
    note = json.loads(kept.with_name(f"{run.name}.note.json").read_text())
    assert note["why"].startswith("run.json ")
    await _assert_removed_for_good(store, {removed}, {keep})


async def test_a_torn_run_file_is_named_and_the_repair_goes_on(store: FileStore, tmp_path: Path) -> None:
    removed = await make_rollout(store, end="failed")
    run = _interrupted_run(store, [removed], b'{"archive": "/tmp/x')
    empty = store.layout.trash / "20260101T000001Z-host-2"  # killed before it moved anything
    (empty / "rollouts" / "ab").mkdir(parents=True)
    (empty / "run.json").write_bytes(b'{"arch')
    res = Agl(store.root, tmp_path)("check", "--fix")
    assert res.code == 0, str(res)
    assert "Traceback" not in res.stderr, str(res)
    assert "agl: " not in res.stderr, str(res)
    assert f"{run / 'run.json'} does not parse" in res.stderr, str(res)
    assert "quarantine" in res.stderr, str(res)
    # The run with nothing in it had nothing to keep: deleted.
    kept = sorted(p.name for p in (store.root / "quarantine").glob("*/trash/*"))
    assert kept == [run.name, f"{run.name}.note.json"]
    await _assert_removed_for_good(store, {removed}, set())


@pytest.mark.parametrize("alive", [True, False], ids=["prune-running", "prune-killed"])
def test_a_plain_check_reports_the_run_of_a_prune_only_once_it_no_longer_runs(
    tmp_path: Path, alive: bool
) -> None:
    """A plain ``agl check`` while a prune ran reported its run as ``unfinished-prune`` (exit 7)
    though nothing was wrong (found by an adversarial pass)."""
    store = FileStore(tmp_path / "store")
    # The pruning process: running, or ended (killed) before its run finished.
    pruner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        if not alive:
            pruner.kill()
            pruner.wait()
        run = store.layout.trash / f"20261207T000000Z-{fsio.host_tag()}-{pruner.pid}"
        (run / "rollouts").mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"archive": None, "archived": False}))
        kinds = [p.kind for p in store.check()]
        assert ("unfinished-prune" in kinds) is not alive, kinds
    finally:
        pruner.kill()
        pruner.wait()
        store.close()
