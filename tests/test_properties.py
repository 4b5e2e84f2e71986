"""Property tests: codec round trips, the query engine, the status rule, queue token names."""

from __future__ import annotations

import asyncio
import itertools
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from json_strategies import attribute_values as attribute_values_of
from json_strategies import json_values as json_values_of
from json_strategies import texts as texts_of
from pydantic import BaseModel

from store_fs import Attempt, FakeClock, FileStore, RolloutConfig, Span
from store_fs._disk.codec import dumps_line, dumps_record, loads
from store_fs._disk.queue_tokens import ClaimToken, JournalEntry, PendingToken
from store_fs._disk.rollout_history import RolloutRecord
from store_fs._disk.status_rules import rollout_status_for
from store_fs._filtering import build_filter, has_conditions, matches, paginate, sort_items
from store_fs.models import AttemptStatus, RolloutStatus, TraceStatus

FAST = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ATTEMPT_STATUSES: list[AttemptStatus] = [
    "preparing",
    "running",
    "failed",
    "succeeded",
    "unresponsive",
    "timeout",
]
ROLLOUT_STATUSES: list[RolloutStatus] = [
    "queuing",
    "preparing",
    "running",
    "failed",
    "succeeded",
    "cancelled",
    "requeuing",
]

# -- strategies ------------------------------------------------------------------------

texts = texts_of(20)
json_values = json_values_of(texts, max_children=5, max_leaves=25)
attribute_values = attribute_values_of(texts, min_floats=1)
attributes = st.dictionaries(texts, attribute_values, max_size=6)
hex_chars = "0123456789abcdef"
rollout_ids = st.text(hex_chars, min_size=12, max_size=12).map(lambda h: "ro-" + h)
attempt_ids = st.text(hex_chars, min_size=8, max_size=8).map(lambda h: "at-" + h)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def spans(draw: st.DrawFn) -> Span:
    return Span.from_attributes(
        attributes=draw(attributes),
        rollout_id=draw(rollout_ids),
        attempt_id=draw(attempt_ids),
        sequence_id=draw(st.integers(min_value=1, max_value=10**9)),
        name=draw(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)),
        trace_id=draw(st.text(hex_chars, min_size=32, max_size=32)),
        span_id=draw(st.text(hex_chars, min_size=16, max_size=16)),
        parent_id=draw(st.none() | st.text(hex_chars, min_size=16, max_size=16)),
        start_time=draw(st.none() | times),
        end_time=draw(st.none() | times),
        status=TraceStatus(
            status_code=draw(st.sampled_from(["UNSET", "OK", "ERROR"])), description=draw(st.none() | texts)
        ),
    )


configs = st.builds(
    RolloutConfig,
    timeout_seconds=st.none() | st.floats(min_value=0.1, max_value=1e6),
    unresponsive_seconds=st.none() | st.floats(min_value=0.1, max_value=1e6),
    max_attempts=st.integers(min_value=1, max_value=6),
    retry_condition=st.lists(st.sampled_from(ATTEMPT_STATUSES), unique=True),
)


@st.composite
def rollout_records(draw: st.DrawFn) -> RolloutRecord:
    rid = draw(rollout_ids)
    start = draw(times)
    n = draw(st.integers(min_value=0, max_value=4))
    attempts = [
        Attempt(
            rollout_id=rid,
            attempt_id=draw(attempt_ids),
            sequence_id=i + 1,
            start_time=start + i,
            end_time=draw(st.none() | times),
            status=draw(st.sampled_from(ATTEMPT_STATUSES)),
            worker_id=draw(st.none() | st.text(string.ascii_letters + string.digits + "-_", min_size=1)),
            last_heartbeat_time=draw(st.none() | times),
            metadata=draw(st.none() | st.dictionaries(texts, json_values, max_size=3)),
        )
        for i in range(n)
    ]
    return RolloutRecord(
        rollout_id=rid,
        input=draw(json_values),
        start_time=start,
        end_time=draw(st.none() | times),
        mode=draw(st.sampled_from([None, "train", "val", "test"])),
        resources_id=draw(st.none() | st.text(hex_chars, min_size=12, max_size=12).map(lambda h: "rs-" + h)),
        status=draw(st.sampled_from(ROLLOUT_STATUSES)),
        config=draw(configs),
        metadata=draw(st.none() | st.dictionaries(texts, json_values, max_size=3)),
        attempts=attempts,
    )


# -- codec ----------------------------------------------------------------------------


@FAST
@given(json_values)
def test_codec_record_round_trip(value: Any) -> None:
    data = dumps_record(value)
    assert data.endswith(b"\n")
    assert loads(data) == value
    assert loads(data.decode()) == value
    # Canonical: re-encoding what was read gives the same bytes.
    assert dumps_record(loads(data)) == data


