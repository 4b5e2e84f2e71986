"""Data views of a store: filters, how rollouts ended, redaction, Parquet, and the cursor."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from datasets_helpers import make_rollout

from store_fs import FakeClock, FileStore, RolloutConfig
from store_fs.datasets import (
    Cursor,
    Redactor,
    RolloutFilter,
    TrainingData,
    View,
    ViewCounts,
    export_view,
    parse_time,
    view_rows,
)
from store_fs.rewards import reward_span


async def _rows(
    store: FileStore, view: Any = "triplets", flt: RolloutFilter | None = None, **kw: Any
) -> list[Any]:
    return [row async for row in view_rows(store, view, flt, **kw)]


async def _ids(store: FileStore, flt: RolloutFilter | None = None, view: Any = "messages") -> set[str]:
    return {row["rollout_id"] for row in await _rows(store, view, flt)}


async def test_failed_rollouts_stay_out_unless_asked_for(store: FileStore) -> None:
    ok = await make_rollout(store)
    silent = await make_rollout(store, reward=None)
    failed = await make_rollout(store, end="failed")
    timed_out = await make_rollout(store, end="timeout")
    unresponsive = await make_rollout(store, end="unresponsive")
    cancelled = await make_rollout(store, end="cancelled")
    running = await make_rollout(store, end=None)
    assert await _ids(store) == {ok, silent}
    ended = {
        r["rollout_id"]: r["ended"] for r in await _rows(store, "messages", RolloutFilter.of(endings=None))
    }
    assert ended == {
        ok: "succeeded",
        silent: "no_reward",
        failed: "failed",
        timed_out: "timeout",
        unresponsive: "unresponsive",
        cancelled: "cancelled",
        running: None,
    }
    assert await _ids(store, RolloutFilter.of(endings=["timeout", "unresponsive"])) == {
        timed_out,
        unresponsive,
    }
    assert await _ids(store, RolloutFilter.of(status_in=["failed"], endings=None)) == {
        failed,
        timed_out,
        unresponsive,
    }


async def test_filters_by_resources_ids_mode_and_time(store: FileStore, clock: FakeClock) -> None:
    early = await make_rollout(store, resources_id="rs-aaaaaaaaaaaa")
    clock.advance(3600)
    later = await make_rollout(store, resources_id="rs-bbbbbbbbbbbb", mode="val")
    start = clock.time()
    assert await _ids(store, RolloutFilter.of(resources_id_in=["rs-aaaaaaaaaaaa"])) == {early}
    assert await _ids(store, RolloutFilter.of(mode_in=["val"])) == {later}
    assert await _ids(store, RolloutFilter.of(rollout_id_in=[later, "ro-000000000000"])) == {later}
    assert await _ids(store, RolloutFilter.of(since=start - 60)) == {later}
    assert await _ids(store, RolloutFilter.of(until=start - 60)) == {early}
    assert await _ids(store, RolloutFilter.of(since=start + 1)) == set()


async def test_triplet_rows_carry_the_rollouts_ids_and_final_reward(store: FileStore) -> None:
    rid = await make_rollout(store, calls=3, reward=0.5)
    rows = await _rows(store)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["rollout_id"] == rid
        assert row["attempt_id"] == attempt.attempt_id
        assert row["final_reward"] == 0.5
        assert row["ended"] == "succeeded"
        assert row["mode"] == "train"
        assert set(row) >= {"prompt", "response", "reward", "metadata"}
    assert [r["reward"] for r in rows] == [None, None, 0.5]  # the reward follows the last call
    assert rows[1]["prompt"]["token_ids"] == list(b"what is 2+2? (call 1)")


async def test_redaction_masks_every_text_field(store: FileStore) -> None:
    await make_rollout(store, question="my key is sk-ABCDEF123456 ok")
    patterns = [r"sk-[A-Za-z0-9]+", "(?i)OK$"]
    for view in ("triplets", "messages", "rollouts"):
        text = json.dumps(await _rows(store, view, redact=patterns))
        assert "sk-ABCDEF" not in text
        assert "[REDACTED]" in text
    with pytest.raises(ValueError, match="not a regular expression"):
        Redactor(["("])
    assert Redactor([]).apply({"a": "sk-1"}) == {"a": "sk-1"}
    # A pattern matching empty text masked between every two characters (found by a pass).
    for empty in ("", "a*", "(?:)"):
        with pytest.raises(ValueError, match="matches empty text"):
            Redactor([empty])


async def test_jsonl_and_parquet_files_hold_the_same_rows(store: FileStore, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    for _ in range(3):
        await make_rollout(store, calls=2)
    views: tuple[View, ...] = ("triplets", "messages", "rollouts")
    for view in views:
        jsonl, parquet = tmp_path / f"{view}.jsonl", tmp_path / f"{view}.parquet"
        counts = await export_view(store, view, output=jsonl)
        await export_view(store, view, output=parquet)
        rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
        table = pq.read_table(parquet).to_pylist()
        assert len(rows) == len(table) == counts.rows
        assert [r["rollout_id"] for r in rows] == [t["rollout_id"] for t in table]
        if view == "triplets":
            assert [r["prompt"]["token_ids"] for r in rows] == [t["prompt_token_ids"] for t in table]
            assert [r["metadata"] for r in rows] == [json.loads(t["metadata"]) for t in table]
        elif view == "messages":
            assert [r["conversations"] for r in rows] == [json.loads(t["conversations"]) for t in table]
        else:
            assert rows == [json.loads(t["document"]) for t in table]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{v}.{ext}" for v in ("triplets", "messages", "rollouts") for ext in ("jsonl", "parquet")
    )  # published whole: no temporary file left


async def test_a_rollout_the_adapters_cannot_read_is_skipped_and_counted(store: FileStore) -> None:
    good = await make_rollout(store)
    bad = await make_rollout(store)
    # An attribute named exactly like the group the adapter unflattens: upstream raises on it.
    spans = list(await store.query_spans(bad))
    attempt = spans[0].attempt_id
    odd = spans[1].model_copy(update={"span_id": "f" * 16, "sequence_id": 50})
    odd.attributes = {**odd.attributes, "gen_ai.request": "x", "gen_ai.response.id": "other"}
    await store.add_span(odd.model_copy(update={"attempt_id": attempt}))
    counts = ViewCounts()
    rows = await _rows(store, "triplets", counts=counts)
    assert {r["rollout_id"] for r in rows} == {good}
    assert [rid for rid, _why in counts.skipped] == [bad]


def test_parse_time_forms() -> None:
    assert parse_time("90s", now=1000.0) == 910.0
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("1712345678.5") == 1712345678.5
    assert parse_time("2026-01-01") == 1767225600.0
    assert parse_time("2026-01-01T01:00:00+01:00") == 1767225600.0
    # Eight digits that make a date are the date (read as seconds, 20261201 was August 1970).
    assert parse_time("20260101") == 1767225600.0
    assert parse_time("20261399") == 20261399.0  # no such date: seconds
    assert parse_time("1767225600") == 1767225600.0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")


# -- the cursor -------------------------------------------------------------------------------


async def test_cursor_returns_each_finishing_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    first = await make_rollout(store)
    running = await make_rollout(store, end=None)
    cursor = Cursor.start()
    assert cursor.finished(store) == [first]
    assert cursor.finished(store) == []
    # More revisions of a finished rollout (metadata) are not a new finishing.
    await store.update_rollout(first, metadata={"seen": True})
    attempt = await store.get_latest_attempt(running)
    assert attempt is not None
    await store.update_attempt(running, attempt.attempt_id, status="succeeded")
    assert cursor.finished(store) == [running]
    # A retry that finishes again is reported again.
    await store.update_rollout(first, status="requeuing")
    assert cursor.finished(store) == []
    again = await store.dequeue_rollout(worker_id="w")
    assert again is not None
    assert again.rollout_id == first
    await store.update_attempt(first, again.attempt.attempt_id, status="failed")
    assert cursor.finished(store) == [first]
    store.close()


async def test_a_reward_given_after_the_rollout_finished_comes_again_from_the_cursor(tmp_path: Path) -> None:
    """A grader's reward, stored after the rollout finished, changes its rows: a reader
    following the index gets them again (a rollout without a reward gave no succeeded row at
    first). Metadata updates are not announced; each late reward is, stamped or not."""
    store = FileStore(tmp_path / "s")
    rid = await make_rollout(store, reward=None)
    other = await make_rollout(store)
    succeeded = RolloutFilter.of(endings=["succeeded"])
    data = TrainingData(store, "triplets", succeeded)
    assert {row["rollout_id"] for row in await data.read_new()} == {other}  # rid: no_reward
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    for seq, reward in [(200, 0.8), (201, 0.25)]:  # the second within the stamp's throttle
        await store.add_span(
            reward_span(reward, rollout_id=rid, attempt_id=attempt.attempt_id, sequence_id=seq)
        )
        rows = await data.read_new()
        assert {(row["rollout_id"], row["final_reward"]) for row in rows} == {(rid, reward)}
        assert await data.read_new() == []
    await store.update_rollout(rid, metadata={"graded": True})
    assert await data.read_new() == []
    # A rollout cancelled while its attempt ran is finished too: a reward after that counts.
    cancelled = await make_rollout(store, reward=None, end=None)
    await store.cancel_rollout(cancelled)
    everything = TrainingData(
        store, "triplets", RolloutFilter.of(endings=["cancelled"]), cursor=data.cursor.copy()
    )
    assert {row["final_reward"] for row in await everything.read_new()} == {None}
    running = await store.get_latest_attempt(cancelled)
    assert running is not None
    assert running.status == "running"
    await store.add_span(
        reward_span(0.9, rollout_id=cancelled, attempt_id=running.attempt_id, sequence_id=400)
    )
    rows = await everything.read_new()
    assert {(row["rollout_id"], row["final_reward"]) for row in rows} == {(cancelled, 0.9)}
    # A process following the index from a saved cursor sees a late reward too.
    saved = tmp_path / "cursor.json"
    data.save_cursor(saved)
    grader = FileStore(tmp_path / "s")
    (graded,) = await grader.query_attempts(other)
    await grader.add_span(reward_span(0.5, rollout_id=other, attempt_id=graded.attempt_id, sequence_id=300))
    reader = FileStore(tmp_path / "s")
    again = TrainingData(reader, "triplets", succeeded, cursor=saved)
    assert {(row["rollout_id"], row["final_reward"]) for row in await again.read_new()} == {(other, 0.5)}
    for each in (store, grader, reader):
        each.close()


async def test_a_saved_cursor_resumes_where_it_stopped(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    old = await make_rollout(store)
    saved = tmp_path / "cursor.json"
    data = TrainingData(store, "triplets", cursor=saved)
    assert {r["rollout_id"] for r in await data.read_new()} == {old}
    data.save_cursor(saved)
    new = await make_rollout(store)
    # A new process: a new store object and a cursor loaded from the file.
    again = TrainingData(FileStore(tmp_path / "s"), "triplets", cursor=saved)
    assert {r["rollout_id"] for r in await again.read_new()} == {new}
    assert await again.read_new() == []
    now = Cursor.now(store)
    assert now.finished(store) == []
    with pytest.raises(ValueError, match="not an agl cursor"):
        Cursor.from_json({"files": {}})
    store.close()


async def test_after_an_index_rebuild_the_cursor_goes_on_without_repeating(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    await make_rollout(store)
    cursor = Cursor.start()
    assert len(cursor.finished(store)) == 1
    store._index.remove()  # what check --fix does before rebuilding
    store.check(fix=True)
    assert cursor.finished(store) == []
    later = await make_rollout(store)
    assert cursor.finished(store) == [later]
    store.close()


_FINISHER = """
import asyncio, sys, time
from store_fs import FileStore
async def main():
    store = FileStore(sys.argv[1], create=False)
    rollout_id, attempt_id = sys.argv[2], sys.argv[3]
    await store.update_attempt(rollout_id, attempt_id, status="succeeded")
    print(time.time(), flush=True)
