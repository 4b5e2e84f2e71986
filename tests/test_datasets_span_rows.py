"""The ``triplets`` view's plain reading of spans gives what ``query_spans`` and span objects give.

* :func:`~store_fs.datasets._span_rows.read_span_rows` against ``query_spans(rollout_id,
  "latest")`` on span files holding canonical lines, lines that validation changes (ints for
  floats, mixed lists, extras, events, keys out of order), lines that do not validate, repeated
  span ids across files, corrupt and blank lines and a write in progress;
* the plan-made call groups (:mod:`~store_fs.datasets._call_shapes`) against the reference
  unflattening on generated attribute keys, errors included;
* reward reading from rows against :mod:`store_fs.rewards` on span objects.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_fs import FileStore, Span
from store_fs.datasets import _span_rows as span_rows
from store_fs.datasets._call_shapes import _reference, call_groups
from store_fs.datasets._row_rewards import final_reward, reward_of
from store_fs.datasets._span_rows import read_span_rows
from store_fs.datasets.flat_attributes import AttributeShapeError
from store_fs.rewards import find_final_reward, get_reward_value, reward_attributes

_ids = itertools.count()


def _canonical(span_id: str, seq: int) -> dict[str, Any]:
    span = Span.from_attributes(
        attributes={"gen_ai.prompt.0.role": "user", "prompt_token_ids": [1, 2, 3], "x": 1.5},
        rollout_id="ro-000000000001",
        attempt_id="at-000000000001",
        sequence_id=seq,
        name=f"span-{span_id}",
        start_time=100.0 + seq,
        end_time=101.0 + seq,
    )
    line: dict[str, Any] = span.model_dump(mode="json")
    line["span_id"] = span_id
    return line


def _set(path: str, value: Any) -> Any:
    def apply(line: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = line
        for part in parents:
            target = target[part]
        target[last] = value

    return apply


def _drop(key: str) -> Any:
    return lambda line: line.pop(key)


def _move_to_end(key: str) -> Any:
    return lambda line: line.__setitem__(key, line.pop(key))


# Changes to a canonical line: some keep it canonical, some make validation change values,
# some make it invalid.
CHANGES: list[Any] = [
    lambda line: None,
    _set("start_time", 5),
    _set("end_time", None),
    _set("parent_id", "p-1"),
    _set("parent_id", 7),
    _set("attributes/mixed", [1, 2.5]),
    _set("attributes/bools", [True, 1]),
    _set("attributes/empty", []),
    _set("attributes/nested", {"a": 1}),
    _set("attributes/none", None),
    _set("attributes/holes", [1.0, None]),
    _set("attributes/flag", True),
    _set("status/status_code", "BAD"),
    _set("status/extra", "kept"),
    _drop("status"),
    _set("events", [{"name": "e", "attributes": {"k": 1}, "timestamp": 3.0}]),
    _set("events", [{"name": 3}]),
    _set("links", [{"context": None}]),
    _set("kind", "SpanKind.INTERNAL"),
    _move_to_end("name"),
    _set("sequence_id", "4"),
    _set("sequence_id", 2.0),
    _set("sequence_id", True),
    _set("resource/schema_url", None),
    _set("resource/attributes/service.name", "svc"),
    _set("resource/attributes/bad", {"a": 1}),
    _set("context", None),
    _set("context/trace_state", {"k": 1}),
    _set("parent", {"trace_id": "t", "span_id": "s", "is_remote": False, "trace_state": {}}),
    _set("name", None),
    _drop("resource"),
]

RAW_LINES = [b"{not json", b"\x00\x00\x00", b"[1, 2]", b"", b'"text"']

line_spec = st.tuples(
    st.integers(0, 5),  # span id (a small pool: repeats across lines and files)
    st.integers(0, 9),  # sequence id
    st.sampled_from(range(len(CHANGES))),
    st.integers(0, 1),  # file
    st.one_of(st.none(), st.sampled_from(RAW_LINES)),  # a raw line instead
)


async def _attempt(store: FileStore) -> tuple[str, Path]:
    rollout = await store.enqueue_rollout(input={"n": next(_ids)})
    attempted = await store.start_attempt(rollout.rollout_id, worker_id="w-test")
    attempt = attempted.attempt
    attempt_dir = store.layout.attempt_dir(rollout.rollout_id, attempt.sequence_id, attempt.attempt_id)
    attempt_dir.mkdir(parents=True, exist_ok=True)
    return rollout.rollout_id, attempt_dir


def _write(attempt_dir: Path, specs: list[tuple[int, int, int, int, bytes | None]], partial: bool) -> None:
    files: list[list[bytes]] = [[], []]
    for span_no, seq, change, file_no, raw in specs:
        if raw is not None:
            files[file_no].append(raw)
            continue
        line = _canonical(f"s{span_no}", seq)
        CHANGES[change](line)
        files[file_no].append(orjson.dumps(line))
    for file_no, lines in enumerate(files):
        data = b"".join(line + b"\n" for line in lines)
        if partial and file_no == 1:
            data += orjson.dumps(_canonical("s-partial", 0))[:40]
        (attempt_dir / f"spans.test-{file_no}.jsonl").write_bytes(data)


def _rows_of(spans: list[Span]) -> list[Any]:
    return [(s.span_id, s.parent_id, s.name, s.attributes, s.start_time, s.end_time) for s in spans]


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileStore]:
    """One store for every example (a new rollout each): examples stay fast."""
    store = FileStore(tmp_path_factory.mktemp("rows") / "store", span_cache_bytes=0)
    yield store
    store.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(line_spec, max_size=12), partial=st.booleans())
def test_rows_are_what_query_spans_returns(shared_store: FileStore, specs: list[Any], partial: bool) -> None:
    async def check() -> None:
        rollout_id, attempt_dir = await _attempt(shared_store)
        _write(attempt_dir, specs, partial)
        expected = _rows_of(list(await shared_store.query_spans(rollout_id, "latest")))
        rows = read_span_rows(shared_store, attempt_dir)
        # JSON tells 1, 1.0 and true apart, which == does not.
        assert orjson.dumps(rows) == orjson.dumps(expected)

    asyncio.run(check())


def test_canonical_lines_are_read_without_span_objects(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines as the store writes them (the tracer's extra keys included) never reach span
    validation: that is what makes the view fast. Others still do."""

    def refuse(obj: dict[str, Any]) -> Span:
        raise AssertionError(f"validated {obj['span_id']}")

    async def check() -> None:
        rollout_id, attempt_dir = await _attempt(store)
        line = _canonical("s1", 1)
        line["kind"] = "SpanKind.CLIENT"
        (attempt_dir / "spans.test-0.jsonl").write_bytes(orjson.dumps(line) + b"\n")
        expected = _rows_of(list(await store.query_spans(rollout_id, "latest")))
        monkeypatch.setattr(span_rows, "decode_span", refuse)
        assert read_span_rows(store, attempt_dir) == expected
        line["start_time"] = 3  # an int: validation makes it a float
        (attempt_dir / "spans.test-0.jsonl").write_bytes(orjson.dumps(line) + b"\n")
        with pytest.raises(AssertionError, match="validated s1"):
            read_span_rows(store, attempt_dir)

    asyncio.run(check())