@FAST
@given(json_values)
def test_codec_line_round_trip(value: Any) -> None:
    data = dumps_line(value)
    assert data.endswith(b"\n")
    assert data.count(b"\n") == 1, "a log line may hold no newline but its last byte"
    assert loads(data) == value


@FAST
@given(st.dictionaries(texts, json_values, min_size=1, max_size=8))
def test_codec_record_sorts_keys(value: dict[str, Any]) -> None:
    parsed = loads(dumps_record(value))
    assert list(parsed) == sorted(value)


@FAST
@given(st.lists(json_values, max_size=4).map(tuple))
def test_codec_tuples_become_lists(value: tuple[Any, ...]) -> None:
    assert loads(dumps_record(value)) == list(value)
    assert loads(dumps_line({"t": value})) == {"t": list(value)}


@FAST
@given(spans())
def test_span_round_trips_through_codec(span: Span) -> None:
    for data in (dumps_line(span), dumps_line(span.model_dump(mode="json")), dumps_record(span)):
        back = Span.model_validate(loads(data))
        assert back == span
        assert back.model_dump(mode="json") == span.model_dump(mode="json")
    # Attribute value types survive exactly (a float 1.0 stays a float, a bool stays a bool).
    back = Span.model_validate(loads(dumps_line(span)))
    for key, value in span.attributes.items():
        got = back.attributes[key]
        assert type(got) is type(value)
        if isinstance(value, list) and value:
            assert isinstance(got, list)  # implied by the type check above; narrows for mypy
            assert [type(x) for x in got] == [type(x) for x in value]


@FAST
@given(rollout_records())
def test_rollout_record_round_trips_through_codec(record: RolloutRecord) -> None:
    data = dumps_record(record)
    back = RolloutRecord.model_validate(loads(data))
    assert back == record
    assert dumps_record(back) == data
    assert back.latest() == (record.attempts[-1] if record.attempts else None)


# -- query engine ---------------------------------------------------------------------


class Item(BaseModel):
    idx: int
    name: str
    tag: str
    score: int | None
    end_time: float | None


items_st = st.lists(
    st.builds(
        Item,
        idx=st.just(0),
        name=st.text("abc", max_size=3),
        tag=st.sampled_from(["x", "y", "z"]),
        score=st.none() | st.integers(min_value=-3, max_value=3),
        end_time=st.none() | st.sampled_from([1.0, 2.0, 3.0]),
    ),
    max_size=15,
).map(lambda items: [i.model_copy(update={"idx": n}) for n, i in enumerate(items)])


class Num(BaseModel):
    """paginate pages models (its type variable is bound to BaseModel): one int in a model."""

    n: int


@FAST
@given(
    st.lists(st.integers(), max_size=30),
    st.integers(min_value=-1, max_value=35),
    st.integers(min_value=0, max_value=35),
)
def test_paginate(values: list[int], limit: int, offset: int) -> None:
    page = [num.n for num in paginate([Num(n=v) for v in values], limit, offset)]
    if limit != -1:
        assert len(page) <= limit
        assert page == values[offset : offset + limit]
    else:
        assert page == values[offset:]


@FAST
@given(st.integers(max_value=-2), st.integers(min_value=0))
def test_paginate_rejects_bad_limit(limit: int, offset: int) -> None:
    with pytest.raises(ValueError, match="Limit"):
        paginate([Num(n=1), Num(n=2)], limit, offset)
    with pytest.raises(ValueError, match="Offset"):
        paginate([Num(n=1), Num(n=2)], 1, -1 - offset)


@FAST
@given(
    items_st, st.sampled_from(["score", "name", "tag", "end_time", "idx"]), st.sampled_from(["asc", "desc"])
)
def test_sort_is_stable_and_ordered(items: list[Item], field: str, order: str) -> None:
    out = sort_items(list(items), field, order)
    assert sorted(i.idx for i in out) == [i.idx for i in items]  # a permutation

    def key(i: Item) -> Any:
        v = getattr(i, field)
        if v is None:
            return float("inf") if field.endswith("_time") else (0 if field == "score" else "")
        return v

    keys = [key(i) for i in out]
    assert keys == sorted(keys, reverse=order == "desc")
    # Stable: equal keys keep their input order, in both directions.
    for a, b in itertools.pairwise(out):
        if key(a) == key(b):
            assert a.idx < b.idx


@FAST
@given(items_st, st.sampled_from(["asc", "desc"]))
def test_sort_none_times_sort_last_ascending(items: list[Item], order: str) -> None:
    out = sort_items(items, "end_time", order)
    nones = [i.end_time is None for i in out]
    if order == "asc":
        assert nones == sorted(nones)  # all None at the end
    else:
        assert nones == sorted(nones, reverse=True)  # all None at the front
    assert sort_items(items, None, order) == items


