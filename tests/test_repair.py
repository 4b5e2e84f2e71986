"""``check(fix=True)`` repairs what cannot be read, keeping it in ``quarantine/`` with a note,
and runs under the maintenance lock (one repair at a time; a killed holder blocks nobody)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store_fs import FileStore, Span
from store_fs._disk.codec import loads
from store_fs._disk.maintenance import maintenance_lock
from store_fs.errors import MaintenanceBusyError


def _span(rid: str, aid: str, seq: int) -> Span:
    return Span.from_attributes(attributes={"k": seq}, rollout_id=rid, attempt_id=aid, sequence_id=seq)


def notes(root: Path) -> list[dict[str, object]]:
    return [loads(p.read_bytes()) for p in sorted((root / "quarantine").rglob("*.note.json"))]


async def _finished_rollout(store: FileStore, spans: int = 3) -> tuple[str, str]:
    r = await store.enqueue_rollout(input="x")
    a = await store.dequeue_rollout()
    assert a is not None
    for seq in range(1, spans + 1):
        await store.add_span(_span(r.rollout_id, a.attempt.attempt_id, seq))
    await store.update_attempt(r.rollout_id, a.attempt.attempt_id, status="succeeded")
    return r.rollout_id, a.attempt.attempt_id


@pytest.mark.parametrize(
    "damage", [b'{"rollout_id": ', b"", b"\x00\x00\x00garbage"], ids=["torn", "empty", "bytes"]
)
async def test_an_unreadable_newest_revision_is_quarantined(store: FileStore, damage: bytes) -> None:
    rid, _ = await _finished_rollout(store)
    history = store.layout.history_dir(rid)
    newest = max(history.glob("*.json"))
    previous = loads((history / f"{int(newest.stem) - 1:08d}.json").read_bytes())
    original = newest.read_bytes()
    newest.chmod(0o644)
    newest.write_bytes(damage)

    found = store.check()
    assert [p.kind for p in found] == ["corrupt-record"]
    assert not found[0].fixed
    fixed = store.check(fix=True)
    assert "corrupt-record" in [p.kind for p in fixed]
    assert all(p.fixed for p in fixed)
    # Readable at the previous revision, rollout.json with it, and nothing left to repair.
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None
    assert rollout.status == previous["status"]
    assert loads(store.layout.mirror_file(rid).read_bytes())["status"] == previous["status"]
    assert store.check() == []
    # The damaged file is kept, with a note of where it was and why it was moved.
    (note,) = notes(store.root)
    assert note["path"] == str(newest.relative_to(store.root))
    assert "unreadable revision" in str(note["why"])
    kept = next((store.root / "quarantine").rglob(newest.name))
    assert kept.read_bytes() == damage
    assert damage != original


async def test_the_only_revision_is_left_for_a_person(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    head = store.layout.history_dir(r.rollout_id) / "00000001.json"
    head.write_bytes(b"{")
    problems = store.check(fix=True)
    assert [(p.kind, p.fixed) for p in problems] == [("corrupt-record", False)]
    assert head.read_bytes() == b"{"
    assert not (store.root / "quarantine").exists()


async def test_unparseable_span_lines_of_a_finished_attempt_are_quarantined(store: FileStore) -> None:
    rid, _aid = await _finished_rollout(store, spans=3)
    span_file = next(store.layout.attempts_dir(rid).rglob("spans.*.jsonl"))
    lines = span_file.read_bytes().splitlines(keepends=True)
    bad = b'{"not a span": true, \n'
    span_file.write_bytes(lines[0] + bad + lines[1] + lines[2] + b'{"torn')
    kinds = sorted(p.kind for p in store.check())
    assert kinds == ["corrupt-span", "torn-tail"]
    assert all(p.fixed for p in store.check(fix=True))
    assert span_file.read_bytes() == b"".join(lines)
    assert [s.sequence_id for s in await store.query_spans(rid)] == [1, 2, 3]
    assert store.check() == []
    kept = sorted(str(n["why"]) for n in notes(store.root))
    assert kept == ["a span line that does not parse", "bytes after the last newline"]
    pieces = {
        p.read_bytes() for p in (store.root / "quarantine").rglob("spans.*") if not p.name.endswith(".json")
    }
    assert pieces == {bad, b'{"torn'}


async def test_a_live_attempts_span_file_is_not_rewritten(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    a = await store.dequeue_rollout()
    assert a is not None
    await store.add_span(_span(r.rollout_id, a.attempt.attempt_id, 1))
    span_file = next(store.layout.attempts_dir(r.rollout_id).rglob("spans.*.jsonl"))
    with open(span_file, "ab") as f:
        f.write(b"not json\n")
    before = span_file.read_bytes()
    problems = store.check(fix=True)
    assert [(p.kind, p.fixed) for p in problems] == [("corrupt-span", False)]
    assert span_file.read_bytes() == before


HOLD = """
import sys, time
from pathlib import Path
from store_fs._disk.layout import Layout
from store_fs._disk.maintenance import maintenance_lock
with maintenance_lock(Layout(Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_repair_at_a_time_and_a_killed_holder_blocks_nobody(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store.root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MaintenanceBusyError, match="maintenance"):
            store.check(fix=True)
        assert store.check() == []  # checking without repairing takes no lock
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert store.check(fix=True) == []
                break
            except MaintenanceBusyError:
                assert time.monotonic() < deadline, "the dead holder's lock was never released"
                time.sleep(0.1)
        assert (store.layout.locks / "maintenance.lock").exists()  # lock files are never deleted
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_the_lock_is_reentrant_free_across_threads_of_one_process(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    # Another FileStore in this process is another maintainer: it must wait its turn too.
    with maintenance_lock(store.layout), pytest.raises(MaintenanceBusyError):
        asyncio.run(asyncio.to_thread(FileStore(tmp_path / "store").check, fix=True))
    assert store.check(fix=True) == []
