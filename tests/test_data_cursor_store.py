"""A saved cursor belongs to the store it was first used with (``agl data --cursor``).

Its positions name that store's index logs by inode: used with another store, or with a copy of
its own, they read as logs rebuilt, and the reader went on from the end, skipping the backlog for
good and saving the cursor there. Now such a cursor is refused (exit 4, one line naming both
stores) and left as it was; a cursor saved without a store (version 1, or version 2 by an older
build) is adopted by the first store it is used with.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import Agl, assert_error
from datasets_helpers import make_rollout

from store_fs import FileStore


def _store(root: Path, rollouts: int) -> tuple[set[str], str]:
    async def seed() -> set[str]:
        store = FileStore(root)
        ids = {await make_rollout(store) for _ in range(rollouts)}
        store.close()
        return ids

    ids = asyncio.run(seed())
    store_id = json.loads((root / "FORMAT.json").read_text())["store_id"]
    return ids, store_id


def _rollouts(agl: Agl, *args: str) -> set[str]:
    return {row["rollout_id"] for row in agl.ok("data", "rollouts", *args).lines()}


def test_a_cursor_of_another_store_is_refused_and_kept(tmp_path: Path) -> None:
    a_ids, a_id = _store(tmp_path / "a", 1)
    b_ids, b_id = _store(tmp_path / "b", 3)
    a, b = Agl(tmp_path / "a", tmp_path), Agl(tmp_path / "b", tmp_path)
    cursor = tmp_path / "c.cursor"
    assert _rollouts(a, "--cursor", str(cursor)) == a_ids
    saved = cursor.read_bytes()
    res = b("data", "rollouts", "--cursor", str(cursor))
    assert_error(res, 4, str(cursor), a_id, b_id, "another store")
    assert res.stdout == ""
    assert cursor.read_bytes() == saved  # not moved to the end of b
    follow = b("-q", "data", "triplets", "--cursor", str(cursor), "--follow", "--idle-timeout", "0.2")
    assert_error(follow, 4, a_id)
    assert cursor.read_bytes() == saved
    assert _rollouts(a, "--cursor", str(cursor)) == set()  # still a's, where it was
    cursor.unlink()
    assert _rollouts(b, "--cursor", str(cursor)) == b_ids  # b's whole backlog: nothing was skipped


def test_a_cursor_is_refused_by_a_copy_of_its_store(tmp_path: Path) -> None:
    ids, store_id = _store(tmp_path / "a", 2)
    cursor = tmp_path / "c.cursor"
    assert _rollouts(Agl(tmp_path / "a", tmp_path), "--cursor", str(cursor)) == ids
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    copy = Agl(tmp_path / "copy", tmp_path)
    assert_error(copy("data", "rollouts", "--cursor", str(cursor)), 4, store_id, "rollouts/ inode")
    moved = tmp_path / "moved"
    (tmp_path / "a").rename(moved)  # a store moved within its file system is the same store
    assert _rollouts(Agl(moved, tmp_path), "--cursor", str(cursor)) == set()


def test_cursors_saved_without_a_store_are_adopted_by_the_first_one(tmp_path: Path) -> None:
    a_ids, a_id = _store(tmp_path / "a", 2)
    _b_ids, b_id = _store(tmp_path / "b", 1)
    a, b = Agl(tmp_path / "a", tmp_path), Agl(tmp_path / "b", tmp_path)
    for version in (1, 2):
        cursor = tmp_path / f"v{version}.cursor"
        cursor.write_text(json.dumps({"format": "agl-cursor", "version": version, "files": {}}))
        assert _rollouts(a, "--cursor", str(cursor)) == a_ids
        saved = json.loads(cursor.read_text())
        assert saved["store"]["id"] == a_id
        assert saved["store"]["inode"] == (tmp_path / "a" / "rollouts").stat().st_ino
        assert_error(b("data", "rollouts", "--cursor", str(cursor)), 4, a_id, b_id)


def test_an_old_cursor_naming_another_stores_logs_is_not_adopted(tmp_path: Path) -> None:
    """Found in review: a cursor saved without a store (an older build) was adopted by whatever
    store it was first used with, and its positions, naming another store's logs, read as logs
    rebuilt: the backlog was skipped for good. Positions naming none of a store's index logs are
    another store's (or this one's before a rebuild): refused."""
    a_ids, _a_id = _store(tmp_path / "a", 1)
    b_ids, _b_id = _store(tmp_path / "b", 2)
    a, b = Agl(tmp_path / "a", tmp_path), Agl(tmp_path / "b", tmp_path)
    cursor = tmp_path / "old.cursor"
    assert _rollouts(a, "--cursor", str(cursor)) == a_ids
    saved = json.loads(cursor.read_text())
    del saved["store"]  # as an older build saved it
    cursor.write_text(json.dumps(saved))
    before = cursor.read_bytes()
    assert_error(b("data", "rollouts", "--cursor", str(cursor)), 4, "index logs", str(tmp_path / "b"))
    assert cursor.read_bytes() == before
    assert _rollouts(a, "--cursor", str(cursor)) == set()  # its own store adopts it
    assert json.loads(cursor.read_text())["store"]["id"] == _a_id
    assert _rollouts(b, "--cursor", str(tmp_path / "new.cursor")) == b_ids


@pytest.mark.parametrize(
    "command",
    [("data", "rollouts", "--follow", "--idle-timeout", "60"), ("events", "--follow")],
    ids=["data", "events"],
)
def test_a_store_replaced_while_followed_stops_the_follower(tmp_path: Path, command: tuple[str, ...]) -> None:
    """Found in review: a data follower without a cursor file said its (nonexistent) cursor was
    another store's (exit 4), and an events follower went on with the new store's events; the
    store at its path was replaced: that is exit 5."""
    import subprocess
    import time

    from cli_helpers import AGL, agl_env

    _store(tmp_path / "a", 1)
    proc = subprocess.Popen(
        [AGL, *command],
        env=agl_env(tmp_path / "a"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # following (a slow start only makes the swap land before its first read)
        (tmp_path / "a").rename(tmp_path / "old")
        _store(tmp_path / "a", 1)  # another store at the same path
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 5, err
    assert "Traceback" not in err
    assert "cursor" not in err
