"""Followers and waiters (``agl data --follow``, ``agl events --follow``, ``agl rollouts list
--watch``, ``agl wait``, ``agl dequeue --wait``) on a store removed or moved away meanwhile.

Found by adversarial passes: the followers never exited (``agl data --follow`` warning five to
seven times a second that the rollout index was incomplete), ``agl wait`` ended as if its
rollouts had been pruned (exit 11, "not finished"), ``agl dequeue --wait`` said the queue was
empty, and ``--watch`` went on showing nothing. Each now ends with the store-not-found error
(exit 5, one line).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import Agl
from datasets_helpers import store_with_one_rollout

from store_fs import FileStore

WAIT = 15.0  # the follower must end well within this once the store is gone


@pytest.fixture
def agl(tmp_path: Path) -> Agl:
    store_with_one_rollout(tmp_path / "store")
    return Agl(tmp_path / "store", tmp_path)


def _remove(store: Path) -> None:
    """``rm -r`` of the store, again if a reader that is still running (a rollout index
    rebuilt, seeing half the store gone) made a file in a directory being removed."""
    for _ in range(20):
        try:
            shutil.rmtree(store)
            return
        except OSError:
            time.sleep(0.05)
    shutil.rmtree(store)


def _ends_with_no_store(proc: subprocess.Popen[str]) -> str:
    try:
        _out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the follower is still running after its store went away")
    assert proc.returncode == 5, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no warning before it
    return err


@pytest.mark.parametrize("how", ["moved", "removed"])
@pytest.mark.parametrize("command", [("data", "triplets", "--follow"), ("events", "--follow")])
def test_a_follower_ends_when_its_store_goes_away(agl: Agl, how: str, command: tuple[str, ...]) -> None:
    proc = agl.popen("-q", *command)
    assert proc.stdout is not None
    assert proc.stdout.readline()  # it has read the store: a row, or an event
    if how == "moved":
        agl.store.rename(agl.store.with_name("elsewhere"))
    else:
        _remove(agl.store)
    err = _ends_with_no_store(proc)
    assert "any more" in err
    assert "incomplete" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["moved", "removed"])
def test_rollouts_list_watch_ends_when_its_store_goes_away(agl: Agl, how: str) -> None:
    proc = agl.popen("-q", "rollouts", "list", "--watch")
    assert proc.stdout is not None
    assert proc.stdout.readline()  # the rollout, as the watch starts
    if how == "moved":
        agl.store.rename(agl.store.with_name("elsewhere"))
    else:
        _remove(agl.store)
    assert "any more" in _ends_with_no_store(proc)


def _started(proc: subprocess.Popen[str]) -> None:
    """Give ``proc`` time to open the store and begin waiting (nothing tells when it has: a
    store gone before it opened is refused as well, so a slow start does not fail the test,
    it tests less)."""
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()


@pytest.mark.parametrize("how", ["moved", "removed"])
def test_wait_ends_when_its_store_goes_away(agl: Agl, how: str) -> None:
    rollout_id = agl.enqueue({"q": "never run"})["rollout_id"]
    proc = agl.popen("-q", "wait", rollout_id)
    _started(proc)
    if how == "moved":
        agl.store.rename(agl.store.with_name("elsewhere"))
    else:
        _remove(agl.store)
    err = _ends_with_no_store(proc)
    assert "not finished" not in err


def test_dequeue_wait_ends_when_its_store_goes_away(agl: Agl) -> None:
    proc = agl.popen("-q", "dequeue", "--wait", "60")
    _started(proc)
    agl.store.rename(agl.store.with_name("elsewhere"))
    err = _ends_with_no_store(proc)
    assert "empty" not in err


def test_an_incomplete_index_is_warned_about_once_per_cursor(
    agl: Agl, caplog: pytest.LogCaptureFixture
) -> None:
    from store_fs.datasets import Cursor

    store = FileStore(agl.store)
    store.layout.rollout_index_marker.unlink()  # as a store from an older build has it
    cursor = Cursor.start()
    with caplog.at_level(logging.WARNING, logger="store_fs.datasets.cursor"):
        for _ in range(5):
            cursor.finished(store)
    assert len([r for r in caplog.records if "incomplete" in r.getMessage()]) == 1
    store.close()
