"""The ``triplets`` and ``messages`` views equal upstream's adapters on the same spans.

Spans are made the real way: agl's runner and tracer run agents that call the local mock OpenAI
server (several calls per rollout, streaming, tool calls and tool spans, rewards in the middle
and at the end, a failed attempt then its retry, a rollout without a reward). Upstream's
``TracerTraceToTriplet`` and ``TraceToMessages`` are then given ``query_spans(rollout_id,
"latest")``, as upstream's algorithms do, and their output must equal agl's rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from store_fs import AttemptedRollout, FileStore, PromptTemplate, RolloutConfig
from store_fs.agent import rollout
from store_fs.datasets import RolloutFilter, build_messages, build_triplets, view_rows
from store_fs.emitter import emit_reward
from store_fs.models import Span
from store_fs.runner import LitAgentRunner
from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.tracer import OtelTracer, active_tracer

agl = pytest.importorskip("agentlightning")
from agentlightning.adapter import TracerTraceToTriplet, TraceToMessages  # noqa: E402
from agentlightning.emitter.reward import find_final_reward as upstream_final_reward  # noqa: E402
from agentlightning.types import Span as UpstreamSpan  # noqa: E402

pytestmark = pytest.mark.upstream

TOOL_CALL = {"id": "call_7", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "2+2"}'}}


def _client(task: dict[str, Any]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-mock", base_url=task["base_url"], max_retries=0)


async def _ask(client: openai.AsyncOpenAI, messages: list[Any], *, stream: bool = False) -> str:
    if not stream:
        reply = await client.chat.completions.create(model="mock-gpt", messages=messages, temperature=0.1)
        return reply.choices[0].message.content or ""
    chunks = await client.chat.completions.create(model="mock-gpt", messages=messages, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


@rollout
async def agent(task: dict[str, Any], prompt_template: PromptTemplate, rollout: Any) -> float | None:
    found = active_tracer()
    assert found is not None
    tracer = found[0]
    assert isinstance(tracer, OtelTracer)
    question = prompt_template.format(any_question=task["q"])
    async with _client(task) as client:
        return await _converse(tracer, client, task, question, rollout.attempt.sequence_id)


async def _converse(
    tracer: OtelTracer, client: openai.AsyncOpenAI, task: dict[str, Any], question: str, attempt: int
) -> float | None:
    messages: list[Any] = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": question},
    ]
    with tracer.operation("agent.run", {"agent.name": "solver"}):
        answer = await _ask(client, messages)
        if task.get("tools"):
            messages.append({"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]})
            attrs = {"tool.name": "lookup", "tool.parameters": '{"q": "2+2"}', "tool.call.id": "call_7"}
            with tracer.operation("tool.lookup", {**attrs, "tool.call.type": "function"}):
                await asyncio.sleep(0.001)
            messages.append({"role": "tool", "tool_call_id": "call_7", "content": "4"})
        else:
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": "Are you sure?"})
        if task.get("mid_reward") is not None:
            emit_reward(task["mid_reward"])
        if task.get("fail_first") and attempt == 1:
            raise RuntimeError("the first attempt fails")
        await _ask(client, messages, stream=bool(task.get("stream")))
        messages.append({"role": "user", "content": "Score your answer."})
        await _ask(client, messages)
    final: float | None = task.get("final")
    return final


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileStore]:
    with MockOpenAIServer() as server:
        root = tmp_path_factory.mktemp("runs") / "store"
        yield asyncio.run(_run(root, server.base_url))


TASKS: list[tuple[dict[str, Any], RolloutConfig | None]] = [
    ({"q": "plain", "final": 1.0}, None),
    ({"q": "tools", "tools": True, "mid_reward": 0.25, "final": 0.75}, None),
    ({"q": "streamed", "stream": True, "mid_reward": 0.5, "final": 0.0}, None),
    ({"q": "no reward at all"}, None),
    (
        {"q": "retried", "fail_first": True, "tools": True, "final": 1.0},
        RolloutConfig(max_attempts=2, retry_condition=["failed"]),
    ),
    ({"q": "fails for good", "fail_first": True, "mid_reward": 0.1}, None),
]


async def _run(root: Path, base_url: str) -> FileStore:
    store = FileStore(root)
    await store.add_resources(
        {"main_prompt": PromptTemplate(template="Q: {any_question}", engine="f-string")}
    )
    for task, config in TASKS:
        await store.enqueue_rollout(input={**task, "base_url": base_url}, mode="train", config=config)
    runner = LitAgentRunner(tracer=OtelTracer(), max_rollouts=len(TASKS) + 1, poll_interval=0.05)
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 60)
    return store


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _upstream(spans: list[Span]) -> list[Any]:
    return [UpstreamSpan.model_validate(s.model_dump()) for s in spans]


def _upstream_tool_calls(spans: list[Span]) -> list[Any]:
    """The spans with prompt ``tool_calls`` as upstream's tracers record them (flattened
    ``tool_calls.<i>.id/name/arguments`` attributes) instead of agl's JSON text."""
    out = []
    for span in spans:
        attributes = dict(span.attributes)
        for key in [k for k in attributes if k.startswith("gen_ai.prompt.") and k.endswith(".tool_calls")]:
            calls = json.loads(str(attributes.pop(key)))
            for i, call in enumerate(calls):
                attributes[f"{key}.{i}.id"] = call["id"]
                attributes[f"{key}.{i}.name"] = call["function"]["name"]
                attributes[f"{key}.{i}.arguments"] = call["function"]["arguments"]
        out.append(UpstreamSpan.model_validate({**span.model_dump(), "attributes": attributes}))
    return out


