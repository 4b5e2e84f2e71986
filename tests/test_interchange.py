"""JSON interchange with upstream Agent-lightning 0.3.

Every model we serve must validate with upstream's class of the same name (and the
other way round) with equal field values; the files the store writes must be
readable by upstream; upstream's reward helpers must work on spans stored here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

agl = pytest.importorskip("agentlightning")

from agentlightning import emitter as agl_emitter  # noqa: E402
from opentelemetry.sdk.resources import Resource as OtelSdkResource  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import Link as OtelLink  # noqa: E402
from opentelemetry.trace import Status, StatusCode  # noqa: E402
from pydantic import BaseModel  # noqa: E402

import store_fs  # noqa: E402
from store_fs import FileStore  # noqa: E402
from store_fs._disk.codec import loads  # noqa: E402
from store_fs.models import RolloutStatus  # noqa: E402

pytestmark = pytest.mark.upstream


# -- helpers -----------------------------------------------------------------------


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _both_ways(
    ours: BaseModel, up_cls: type[BaseModel], ours_cls: type[BaseModel] | None = None
) -> BaseModel:
    """Our dump validates with upstream's class, upstream's dump validates with ours; values agree."""
    ours_cls = ours_cls or type(ours)
    data = _json(ours)
    theirs = up_cls.model_validate(data)
    assert _json(theirs) == data
    back = ours_cls.model_validate(_json(theirs))
    assert _json(back) == data
    assert back == ours
    return theirs


def _from_upstream(theirs: BaseModel, ours_cls: type[BaseModel]) -> BaseModel:
    """An object built with upstream validates with ours, and dumps identically."""
    data = _json(theirs)
    ours = ours_cls.model_validate(data)
    assert _json(ours) == data
    assert _json(type(theirs).model_validate(_json(ours))) == data
    return ours


def _rollout_config() -> store_fs.RolloutConfig:
    return store_fs.RolloutConfig(
        timeout_seconds=30.5, unresponsive_seconds=5.0, max_attempts=3, retry_condition=["failed", "timeout"]
    )


def _attempt(rollout_id: str = "ro-0123456789ab") -> store_fs.Attempt:
    return store_fs.Attempt(
        rollout_id=rollout_id,
        attempt_id="at-01234567",
        sequence_id=2,
        start_time=1_700_000_000.25,
        end_time=1_700_000_010.5,
        status="succeeded",
        worker_id="worker-1",
        last_heartbeat_time=1_700_000_009.0,
        metadata={"host": "node-3", "nested": {"a": [1, 2.5, None, "x"]}},
    )


def _resources() -> dict[str, Any]:
    return {
        "prompt": store_fs.PromptTemplate(template="Answer {question}", engine="f-string"),
        "llm": store_fs.LLM(
            endpoint="http://localhost:8000/v1",
            model="qwen",
            api_key="sk-x",
            sampling_parameters={"temperature": 0.7, "top_p": 0.9},
        ),
        "proxy": store_fs.ProxyLLM(endpoint="http://proxy:9000/v1", model="gpt", sampling_parameters={}),
    }


# -- models ------------------------------------------------------------------------


def test_rollout_config() -> None:
    _both_ways(_rollout_config(), agl.RolloutConfig)
    _both_ways(store_fs.RolloutConfig(), agl.RolloutConfig)
    _from_upstream(
        agl.RolloutConfig(max_attempts=2, retry_condition=["unresponsive"]), store_fs.RolloutConfig
    )


@pytest.mark.parametrize(
    "status", ["queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"]
)
def test_rollout(status: RolloutStatus) -> None:
    rollout = store_fs.Rollout(
        rollout_id="ro-0123456789ab",
        input={"question": "2+2?", "choices": [1, 2, 4], "meta": None},
        start_time=1_700_000_000.0,
        end_time=None if status not in ("failed", "succeeded", "cancelled") else 1_700_000_100.0,
        mode="train",
        resources_id="rs-0123456789ab",
        status=status,
        config=_rollout_config(),
        metadata={"k": "v"},
    )
    _both_ways(rollout, agl.Rollout)


def test_rollout_defaults_and_upstream_built() -> None:
    _both_ways(store_fs.Rollout(rollout_id="ro-1", input="plain text", start_time=1.0), agl.Rollout)
    theirs = agl.Rollout(rollout_id="ro-2", input=[1, "two"], start_time=2.5, mode="val", metadata=None)
    _from_upstream(theirs, store_fs.Rollout)


def test_attempt() -> None:
    _both_ways(_attempt(), agl.Attempt)
    theirs = agl.Attempt(rollout_id="ro-x", attempt_id="at-x", sequence_id=1, start_time=3.0)
    _from_upstream(theirs, store_fs.Attempt)


def test_attempted_rollout() -> None:
    attempted = store_fs.AttemptedRollout(
        rollout_id="ro-0123456789ab",
        input={"q": 1},
        start_time=1_700_000_000.0,
        status="running",
        mode="test",
        config=_rollout_config(),
        metadata={},
        attempt=_attempt(),
    )
    theirs = _both_ways(attempted, agl.AttemptedRollout)
    assert isinstance(theirs, agl.AttemptedRollout)
    assert theirs.attempt.attempt_id == "at-01234567"
    up = agl.AttemptedRollout(
        rollout_id="ro-y",
        input=None,
        start_time=5.0,
        attempt=agl.Attempt(rollout_id="ro-y", attempt_id="at-y", sequence_id=1, start_time=5.0),
    )
    _from_upstream(up, store_fs.AttemptedRollout)


def test_worker() -> None:
    worker = store_fs.Worker(
        worker_id="runner-7",
        status="busy",
        heartbeat_stats={"gpu": 0.5, "queue": [1, 2]},
        last_heartbeat_time=10.0,
        last_dequeue_time=9.0,
        last_busy_time=9.5,
        last_idle_time=1.0,
        current_rollout_id="ro-0123456789ab",
        current_attempt_id="at-01234567",
    )
    _both_ways(worker, agl.Worker)
    _both_ways(store_fs.Worker(worker_id="w"), agl.Worker)
    _from_upstream(agl.Worker(worker_id="up", status="idle"), store_fs.Worker)


def test_resources_update() -> None:
    update = store_fs.ResourcesUpdate(
        resources_id="rs-0123456789ab", create_time=1.0, update_time=2.0, version=3, resources=_resources()
    )
    theirs = _both_ways(update, agl.ResourcesUpdate)
    assert isinstance(theirs, agl.ResourcesUpdate)
    assert isinstance(theirs.resources["prompt"], agl.PromptTemplate)
    assert type(theirs.resources["llm"]) is agl.LLM
    assert isinstance(theirs.resources["proxy"], agl.ProxyLLM)

    up = agl.ResourcesUpdate(
        resources_id="custom",
        create_time=4.0,
        update_time=4.0,
        version=1,
        resources={
            "p": agl.PromptTemplate(template="{x}", engine="jinja"),
            "l": agl.LLM(endpoint="http://a/v1", model="m"),
            "x": agl.ProxyLLM(endpoint="http://b", model="n", api_key="k"),
        },
    )
    ours = _from_upstream(up, store_fs.ResourcesUpdate)
    assert isinstance(ours, store_fs.ResourcesUpdate)
    assert isinstance(ours.resources["p"], store_fs.PromptTemplate)
    assert type(ours.resources["l"]) is store_fs.LLM
    assert isinstance(ours.resources["x"], store_fs.ProxyLLM)


@pytest.mark.parametrize(
    ("ours", "up_cls"),
    [
        (store_fs.PromptTemplate(template="Hi {name}", engine="f-string"), "PromptTemplate"),
        (store_fs.PromptTemplate(template="{{ x }}", engine="jinja"), "PromptTemplate"),
        (store_fs.LLM(endpoint="http://h/v1", model="m", sampling_parameters={"t": 1}), "LLM"),
        (store_fs.ProxyLLM(endpoint="http://h:1/v1", model="m", api_key="k"), "ProxyLLM"),
    ],
)
def test_single_resources(ours: BaseModel, up_cls: str) -> None:
    _both_ways(ours, getattr(agl, up_cls))


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://localhost:11434/v1",
        "http://localhost:11434/v1/",
        "http://localhost:11434",
        "http://localhost:11434/",
        "https://proxy.example.com/api/v1",
        "https://proxy.example.com/v1beta",
    ],
)
@pytest.mark.parametrize(("rollout_id", "attempt_id"), [("ro-0123456789ab", "at-01234567"), (None, None)])
def test_proxy_llm_get_base_url(endpoint: str, rollout_id: str | None, attempt_id: str | None) -> None:
    ours = store_fs.ProxyLLM(endpoint=endpoint, model="m")
    theirs = agl.ProxyLLM(endpoint=endpoint, model="m")
    assert ours.get_base_url(rollout_id, attempt_id) == theirs.get_base_url(rollout_id, attempt_id)


def test_proxy_llm_get_base_url_half_given_raises_like_upstream() -> None:
    ours = store_fs.ProxyLLM(endpoint="http://h/v1", model="m")
    theirs = agl.ProxyLLM(endpoint="http://h/v1", model="m")
    for args in (("ro-1", None), (None, "at-1")):
        with pytest.raises(ValueError, match="rollout_id and attempt_id must"):
            theirs.get_base_url(*args)
        with pytest.raises(ValueError, match="rollout_id and attempt_id must"):
            ours.get_base_url(*args)


def test_proxy_llm_with_attempted_rollout() -> None:
    attempted = store_fs.AttemptedRollout(
        rollout_id="ro-0123456789ab", input=None, start_time=1.0, attempt=_attempt()
    )
    ours = store_fs.ProxyLLM(endpoint="http://h:1/v1", model="m", api_key="k")
    theirs = agl.ProxyLLM(endpoint="http://h:1/v1", model="m", api_key="k")
    up_attempted = agl.AttemptedRollout.model_validate(_json(attempted))
    assert _json(ours.with_attempted_rollout(attempted)) == _json(theirs.with_attempted_rollout(up_attempted))


# -- spans ---------------------------------------------------------------------------


def _full_span() -> store_fs.Span:
    ctx = store_fs.SpanContext(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        is_remote=False,
        trace_state={},
    )
    parent = store_fs.SpanContext(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="00f067aa0ba902b7",
        is_remote=True,
        trace_state={"vendor": "v1"},
    )
    return store_fs.Span(
        rollout_id="ro-0123456789ab",
        attempt_id="at-01234567",
        sequence_id=7,
        trace_id=ctx.trace_id,
        span_id=ctx.span_id,
        parent_id=parent.span_id,
        name="openai.chat",
        status=store_fs.TraceStatus(status_code="ERROR", description="boom"),
        attributes={
            "s": "text",
            "b": True,
            "i": 42,
            "f": 0.5,
            "ls": ["a", "b"],
            "lb": [True, False],
            "li": [1, 2, 3],
            "lf": [0.25, 1.5],
        },
        events=[
            store_fs.Event(name="exception", attributes={"exception.type": "ValueError"}, timestamp=12.5)
        ],
        links=[store_fs.Link(context=parent, attributes={"kind": "follows"}), store_fs.Link(context=ctx)],
        start_time=10.0,
        end_time=11.25,
        context=ctx,
        parent=parent,
        resource=store_fs.OtelResource(attributes={"service.name": "agent"}, schema_url="https://schema"),
        custom_extra={"kept": [1, 2]},
    )


def test_span_full() -> None:
    theirs = _both_ways(_full_span(), agl.Span)
    assert theirs.model_extra == {"custom_extra": {"kept": [1, 2]}}


def test_span_minimal_and_upstream_built() -> None:
    span = store_fs.Span.from_attributes(
        attributes={"x": 1}, rollout_id="ro-1", attempt_id="at-1", sequence_id=1
    )
    _both_ways(span, agl.Span)
    up = agl.Span.from_attributes(attributes={"y": "z"}, rollout_id="ro-2", attempt_id="at-2", sequence_id=3)
    _from_upstream(up, store_fs.Span)


def _otel_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=OtelSdkResource.create({"service.name": "interchange-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("store_fs.tests", "1.0")
    with tracer.start_as_current_span("outer", attributes={"role": "agent"}) as outer:
        outer_ctx = outer.get_span_context()
        with tracer.start_as_current_span(
            "inner", links=[OtelLink(outer_ctx, {"why": "because"})], attributes={"n": 3, "tags": ["a", "b"]}
        ) as inner:
            inner.add_event("progress", {"pct": 0.5})
            inner.set_status(Status(StatusCode.ERROR, "failed once"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def test_span_from_opentelemetry_matches_upstream() -> None:
    otel = _otel_spans()
    assert [s.name for s in otel] == ["inner", "outer"]
    for i, src in enumerate(otel):
        ours = store_fs.Span.from_opentelemetry(src, "ro-0123456789ab", "at-01234567", i + 1)
        theirs = agl.Span.from_opentelemetry(src, "ro-0123456789ab", "at-01234567", i + 1)
        ours_json, theirs_json = _json(ours), _json(theirs)
        # Upstream's own fields agree exactly.
        for field in agl.Span.model_fields:
            assert ours_json[field] == theirs_json[field], field
        # Extras: we keep only kind and instrumentation scope, as strings (upstream 0.3 with
        # this OpenTelemetry SDK keeps none); any extra both sides keep must agree.
        assert set(ours.model_extra or {}) <= {"kind", "instrumentation_scope"}
        assert all(isinstance(v, str) for v in (ours.model_extra or {}).values())
        for key in set(ours.model_extra or {}) & set(theirs.model_extra or {}):
            assert theirs_json[key] == ours_json[key], key
        # Our dump validates with upstream, and upstream's dump with ours.
        _both_ways(ours, agl.Span)
        back = store_fs.Span.model_validate(theirs_json)
        for field in store_fs.Span.model_fields:
            assert getattr(back, field) == getattr(ours, field), field
    inner = store_fs.Span.from_opentelemetry(otel[0], "ro-0123456789ab", "at-01234567", 1)
    parent_context = otel[1].get_span_context()
    assert parent_context is not None
    assert inner.parent_id == parent_context.span_id.to_bytes(8, "big").hex()
    assert inner.status.status_code == "ERROR"
    assert inner.events[0].attributes == {"pct": 0.5}
    assert inner.links[0].context.span_id == inner.parent_id
    assert inner.resource.attributes["service.name"] == "interchange-test"


def test_reward_span_from_core_fields() -> None:
    core = agl_emitter.emit_reward(0.9, propagate=False)
    our_core = store_fs.SpanCoreFields.model_validate(_json(core))
    assert _json(our_core) == _json(core)
    ours = store_fs.Span.from_core_fields(our_core, rollout_id="ro-1", attempt_id="at-1", sequence_id=4)
    theirs = agl.Span.from_core_fields(core, rollout_id="ro-1", attempt_id="at-1", sequence_id=4)
    ours_json, theirs_json = _json(ours), _json(theirs)
    for field in ("rollout_id", "attempt_id", "sequence_id", "name", "status", "attributes", "start_time"):
        assert ours_json[field] == theirs_json[field], field
    up_from_ours = _both_ways(ours, agl.Span)
    _from_upstream(theirs, store_fs.Span)
    assert agl_emitter.get_reward_value(up_from_ours) == pytest.approx(0.9)
    assert agl_emitter.get_reward_value(ours) == pytest.approx(0.9)


def test_paginated_result() -> None:
    rollouts = [
        store_fs.Rollout(
            rollout_id=f"ro-00000000000{i}", input=i, start_time=float(i), config=_rollout_config()
        )
        for i in range(3)
    ]
    page = store_fs.PaginatedResult[store_fs.Rollout](items=rollouts, limit=3, offset=2, total=10)
    data = _json(page)
    theirs = agl.PaginatedResult[agl.Rollout].model_validate(data)
    assert _json(theirs) == data
    assert [r.rollout_id for r in theirs] == [r.rollout_id for r in rollouts]
    back = store_fs.PaginatedResult[store_fs.Rollout].model_validate(_json(theirs))
    assert _json(back) == data
    assert list(back) == rollouts

    spans = store_fs.PaginatedResult[store_fs.Span](items=[_full_span()], limit=-1, offset=0, total=1)
    up_spans = agl.PaginatedResult[agl.Span].model_validate(_json(spans))
    assert _json(up_spans) == _json(spans)

    up_page = agl.PaginatedResult[agl.Attempt](
        items=[agl.Attempt(rollout_id="ro-1", attempt_id="at-1", sequence_id=1, start_time=1.0)],
        limit=1,
        offset=0,
        total=5,
    )
    ours = store_fs.PaginatedResult[store_fs.Attempt].model_validate(_json(up_page))
    assert _json(ours) == _json(up_page)
    assert isinstance(ours[0], store_fs.Attempt)


# -- the store's own output -----------------------------------------------------------


async def _populate(store: FileStore) -> tuple[str, str]:
    resources = await store.add_resources(_resources())
    _both_ways(resources, agl.ResourcesUpdate)
    rollout = await store.enqueue_rollout(
        input={"q": "2+2?"}, mode="train", config=_rollout_config(), metadata={"tag": "x"}
    )
    attempted = await store.dequeue_rollout(worker_id="worker-1")
    assert attempted is not None
    assert attempted.rollout_id == rollout.rollout_id
    _both_ways(attempted, agl.AttemptedRollout)
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    for i, src in enumerate(_otel_spans()):
        seq = await store.get_next_span_sequence_id(rid, aid)
        await store.add_otel_span(rid, aid, src, sequence_id=seq)
        assert i < 2
    span = _full_span().model_copy(update={"rollout_id": rid, "attempt_id": aid, "sequence_id": 10})
    await store.add_span(span)
    await store.update_attempt(rid, aid, status="failed")  # retried: requeuing
    again = await store.dequeue_rollout(worker_id="worker-2")
    assert again is not None
    assert again.rollout_id == rid
    await store.update_attempt(rid, again.attempt.attempt_id, status="succeeded")
    await store.update_worker("worker-1", heartbeat_stats={"load": 1})
    await store.enqueue_rollout(input={"q": "queued only"}, mode="val")
    return rid, aid


async def test_store_results_validate_with_upstream(store: FileStore) -> None:
    rid, _ = await _populate(store)
    got = await store.get_rollout_by_id(rid)
    assert got is not None
    _both_ways(got, agl.AttemptedRollout)
    page = await store.query_rollouts()
    assert page.total == 2
    up_page = agl.PaginatedResult[agl.Rollout].model_validate(_json(page))
    assert up_page.total == 2
    attempts = await store.query_attempts(rid)
    for attempt in attempts:
        _both_ways(attempt, agl.Attempt)
    spans = await store.query_spans(rid)
    assert len(spans) == 3
    for span in spans:
        _both_ways(span, agl.Span)
    workers = await store.query_workers()
    assert workers.total >= 2
    for worker in workers:
        _both_ways(worker, agl.Worker)
    latest = await store.get_latest_resources()
    assert latest is not None
    _both_ways(latest, agl.ResourcesUpdate)


async def test_files_on_disk_validate_with_upstream(store: FileStore) -> None:
    rid, aid = await _populate(store)
    root = Path(store.root)
    revisions = sorted(root.glob("rollouts/*/*/history/*.json"))
    mirrors = sorted(root.glob("rollouts/*/*/rollout.json"))
    assert len(mirrors) == 2
    assert len(revisions) >= 6  # two creations plus the changes of the retried rollout
    statuses = set()
    for path in [*revisions, *mirrors]:
        data = loads(path.read_bytes())
        theirs = agl.Rollout.model_validate(data)
        statuses.add(theirs.status)
        for key in agl.Rollout.model_fields:
            assert _json(theirs)[key] == data[key], (path, key)
        for attempt in data.get("attempts", []):
            agl.Attempt.model_validate(attempt)
    assert {"queuing", "preparing", "running", "requeuing", "succeeded"} <= statuses
    final = loads((root / "rollouts" / rid[3:5] / rid / "rollout.json").read_bytes())
    assert agl.Rollout.model_validate(final).status == "succeeded"

    span_files = sorted(root.glob("rollouts/*/*/attempts/*/spans.*.jsonl"))
    assert span_files
    lines = [line for path in span_files for line in path.read_bytes().splitlines() if line.strip()]
    assert len(lines) == 3
    names = []
    for line in lines:
        data = loads(line)
        theirs = agl.Span.model_validate(data)
        assert theirs.rollout_id == rid
        assert theirs.attempt_id == aid
        names.append(theirs.name)
        for key in agl.Span.model_fields:
            assert _json(theirs)[key] == data[key], key
    assert sorted(names) == ["inner", "openai.chat", "outer"]


async def test_upstream_reward_helpers_read_stored_spans(store: FileStore) -> None:
    attempted = await store.start_rollout(input="reward me")
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id

    async def add(span: store_fs.Span) -> None:
        assert await store.add_span(span) is not None

    seq = await store.get_next_span_sequence_id(rid, aid)
    await add(
        store_fs.Span.from_attributes(
            attributes={"gen_ai.prompt": "hi"},
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq,
            name="llm.call",
            start_time=1.0,
        )
    )
    early = agl_emitter.emit_reward(0.1, propagate=False)
    seq = await store.get_next_span_sequence_id(rid, aid)
    await add(
        store_fs.Span.from_core_fields(
            store_fs.SpanCoreFields.model_validate(_json(early)),
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq,
        )
    )
    final = agl_emitter.emit_reward(0.9, propagate=False)
    seq = await store.get_next_span_sequence_id(rid, aid)
    await add(
        store_fs.Span.from_core_fields(
            store_fs.SpanCoreFields.model_validate(_json(final)),
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq,
        )
    )
    seq = await store.get_next_span_sequence_id(rid, aid)
    await add(
        store_fs.Span.from_attributes(
            attributes={"done": True},
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq,
            name="tail",
            start_time=2.0,
        )
    )

    spans = list(await store.query_spans(rid))
    assert len(spans) == 4
    assert [s.sequence_id for s in spans] == sorted(s.sequence_id for s in spans)
    up_spans = [agl.Span.model_validate(_json(s)) for s in spans]
    assert agl_emitter.find_final_reward(up_spans) == pytest.approx(0.9)
    assert agl_emitter.find_final_reward(spans) == pytest.approx(0.9)
    values = [agl_emitter.get_reward_value(s) for s in up_spans]
    assert values[0] is None
    assert values[3] is None
    assert values[1] == pytest.approx(0.1)
    assert values[2] == pytest.approx(0.9)
    assert [agl_emitter.get_reward_value(s) for s in spans] == values

    # A span made by upstream's own converter and stored here reads back the same.
    core = agl_emitter.emit_reward(0.75, propagate=False)
    seq = await store.get_next_span_sequence_id(rid, aid)
    up_span = agl.Span.from_core_fields(core, rollout_id=rid, attempt_id=aid, sequence_id=seq)
    await add(store_fs.Span.model_validate(_json(up_span)))
    stored = list(await store.query_spans(rid, attempt_id=aid))
    assert agl_emitter.find_final_reward(
        [agl.Span.model_validate(_json(s)) for s in stored]
    ) == pytest.approx(0.75)
    assert _json(stored[-1]) == _json(up_span)
