"""A store written by an earlier main (7ad8760, before segments and instance-named logs) keeps
opening, answers as it did, and compacts (docs/format.md, "Segments and compaction").

``tests/fixtures/store-7ad8760/`` was written by that build from eight processes (host names
changed to ``oldhost``; git keeps no empty directories and no hard links, as a clone would not);
``store-7ad8760.answers.json`` is what that build answered on it, made by :func:`answers`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from store_fs import FileStore
from store_fs.live import EventReader

FIXTURE = Path(__file__).with_name("fixtures") / "store-7ad8760"
LOGS = ("index/rollouts/*.jsonl", "events/*.jsonl", "workers/*/log*.jsonl")


async def answers(root: Path) -> dict[str, Any]:
    """Listings by status, counts, workers, spans and the change feed, as plain JSON values."""
    store = FileStore(root, create=False)
    out: dict[str, Any] = {}
    for status in ("queuing", "preparing", "running", "succeeded", "failed"):
        out[status] = sorted(r.rollout_id for r in await store.query_rollouts(status_in=[status]))
    stats = await store.statistics()
    out["stats"] = {k: v for k, v in stats.items() if k != "uptime"}
    out["workers"] = [w.model_dump(mode="json") for w in await store.query_workers()]
    spans: dict[str, list[list[Any]]] = {}
    for r in await store.query_rollouts():
        held = await store.query_spans(r.rollout_id, "latest")
        spans[r.rollout_id] = sorted([s.sequence_id, s.span_id] for s in held)
    out["spans"] = spans
    events = EventReader(store.layout.events).read_new()
    out["events"] = sorted(
        [e["rollout_id"], e["status"], e["previous"], e["time"], e["writer"].partition(".")[0]]
        for e in events
    )
    store.close()
    return json.loads(json.dumps(out, sort_keys=True))  # type: ignore[no-any-return]


def _logs(root: Path) -> list[Path]:
    return [p for pattern in LOGS for p in root.glob(pattern)]


async def test_the_previous_format_answers_the_same_before_and_after_compaction(tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root)
    expected = json.loads(FIXTURE.with_name("store-7ad8760.answers.json").read_text())
    assert await answers(root) == expected
    store = FileStore(root, create=False)
    assert [p for p in store.check() if not p.fixed] == []
    before = len(_logs(root))
    report = store.compact(idle_seconds=0)  # "oldhost" is another host: its logs are idle enough
    assert report.absorbed == before
    assert len(_logs(root)) == 4  # a segment each: the index, the feed, workers w-0 and w-1
    store.close()
    assert await answers(root) == expected
    # New writes land beside the old ones and are read with them.
    store = FileStore(root, create=False)
    r = await store.enqueue_rollout(input="new")
    store.close()
    again = await answers(root)
    assert again["queuing"] == sorted([*expected["queuing"], r.rollout_id])


async def test_the_previous_format_keeps_running_rollouts(tmp_path: Path) -> None:
    """Its pending tokens hold a JSON body and its rollouts got ``span-seq/0`` at enqueue; this
    build writes empty tokens and makes a counter at the first allocation (docs/format.md).
    Old tokens are claimed, old counters count on, and the store stays clean. The copy has no
    empty directories (``queue/done/`` among them), as a git clone would not: opening the store
    makes them again."""
    root = tmp_path / "store"
    shutil.copytree(FIXTURE, root)
    store = FileStore(root, create=False)
    try:
        queued = {p.name.split("-", 1)[1].rsplit("-", 1)[0] for p in store.layout.pending.iterdir()}
        assert queued == {"ro-44cc612475ad", "ro-4036c578fd21"}
        while (attempted := await store.dequeue_rollout(worker_id="new")) is not None:
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            counter = store.layout.span_seq_dir(rid)
            [name] = [p.name for p in counter.iterdir()]  # "0": made at enqueue by that build
            seqs = await store.get_many_span_sequence_ids([(rid, aid)] * 3)
            assert list(seqs) == [int(name) + 1, int(name) + 2, int(name) + 3]
            await store.update_attempt(rid, aid, status="succeeded")
            queued.discard(rid)
        assert queued == set()
        # An old counter that had handed out numbers counts on from them.
        for r in await store.query_rollouts(status_in=["running"]):
            counter = store.layout.span_seq_dir(r.rollout_id)
            [name] = [p.name for p in counter.iterdir()]
            assert await store.get_next_span_sequence_id(r.rollout_id, "latest") == int(name) + 1
        assert [str(p) for p in store.check()] == []
    finally:
        store.close()
