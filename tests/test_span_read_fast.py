"""The fast span read path: exact equivalence with validation, and bad lines still reported.

``store_fs._disk.span_decode`` builds Span objects without pydantic validation for lines of
the canonical shape. That is only allowed if nobody can tell: these tests compare it
with ``Span.model_validate`` down to value types and ``model_fields_set``, on generated
canonical lines and on lines changed in every way the generator can think of, and check
that ``SpanLog.read`` still reports every corrupt or invalid line.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_strategies import attribute_values as attribute_values_of
from json_strategies import finite, ints64
from json_strategies import json_values as json_values_of
from json_strategies import texts as texts_of
from pydantic import BaseModel, ValidationError

from store_fs import FileStore, Span
from store_fs._disk import span_decode, span_read
from store_fs._disk.codec import dumps_line
from store_fs._disk.span_decode import decode_span
from store_fs._disk.span_log import BadLine
from store_fs.models import Event, Link, OtelResource, SpanContext, TraceStatus

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies: canonical span lines and lines that are not quite --------------------------
texts = texts_of(12)
json_values = json_values_of(texts, max_children=4, max_leaves=12)
attribute_values = attribute_values_of(texts)
attributes = st.dictionaries(texts, attribute_values, max_size=6)
optional_times = st.none() | st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "trace_id": draw(texts),
        "span_id": draw(texts),
        "is_remote": draw(st.booleans()),
        "trace_state": draw(st.dictionaries(texts, texts, max_size=2)),
    }


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    return {"name": draw(texts), "attributes": draw(attributes), "timestamp": draw(optional_times)}


@st.composite
def links(draw: st.DrawFn) -> dict[str, Any]:
    return {"context": draw(contexts()), "attributes": draw(st.none() | attributes)}


@st.composite
def canonical_spans(draw: st.DrawFn) -> dict[str, Any]:
    """What ``Span.model_dump(mode="json")`` of a valid span looks like (fields in order)."""
    obj: dict[str, Any] = {
        "rollout_id": draw(texts),
        "attempt_id": draw(texts),
        "sequence_id": draw(ints64),
        "trace_id": draw(texts),
        "span_id": draw(texts),
        "parent_id": draw(st.none() | texts),
        "name": draw(texts),
        "status": {
            "status_code": draw(st.sampled_from(["UNSET", "OK", "ERROR"])),
            "description": draw(st.none() | texts),
        },
        "attributes": draw(attributes),
        "events": draw(st.lists(events(), max_size=2)),
        "links": draw(st.lists(links(), max_size=2)),
        "start_time": draw(optional_times),
        "end_time": draw(optional_times),
        "context": draw(st.none() | contexts()),
        "parent": draw(st.none() | contexts()),
        "resource": {"attributes": draw(attributes), "schema_url": draw(texts)},
    }
    for key in draw(st.lists(st.sampled_from(["kind", "instrumentation_scope", "x"]), unique=True)):
        obj[key] = draw(json_values)  # extras (OpenTelemetry spans carry two) go last
    return obj


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every value inside a JSON object, the root's children first."""
    out: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _parent_of(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    return obj


@st.composite
def span_lines(draw: st.DrawFn) -> bytes:
    """A span line: canonical, or changed in one to three places (some still valid, some not)."""
    obj = draw(canonical_spans())
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(obj)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent_of(obj, path), path[-1]
        how = draw(st.sampled_from(["drop", "replace", "int", "extra", "reorder", "mixed-list"]))
        if how == "drop" and isinstance(parent, dict):
            del parent[key]
        elif how == "replace":
            parent[key] = draw(json_values)
        elif how == "int" and isinstance(parent[key], float) and abs(parent[key]) < 2**63:
            parent[key] = int(parent[key])  # upstream JSON may write a time as 12 rather than 12.0
        elif how == "extra" and isinstance(parent[key], dict):
            parent[key][draw(texts)] = draw(json_values)
        elif how == "reorder" and isinstance(parent[key], dict):
            parent[key] = dict(reversed(list(parent[key].items())))
        elif how == "mixed-list":
            parent[key] = draw(
                st.lists(st.one_of(st.booleans(), ints64, finite, texts), min_size=2, max_size=4)
            )
    return orjson.dumps(obj)


# -- exact comparison ------------------------------------------------------------------------
def _exact(value: Any) -> Any:
    """``value`` with every type made explicit: ``1``, ``1.0`` and ``True`` differ, and so do
    models whose ``model_fields_set`` or extras differ."""
    if isinstance(value, BaseModel):
        return (
            type(value),
            sorted(value.model_fields_set),
            [(k, _exact(v)) for k, v in value.__dict__.items()],
            None if value.__pydantic_extra__ is None else _exact(value.__pydantic_extra__),
            value.__pydantic_private__,
        )
    if isinstance(value, dict):
        return (dict, [(k, _exact(v)) for k, v in value.items()])
    if isinstance(value, list):
        return (list, [_exact(v) for v in value])
    return (type(value), value)


def _validated(line: bytes) -> Span | type[ValidationError]:
    try:
        return Span.model_validate(orjson.loads(line))
    except ValidationError:
        return ValidationError


def _decoded(line: bytes) -> Span | type[ValidationError]:
    try:
        return decode_span(orjson.loads(line))
    except ValidationError:
        return ValidationError


def test_fast_path_is_on() -> None:
    """The span models still have the layout the shortcut was written for.

    If this fails, a model in store_fs/models/span_types.py changed: update
    store_fs/_disk/span_decode.py (its expected layout and checks) to match.
    """
    assert span_decode.FAST_PATH


@SETTINGS
@given(canonical_spans())
def test_canonical_lines_take_the_shortcut_and_equal_validation(obj: dict[str, Any]) -> None:
    line = orjson.dumps(obj)
    fast = span_decode._fast_span(orjson.loads(line))
    assert fast is not None, "a canonical line must not need validation"
    expected = Span.model_validate(orjson.loads(line))
    assert fast == expected
    assert _exact(fast) == _exact(expected)
    assert fast.model_dump_json() == expected.model_dump_json()


@SETTINGS
@given(span_lines())
def test_any_line_decodes_exactly_as_validation(line: bytes) -> None:
    expected, got = _validated(line), _decoded(line)
    if expected is ValidationError:
        assert got is ValidationError
        return
    assert isinstance(got, Span)
    assert isinstance(expected, Span)
    assert got == expected
    assert _exact(got) == _exact(expected)


def _dump(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


def _base() -> dict[str, Any]:
    return Span.from_attributes(attributes={"a": 1}, rollout_id="ro-1", attempt_id="at-1").model_dump(
        mode="json"
    )


def _with(**changes: Any) -> bytes:
    obj = _base()
    for dotted, value in changes.items():
        target = obj
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        if value is _ABSENT:
            del target[last]
        else:
            target[last] = value
    return _dump(obj)


_ABSENT = object()


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(_with(status__description=_ABSENT), id="status-without-description"),
        pytest.param(_with(start_time=12), id="int-time"),
        pytest.param(_with(start_time=True), id="bool-time"),
        pytest.param(_with(sequence_id=3.0), id="float-sequence-id"),
        pytest.param(_with(attributes={"x": [1, 2.5]}), id="int-and-float-list"),
        pytest.param(_with(attributes={"x": [True, 1]}), id="bool-and-int-list"),
        pytest.param(_with(attributes={"x": []}), id="empty-list"),
        pytest.param(_with(attributes={"x": None}), id="null-attribute"),
        pytest.param(_with(attributes={"x": {"y": 1}}), id="object-attribute"),
        pytest.param(_with(status__status_code="FINE"), id="unknown-status-code"),
        pytest.param(_with(status__extra="kept"), id="status-extra"),
        pytest.param(_with(resource__extra="dropped"), id="resource-extra-ignored"),
        pytest.param(_with(context__trace_state={"k": 1}), id="non-string-trace-state"),
        pytest.param(_with(context__extra=[1]), id="context-extra"),
        pytest.param(_with(events=[{"name": "e", "attributes": {}}]), id="event-without-timestamp"),
        pytest.param(
            _with(events=[{"name": "e", "attributes": {}, "timestamp": 5}]), id="event-int-timestamp"
        ),
        pytest.param(
            _with(
                links=[{"context": {"trace_id": "t", "span_id": "s", "is_remote": False, "trace_state": {}}}]
            ),
            id="link-without-attributes",
        ),
        pytest.param(_with(parent_id=_ABSENT), id="missing-required-field"),
        pytest.param(_with(kind="SpanKind.INTERNAL", instrumentation_scope="x"), id="otel-extras"),
        pytest.param(_dump(dict(reversed(list(_base().items())))), id="keys-reordered"),
    ],
)
def test_upstream_shaped_and_odd_lines(line: bytes) -> None:
    expected, got = _validated(line), _decoded(line)
    if expected is ValidationError:
        assert got is ValidationError
    else:
        assert _exact(got) == _exact(expected)


