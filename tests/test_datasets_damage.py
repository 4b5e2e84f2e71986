"""Data views over damaged or changing stores: no wrong reward, no lost rows, no crash.

Found by an adversarial pass over ``agl data``: a torn or corrupt span line of a finished
attempt made an earlier reward final (exit 0); an attempt directory turned into a file made a
rollout ``no_reward``; a rollout pruned while it was read came out ``no_reward``; one odd span
aborted the whole ``triplets`` export; a failing read lost the cursor's batch for good; a
``rollouts`` row had no ``attempt_id``; the workers of a parallel export outlived a kill -9.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl
from datasets_helpers import make_rollout
from proc_helpers import alive

from store_fs import FileStore
from store_fs.datasets import RolloutFilter, TrainingData, ViewCounts, view_rows
from store_fs.rewards import reward_span

ANY = RolloutFilter.of(endings=None)  # every rollout, finished or not


async def _with_late_reward(store: FileStore, value: float) -> tuple[str, Path]:
    """A succeeded rollout whose last span is a reward of ``value`` (after the helper's 1.0);
    returns its id and its span file."""
    rid = await make_rollout(store, reward=0.2)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    final = reward_span(
        value, rollout_id=rid, attempt_id=attempt.attempt_id, sequence_id=200, now=time.time() + 5
    )
    await store.add_span(final)
    [path] = list(store.root.glob(f"rollouts/*/{rid}/attempts/*/spans.*.jsonl"))
    return rid, path


async def _rows(store: FileStore, view: Any, counts: ViewCounts) -> list[dict[str, Any]]:
    return [row async for row in view_rows(store, view, ANY, counts=counts)]


def _tear_last_line(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # the last line cut short: a writer killed mid-line


def _corrupt_last_line(path: Path) -> None:
    data = path.read_bytes()
    body, last = data[:-1].rsplit(b"\n", 1)
    path.write_bytes(body + b"\n" + b"{" + last[1:-20] + b"\n")  # complete, but not JSON


@pytest.mark.parametrize("damage", ["torn", "corrupt", "not-a-directory"])
@pytest.mark.parametrize("view", ["triplets", "messages", "rollouts"])
async def test_a_finished_attempt_with_damaged_spans_is_left_out_and_named(
    store: FileStore, view: str, damage: str
) -> None:
    good = await make_rollout(store, reward=0.9)
    damaged, path = await _with_late_reward(store, 0.95)
    if damage == "torn":
        _tear_last_line(path)
    elif damage == "corrupt":
        _corrupt_last_line(path)
    else:
        shutil.rmtree(path.parent)
        path.parent.write_text("not a directory")
    counts = ViewCounts()
    rows = await _rows(store, view, counts)
    assert {row["rollout_id"] for row in rows} == {good}  # not given with an earlier reward
    assert [rid for rid, _why in counts.damaged] == [damaged]
    assert str(path if damage != "not-a-directory" else path.parent) in counts.damaged[0][1]


async def test_a_torn_tail_of_a_running_attempt_is_a_write_in_progress(store: FileStore) -> None:
    rid = await make_rollout(store, end=None)
    [path] = list(store.root.glob(f"rollouts/*/{rid}/attempts/*/spans.*.jsonl"))
    with path.open("ab") as file:
        file.write(b'{"rollout_id": "' + rid.encode())
    counts = ViewCounts()
    rows = await _rows(store, "messages", counts)
    assert [row["rollout_id"] for row in rows] == [rid]
    assert counts.damaged == []


def test_agl_data_writes_the_rest_and_exits_7(tmp_path: Path) -> None:
    import asyncio

    store = FileStore(tmp_path / "store")
    good = asyncio.run(make_rollout(store, reward=0.9))
    damaged, path = asyncio.run(_with_late_reward(store, 0.95))
    store.close()
    _tear_last_line(path)
    agl = Agl(tmp_path / "store", tmp_path)
    res = agl("data", "messages", "--json")
    assert res.code == 7, str(res)
    assert [json.loads(line)["rollout_id"] for line in res.stdout.splitlines()] == [good]
    assert f"1 rollout(s) left out, their spans are damaged: {damaged}" in res.stderr
    assert "Traceback" not in res.stderr
    res = agl("data", "triplets", "-o", str(tmp_path / "t.jsonl"))
    assert res.code == 7, str(res)
    assert {json.loads(line)["rollout_id"] for line in (tmp_path / "t.jsonl").read_text().splitlines()} == {
        good
    }


@pytest.mark.parametrize("view", ["triplets", "messages", "rollouts"])
async def test_a_rollout_pruned_while_it_is_read_gives_no_row(
    store: FileStore, view: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agl prune`` renames a rollout's directory away in one step; a view that read the record
    before and the spans after gave the rollout as ``no_reward``."""
    from store_fs.datasets import views

    kept = await make_rollout(store, reward=0.9)
    pruned = await make_rollout(store, reward=0.8)
    real_record = views._record

    def record_then_prune(store_: FileStore, rollout_id: str, at_least: int = 0) -> Any:
        found = real_record(store_, rollout_id, at_least)
        if rollout_id == pruned:
            rollout_dir = store.layout.history_dir(pruned).parent
            rollout_dir.rename(store.root / f"trash-{pruned}")
        return found

    monkeypatch.setattr(views, "_record", record_then_prune)
    rows = await _rows(store, view, ViewCounts())
    assert {row["rollout_id"] for row in rows} == {kept}


async def test_odd_spans_skip_their_rollout_not_the_export(store: FileStore) -> None:
    good = await make_rollout(store)
    odd_index = await make_rollout(store)
    spans = list(await store.query_spans(odd_index))
    call = spans[1]
    attributes = {**call.attributes, "gen_ai.prompt.².content": "x", "gen_ai.response.id": "another call"}
    await store.add_span(
        call.model_copy(update={"span_id": "e" * 16, "sequence_id": 60, "attributes": attributes})
    )
    deep = await make_rollout(store)
    spans = list(await store.query_spans(deep))
    parent = spans[0].span_id
    chain = []
    for depth in range(3000):  # deeper than Python's recursion limit
        span_id = f"{depth + 1:016x}"
        chain.append(
            spans[0].model_copy(update={"span_id": span_id, "parent_id": parent, "sequence_id": 300 + depth})
        )
        parent = span_id
    await store.add_many_spans(chain)
    counts = ViewCounts()
    rows = await _rows(store, "triplets", counts)
    assert {row["rollout_id"] for row in rows} == {good}
    assert sorted(rid for rid, _why in counts.skipped) == sorted([odd_index, deep])


async def test_a_read_that_fails_part_way_keeps_its_rollouts_for_the_next_one(store: FileStore) -> None:
    ids = [await make_rollout(store) for _ in range(3)]
    data = TrainingData(store, "messages")
    handled: list[str] = []

    def fails_on_the_second(row: dict[str, Any]) -> None:
        if len(handled) == 1:
            raise OSError("disk full")
        handled.append(row["rollout_id"])

    with pytest.raises(OSError, match="disk full"):
        await data.for_each_new(fails_on_the_second)
    assert sorted(row["rollout_id"] for row in await data.read_new()) == sorted(ids)  # none lost
    assert await data.read_new() == []


async def test_rollouts_rows_carry_their_latest_attempt_id(store: FileStore) -> None:
    rid = await make_rollout(store)
    attempt = await store.get_latest_attempt(rid)
    assert attempt is not None
    [row] = await _rows(store, "rollouts", ViewCounts())
    assert row["attempt_id"] == attempt.attempt_id


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_export_workers_exit_when_the_exporting_process_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing
        from store_fs.datasets.parallel_rows import _exit_with

        if __name__ == "__main__":
            spawn = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=_exit_with, initargs=(os.getpid(),))
            print(pool.submit(os.getpid).result(), flush=True)
            pool.submit(time.sleep, 3600)
            time.sleep(3600)
        """
    )
    (tmp_path / "exporter.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "exporter.py")], stdout=subprocess.PIPE, text=True, env=env
    )
    worker = 0
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the export's worker outlived it"
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        if worker and alive(worker):
            os.kill(worker, signal.SIGKILL)


async def test_a_damaged_rollout_comes_back_through_the_cursor_once_fixed(
    store: FileStore, tmp_path: Path
) -> None:
    """The cursor moved past a rollout left out as damaged: after ``agl check --fix`` (what the
    error says to run) it never came through the cursor again (found in review). It stays in
    the cursor's retry list, saved with it, until it reads whole."""
    from store_fs.datasets import Cursor

    good = await make_rollout(store, reward=0.9)
    damaged, path = await _with_late_reward(store, 0.95)
    _tear_last_line(path)
    data = TrainingData(store, "messages")
    assert [row["rollout_id"] for row in await data.read_new()] == [good]
    data.save_cursor(tmp_path / "c.json")
    assert await data.read_new() == []  # still damaged: tried again, left out again
    assert store.check(fix=True, grace=0)  # the torn tail goes to quarantine
    resumed = TrainingData(store, "messages", cursor=Cursor.load(tmp_path / "c.json"))
    rows = await resumed.read_new()
    assert [row["rollout_id"] for row in rows] == [damaged]
    assert rows[0]["final_reward"] == 0.2  # what is left of it (the fix moved the torn reward aside)
    assert await resumed.read_new() == []


async def test_a_late_span_being_written_is_no_damage(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished attempt still takes late spans; one being appended shows bytes after the last
    newline while its write lasts, which read as damage (found in review). A read that finds
    only that is made again a moment later."""
    import threading

    from store_fs.datasets import views

    rid, path = await _with_late_reward(store, 0.95)
    data = path.read_bytes()
    last = data[data[:-1].rfind(b"\n") + 1 :]
    path.write_bytes(data[: -len(last)] + last[:-30])  # the last span half written...
    monkeypatch.setattr(views, "_SETTLE_SECONDS", 0.5)

    def finish() -> None:
        with path.open("ab") as log:
            log.write(last[-30:])

    finisher = threading.Timer(0.1, finish)  # ...then whole
    finisher.start()
    counts = ViewCounts()
    try:
        rows = await _rows(store, "messages", counts)
    finally:
        finisher.join()
    assert counts.damaged == []
    assert [(row["rollout_id"], row["final_reward"]) for row in rows] == [(rid, 0.95)]
