"""docs/behaviour.md §5, §6.5, §7: resources versioning, span sequence ids, spans and their queries."""

from __future__ import annotations

import asyncio
import logging
import math
import random

import pytest
from opentelemetry.sdk.resources import Resource as OtelSdkResource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext as OtelSpanContext
from opentelemetry.trace import Status, StatusCode, TraceFlags

from store_fs import (
    LLM,
    AttemptedRollout,
    AttemptNotFoundError,
    FakeClock,
    FileStore,
    PromptTemplate,
    ResourcesUpdate,
    RolloutConfig,
    RolloutNotFoundError,
    Span,
    UnstorableValueError,
)

UNKNOWN_RID = "ro-000000000000"


def otel_span(
    name: str = "op", *, trace_id: int | None = None, span_id: int | None = None, parent: int | None = None
) -> ReadableSpan:
    tid = trace_id or random.getrandbits(128) or 1
    ctx = OtelSpanContext(
        trace_id=tid,
        span_id=span_id or random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(1),
    )
    parent_ctx = (
        OtelSpanContext(trace_id=tid, span_id=parent, is_remote=False, trace_flags=TraceFlags(1))
        if parent
        else None
    )
    return ReadableSpan(
        name=name,
        context=ctx,
        parent=parent_ctx,
        resource=OtelSdkResource({"service.name": "test"}),
        attributes={"k": "v", "n": 1},
        status=Status(StatusCode.OK),
        start_time=1_700_000_000_000_000_000,
        end_time=1_700_000_001_000_000_000,
    )


def make_span(
    rollout_id: str,
    attempt_id: str,
    seq: int,
    *,
    name: str = "span",
    span_id: str | None = None,
    trace_id: str | None = None,
    parent_id: str | None = None,
) -> Span:
    return Span.from_attributes(
        attributes={"i": seq},
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        name=name,
        span_id=span_id,
        trace_id=trace_id,
        parent_id=parent_id,
        start_time=1.0,
        end_time=2.0,
    )


def prompt(text: str) -> dict[str, PromptTemplate | LLM]:
    return {"prompt": PromptTemplate(template=text, engine="f-string")}


# -- docs/behaviour.md §7: resources -------------------------------------------------------
async def test_b24_add_resources(store: FileStore) -> None:
    assert await store.get_latest_resources() is None
    res = {"llm": LLM(endpoint="http://h:1/v1", model="m"), **prompt("Hi {x}")}
    first = await store.add_resources(res)
    assert isinstance(first, ResourcesUpdate)
    assert first.resources_id.startswith("rs-")
    assert len(first.resources_id) == 15
    assert first.version == 1
    assert first.create_time == first.update_time
    assert isinstance(first.resources["llm"], LLM)
    assert first.resources["llm"].model == "m"
    assert isinstance(first.resources["prompt"], PromptTemplate)
    latest = await store.get_latest_resources()
    assert latest is not None
    assert latest.resources_id == first.resources_id
    assert isinstance(latest.resources["prompt"], PromptTemplate)
    assert latest.resources["prompt"].format(x="you") == "Hi you"
    second = await store.add_resources(prompt("Bye"))
    assert second.resources_id != first.resources_id
    latest = await store.get_latest_resources()
    assert latest is not None
    assert latest.resources_id == second.resources_id
    got = await store.get_resources_by_id(first.resources_id)
    assert got is not None
    assert got.resources == first.resources
    assert await store.get_resources_by_id("rs-nothere00000") is None


async def test_resources_keep_the_callers_order_and_refuse_nan(store: FileStore) -> None:
    """Names came back sorted, so the runner gave an agent another "first" prompt template
    than upstream's would; NaN in sampling parameters was stored as null (an adversarial pass)."""
    given: dict[str, LLM | PromptTemplate] = {
        "main_prompt": PromptTemplate(template="MAIN", engine="f-string"),
        "alt_prompt": PromptTemplate(template="ALT", engine="f-string"),
        "llm": LLM(endpoint="http://h:1/v1", model="m", sampling_parameters={"top_p": 1, "max_tokens": 5}),
    }
    added = await store.add_resources(given)
    for read in (await store.get_resources_by_id(added.resources_id), await store.get_latest_resources()):
        assert read is not None
        assert list(read.resources) == ["main_prompt", "alt_prompt", "llm"]
        llm = read.resources["llm"]
        assert isinstance(llm, LLM)
        assert list(llm.sampling_parameters) == ["top_p", "max_tokens"]
    for bad in (math.nan, math.inf):
        with pytest.raises(UnstorableValueError, match="NaN"):
            await store.add_resources({"llm": LLM(endpoint="e", model="m", sampling_parameters={"t": bad})})
    latest = await store.get_latest_resources()
    assert latest is not None
    assert latest.resources_id == added.resources_id


