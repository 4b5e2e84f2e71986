"""Waking up on changes: network filesystem detection, forced polling, wake-ups across processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store_fs import FileStore
from store_fs._disk.watch import is_network_fs, resolve_mode


def _mounts(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "mounts"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_network_filesystems_are_detected(tmp_path: Path) -> None:
    mounts = _mounts(
        tmp_path,
        [
            "/dev/vda / ext4 rw 0 0",
            "server:/export /mnt/shared nfs4 rw,relatime 0 0",
            "user@h:/x /mnt/ssh fuse.sshfs rw 0 0",
        ],
    )
    assert not is_network_fs(Path("/home/x"), mounts)
    assert is_network_fs(Path("/mnt/shared/store"), mounts)
    assert is_network_fs(Path("/mnt/ssh"), mounts)
    assert not is_network_fs(Path("/mnt/sharedother"), mounts)


def test_environment_forces_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_WATCH", "poll")
    assert resolve_mode("auto", tmp_path) == "poll"
    monkeypatch.setenv("AGL_WATCH", "inotify")
    assert resolve_mode("poll", tmp_path) == "inotify"
    monkeypatch.delenv("AGL_WATCH")
    assert resolve_mode("poll", tmp_path) == "poll"


_COMPLETE_LATER = """
import asyncio, sys, time
from store_fs import FileStore
async def main():
    store = FileStore(sys.argv[1])
    time.sleep(float(sys.argv[3]))
    a = await store.dequeue_rollout()
    await store.update_attempt(a.rollout_id, a.attempt.attempt_id, status="succeeded")
asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_wait_wakes_up_on_another_process_completion(tmp_path: Path, mode: str) -> None:
    store = FileStore(tmp_path / "s", watch_mode=mode)  # type: ignore[arg-type]
    rollout = asyncio.run(store.enqueue_rollout(input=1))
    child = subprocess.Popen([sys.executable, "-c", _COMPLETE_LATER, str(store.root), "", "0.5"])
    try:
        start = time.monotonic()
        done = asyncio.run(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=30))
        elapsed = time.monotonic() - start
    finally:
        child.wait(30)
    assert [r.status for r in done] == ["succeeded"]
    assert elapsed < 10  # woke on the change, long before the timeout


async def test_wait_returns_at_the_timeout_with_what_finished(store: FileStore) -> None:
    a = await store.enqueue_rollout(input=1)
    b = await store.enqueue_rollout(input=2)
    got = await store.dequeue_rollout()
    assert got is not None
    await store.update_attempt(got.rollout_id, got.attempt.attempt_id, status="succeeded")
    start = time.monotonic()
    done = await store.wait_for_rollouts(rollout_ids=[a.rollout_id, b.rollout_id], timeout=0.3)
    assert [r.rollout_id for r in done] == [a.rollout_id]
    assert 0.25 <= time.monotonic() - start < 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
def test_a_wait_without_an_inotify_instance_left_polls(tmp_path: Path) -> None:
    """Each wait is one inotify instance and a user has 128: the 128th wait of a busy server
    failed with 'Error creating recommended watcher' (HTTP 500; found by an adversarial pass).
    It polls instead."""
    import ctypes
    import os

    store = FileStore(tmp_path / "s", watch_mode="inotify")
    rollout = asyncio.run(store.enqueue_rollout(input=1))
    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    child = None
    try:
        while (fd := libc.inotify_init1(os.O_CLOEXEC)) >= 0 and len(held) < 100_000:
            held.append(fd)  # every instance this user may still have
        child = subprocess.Popen([sys.executable, "-c", _COMPLETE_LATER, str(store.root), "", "0.5"])
        start = time.monotonic()
        done = asyncio.run(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=30))
        elapsed = time.monotonic() - start
    finally:
        for fd in held:
            os.close(fd)
        if child is not None:
            child.wait(30)
    assert [r.status for r in done] == ["succeeded"]
    assert elapsed < 10


def test_a_revival_whose_index_line_was_lost_is_not_taken_for_finished(tmp_path: Path) -> None:
    """A process reviving a failed rollout (``agl rollouts retry``) died between its revision
    and its index line: a new waiter took the index's word and returned the rollout ``failed``
    while its record said ``queuing`` (found by an adversarial pass)."""
    import json

    from store_fs._disk.layout import revision_name

    store = FileStore(tmp_path / "s")

    async def failed() -> str:
        rid = (await store.enqueue_rollout(input=1)).rollout_id
        attempted = await store.dequeue_rollout()
        assert attempted is not None
        await store.update_attempt(rid, attempted.attempt.attempt_id, status="failed")
        return rid

    rid = asyncio.run(failed())
    store.close()
    history = FileStore(tmp_path / "s").layout.history_dir(rid)
    newest = max(int(p.stem) for p in history.glob("*.json"))
    record = json.loads((history / revision_name(newest)).read_text())
    record["status"] = "queuing"  # the revival's revision, its index line lost in the crash
    (history / revision_name(newest + 1)).write_text(json.dumps(record))
    fresh = FileStore(tmp_path / "s")
    assert asyncio.run(fresh.wait_for_rollouts(rollout_ids=[rid], timeout=0)) == []
    fresh.close()