# -- the reader: appends, torn lines, bad lines ---------------------------------------------
def _span(seq: int, **attributes: Any) -> Span:
    return Span.from_attributes(
        attributes={"n": seq, "tokens": [seq, seq + 1], **attributes},
        rollout_id="ro-000000000001",
        attempt_id="at-00000001",
        sequence_id=seq,
        trace_id=f"{seq:032x}",
        span_id=f"{seq:016x}",
    )


class Files:
    """An attempt directory written by hand, read through one SpanLog."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.store = FileStore(tmp_path / "store", **options)
        self.dir = tmp_path / "attempt"
        self.dir.mkdir()
        self.log = self.store._spans

    def path(self, writer: str = "w1") -> Path:
        return self.dir / f"spans.{writer}.jsonl"

    def append(self, data: bytes, writer: str = "w1") -> None:
        with open(self.path(writer), "ab") as f:
            f.write(data)

    def read(self) -> tuple[list[Span], list[BadLine]]:
        bad: list[BadLine] = []
        return self.log.read([self.dir], bad), bad


@pytest.fixture
def files(tmp_path: Path) -> Any:
    f = Files(tmp_path)
    yield f
    f.store.close()


def _lines(*spans: Span) -> bytes:
    return b"".join(dumps_line(s.model_dump(mode="json")) for s in spans)


def _ids(spans: list[Span]) -> list[int]:
    return [s.sequence_id for s in spans]


def test_reads_follow_appends_and_skip_a_line_being_written(files: Files) -> None:
    files.append(_lines(_span(1), _span(2)))
    assert _ids(files.read()[0]) == [1, 2]
    line = dumps_line(_span(4).model_dump(mode="json"))
    files.append(_lines(_span(3)) + line[:30])  # 4 is being written
    assert files.read() == ([_span(1), _span(2), _span(3)], [])
    files.append(line[30:])
    assert files.read() == ([_span(i) for i in (1, 2, 3, 4)], [])


def test_changing_a_returned_span_does_not_change_later_reads(files: Files) -> None:
    # The contract of SpanLog.read with its cache: fields and attribute keys are the caller's.
    files.append(_lines(_span(1, scope="x")))
    for _ in range(3):
        [span], _ = files.read()
        assert span == _span(1, scope="x")
        span.attributes["n"] = 99
        span.attributes["tokens"] = [7]
        del span.attributes["scope"]
        span.name = "changed"
        span.status = TraceStatus(status_code="ERROR")
        span.model_fields_set.discard("name")


def test_without_the_cache_even_nested_values_are_the_callers(tmp_path: Path) -> None:
    files = Files(tmp_path, span_cache_bytes=0)
    files.append(_lines(_span(1, scope="x")))
    for _ in range(2):
        [span], _ = files.read()
        assert span == _span(1, scope="x")
        assert isinstance(span.attributes["tokens"], list)
        tokens: list[Any] = span.attributes["tokens"]  # ints (see _span): isinstance cannot narrow the items
        tokens.append(7)
        span.status.description = "changed"
        span.resource.attributes["extra"] = "changed"
        assert span.context is not None
        span.context.trace_state["k"] = "v"
    files.store.close()


def test_bad_lines_are_reported_on_every_read(files: Files, caplog: pytest.LogCaptureFixture) -> None:
    good = _lines(_span(1))
    invalid = dumps_line({**_span(2).model_dump(mode="json"), "sequence_id": "two"})
    files.append(good + b"{not json\n" + b"[1, 2]\n" + b"\x00\x00\n" + invalid + b"\n" + _lines(_span(3)))
    offsets = [len(good), len(good) + 10, len(good) + 17, len(good) + 20]
    for _ in range(3):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="store_fs._disk.span_log"):
            spans, bad = files.read()
        assert _ids(spans) == [1, 3]
        assert sorted(b.offset for b in bad) == offsets
        assert all(b.path == files.path() for b in bad)
        reasons = {b.offset: b.reason for b in bad}
        assert reasons[offsets[2]] == "NUL or blank bytes"
        assert reasons[offsets[1]] == "not a JSON object"
        assert reasons[offsets[3]].startswith("does not validate as a Span: sequence_id")
        assert len(caplog.records) == 3  # NUL padding is reported, not logged


async def test_check_reports_a_span_line_that_does_not_validate(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    attempted = await store.start_rollout(input="x")
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    await store.add_span(_span(1).model_copy(update={"rollout_id": rid, "attempt_id": aid}))
    path = next(store.layout.rollout_dir(rid).glob("attempts/*/spans.*.jsonl"))
    with open(path, "ab") as f:
        f.write(dumps_line({**_span(2).model_dump(mode="json"), "status": {"status_code": "FINE"}}))
    for _ in range(2):
        problems = [p for p in store.check() if p.kind == "corrupt-span"]
        assert len(problems) == 1
        assert "does not validate as a Span: status.status_code" in problems[0].detail
        assert len(await store.query_spans(rid)) == 1
    store.close()


def test_first_copy_of_a_span_id_wins_across_files(files: Files) -> None:
    files.append(_lines(_span(1), _span(2)), writer="a")
    files.append(_lines(_span(2, copy="second"), _span(3)), writer="b")
    spans, _ = files.read()
    assert _ids(spans) == [1, 2, 3]
    assert "copy" not in spans[1].attributes


def test_an_unhashable_span_id_is_a_bad_line_not_a_crash(files: Files) -> None:
    files.append(_lines(_span(1)) + orjson.dumps({"span_id": [1]}) + b"\n")
    spans, bad = files.read()
    assert _ids(spans) == [1]
    assert [b.reason.split(":")[0] for b in bad] == ["does not validate as a Span"]


def test_a_span_file_that_disappears_reads_as_empty(files: Files) -> None:
    files.append(_lines(_span(1)))
    assert _ids(files.read()[0]) == [1]
    files.path().unlink()
    assert files.read() == ([], [])


def test_models_decoded_are_the_span_models() -> None:
    """The shortcut builds instances of exactly the models validation would."""
    obj = _base()
    obj["events"] = [{"name": "e", "attributes": {}, "timestamp": 1.0}]
    obj["links"] = [{"context": obj["context"], "attributes": None}]
    span = span_decode._fast_span(orjson.loads(orjson.dumps(obj)))
    assert span is not None
    assert type(span.status) is TraceStatus
    assert type(span.resource) is OtelResource
    assert type(span.context) is SpanContext
    assert type(span.events[0]) is Event
    assert type(span.links[0]) is Link


@pytest.mark.parametrize("enabled", [True, False])
def test_decoding_leaves_the_collector_as_it_found_it(enabled: bool) -> None:
    line = dumps_line({"span_id": "x", "bad": True}) + b"not json\n"
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        seen: list[bool] = []
        original = decode_span  # the function span_read calls (it imports it from span_decode)

        def spy(obj: dict[str, Any]) -> Span:
            seen.append(gc.isenabled())
            return original(obj)

        with pytest.MonkeyPatch.context() as patch:  # undone when the block exits
            patch.setattr(span_read, "decode_span", spy)
            lines = span_read._decode_lines(line)
        assert seen == [False]  # paused while decoding
        assert [reason[:4] for _, _, reason, _ in lines] == ["does", "inva"]  # invalid span; not JSON
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def test_threads_decoding_at_once_leave_the_collector_on() -> None:
    line = dumps_line({"span_id": "x", "bad": True})
    inside, release = threading.Barrier(5), threading.Event()
    original = decode_span  # the function span_read calls (it imports it from span_decode)

    def slow(obj: dict[str, Any]) -> Span:
        inside.wait(10)  # all four decoders are paused at once
        release.wait(10)
        return original(obj)

    assert gc.isenabled()
    with pytest.MonkeyPatch.context() as patch:  # undone when the block exits
        patch.setattr(span_read, "decode_span", slow)
        threads = [threading.Thread(target=span_read._decode_lines, args=(line,)) for _ in range(4)]
        for t in threads:
            t.start()
        inside.wait(10)
        assert not gc.isenabled()
        release.set()
        for t in threads:
            t.join(10)
    assert gc.isenabled()


def test_a_child_forked_while_another_thread_decodes_gets_its_collector_back() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def decoding() -> None:
        with span_read.collector_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=decoding)
    thread.start()
    try:
        assert inside.wait(10)
        assert not gc.isenabled()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: the decoding thread does not exist here
            with span_read.collector_paused():
                pass
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        assert os.read(read, 1) == b"1"
        os.close(read)
    finally:
        release.set()
        thread.join(10)
    assert gc.isenabled()
