"""Compaction as a repair: the torn last line of a log whose writer is gone is moved to
``quarantine/`` with a note, never copied and never dropped; what the log held stays readable
(docs/format.md, "Segments and compaction")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from compaction_workers import finish_in_a_process

from store_fs import FileStore
from store_fs._disk.codec import dumps_line, loads
from store_fs._disk.fsio import host_tag
from store_fs.live import EventReader


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _notes(root: Path) -> list[dict[str, object]]:
    return [loads(p.read_bytes()) for p in sorted((root / "quarantine").rglob("*.note.json"))]


async def test_a_dead_writers_torn_lines_go_to_quarantine(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    r = await store.enqueue_rollout(input="x")
    dead = f"{host_tag()}-{_dead_pid()}"
    # What a writer killed mid-line leaves: complete lines, then part of one.
    entry = {
        "rollout_id": r.rollout_id,
        "rev": 1,
        "status": "queuing",
        "start_time": r.start_time,
        "attempts": 0,
    }
    index_log = store.layout.rollout_index / f"{dead}.jsonl"
    index_log.write_bytes(dumps_line(entry) + b'{"rollout_id": "ro-')
    event = {"rollout_id": r.rollout_id, "status": "queuing", "previous": None, "time": 1.0}
    event_log = store.layout.events / f"{dead}.jsonl"
    event_log.write_bytes(dumps_line(event) + b'{"rollout')
    before = [e for e in EventReader(store.layout.events).read_new() if e["writer"] == dead]

    report = store.compact()

    assert report.torn == 2
    assert report.absorbed == 2
    assert report.segments == 2
    assert not index_log.exists()
    assert not event_log.exists()
    kept = {n["path"]: n for n in _notes(store.root)}
    assert set(kept) == {f"index/rollouts/{dead}.jsonl", f"events/{dead}.jsonl"}
    assert all(n["why"] and n["length"] for n in kept.values())
    quarantined = (store.root / "quarantine").rglob(f"{dead}.jsonl.*")
    torn = sorted(p.read_bytes() for p in quarantined if not p.name.endswith(".note.json"))
    assert torn == [b'{"rollout', b'{"rollout_id": "ro-']
    # The complete lines were copied: the feed still shows the dead writer's event, once.
    after = [e for e in EventReader(store.layout.events).read_new() if e["writer"] == dead]
    assert after == before
    assert len(after) == 1
    fresh = FileStore(store.root, create=False)
    assert [x.rollout_id for x in await fresh.query_rollouts(status_in=["queuing"])] == [r.rollout_id]
    assert fresh.check() == []
    fresh.close()
    store.close()


async def test_a_live_writers_log_is_left_alone(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    await store.enqueue_rollout(input="x")
    own = sorted(p.name for p in store.layout.rollout_index.glob("*.jsonl"))
    report = store.compact()
    assert report.absorbed == 0
    assert report.segments == 0
    assert sorted(p.name for p in store.layout.rollout_index.glob("*.jsonl")) == own
    store.close()


async def test_a_copied_store_reads_each_line_once_after_an_interrupted_compaction(tmp_path: Path) -> None:
    """``cp -r`` gives every file a new inode. Segments and instance-named logs are matched by
    name, so inputs a killed compaction left behind are still skipped in the copy."""
    import shutil
    from unittest import mock

    from store_fs._disk import log_segments

    root = tmp_path / "s"
    FileStore(root).close()
    for _ in range(3):
        finish_in_a_process(root, "succeeded", "w-1")
    events = sorted(map(str, EventReader(root / "events").read_new()))
    store = FileStore(root, create=False)
    with mock.patch.object(log_segments, "_remove_if_unchanged", return_value=0):  # killed before removing
        report = store.compact()
    assert report.segments
    assert report.removed == 0
    store.close()
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert sorted(map(str, EventReader(copy / "events").read_new())) == events
    fresh = FileStore(copy, create=False)
    assert (await fresh.statistics())["total_rollouts"] == 3
    assert fresh.compact().removed > 0  # the leftovers are recognised by name and removed
    assert sorted(map(str, EventReader(copy / "events").read_new())) == events
    worker = await fresh.get_worker_by_id("w-1")
    assert worker is not None
    assert worker.status == "idle"
    fresh.close()


def test_a_reader_looks_again_when_its_listing_is_from_a_cache(tmp_path: Path) -> None:
    """An NFS client may list a directory from its cache: a log a compaction removed is still
    listed and the segment that absorbed it is not. The reader lists again (after a pause)
    instead of losing lines or taking the logs for rebuilt."""
    from unittest import mock

    from store_fs._disk import log_segments

    logs = tmp_path / "logs"
    logs.mkdir()
    kind = log_segments.Kind(prefix="")
    log = logs / "h-1.abc123.jsonl"
    log.write_bytes(b'{"a": 1}\n')
    position: log_segments.Position = {}
    first, _ = log_segments.read_new(logs, kind, position)
    assert [c.data for c in first] == [b'{"a": 1}\n']
    with open(log, "ab") as f:
        f.write(b'{"a": 2}\n')
    stale_with_the_log = log_segments.scan(logs, kind)
    stale_empty = log_segments.Listing(logs, kind)
    log_segments.compact_directory(logs, kind, take=lambda _: True, writer="c-1")
    assert not log.exists()
    real_scan = log_segments.scan
    for stale in (stale_with_the_log, stale_empty):
        answers = iter([stale])
        seen = dict(position)

        def cached_then_real(directory: Path, k: log_segments.Kind) -> log_segments.Listing:
            return next(answers, None) or real_scan(directory, k)  # noqa: B023 - used at once

        with mock.patch.object(log_segments, "scan", cached_then_real):
            chunks, replaced = log_segments.read_new(logs, kind, seen)
        assert not replaced
        assert [c.data for c in chunks] == [b'{"a": 2}\n']
