"""A damaged rollout under ``--follow`` (and ``TrainingData`` reads): counted once, by id.

Found by an adversarial pass: a rollout left out as damaged is tried again at every read (the
cursor's retry list), and every read appended it to ``ViewCounts.damaged`` and logged an ERROR
line (about four a second under ``--follow``), so the "left out" list grew without bound, and
the follower exited 7 even after ``agl check --fix`` had made the rollout whole and its rows had
been written. Now it is held once, by id, as the last read found it, and logged once per reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import CALL_TIMEOUT, Agl
from datasets_helpers import make_rollout

from store_fs import FileStore
from store_fs.datasets import TrainingData
from store_fs.rewards import reward_span


async def _damaged(store: FileStore) -> tuple[str, str, Path]:
    """A good rollout and one whose span file has a torn last line (a late reward cut short)."""
    good = await make_rollout(store, reward=0.9)
    rid = await make_rollout(store, reward=0.2)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    late = reward_span(
        0.95, rollout_id=rid, attempt_id=attempt.attempt_id, sequence_id=200, now=time.time() + 5
    )
    await store.add_span(late)
    [path] = list(store.root.glob(f"rollouts/*/{rid}/attempts/*/spans.*.jsonl"))
    path.write_bytes(path.read_bytes()[:-40])
    return good, rid, path


async def test_a_damaged_rollout_read_again_and_again_is_counted_and_logged_once(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    good, damaged, _path = await _damaged(store)
    data = TrainingData(store, "triplets")
    with caplog.at_level(logging.ERROR, logger="store_fs.datasets.views"):
        assert {row["rollout_id"] for row in await data.read_new()} == {good}
        for _ in range(5):
            assert await data.read_new() == []
    assert [rid for rid, _why in data.counts.damaged] == [damaged]
    assert len([r for r in caplog.records if "left out" in r.getMessage()]) == 1
    assert store.check(fix=True, grace=0)  # the torn tail goes to quarantine
    rows = await data.read_new()
    assert {row["rollout_id"] for row in rows} == {damaged}
    assert data.counts.damaged == []  # read whole: no longer left out
    assert data.counts.lagging == []


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def test_follow_exits_0_once_the_damaged_rollout_was_repaired_and_written(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FileStore(root)
    good, damaged, _path = asyncio.run(_damaged(store))
    store.close()
    agl = Agl(root, tmp_path)
    proc = agl.popen("data", "triplets", "--follow", "--idle-timeout", "2")
    errors: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(proc.stderr, errors), daemon=True)
    reader.start()
    try:
        seen: list[str] = []
        deadline = time.monotonic() + CALL_TIMEOUT
        while not any("left out" in line for line in seen):
            seen.append(errors.get(timeout=max(0.0, deadline - time.monotonic())))
        agl.ok("check", "--fix")
        out, _ = proc.communicate(timeout=CALL_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(CALL_TIMEOUT)
    while not errors.empty():
        seen.append(errors.get())
    stderr = "".join(seen)
    assert proc.returncode == 0, stderr
    rows = [json.loads(line) for line in out.splitlines()]
    assert {row["rollout_id"] for row in rows} == {good, damaged}
    assert stderr.count("left out") == 1, stderr