asyncio.run(main())
"""


async def test_a_follower_sees_a_rollout_finish_within_a_second(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    rid = await make_rollout(store, end=None)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    data = TrainingData(store, "triplets", cursor=Cursor.now(store))
    seen: list[tuple[float, list[Any]]] = []

    async def follow() -> None:
        async for batch in data.follow(idle_timeout=10):
            seen.append((time.time(), batch))
            return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the follower is waiting
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _FINISHER, str(store.root), rid, attempt.attempt_id],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    finished_at = float(done.stdout.strip())
    await asyncio.wait_for(task, 10)
    assert seen, "the follower saw nothing"
    arrived, batch = seen[0]
    assert {row["rollout_id"] for row in batch} == {rid}
    assert arrived - finished_at < 1.0
    store.close()


async def test_a_late_span_on_an_older_attempt_does_not_bring_the_rollout_again(tmp_path: Path) -> None:
    """Rows come from the latest attempt: a span on a retried rollout's first attempt changes
    none, and was announced anyway (found by an adversarial pass)."""
    store = FileStore(tmp_path / "s")
    rid = (
        await store.enqueue_rollout(
            input={"q": 1}, config=RolloutConfig(max_attempts=2, retry_condition=["failed"])
        )
    ).rollout_id
    first = await store.dequeue_rollout(worker_id="w")
    assert first is not None
    await store.update_attempt(rid, first.attempt.attempt_id, status="failed")
    second = await store.dequeue_rollout(worker_id="w")
    assert second is not None
    await store.update_attempt(rid, second.attempt.attempt_id, status="succeeded")
    data = TrainingData(store, "rollouts")
    assert [row["rollout_id"] for row in await data.read_new()] == [rid]
    await store.add_span(
        reward_span(0.3, rollout_id=rid, attempt_id=first.attempt.attempt_id, sequence_id=50)
    )
    assert await data.read_new() == []
    store.close()


async def test_a_record_this_host_cannot_read_yet_is_tried_again_not_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On NFS a reader told by the index that revision N exists may still get "not found" for
    it (a cached negative lookup): the rollout was taken for gone and its late reward never
    delivered (found on the two-host simulation). It stays due until it reads."""
    from store_fs.datasets import views

    store = FileStore(tmp_path / "s")
    rid = await make_rollout(store, reward=None)
    data = TrainingData(store, "triplets")
    assert {row["rollout_id"] for row in await data.read_new()} == {rid}
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    await store.add_span(reward_span(0.9, rollout_id=rid, attempt_id=attempt.attempt_id, sequence_id=200))
    monkeypatch.setattr(views, "newest_revision", lambda layout, rollout_id, *, at_least=0: None)
    assert await data.read_new() == []
    assert [r for r, _rev in data.cursor.retry] == [rid]
    monkeypatch.undo()
    rows = await data.read_new()
    assert {(row["rollout_id"], row["final_reward"]) for row in rows} == {(rid, 0.9)}
    assert data.cursor.retry == []
    store.close()


def test_cursors_are_version_2_and_version_1_ones_still_read(tmp_path: Path) -> None:
    """A build before late-spans announcements resumed a new cursor and skipped them silently
    (found running old and new builds on one store): cursors are saved as version 2, which such
    a build refuses; version 1 cursors still load."""
    cursor = Cursor.start()
    assert cursor.to_json()["version"] == 2
    old = {**cursor.to_json(), "version": 1}
    assert Cursor.from_json(old).to_json()["version"] == 2
    with pytest.raises(ValueError, match="newer than this build reads"):
        Cursor.from_json({**cursor.to_json(), "version": 3})