conditions = st.lists(
    st.one_of(
        st.tuples(st.just("tag"), st.just("exact"), st.sampled_from(["x", "y", "z"])),
        st.tuples(st.just("tag"), st.just("within"), st.lists(st.sampled_from(["x", "y", "z"]), max_size=3)),
        st.tuples(st.just("name"), st.just("contains"), st.text("abc", max_size=2)),
        st.tuples(st.just("score"), st.just("exact"), st.integers(min_value=-3, max_value=3)),
        st.tuples(st.just("score"), st.just("within"), st.lists(st.integers(-3, 3), max_size=3)),
    ),
    max_size=4,
    unique_by=lambda c: (c[0], c[1]),
)


def _holds(item: Item, field: str, op: str, expected: Any) -> bool:
    actual = getattr(item, field)
    if op == "exact":
        return bool(actual == expected)
    if op == "within":
        return actual in expected
    return isinstance(actual, str) and expected in actual


def _to_filter(conds: list[tuple[str, str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, op, expected in conds:
        out.setdefault(field, {})[op] = expected
    return out


@FAST
@given(items_st, conditions, st.sampled_from(["and", "or", None]), conditions)
def test_matches_aggregate_semantics(
    items: list[Item], conds: list[tuple[str, str, Any]], logic: str | None, must: list[tuple[str, str, Any]]
) -> None:
    filters = _to_filter(conds)
    if logic is not None:
        filters["_aggregate"] = logic
    if must:
        filters["_must"] = _to_filter(must)
    for item in items:
        pool = [_holds(item, *c) for c in conds]
        if not pool:
            agg = True
        elif logic == "or":
            agg = any(pool)
        else:  # "and" is the default
            agg = all(pool)
        expected = agg and all(_holds(item, *c) for c in must)
        assert matches(item, filters) is expected
    assert all(matches(i, None) and matches(i, {}) for i in items)
    # Skipping ``matches`` when there is nothing to check is only right if nothing is rejected.
    assert has_conditions(filters) == bool(conds or must)


@FAST
@given(
    st.sampled_from(["and", "or"]),
    st.none() | st.sampled_from(["x", "y"]),
    st.none() | st.text("abc", max_size=2),
)
def test_build_filter_drops_none(logic: str, tag: str | None, name: str | None) -> None:
    f = build_filter(logic, tag=("exact", tag), name__c=("contains", name))  # type: ignore[arg-type]
    assert f["_aggregate"] == logic
    assert ("tag" in f) == (tag is not None)
    assert ("name" in f) == (name is not None)
    if name is not None:
        assert f["name"] == {"contains": name}


# -- query_rollouts over a real store --------------------------------------------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileStore, dict[str, str]]]:
    root: Path = tmp_path_factory.mktemp("props") / "store"
    clock = FakeClock()
    store = FileStore(root, clock=clock, scan_debounce_seconds=0)

    async def fill() -> dict[str, str]:
        statuses: dict[str, str] = {}
        for i in range(12):
            clock.advance(1)
            r = await store.enqueue_rollout(input=i)
            status = ROLLOUT_STATUSES[i % len(ROLLOUT_STATUSES)]
            if status != "queuing":
                await store.update_rollout(r.rollout_id, status=status)
            statuses[r.rollout_id] = status
        return statuses

    statuses = asyncio.run(fill())
    yield store, statuses
    store.close()


@settings(max_examples=50, deadline=None)
@given(
    st.none() | st.lists(st.sampled_from(ROLLOUT_STATUSES), unique=True),
    st.integers(min_value=-1, max_value=14),
    st.integers(min_value=0, max_value=14),
    st.sampled_from(["asc", "desc"]),
)
def test_query_rollouts_total_and_limit(
    populated: tuple[FileStore, dict[str, str]],
    status_in: list[str] | None,
    limit: int,
    offset: int,
    order: str,
) -> None:
    store, statuses = populated
    result = asyncio.run(
        store.query_rollouts(
            status_in=status_in,  # type: ignore[arg-type]
            limit=limit,
            offset=offset,
            sort_by="start_time",
            sort_order=order,  # type: ignore[arg-type]
        )
    )
    expected = [rid for rid, s in statuses.items() if status_in is None or s in status_in]
    if order == "desc":
        expected.reverse()
    assert result.total == len(expected)
    assert result.limit == limit
    assert result.offset == offset
    if limit != -1:
        assert len(result.items) <= limit
    want = expected[offset:] if limit == -1 else expected[offset : offset + limit]
    assert [r.rollout_id for r in result.items] == want


# -- the rollout status rule (docs/behaviour.md §2.4) ----------------------------------------------


def _spec_rollout_status(attempt_status: str, sequence_id: int, config: RolloutConfig) -> str:
    """docs/behaviour.md §2.4, restated: preparing/running/succeeded propagate as they are; failed,
    timeout and unresponsive requeue when the status is a retry condition and attempts
    remain (sequence_id < max_attempts), and fail the rollout otherwise."""
    if attempt_status in ("preparing", "running", "succeeded"):
        return attempt_status
    assert attempt_status in ("failed", "timeout", "unresponsive")
    if attempt_status in config.retry_condition and sequence_id < config.max_attempts:
        return "requeuing"
    return "failed"


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ATTEMPT_STATUSES), st.integers(min_value=1, max_value=8), configs)
def test_rollout_status_for_matches_spec(
    status: AttemptStatus, sequence_id: int, config: RolloutConfig
) -> None:
    attempt = Attempt(
        rollout_id="ro-000000000000",
        attempt_id="at-00000000",
        sequence_id=sequence_id,
        start_time=0.0,
        status=status,
    )
    assert rollout_status_for(attempt, config) == _spec_rollout_status(status, sequence_id, config)


# -- queue token names -----------------------------------------------------------------

stamps = st.integers(min_value=0, max_value=10**16 - 1)
seqs = st.integers(min_value=1, max_value=10**6)


def _pending_name(stamp: int, rollout_id: str, seq: int) -> str:
    # The format Queue.publish_pending writes.
    return f"{stamp:016d}-{rollout_id}-{seq}.json"


@FAST
@given(stamps, rollout_ids, seqs)
def test_pending_token_parses_back(stamp: int, rollout_id: str, seq: int) -> None:
    name = _pending_name(stamp, rollout_id, seq)
    token = PendingToken.parse(name)
    assert token == PendingToken(name, rollout_id, seq)


@FAST
@given(rollout_ids, seqs, attempt_ids)
def test_claim_token_parses_back(rollout_id: str, seq: int, attempt_id: str) -> None:
    token = ClaimToken(rollout_id, seq, attempt_id)
    assert ClaimToken.parse(token.name) == token
    assert ClaimToken.parse(token.name[: -len(".json")]) is None
    assert ClaimToken.parse(token.name + ".tmp") is None


@FAST
@given(
    st.sampled_from(["done", "expired"]),
    rollout_ids,
    seqs,
    attempt_ids,
    st.sampled_from([*ATTEMPT_STATUSES, "cancelled", "dead"]),
)
def test_journal_entry_parses_back(
    kind: str, rollout_id: str, seq: int, attempt_id: str, outcome: str
) -> None:
    token = ClaimToken(rollout_id, seq, attempt_id)
    path = Path("/store/queue") / kind / f"{rollout_id}.{seq}.{attempt_id}.{outcome}.json"
    entry = JournalEntry.parse(kind, path)  # type: ignore[arg-type]
    assert entry == JournalEntry(kind, token, outcome, path)  # type: ignore[arg-type]
    assert JournalEntry.parse(kind, path.with_name(token.name)) is None  # type: ignore[arg-type]


@FAST
@given(st.text(max_size=40))
def test_token_parsers_never_crash(name: str) -> None:
    for token in (PendingToken.parse(name), ClaimToken.parse(name)):
        assert token is None or isinstance(token, (PendingToken, ClaimToken))
    if "/" not in name and "\x00" not in name:
        entry = JournalEntry.parse("done", Path("/q") / name)
        assert entry is None or entry.path.name == name


@FAST
@given(st.lists(st.tuples(stamps, rollout_ids, seqs), min_size=1, max_size=20, unique_by=lambda t: t[0]))
def test_pending_names_sort_in_fifo_order(tokens: list[tuple[int, str, int]]) -> None:
    names = [_pending_name(*t) for t in tokens]
    by_stamp = [_pending_name(*t) for t in sorted(tokens, key=lambda t: t[0])]
    assert sorted(names) == by_stamp
    parsed = [PendingToken.parse(n) for n in sorted(names)]
    assert [(p.rollout_id, p.sequence_id) for p in parsed if p] == [(t[1], t[2]) for t in sorted(tokens)]


async def test_same_instant_enqueues_dequeue_in_order(store: FileStore) -> None:
    # The FakeClock does not move: the stamps must still strictly increase.
    ids = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(8)]
    names = sorted(p.name for p in store.layout.pending.iterdir())
    assert [PendingToken.parse(n).rollout_id for n in names] == ids  # type: ignore[union-attr]
    got = []
    for _ in ids:
        claimed = await store.dequeue_rollout()
        assert claimed is not None
        got.append(claimed.rollout_id)
    assert got == ids
