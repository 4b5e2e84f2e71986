"""SpanReadCache: a reader that decoded a span file before sees exactly what a fresh reader sees.

The cache decodes only what was appended since its last read, so these tests change
span files in every way the store and the world can (append, a line in progress,
a bad line later rewritten, truncation, replacement by another file) and compare
with ``read_lines``, which decodes the whole file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from store_fs import FileStore, Span
from store_fs._disk.codec import dumps_line
from store_fs._disk.span_read import BLANK, UNPARSED, SpanReadCache, read_lines


def _span(seq: int) -> Span:
    return Span.from_attributes(
        attributes={"n": seq, "tokens": [seq, seq + 1]},
        rollout_id="ro-000000000001",
        attempt_id="at-00000001",
        sequence_id=seq,
        trace_id=f"{seq:032x}",
        span_id=f"{seq:016x}",
    )


def _line(seq: int) -> bytes:
    return dumps_line(_span(seq).model_dump(mode="json"))


def _key(key: object) -> object:
    if key is UNPARSED or key is BLANK:
        return id(key)
    # A span_id that cannot be hashed (a line cut and joined into a list there) is a key of
    # its own in each read: compared by kind (hypothesis found one compared by identity).
    return key if isinstance(key, str | int | float | bool | tuple) or key is None else "its own key"


def _view(lines: list[Any]) -> list[tuple[object, Any, str, int]]:
    """Comparable lines: markers by identity, spans by value."""
    return [(_key(key), span, reason, at) for key, span, reason, at in lines]


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


# Each step changes the file the way a writer, a crash, NFS or `agl check --fix` can.
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 50)),  # a whole span line
        st.tuples(st.just("partial"), st.integers(1, 50)),  # half a line: a write in progress
        st.tuples(st.just("finish"), st.just(0)),  # the rest of the line in progress
        st.tuples(st.just("garbage"), st.integers(0, 2)),  # not JSON / NUL bytes / invalid span
        st.tuples(st.just("heal"), st.just(0)),  # a bad line's bytes rewritten in place, valid now
        st.tuples(st.just("trim"), st.just(0)),  # check --fix: cut the bytes after the last newline
        st.tuples(st.just("truncate"), st.just(0)),  # cut to half
        st.tuples(st.just("replace"), st.integers(1, 50)),  # a new file renamed over the old one
        st.tuples(st.just("read"), st.just(0)),  # nothing changes
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_steps, budget=st.sampled_from([1, 300, 1 << 20]))
@example(  # half a line cut away and joined to another's end: a span_id that is a list
    steps=[
        *[("append", 1), ("partial", 1), ("trim", 0), ("append", 1), ("finish", 0)],
        *[("partial", 1), ("trim", 0), ("truncate", 0), ("finish", 0)],
    ],
    budget=1,
)
def test_cached_reads_equal_fresh_reads(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]], budget: int
) -> None:
    path = tmp_path_factory.mktemp("cache") / "spans.w.jsonl"
    path.write_bytes(b"")
    cache = SpanReadCache(budget)
    pending = b""
    garbage = [b"{not json\n", b"\x00\x00\x00\n", dumps_line({"span_id": "x", "sequence_id": "two"})]
    for step, arg in steps:
        data = path.read_bytes()
        if step == "append":
            _append(path, _line(arg))
        elif step == "partial":
            pending = _line(arg)
            _append(path, pending[: len(pending) // 2])
        elif step == "finish" and pending:
            _append(path, pending[len(pending) // 2 :])
            pending = b""
        elif step == "garbage":
            _append(path, garbage[arg])
        elif step == "heal":
            at = data.find(b"\x00\x00\x00\n")
            if at >= 0:  # same length: "{}" plus padding spaces
                path.write_bytes(data[:at] + b"{} \n" + data[at + 4 :])
        elif step == "trim":
            os.truncate(path, data.rfind(b"\n") + 1)
        elif step == "truncate":
            os.truncate(path, len(data) // 2)
        elif step == "replace":
            replacement = path.with_name("new")
            replacement.write_bytes(_line(arg) * 2)
            os.replace(replacement, path)
        fresh = _view(read_lines(path))
        for _ in range(2):  # the first read of a file is not kept, the second is
            assert _view(cache.lines(path)) == fresh


def test_a_bad_line_is_never_kept_so_a_later_fix_is_seen(tmp_path: Path) -> None:
    # NFS can show NUL bytes where data lands a moment later; a person can fix a line in place.
    path = tmp_path / "spans.w.jsonl"
    path.write_bytes(_line(1) + b"\x00\x00\x00\n" + _line(2))
    cache = SpanReadCache(1 << 20)
    for _ in range(2):
        assert [reason for _, _, reason, _ in cache.lines(path)] == ["", "NUL or blank bytes", ""]
    assert cache.held_bytes == len(_line(1))  # up to the bad line
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\x00\x00\x00\n", b"{} \n"))  # same length, same inode
    assert _view(cache.lines(path)) == _view(read_lines(path))
    assert cache.lines(path)[1][2].startswith("does not validate as a Span")


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "spans.w.jsonl"
    path.write_bytes(_line(1) + _line(2))
    cache = SpanReadCache(1 << 20)
    cache.lines(path)  # a first read is not kept
    first = cache.lines(path)
    assert [span.sequence_id for _, span, _, _ in first if span is not None] == [1, 2]
    reads: list[int] = []  # the offsets read from
    real_pread = os.pread

    def recording_pread(fd: int, n: int, at: int) -> bytes:
        reads.append(at)
        return real_pread(fd, n, at)

    monkeypatch.setattr(os, "pread", recording_pread)
    assert cache.lines(path) is first  # an open and an fstat, no read
    assert reads == []
    _append(path, _line(3))
    again = cache.lines(path)
    assert [span.sequence_id for _, span, _, _ in again if span is not None] == [1, 2, 3]
    assert all(a[1] is b[1] for a, b in zip(again[:2], first, strict=True))  # not decoded again
    assert reads[0] == len(_line(1) + _line(2))  # only the new bytes were read


def test_the_budget_drops_least_recently_read_files(tmp_path: Path) -> None:
    paths = [tmp_path / f"spans.{i}.jsonl" for i in range(3)]
    for i, path in enumerate(paths):
        path.write_bytes(_line(i + 1))
    size = paths[0].stat().st_size
    cache = SpanReadCache(2 * size + 10)
    for path in paths:
        cache.lines(path)
    kept = [cache.lines(p) for p in paths]  # second reads: kept; the third evicts the first
    assert cache.held_bytes == 2 * size
    assert cache.lines(paths[1]) is kept[1]
    assert cache.lines(paths[2]) is kept[2]
    assert cache.lines(paths[0]) is not kept[0]
    assert _view(cache.lines(paths[0])) == _view(kept[0])


def test_a_reader_that_reads_each_file_once_keeps_nothing(tmp_path: Path) -> None:
    cache = SpanReadCache(1 << 20)
    for i in range(5):
        path = tmp_path / f"spans.{i}.jsonl"
        path.write_bytes(_line(i + 1))
        assert [span.sequence_id for _, span, _, _ in cache.lines(path) if span is not None] == [i + 1]
    assert cache.held_bytes == 0
    replaced = tmp_path / "spans.0.jsonl"
    fresh = tmp_path / "new"
    fresh.write_bytes(_line(9))
    os.replace(fresh, replaced)  # another file under a name read before: a first read again
    cache.lines(replaced)
    assert cache.held_bytes == 0
    cache.lines(replaced)
    assert cache.held_bytes == replaced.stat().st_size


def test_spans_are_reported_shared_only_once_kept(tmp_path: Path) -> None:
    # SpanLog copies shared spans for its caller; spans nobody keeps need no copy.
    path = tmp_path / "spans.w.jsonl"
    path.write_bytes(_line(1))
    cache = SpanReadCache(1 << 20)
    assert [cache.read(path)[1] for _ in range(3)] == [False, True, True]
    assert SpanReadCache(0).read(path)[1] is False
    assert SpanReadCache(1).read(path)[1] is False


def test_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert SpanReadCache(100).lines(tmp_path / "nope.jsonl") == []


async def test_query_spans_follows_appends_and_check_sees_the_bytes_on_disk(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    attempted = await store.start_rollout(input=None)
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    for seq in (1, 2):
        await store.add_span(_span(seq).model_copy(update={"rollout_id": rid, "attempt_id": aid}))
    assert [s.sequence_id for s in await store.query_spans(rid)] == [1, 2]
    await store.add_span(_span(3).model_copy(update={"rollout_id": rid, "attempt_id": aid}))
    spans = list(await store.query_spans(rid))  # a second read: kept from now on
    assert [s.sequence_id for s in spans] == [1, 2, 3]
    spans[0].attributes["n"] = -1  # the caller's copy
    assert (await store.query_spans(rid)).items[0].attributes["n"] == 1

    # Damage a cached line in place, keeping its length: queries keep what they decoded
    # (span files are append-only, so this is not something the store does), check does not.
    [span_file] = store.layout.attempts_dir(rid).glob("*/spans.*.jsonl")
    data = span_file.read_bytes()
    first = data.index(b"\n")
    span_file.write_bytes(b"#" * first + data[first:])
    assert [p.kind for p in store.check()] == ["corrupt-span"]
    store.close()