async def test_a_stray_file_among_resources_versions_does_not_hide_the_latest(store: FileStore) -> None:
    """``9.json`` beside ``00000001.json`` counted as version 9, whose file is not there: the
    latest resources read as none published (found by an adversarial pass)."""
    added = await store.add_resources({"p": PromptTemplate(template="x", engine="f-string")})
    (store.layout.resource_versions / "9.json").write_text("{}")
    fresh = FileStore(store.root)  # a new command: no publication number remembered
    latest = await fresh.get_latest_resources()
    fresh.close()
    assert latest is not None
    assert latest.resources_id == added.resources_id


async def test_b25_update_resources_new_ids(store: FileStore) -> None:
    v1 = await store.update_resources("v1", prompt("one"))
    assert v1.resources_id == "v1"
    assert v1.version == 1
    latest = await store.get_latest_resources()
    assert latest is not None
    assert latest.resources_id == "v1"
    v2 = await store.update_resources("v2", prompt("two"))
    assert v2.resources_id == "v2"
    assert v2.version == 1
    latest = await store.get_latest_resources()
    assert latest is not None
    assert latest.resources_id == "v2"
    still = await store.get_resources_by_id("v1")
    assert still is not None
    assert isinstance(still.resources["prompt"], PromptTemplate)
    assert still.resources["prompt"].template == "one"


async def test_b26_update_resources_versions(store: FileStore, clock: FakeClock) -> None:
    base = await store.add_resources(prompt("a"))
    other = await store.update_resources("other", prompt("o"))
    clock.advance(1)
    up1 = await store.update_resources(base.resources_id, prompt("b"))
    assert up1.resources_id == base.resources_id
    assert up1.create_time == base.create_time
    assert up1.update_time > base.update_time
    assert up1.version == 2
    assert up1.resources["prompt"].template == "b"  # type: ignore[union-attr]
    clock.advance(1)
    up2 = await store.update_resources(base.resources_id, {"llm": LLM(endpoint="e", model="m")})
    assert up2.version == 3
    assert up2.update_time > up1.update_time
    assert set(up2.resources) == {"llm"}  # replaced wholesale, no merge
    latest = await store.get_latest_resources()
    assert latest is not None
    assert latest.resources_id == base.resources_id
    assert latest.version == 3
    other_now = await store.get_resources_by_id("other")
    assert other_now is not None
    assert other_now.version == other.version == 1


async def test_b27_rollouts_inherit_latest_resources(store: FileStore) -> None:
    none_yet = await store.enqueue_rollout(input=0)
    assert none_yet.resources_id is None
    first = await store.add_resources(prompt("a"))
    inherited = await store.enqueue_rollout(input=1)
    assert inherited.resources_id == first.resources_id
    explicit = await store.enqueue_rollout(input=2, resources_id="mine")
    assert explicit.resources_id == "mine"
    started = await store.start_rollout(input=3)
    assert started.resources_id == first.resources_id
    second = await store.update_resources("newer", prompt("b"))
    newer = await store.enqueue_rollout(input=4)
    assert newer.resources_id == second.resources_id == "newer"
    many = await store.enqueue_many_rollouts([{"input": 5}, {"input": 6, "resources_id": "x"}])  # type: ignore[list-item]
    assert [r.resources_id for r in many] == ["newer", "x"]
    old = await store.get_rollout_by_id(inherited.rollout_id)
    assert old is not None
    assert old.resources_id == first.resources_id