async def _by_task(store: FileStore) -> dict[str, str]:
    return {r.input["q"]: r.rollout_id for r in await store.query_rollouts()}


def test_the_runs_cover_every_case(store: FileStore) -> None:
    async def check() -> None:
        ids = await _by_task(store)
        retried = list(await store.query_attempts(ids["retried"]))
        assert [a.status for a in retried] == ["failed", "succeeded"]
        for q in ("plain", "tools", "streamed", "retried"):
            names = [s.name for s in await store.query_spans(ids[q], "latest")]
            assert names.count("openai.chat.completion") == 3
            assert "agentlightning.annotation" in names
        tools = [s.name for s in await store.query_spans(ids["tools"], "latest")]
        assert "tool.lookup" in tools
        no_reward = await store.query_spans(ids["no reward at all"], "latest")
        assert all(s.name != "agentlightning.annotation" for s in no_reward)

    asyncio.run(check())


@pytest.mark.parametrize("q", [q["q"] for q, _ in TASKS])
def test_triplets_equal_upstreams_adapter(store: FileStore, q: str) -> None:
    async def check() -> None:
        rid = (await _by_task(store))[q]
        spans = list(await store.query_spans(rid, "latest"))
        theirs = [t.model_dump() for t in TracerTraceToTriplet().adapt(_upstream(spans))]
        assert theirs, "every rollout made LLM calls"
        assert _plain(build_triplets(spans)) == _plain(theirs)
        rows = [
            r async for r in view_rows(store, "triplets", RolloutFilter.of(endings=None, rollout_id_in=[rid]))
        ]
        rollout_now = await store.get_rollout_by_id(rid)
        assert rollout_now is not None
        final = upstream_final_reward(_upstream(spans))
        for step, (row, triplet) in enumerate(zip(rows, theirs, strict=True)):
            assert row["step"] == step
            assert row["rollout_id"] == rid
            assert isinstance(rollout_now, AttemptedRollout)
            assert row["attempt_id"] == spans[0].attempt_id == rollout_now.attempt.attempt_id
            assert row["resources_id"] == rollout_now.resources_id
            assert row["final_reward"] == final
            assert _plain({k: row[k] for k in ("prompt", "response", "reward", "metadata")}) == _plain(
                triplet
            )

    asyncio.run(check())


def test_token_ids_and_rewards_land_where_upstream_puts_them(store: FileStore) -> None:
    async def check() -> None:
        rid = (await _by_task(store))["tools"]
        rows = [r async for r in view_rows(store, "triplets", RolloutFilter.of(rollout_id_in=[rid]))]
        assert [r["reward"] for r in rows] == [0.25, None, 0.75]  # the mid reward goes to call 1
        assert all(r["prompt"]["token_ids"] and r["response"]["token_ids"] for r in rows)
        assert rows[0]["metadata"]["agent_name"] == "solver"
        assert {r["ended"] for r in rows} == {"succeeded"}

    asyncio.run(check())


@pytest.mark.parametrize("q", [q["q"] for q, _ in TASKS])
def test_messages_equal_upstreams_adapter(store: FileStore, q: str) -> None:
    async def check() -> None:
        rid = (await _by_task(store))[q]
        spans = list(await store.query_spans(rid, "latest"))
        theirs = TraceToMessages().adapt(_upstream_tool_calls(spans))
        assert _plain(build_messages(spans)) == _plain(theirs)
        rows = [
            r async for r in view_rows(store, "messages", RolloutFilter.of(endings=None, rollout_id_in=[rid]))
        ]
        assert len(rows) == 1
        assert _plain(rows[0]["conversations"]) == _plain(theirs)

    asyncio.run(check())


def test_the_tool_calls_its_tracer_records_read_as_upstream_reads_them(store: FileStore) -> None:
    async def check() -> None:
        rid = (await _by_task(store))["tools"]
        spans = list(await store.query_spans(rid, "latest"))
        # The tracer flattens a prompt's tool calls as AgentOps does, so upstream's adapter
        # reads them (the JSON text of older stores is read by agl's builder alone).
        assert build_messages(spans) == json.loads(json.dumps(TraceToMessages().adapt(_upstream(spans))))
        second = build_messages(spans)[1]["messages"]
        assert second[2] == {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
        assert second[3] == {"content": "4", "role": "tool", "tool_call_id": "call_7"}

    asyncio.run(check())


def test_how_each_rollout_ended(store: FileStore) -> None:
    async def check() -> None:
        ids = await _by_task(store)
        rows = [r async for r in view_rows(store, "rollouts", RolloutFilter.of(endings=None))]
        ended = {r["input"]["q"]: r["ended"] for r in rows}
        assert ended == {
            "plain": "succeeded",
            "tools": "succeeded",
            "streamed": "succeeded",
            "no reward at all": "no_reward",
            "retried": "succeeded",
            "fails for good": "failed",
        }
        default = {r["rollout_id"] async for r in view_rows(store, "messages")}
        assert ids["fails for good"] not in default  # failed rollouts stay out unless asked for
        assert ids["no reward at all"] in default

    asyncio.run(check())