# -- call groups ------------------------------------------------------------------------
segment = st.sampled_from(["0", "1", "2", "01", "role", "content", "messages", "choices", "id", "x"])
prefix = st.sampled_from(
    [
        "gen_ai.request",
        "gen_ai.response",
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai",
        "agentlightning.operation.input",
        "agentlightning.operation.output",
        "agentlightning.operation.input.messages",
        "agentlightning.operation.output.choices",
        "other",
    ]
)
attribute_key = st.builds(lambda p, rest: ".".join([p, *rest]), prefix, st.lists(segment, max_size=3))
attribute_value = st.one_of(
    st.integers(-9, 9), st.floats(-1, 1), st.text(max_size=3), st.lists(st.integers(-9, 9), max_size=2)
)


def _outcome(read: Any, attributes: dict[str, Any]) -> Any:
    try:
        return ("ok", read(copy.deepcopy(attributes)))
    except AttributeShapeError as err:
        return ("error", str(err))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(attribute_key, attribute_value, max_size=8))
def test_call_groups_equal_the_reference_unflattening(attributes: dict[str, Any]) -> None:
    expected = _outcome(_reference, attributes)
    assert _outcome(call_groups, attributes) == expected
    assert _outcome(call_groups, attributes) == expected  # the plan, now remembered
    if expected[0] == "ok":
        made = call_groups(attributes)
        assert orjson.dumps(made) == orjson.dumps(expected[1])
        assert made is not call_groups(attributes)  # fresh containers every time


# -- rewards ----------------------------------------------------------------------------
reward_attrs = st.one_of(
    st.builds(reward_attributes, st.floats(-10, 10)),
    st.just({"agentops.task.output": '{"type": "reward", "value": 0.5}'}),
    st.just({"agentops.entity.output": "not json"}),
    st.just({"reward": 2}),
    st.just({"reward": True}),
    st.just({"agentlightning.reward.0.value": "high"}),
    st.just({"gen_ai.prompt.0.role": "user"}),
)


@given(st.lists(st.tuples(st.sampled_from(["agentlightning.annotation", "other"]), reward_attrs), max_size=5))
def test_rewards_from_rows_equal_rewards_from_spans(named: list[tuple[str, dict[str, Any]]]) -> None:
    spans = [
        Span.from_attributes(attributes=a, rollout_id="ro-1", attempt_id="at-1", sequence_id=i, name=n)
        for i, (n, a) in enumerate(named)
    ]
    rows = _rows_of(spans)
    assert [reward_of(s.name, s.attributes) for s in spans] == [get_reward_value(s) for s in spans]
    assert final_reward(rows) == find_final_reward(spans)
