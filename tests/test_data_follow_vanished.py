"""``agl data --follow`` and ``agl events --follow`` on a store removed or moved away meanwhile.

Found by an adversarial pass: the follower never exited, and ``agl data --follow`` warned five to
seven times a second that the rollout index was incomplete. Now every look checks that the store
is still there and ends with the store-not-found error (exit 5, one line).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
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
        shutil.rmtree(agl.store)
    err = _ends_with_no_store(proc)
    assert "any more" in err
    assert "incomplete" not in err
    assert "Traceback" not in err


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
