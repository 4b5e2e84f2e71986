"""The rollout index (store_fs/_disk/rollout_index.py): listings and counts without reading every record.

The reference for every answer is the full scan the store falls back to without a
complete index: the index may make a listing late, never different.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mp_index_workers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_multiprocess import SPAWN, children, read_result

from store_fs import ConflictError, FakeClock, FileStore, Span, init_store
from store_fs._disk.rollout_index import Entry, ordered
from store_fs.models import AttemptStatus, RolloutStatus

STATUSES: list[RolloutStatus] = [
    "queuing",
    "preparing",
    "running",
    "failed",
    "succeeded",
    "cancelled",
    "requeuing",
]
ATTEMPT_STATUSES: list[AttemptStatus] = [
    "preparing",
    "running",
    "failed",
    "succeeded",
    "unresponsive",
    "timeout",
]


# -- helpers ---------------------------------------------------------------------------
def index_logs(store: FileStore) -> list[Path]:
    return sorted(store.layout.rollout_index.glob("*.jsonl"))


def uses_index(store: FileStore) -> bool:
    return (
        store._index.select(status_in=None, rollout_id_in=None, rollout_id_contains=None, logic="and")
        is not None
    )


def index_lines(store: FileStore) -> list[dict[str, Any]]:
    return [json.loads(line) for log in index_logs(store) for line in log.read_text().splitlines()]


@contextmanager
def full_scan(store: FileStore) -> Iterator[None]:
    """Make ``store`` answer as if it had no index (the reference behaviour)."""
    index = store._index
    index.select = lambda **_kw: None  # type: ignore[method-assign]
    index.counts = lambda: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del index.select, index.counts


def dump(result: Any) -> tuple[int, list[dict[str, Any]]]:
    return result.total, [r.model_dump() for r in result.items]


async def reference(store: FileStore, **query: Any) -> tuple[int, list[dict[str, Any]]]:
    with full_scan(store):
        return dump(await store.query_rollouts(**query))


async def statistics_without_uptime(store: FileStore) -> dict[str, Any]:
    stats = dict(await store.statistics())
    del stats["uptime"]
    return stats


async def ids(store: FileStore, **query: Any) -> list[str]:
    return [r.rollout_id for r in (await store.query_rollouts(**query)).items]


def span(rollout_id: str, attempt_id: str, seq: int) -> Span:
    return Span.from_attributes(
        attributes={"k": seq}, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq
    )


# -- what is written -------------------------------------------------------------------
async def test_a_new_store_is_complete_and_every_revision_adds_a_line(store: FileStore) -> None:
    assert store.layout.rollout_index_marker.exists()
    r = await store.enqueue_rollout(input=1)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    await store.update_attempt(r.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    [log] = index_logs(store)
    assert log.name == f"{store._ctx.log_writer}.jsonl"
    assert index_lines(store) == [
        {"rollout_id": r.rollout_id, "rev": rev, "status": status, "start_time": r.start_time, "attempts": n}
        for rev, status, n in [(1, "queuing", 0), (2, "preparing", 1), (3, "succeeded", 1)]
    ]
    assert ".gitignore" in os.listdir(store.root)
    assert "index/" in (store.root / ".gitignore").read_text().split()


async def test_listing_reads_only_the_page(store: FileStore, clock: FakeClock) -> None:
    rollouts = []
    for i in range(40):
        clock.advance(1)
        rollouts.append(await store.enqueue_rollout(input=i))
    cold = FileStore(store.root, create=False, clock=clock)
    reads: list[str] = []
    head, head_at_least = cold._records.head, cold._records.head_at_least

    def counting_head(rollout_id: str, *, cached_ok: bool = True) -> Any:
        reads.append(rollout_id)
        return head(rollout_id, cached_ok=cached_ok)

    def counting_head_at_least(rollout_id: str, rev: int, *, newer: bool = True) -> Any:
        reads.append(rollout_id)
        return head_at_least(rollout_id, rev, newer=newer)

    cold._records.head = counting_head  # type: ignore[method-assign]
    cold._records.head_at_least = counting_head_at_least  # type: ignore[method-assign]
    cold._records.iter_records = None  # type: ignore[assignment,method-assign]  # a full scan would fail
    page = await cold.query_rollouts(status_in=["queuing"], limit=5, offset=10)
    assert [r.rollout_id for r in page.items] == [r.rollout_id for r in rollouts[10:15]]
    assert page.total == 40
    assert sorted(reads) == sorted(r.rollout_id for r in rollouts[10:15])
    assert (await cold.statistics())["total_rollouts"] == 40
    cold.close()


# -- the same answers as the full scan ------------------------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(0, 3)),
        st.tuples(st.just("start"), st.integers(0, 3)),
        st.tuples(st.just("dequeue"), st.integers(0, 3)),
        st.tuples(st.just("attempt"), st.integers(0, 50), st.sampled_from(ATTEMPT_STATUSES)),
        st.tuples(st.just("rollout"), st.integers(0, 50), st.sampled_from(STATUSES)),
        st.tuples(st.just("span"), st.integers(0, 50)),
    ),
    max_size=25,
)
queries = st.fixed_dictionaries(
    {
        "status_in": st.none() | st.lists(st.sampled_from(STATUSES), unique=True, max_size=4),
        "filter_logic": st.sampled_from(["and", "or"]),
        "rollout_id_contains": st.none() | st.sampled_from("0123456789abcdef"),
        "sort_by": st.sampled_from([None, "start_time", "rollout_id", "status", "end_time"]),
        "sort_order": st.sampled_from(["asc", "desc"]),
        "limit": st.integers(-1, 6),
        "offset": st.integers(0, 6),
    }
)


async def apply(store: FileStore, clock: FakeClock, op: tuple[Any, ...], made: list[str]) -> None:
    kind = op[0]
    if kind in ("enqueue", "start"):
        clock.advance(op[1])  # 0 makes start times tie: then the rollout id orders them
        made.append(
            (await store.enqueue_rollout(input=len(made))).rollout_id
            if kind == "enqueue"
            else (await store.start_rollout(input=len(made))).rollout_id
        )
    elif kind == "dequeue":
        clock.advance(op[1])
        await store.dequeue_rollout(worker_id="w")
    elif made and kind == "rollout":
        await store.update_rollout(made[op[1] % len(made)], status=op[2])
    elif made:
        rid = made[op[1] % len(made)]
        latest = await store.get_latest_attempt(rid)
        if latest is None:
            return
        if kind == "attempt":
            # A late succeeded/failed over a watchdog verdict is refused and changes nothing.
            with contextlib.suppress(ConflictError):
                await store.update_attempt(rid, latest.attempt_id, status=op[2])
        else:
            seq = await store.get_next_span_sequence_id(rid, latest.attempt_id)
            await store.add_span(span(rid, latest.attempt_id, seq))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.lists(queries, min_size=1, max_size=6), st.booleans())
def test_queries_match_the_full_scan(
    operations: list[tuple[Any, ...]], drawn: list[dict[str, Any]], name_some: bool
) -> None:
    async def body(root: Path) -> None:
        clock = FakeClock()
        store = FileStore(root, clock=clock, scan_debounce_seconds=3600)
        reader = FileStore(root, create=False, clock=clock, scan_debounce_seconds=3600)
        made: list[str] = []
        for op in operations:
            await apply(store, clock, op, made)
        for query in drawn:
            if name_some:  # also name about half of the rollouts
                query = {**query, "rollout_id_in": [r for r in made if r[-1] in "02468ace"]}
            want = await reference(store, **query)
            assert dump(await store.query_rollouts(**query)) == want, query
            assert dump(await reader.query_rollouts(**query)) == want, query
        with full_scan(store):
            want_stats = await statistics_without_uptime(store)
        assert await statistics_without_uptime(store) == want_stats
        assert await statistics_without_uptime(reader) == want_stats
        assert store.check() == []
        store.close()
        reader.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(body(Path(tmp) / "store"))


entries = st.lists(
    st.builds(
        Entry,
        rollout_id=st.text("0123456789abcdef", min_size=12, max_size=12).map(lambda h: "ro-" + h),
        rev=st.just(1),
        status=st.just("queuing"),
        start_time=st.sampled_from([1.0, 2.0, 3.0]),  # many ties
        attempts=st.just(0),
    ),
    max_size=60,
    unique_by=lambda e: e.rollout_id,
)


@settings(max_examples=200, deadline=None)
@given(
    entries,
    st.sampled_from([None, "start_time", "rollout_id"]),
    st.booleans(),
    st.none() | st.integers(0, 20),
)
def test_index_order_is_the_stable_sort_of_query_rollouts(
    items: list[Entry], sort_by: str | None, descending: bool, need: int | None
) -> None:
    want = sorted(items, key=lambda e: (e.start_time, e.rollout_id))
    if sort_by is not None:
        want.sort(key=lambda e: getattr(e, sort_by), reverse=descending)
    assert list(ordered(items, sort_by, descending, need)) == want


async def error_of(store: FileStore, **query: Any) -> str:
    try:
        await store.query_rollouts(**query)
    except ValueError as err:
        return str(err)
    raise AssertionError(f"no error for {query}")


async def test_bad_arguments_fail_as_in_the_full_scan(store: FileStore) -> None:
    await store.enqueue_rollout(input=1)
    bad_queries: list[dict[str, str | int]] = [
        {"sort_order": "up"},
        {"sort_by": "nope"},
        {"limit": -2},
        {"offset": -1},
    ]
    for query in bad_queries:
        indexed = await error_of(store, status_in=["queuing"], **query)
        with full_scan(store):
            assert indexed == await error_of(store, status_in=["queuing"], **query)
    assert dump(await store.query_rollouts(status_in=[], limit=0)) == (0, [])


# -- readers ---------------------------------------------------------------------------
async def test_another_instance_sees_changes_incrementally(store: FileStore) -> None:
    reader = FileStore(store.root, create=False)
    first = await store.enqueue_rollout(input=1)
    assert await ids(reader, status_in=["queuing"]) == [first.rollout_id]
    offsets = {name: offset for name, (_, offset) in reader._index._view().files.items()}
    second = await store.enqueue_rollout(input=2)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    assert await ids(reader, status_in=["queuing"]) == [second.rollout_id]
    assert await ids(reader, status_in=["preparing"]) == [first.rollout_id]
    grown = {name: offset for name, (_, offset) in reader._index._view().files.items()}
    assert all(grown[name] > offset for name, offset in offsets.items())
    assert (await reader.statistics())["total_attempts"] == 1
    reader.close()


async def test_a_torn_last_line_waits_for_its_newline(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    [log] = index_logs(store)
    line = log.read_bytes()
    with open(log, "ab") as f:
        f.write(line[:20])  # a write in progress (the same line again: harmless once whole)
    reader = FileStore(store.root, create=False)
    assert await ids(reader, status_in=["queuing"]) == [r.rollout_id]
    view = reader._index._view()
    assert view.files[log.name][1] == len(line)
    with open(log, "ab") as f:
        f.write(line[20:])
    await store.dequeue_rollout()
    assert await ids(reader, status_in=["preparing"]) == [r.rollout_id]
    assert view.bad == []
    assert view.entries[r.rollout_id].rev == 2
    reader.close()


async def test_a_writer_after_a_dead_torn_writer_keeps_its_first_line(store: FileStore) -> None:
    # A dead process with this process's pid left half a line in "our" file.
    log = store.layout.rollout_index / f"{store._ctx.log_writer}.jsonl"
    log.write_bytes(b'{"rollout_id": "ro-')
    fresh = FileStore(store.root, create=False)
    r = await fresh.enqueue_rollout(input=1)
    assert log.read_bytes().startswith(b'{"rollout_id": "ro-\n')
    assert await ids(FileStore(store.root, create=False), status_in=["queuing"]) == [r.rollout_id]
    assert [p.kind for p in fresh.check()] == ["corrupt-index-line"]
    fresh.close()


# -- a missing or wrong index ---------------------------------------------------------
async def test_deleted_index_falls_back_to_a_scan_and_check_rebuilds_it(store: FileStore) -> None:
    made = {(await store.enqueue_rollout(input=i)).rollout_id for i in range(3)}  # one start time
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    queued = made - {attempted.rollout_id}
    shutil.rmtree(store.root / "index")
    assert await ids(store, status_in=["queuing"]) == sorted(queued)
    queued.add((await store.enqueue_rollout(input=3)).rollout_id)  # the writer opens a new log
    assert index_logs(store) != []
    assert not uses_index(store)
    assert await ids(store, status_in=["queuing"]) == sorted(queued)
    assert (await store.statistics())["total_rollouts"] == 4

    [problem] = store.check()
    assert (problem.kind, problem.fixed) == ("index-incomplete", False)
    assert "3 rollouts not indexed" in problem.detail
    assert [(p.kind, p.fixed) for p in store.check(fix=True)] == [("index-incomplete", True)]
    assert store.check() == []
    assert uses_index(store)
    for status in STATUSES:
        want = await reference(store, status_in=[status])
        assert dump(await store.query_rollouts(status_in=[status])) == want
    assert (await store.statistics())["total_rollouts"] == 4


async def test_an_older_store_is_not_marked_complete_by_init(store: FileStore) -> None:
    await store.enqueue_rollout(input=1)
    shutil.rmtree(store.root / "index")  # as a store made before the index existed
    init_store(store.root)
    FileStore(store.root)
    assert not store.layout.rollout_index_marker.exists()
    assert [p.kind for p in store.check(fix=True)] == ["index-incomplete"]
    assert store.layout.rollout_index_marker.exists()


async def test_a_stale_entry_is_late_never_wrong_and_check_repairs_it(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    # A crash between the revision and its index line.
    on_revision, store._records._on_revision = store._records._on_revision, None
    await store.update_attempt(r.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    store._records._on_revision = on_revision
    reader = FileStore(store.root, create=False)
    for s in (store, reader):
        assert await ids(s, status_in=["succeeded"]) == []  # late
        assert await ids(s, status_in=["preparing"]) == []  # never wrong
        assert (await s.query_rollouts(status_in=["preparing"])).total == 0

    [problem] = store.check()
    assert (problem.kind, problem.fixed) == ("stale-index", False)
    assert "index at revision 2 (preparing), record at revision 3 (succeeded)" in problem.detail
    assert [(p.kind, p.fixed) for p in store.check(fix=True)] == [("stale-index", True)]
    assert store.check() == []
    for s in (store, reader):
        assert await ids(s, status_in=["succeeded"]) == [r.rollout_id]
    reader.close()


async def test_entries_ahead_of_the_records_and_corrupt_lines_make_check_rebuild(
    store: FileStore, clock: FakeClock
) -> None:
    r = await store.enqueue_rollout(input=1)
    clock.advance(1)
    other = await store.enqueue_rollout(input=2)
    # As after restoring the records from an older copy: the index is ahead of them.
    store._index.append([Entry(r.rollout_id, 9, "running", r.start_time, 1)])
    store._index.append([Entry("ro-00000000abcd", 1, "queuing", 0.0, 0)])
    with open(index_logs(store)[0], "ab") as f:
        f.write(b"not json\n")
    assert await ids(store, status_in=["running"]) == []  # verified on the record
    assert await ids(store, status_in=["queuing"]) == [other.rollout_id]  # late: r is missing

    problems = store.check(fix=True)
    assert sorted(p.kind for p in problems) == ["corrupt-index-line", "index-ahead", "index-ahead"]
    assert all(p.fixed for p in problems)
    # The rebuild deleted the logs; the line it could not read is kept in quarantine, with a note.
    files = [p for p in (store.root / "quarantine").rglob("*") if p.is_file()]
    kept = [p for p in files if not p.name.endswith(".note.json")]
    assert [p.read_bytes() for p in kept] == [b"not json"]
    assert kept[0].with_name(kept[0].name + ".note.json").exists()
    assert store.check() == []
    assert await ids(store, status_in=["queuing"]) == [r.rollout_id, other.rollout_id]
    assert (await store.statistics())["total_rollouts"] == 2
    await store.dequeue_rollout()  # this process's writer follows the rebuilt index
    assert await ids(store, status_in=["preparing"]) == [r.rollout_id]
    assert store.check() == []


# -- processes -------------------------------------------------------------------------
def test_a_forked_child_writes_its_own_log(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    store = FileStore(tmp_path / "store")
    asyncio.run(store.enqueue_rollout(input="parent"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            asyncio.run(store.enqueue_rollout(input="child"))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    logs = index_logs(store)
    assert len(logs) == 2
    assert {log.name.partition(".")[0].rsplit("-", 1)[1] for log in logs} == {str(os.getpid()), str(pid)}
    assert all(len(log.read_text().splitlines()) == 1 for log in logs)
    assert (asyncio.run(FileStore(store.root).statistics()))["total_rollouts"] == 2
    store.close()


def test_two_writer_processes_and_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FileStore(root).close()
    go, stop = SPAWN.Event(), tmp_path / "stop"
    writers = [tmp_path / f"writer-{i}.json" for i in range(2)]
    reader = tmp_path / "reader.json"
    with children() as kids:
        for i, out in enumerate(writers):
            kids.start(mp_index_workers.index_writer, str(root), str(out), i, 150, go)
        kids.start(mp_index_workers.index_reader, str(root), str(reader), go, str(stop))
        time.sleep(0.2)
        go.set()
        kids.procs[0].join(60)
        kids.procs[1].join(60)
        stop.touch()
        kids.join(time.monotonic() + 60)
        assert [p.exitcode for p in kids.procs] == [0, 0, 0]
    enqueued = [rid for out in writers for rid in read_result(out)["enqueued"]]
    seen = read_result(reader)
    assert seen["rounds"] > 0
    assert seen["wrong"] == []
    assert seen["shrank"] == []

    fresh = FileStore(root, create=False)
    assert len(index_logs(fresh)) >= 2
    for status in [*STATUSES, None]:
        status_in = None if status is None else [status]
        got = dump(asyncio.run(fresh.query_rollouts(status_in=status_in)))
        assert got == asyncio.run(reference(fresh, status_in=status_in))
    stats = asyncio.run(fresh.statistics())
    assert stats["total_rollouts"] == len(enqueued) == 300
    assert stats["total_attempts"] == 150
    assert fresh.check() == []
    fresh.close()


@given(
    lines=st.lists(st.sampled_from(["good", "bad", "blank"]), min_size=1, max_size=40),
    slice_bytes=st.integers(min_value=1, max_value=400),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_log_read_in_slices_merges_like_one_read(
    monkeypatch: pytest.MonkeyPatch, lines: list[str], slice_bytes: int
) -> None:
    """Index logs are parsed a slice at a time (memory); entries, and the offsets of bad lines,
    are those of one parse of the whole log, wherever the slices are cut."""
    from store_fs._disk import rollout_index

    chunks = []
    for i, kind in enumerate(lines):
        if kind == "good":
            row = {
                "rollout_id": f"ro-{i:012x}",
                "rev": 1 + i % 3,
                "status": "queuing",
                "start_time": 1.0,
                "attempts": 0,
            }
            chunks.append(json.dumps(row).encode() + b"\n")
        else:
            chunks.append(b"{not json\n" if kind == "bad" else b"\n")
    data = b"".join(chunks)
    whole, sliced = rollout_index.IndexView(), rollout_index.IndexView()
    whole._parse(Path("log"), 7, data)
    monkeypatch.setattr(rollout_index, "_SLICE_BYTES", slice_bytes)
    sliced._parse(Path("log"), 7, data)
    assert sliced.entries == whole.entries
    assert sliced.bad == whole.bad
    assert [b.offset for b in whole.bad] == [
        7 + sum(len(c) for c in chunks[:i]) for i, kind in enumerate(lines) if kind == "bad"
    ]