async def test_b28_query_resources(store: FileStore, clock: FakeClock) -> None:
    empty = await store.query_resources()
    assert len(empty) == 0
    assert empty.total == 0
    for rid in ("alpha-1", "alpha-2", "beta-1"):
        await store.update_resources(rid, prompt(rid))
        clock.advance(1)
    everything = await store.query_resources()
    assert [r.resources_id for r in everything] == ["alpha-1", "alpha-2", "beta-1"]
    assert [r.resources_id for r in await store.query_resources(resources_id="beta-1")] == ["beta-1"]
    contains = await store.query_resources(resources_id_contains="alpha")
    assert {r.resources_id for r in contains} == {"alpha-1", "alpha-2"}
    both = await store.query_resources(resources_id="beta-1", resources_id_contains="alpha")
    assert len(both) == 0
    both_ok = await store.query_resources(resources_id="alpha-2", resources_id_contains="alpha")
    assert [r.resources_id for r in both_ok] == ["alpha-2"]
    desc = await store.query_resources(sort_by="resources_id", sort_order="desc", limit=2, offset=0)
    assert [r.resources_id for r in desc] == ["beta-1", "alpha-2"]
    assert desc.total == 3
    page = await store.query_resources(sort_by="resources_id", limit=1, offset=1)
    assert [r.resources_id for r in page] == ["alpha-2"]
    assert len(await store.query_resources(offset=10)) == 0


# -- docs/behaviour.md §5.1: sequence ids ------------------------------------------------------
async def test_b29_sequence_ids(store: FileStore) -> None:
    await store.enqueue_rollout(input=1)
    r = await store.dequeue_rollout()
    assert r is not None
    rid, aid = r.rollout_id, r.attempt.attempt_id
    assert await store.get_next_span_sequence_id(rid, aid) == 1
    s = await store.add_otel_span(rid, aid, otel_span())
    assert s is not None
    assert s.sequence_id == 2
    assert await store.get_next_span_sequence_id(rid, aid) == 3
    s = await store.add_otel_span(rid, aid, otel_span())
    assert s is not None
    assert s.sequence_id == 4
    assert await store.get_next_span_sequence_id(rid, "at-deadbeef") == 5


async def test_b30_explicit_sequence_id_pushes_counter(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    rid, aid = r.rollout_id, r.attempt.attempt_id
    s = await store.add_otel_span(rid, aid, otel_span(), sequence_id=100)
    assert s is not None
    assert s.sequence_id == 100
    assert await store.get_next_span_sequence_id(rid, aid) == 101
    low = await store.add_span(make_span(rid, aid, 7))
    assert low is not None
    assert low.sequence_id == 7
    assert await store.get_next_span_sequence_id(rid, aid) == 102  # never pushed down


async def test_a_counter_behind_its_stored_spans_is_raised_before_numbers_are_handed_out(
    store: FileStore,
) -> None:
    """A push by an explicit number is not synced by itself (docs/format.md, "Spans and sequence
    numbers"): a power cut can undo it while the span stays. Here the counter's rename is undone
    by hand; the next process's first allocation still hands out a number above the stored spans."""
    r = await store.start_rollout(input=1)
    rid, aid = r.rollout_id, r.attempt.attempt_id
    retry = await store.start_attempt(rid)
    await store.add_span(make_span(rid, aid, 40))
    await store.add_span(make_span(rid, retry.attempt.attempt_id, 25))
    counter = store.layout.span_seq_dir(rid)
    (counter / "40").rename(counter / "3")  # as a power cut may leave it
    later = FileStore(store.root, create=False)  # another process: it never used this counter
    try:
        assert await later.get_next_span_sequence_id(rid, aid) == 41
        assert await later.get_next_span_sequence_id(rid, aid) == 42
    finally:
        later.close()


async def test_sequence_ids_shared_across_attempts(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    second = await store.start_attempt(r.rollout_id)
    assert await store.get_next_span_sequence_id(r.rollout_id, r.attempt.attempt_id) == 1
    assert await store.get_next_span_sequence_id(r.rollout_id, second.attempt.attempt_id) == 2


async def test_many_sequence_ids(store: FileStore) -> None:
    a = await store.start_rollout(input="a")
    b = await store.start_rollout(input="b")
    pairs = [(a.rollout_id, "x"), (b.rollout_id, "y"), (a.rollout_id, "x"), (a.rollout_id, "z")]
    assert list(await store.get_many_span_sequence_ids(pairs)) == [1, 1, 2, 3]
    assert await store.get_next_span_sequence_id(a.rollout_id, "x") == 4
    assert await store.get_next_span_sequence_id(b.rollout_id, "y") == 2


async def test_sequence_id_unknown_rollout_raises(store: FileStore) -> None:
    for rid in ("nonexistent", UNKNOWN_RID):
        with pytest.raises(RolloutNotFoundError, match=f"Rollout {rid} not found"):
            await store.get_next_span_sequence_id(rid, "at-00000000")
    with pytest.raises(RolloutNotFoundError):
        await store.get_many_span_sequence_ids([(UNKNOWN_RID, "a")])


async def test_concurrent_otel_spans_get_contiguous_ids(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    spans = await asyncio.gather(
        *(store.add_otel_span(r.rollout_id, r.attempt.attempt_id, otel_span(f"s{i}")) for i in range(30))
    )
    assert sorted(s.sequence_id for s in spans if s is not None) == list(range(1, 31))
    stored = await store.query_spans(r.rollout_id)
    assert [s.sequence_id for s in stored] == list(range(1, 31))


async def test_otel_conversion(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    raw = otel_span("llm-call", trace_id=0xABC, span_id=0x12, parent=0x34)
    s = await store.add_otel_span(r.rollout_id, r.attempt.attempt_id, raw)
    assert s is not None
    assert s.trace_id == f"{0xABC:032x}"
    assert s.span_id == f"{0x12:016x}"
    assert s.parent_id == f"{0x34:016x}"
    assert s.name == "llm-call"
    assert s.status.status_code == "OK"
    assert s.attributes == {"k": "v", "n": 1}
    assert s.start_time == pytest.approx(1_700_000_000.0)
    assert s.resource.attributes == {"service.name": "test"}
    stored = (await store.query_spans(r.rollout_id))[0]
    assert stored.span_id == s.span_id
    assert stored.parent_id == s.parent_id
    assert stored.name == "llm-call"


# -- docs/behaviour.md §5.2-§5.3: adding spans ----------------------------------------------------------
async def test_b31_duplicate_span_returns_none(store: FileStore, caplog: pytest.LogCaptureFixture) -> None:
    r = await store.start_rollout(input=1)
    span = make_span(r.rollout_id, r.attempt.attempt_id, 1, span_id="aaaaaaaaaaaaaaaa")
    stored = await store.add_span(span)
    assert stored is not None
    assert stored.span_id == span.span_id
    with caplog.at_level(logging.ERROR):
        again = await store.add_span(
            make_span(r.rollout_id, r.attempt.attempt_id, 2, span_id="aaaaaaaaaaaaaaaa")
        )
    assert again is None
    assert "Duplicated span added" in caplog.text
    assert (await store.query_spans(r.rollout_id)).total == 1
    # the same span_id under another attempt is fine
    other = await store.start_attempt(r.rollout_id)
    assert await store.add_span(
        make_span(r.rollout_id, other.attempt.attempt_id, 3, span_id="aaaaaaaaaaaaaaaa")
    )
    assert (await store.query_spans(r.rollout_id)).total == 2


async def test_b32_add_many_spans(store: FileStore) -> None:
    a = await store.start_rollout(input="a")
    b = await store.start_rollout(input="b")
    b2 = await store.start_attempt(b.rollout_id)
    a_aid, b_aid, b2_aid = a.attempt.attempt_id, b.attempt.attempt_id, b2.attempt.attempt_id
    batch = [
        make_span(a.rollout_id, a_aid, 1, span_id="a000000000000001"),
        make_span(b.rollout_id, b_aid, 1, span_id="b000000000000001"),
        make_span(a.rollout_id, a_aid, 2, span_id="a000000000000001"),  # duplicate in batch
        make_span(a.rollout_id, a_aid, 3, span_id="a000000000000002"),
        make_span(b.rollout_id, b2_aid, 2, span_id="b000000000000002"),
    ]
    stored = await store.add_many_spans(batch)
    assert [s.span_id for s in stored] == [
        "a000000000000001",
        "a000000000000002",
        "b000000000000001",
        "b000000000000002",
    ]
    qa = await store.query_spans(a.rollout_id)
    assert [s.span_id for s in qa] == ["a000000000000001", "a000000000000002"]
    assert qa[0].sequence_id == 1
    qb = await store.query_spans(b.rollout_id)
    assert {s.span_id for s in qb} == {"b000000000000001", "b000000000000002"}
    assert await store.get_next_span_sequence_id(a.rollout_id, a_aid) == 4
    assert await store.add_many_spans([]) == []


async def test_b33_first_span_marks_running(store: FileStore, clock: FakeClock) -> None:
    r = await store.start_rollout(input=1)
    clock.advance(1)
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "running"
    assert attempt.last_heartbeat_time == clock.time()
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "running"
    first_beat = attempt.last_heartbeat_time
    clock.advance(2)
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 2))
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "running"
    assert attempt.last_heartbeat_time is not None
    assert attempt.last_heartbeat_time > first_beat
    assert attempt.last_heartbeat_time == clock.time()
    fetched = await store.get_rollout_by_id(r.rollout_id)
    assert isinstance(fetched, AttemptedRollout)
    assert fetched.attempt.last_heartbeat_time == clock.time()


async def test_span_for_queued_rollout_attempt_not_promoting_rollout(store: FileStore) -> None:
    """Upstream quirk kept: a span never promotes a ``queuing`` rollout."""
    r = await store.start_rollout(input=1)
    await store.update_rollout(r.rollout_id, status="queuing")
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "running"
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "queuing"


async def test_b34_span_revives_unresponsive_attempt(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(unresponsive_seconds=5)
    r = await store.start_rollout(input=1, config=cfg)
    clock.advance(6)
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "unresponsive"
    clock.advance(1)
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "running"
    assert attempt.last_heartbeat_time == clock.time()


async def test_b34_span_leaves_timeout_attempt_and_rollout(store: FileStore, clock: FakeClock) -> None:
    cfg = RolloutConfig(timeout_seconds=5)
    r = await store.start_rollout(input=1, config=cfg)
    clock.advance(6)
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "timeout"
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "failed"
    clock.advance(1)
    await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
    attempt = await store.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "timeout"
    rollout = await store.get_rollout_by_id(r.rollout_id)
    assert rollout is not None
    assert rollout.status == "failed"
    # docs/behaviour.md §5.3: the heartbeat time is updated in all cases
    assert attempt.last_heartbeat_time == clock.time()


async def test_b35_unknown_rollout_or_attempt_for_spans(store: FileStore) -> None:
    with pytest.raises(RolloutNotFoundError, match=r"^Rollout nonexistent not found$") as info:
        await store.add_otel_span("nonexistent", "at-00000000", otel_span())
    assert isinstance(info.value, ValueError)
    with pytest.raises(RolloutNotFoundError, match=f"Rollout {UNKNOWN_RID} not found"):
        await store.add_span(make_span(UNKNOWN_RID, "at-00000000", 1))
    r = await store.start_rollout(input=1)
    with pytest.raises(ValueError, match="Attempt attempt-missing not found") as ainfo:
        await store.add_span(make_span(r.rollout_id, "attempt-missing", 1))
    assert isinstance(ainfo.value, AttemptNotFoundError)
    assert str(ainfo.value) == f"Attempt attempt-missing not found for rollout {r.rollout_id}"
    with pytest.raises(AttemptNotFoundError):
        await store.add_many_spans([make_span(r.rollout_id, "at-ffffffff", 1)])
    assert (await store.query_spans(r.rollout_id)).total == 0


# -- docs/behaviour.md §6.5: querying spans ----------------------------------------------------------
async def test_b36_query_spans_scope(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    a1 = r.attempt.attempt_id
    await store.add_span(make_span(r.rollout_id, a1, 1, span_id="1000000000000001"))
    await store.add_span(make_span(r.rollout_id, a1, 2, span_id="1000000000000002"))
    a2 = (await store.start_attempt(r.rollout_id)).attempt.attempt_id
    await store.add_span(make_span(r.rollout_id, a2, 3, span_id="2000000000000001"))
    other = await store.start_rollout(input=2)
    await store.add_span(make_span(other.rollout_id, other.attempt.attempt_id, 1, span_id="9000000000000001"))

    everything = await store.query_spans(r.rollout_id)
    assert [s.span_id for s in everything] == ["1000000000000001", "1000000000000002", "2000000000000001"]
    assert [s.sequence_id for s in everything] == [1, 2, 3]
    first = await store.query_spans(r.rollout_id, a1)
    assert [s.span_id for s in first] == ["1000000000000001", "1000000000000002"]
    latest = await store.query_spans(r.rollout_id, "latest")
    assert [s.span_id for s in latest] == ["2000000000000001"]
    assert (await store.query_spans(r.rollout_id, "at-00000000")).total == 0
    assert (await store.query_spans(UNKNOWN_RID)).total == 0
    assert (await store.query_spans("nonexistent")).total == 0
    queued = await store.enqueue_rollout(input=3)
    none_latest = await store.query_spans(queued.rollout_id, "latest")
    assert len(none_latest) == 0
    assert none_latest.total == 0
    desc = await store.query_spans(r.rollout_id, sort_order="desc", limit=2, offset=0)
    assert [s.sequence_id for s in desc] == [3, 2]
    assert desc.total == 3
    zero = await store.query_spans(r.rollout_id, limit=0)
    assert len(zero) == 0
    assert zero.total == 3


async def test_b37_query_spans_filters(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    aid = r.attempt.attempt_id
    t1, t2 = "a" * 32, "b" * 32
    await store.add_span(
        make_span(r.rollout_id, aid, 1, name="root", trace_id=t1, span_id="1111111111111111")
    )
    await store.add_span(
        make_span(
            r.rollout_id,
            aid,
            2,
            name="llm.call",
            trace_id=t1,
            span_id="2222222222222222",
            parent_id="1111111111111111",
        )
    )
    await store.add_span(
        make_span(
            r.rollout_id,
            aid,
            3,
            name="tool.call",
            trace_id=t2,
            span_id="3333333333333333",
            parent_id="1111111111111111",
        )
    )
    other = await store.start_rollout(input=2)
    await store.add_span(
        make_span(
            other.rollout_id,
            other.attempt.attempt_id,
            1,
            name="root",
            trace_id=t1,
            span_id="1111111111111111",
        )
    )

    async def ids(**kw: object) -> list[str]:
        return [s.span_id for s in await store.query_spans(r.rollout_id, **kw)]  # type: ignore[arg-type]

    assert await ids(trace_id=t1) == ["1111111111111111", "2222222222222222"]
    assert await ids(trace_id_contains="bbb") == ["3333333333333333"]
    assert await ids(span_id="2222222222222222") == ["2222222222222222"]
    assert await ids(span_id_contains="333") == ["3333333333333333"]
    assert await ids(parent_id="1111111111111111") == ["2222222222222222", "3333333333333333"]
    assert await ids(parent_id_contains="1111") == ["2222222222222222", "3333333333333333"]
    assert await ids(name="root") == ["1111111111111111"]
    assert await ids(name_contains=".call") == ["2222222222222222", "3333333333333333"]
    assert await ids(trace_id=t1, name_contains="llm", parent_id="1111111111111111") == ["2222222222222222"]
    assert await ids(trace_id=t2, name="root") == []
    # "or": either condition, but never outside the rollout scope
    either = await ids(name="root", trace_id=t2, filter_logic="or")
    assert either == ["1111111111111111", "3333333333333333"]
    scoped = await store.query_spans(
        r.rollout_id, aid, name="root", span_id="9999999999999999", filter_logic="or"
    )
    assert [(s.rollout_id, s.span_id) for s in scoped] == [(r.rollout_id, "1111111111111111")]
    assert await ids(name="nothing", filter_logic="or") == []


async def test_query_spans_or_without_conditions_returns_scope(store: FileStore) -> None:
    """Deliberate deviation: an empty OR pool matches (upstream returned nothing)."""
    r = await store.start_rollout(input=1)
    for i in range(1, 4):
        await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, i))
    other = await store.start_rollout(input=2)
    await store.add_span(make_span(other.rollout_id, other.attempt.attempt_id, 1))
    res = await store.query_spans(r.rollout_id, filter_logic="or")
    assert res.total == 3
    assert {s.rollout_id for s in res} == {r.rollout_id}
    res_attempt = await store.query_spans(r.rollout_id, "latest", filter_logic="or")
    assert res_attempt.total == 3


async def test_span_extra_fields_roundtrip(store: FileStore) -> None:
    r = await store.start_rollout(input=1)
    base = make_span(r.rollout_id, r.attempt.attempt_id, 1)
    span = Span.model_validate({**base.model_dump(), "custom": {"x": [1, 2]}})
    await store.add_span(span)
    stored = (await store.query_spans(r.rollout_id))[0]
    assert stored.model_dump()["custom"] == {"x": [1, 2]}
