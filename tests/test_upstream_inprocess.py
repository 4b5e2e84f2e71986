"""Upstream Agent-lightning 0.3 and agl in one process, both ways (issue: keep your code, change
the store line). Upstream's runner, tracer, ``@rollout`` functions, ``LitAgent`` subclasses,
emitters, adapters and ``Trainer`` over a ``FileStore``; agl's runner over upstream's agents,
whose upstream ``emit_*`` calls reach the store (docs/migrating.md)."""

from __future__ import annotations

import asyncio
import importlib
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

agl = pytest.importorskip("agentlightning")

from openai import AsyncOpenAI  # noqa: E402
from opentelemetry import trace as otel_trace  # noqa: E402

import store_fs  # noqa: E402
from store_fs import FileStore  # noqa: E402
from store_fs.client import LightningStoreClient  # noqa: E402
from store_fs.emitter import emit_message as agl_emit_message  # noqa: E402
from store_fs.emitter import emit_reward as agl_emit_reward  # noqa: E402
from store_fs.rewards import find_final_reward  # noqa: E402
from store_fs.runner import LitAgentRunner  # noqa: E402
from store_fs.runner_pool import shippable_agent  # noqa: E402
from store_fs.testing.mock_openai import MockOpenAIServer  # noqa: E402
from store_fs.tracing import OtelTracer  # noqa: E402
from store_fs.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.upstream

MESSAGE, REWARD = "agentlightning.message", "agentlightning.annotation"
# Upstream's decorators and base class (its package is Any to mypy).
upstream_rollout: Callable[[Callable[..., Any]], Any] = agl.rollout
upstream_algo: Callable[[Callable[..., Any]], Any] = agl.algo
UpstreamLitAgent: Any = agl.LitAgent

BODY = "agentlightning.message.body"


@pytest.fixture(autouse=True, scope="module")
def _global_tracer_provider() -> Iterator[None]:
    """Upstream's OtelTracer installs a global TracerProvider; later tests get theirs back."""
    saved = otel_trace._TRACER_PROVIDER, otel_trace._TRACER_PROVIDER_SET_ONCE
    yield
    otel_trace._TRACER_PROVIDER, otel_trace._TRACER_PROVIDER_SET_ONCE = saved


def resources(llm_endpoint: str = "http://127.0.0.1:9/v1") -> dict[str, Any]:
    return {
        "main_prompt": agl.PromptTemplate(template="Q: {q}", engine="f-string"),
        "llm": agl.ProxyLLM(endpoint=llm_endpoint, model="mock-gpt"),
    }


async def enqueue(store: Any, inputs: list[Any], mode: str = "train") -> list[str]:
    return [(await store.enqueue_rollout(input=i, mode=mode)).rollout_id for i in inputs]


async def upstream_runner(store: Any, agent: Any, n: int, tracer: Any = None) -> None:
    """Upstream's runner and tracer, as its tutorial runs them, for ``n`` rollouts."""
    tracer = tracer or agl.OtelTracer()
    runner = agl.LitAgentRunner(tracer=tracer, max_rollouts=n, poll_interval=0.05)
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 60)


async def agl_runner(store: Any, agent: Any, n: int, **kwargs: Any) -> None:
    runner = LitAgentRunner(tracer=OtelTracer(), max_rollouts=n, poll_interval=0.05, **kwargs)
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 60)


async def outcome(store: Any, rollout_id: str) -> tuple[str, float | None, list[str]]:
    """Status, final reward (agl's reading and upstream's agree), span names in sequence order."""
    rollout = await store.get_rollout_by_id(rollout_id)
    spans = list(await store.query_spans(rollout_id))
    reward = find_final_reward(spans)
    assert agl.find_final_reward(spans) == reward
    return rollout.status, reward, [s.name for s in spans]


# -- agents written against upstream's API ------------------------------------------------------


@upstream_rollout
async def prompt_agent(task: dict[str, Any], prompt_template: Any) -> float:
    agl.emit_message(prompt_template.format(q=task["q"]))
    agl.emit_reward(0.25)
    return float(task["score"])


@upstream_rollout
def proxy_agent(task: dict[str, Any], llm: Any, rollout: Any) -> None:
    # Upstream's decorator found an LLM among agl's resources and routed the ProxyLLM.
    assert isinstance(llm, agl.LLM)
    assert not isinstance(llm, agl.ProxyLLM)
    assert f"/rollout/{rollout.rollout_id}/attempt/{rollout.attempt.attempt_id}" in llm.endpoint
    agl.emit_reward({"accuracy": 1.0, "speed": float(task["score"])}, primary_key="speed")


class ModeAgent(UpstreamLitAgent):  # type: ignore[misc]
    """Sync; training and validation give different rewards."""

    def training_rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        assert self.get_runner() is not None
        agl.emit_reward(0.1)
        return 1.0

    def validation_rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        return 0.0


class SpanAgent(UpstreamLitAgent):  # type: ignore[misc]
    """Async; returns upstream span objects, after an upstream reward."""

    async def rollout_async(self, task: Any, resources: Any, rollout: Any) -> list[Any]:
        assert isinstance(resources["main_prompt"], agl.PromptTemplate)
        agl.emit_reward(float(task))
        status = agl.TraceStatus(status_code="OK")
        return [
            agl.SpanCoreFields(
                name="step", status=status, attributes={"k": task}, start_time=1.0, end_time=2.0
            )
        ]


class FailingAgent(UpstreamLitAgent):  # type: ignore[misc]
    def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        raise RuntimeError("agent bug")


@upstream_rollout
async def agl_emitting_agent(task: Any, prompt_template: Any) -> None:
    """Uses agl's emitters while upstream's runner runs it."""
    agl_emit_message(f"agl says {task}")
    agl_emit_reward(0.9)


@upstream_rollout
async def operation_agent(task: dict[str, Any], prompt_template: Any) -> float:
    await asyncio.sleep(0.01 * task["score"])  # interleave with the other rollout in flight
    with agl.operation(name="lookup", q=task["q"]) as op:
        op.set_output(task["q"] * 2)
    agl.emit_message(f"msg {task['q']}")
    agl.emit_reward(float(task["score"]) / 10)
    await asyncio.sleep(0.01)
    return float(task["score"])


# -- upstream's runner over a FileStore ---------------------------------------------------------


def test_upstream_runner_runs_rollout_functions_over_a_file_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    assert isinstance(store, agl.LightningStore)

    async def main() -> None:
        await store.add_resources(resources())
        ids = await enqueue(store, [{"q": "a", "score": 0.75}, {"q": "b", "score": 0.5}])
        await upstream_runner(store, prompt_agent, 2)
        for rid, score in zip(ids, (0.75, 0.5), strict=True):
            status, reward, names = await outcome(store, rid)
            assert (status, reward) == ("succeeded", score)
            assert names == [MESSAGE, REWARD, REWARD]
        spans = await store.query_spans(ids[0])
        assert spans[0].attributes[BODY] == "Q: a"
        proxied = await enqueue(store, [{"score": 0.3}])
        await upstream_runner(store, proxy_agent, 1)
        assert (await outcome(store, proxied[0]))[:2] == ("succeeded", 0.3)
        # agl's tracer under upstream's runner: the same spans, in the same order.
        agl_traced = await enqueue(store, [{"q": "c", "score": 0.5}])
        await upstream_runner(store, prompt_agent, 1, tracer=OtelTracer())
        # ... under the attempt's root span, which ends when the agent returns.
        root = f"{agl_traced[0]}.session"
        assert await outcome(store, agl_traced[0]) == ("succeeded", 0.5, [MESSAGE, REWARD, root, REWARD])

    asyncio.run(main())


def test_upstream_runner_runs_lit_agent_subclasses_over_a_file_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")

    async def main() -> None:
        await store.add_resources(resources())
        train, val = await enqueue(store, ["t"]), await enqueue(store, ["v"], mode="val")
        await upstream_runner(store, ModeAgent(), 2)
        assert (await outcome(store, train[0]))[:2] == ("succeeded", 1.0)
        assert (await outcome(store, val[0]))[:2] == ("succeeded", 0.0)
        spans_of = await enqueue(store, [3])
        await upstream_runner(store, SpanAgent(), 1)
        status, reward, names = await outcome(store, spans_of[0])
        assert (status, reward, names) == ("succeeded", 3.0, [REWARD, "step"])
        failing = await enqueue(store, [0])
        await upstream_runner(store, FailingAgent(), 1)
        assert (await outcome(store, failing[0]))[0] == "failed"
        # agl's emitters record through upstream's tracer when upstream's runner runs the agent.
        agl_side = await enqueue(store, ["x"])
        await upstream_runner(store, agl_emitting_agent, 1)
        status, reward, names = await outcome(store, agl_side[0])
        assert (status, reward) == ("succeeded", 0.9)
        assert (await store.query_spans(agl_side[0]))[0].attributes[BODY] == "agl says x"

    asyncio.run(main())


# -- agl's runner over upstream's agents ---------------------------------------------------------


def test_agl_runner_runs_upstream_agents_and_keeps_their_upstream_rewards(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    base = importlib.import_module("agentlightning.tracer.base")

    async def main() -> None:
        await store.add_resources(resources())
        tasks: list[dict[str, Any]] = [
            {"q": q, "score": s} for q, s in (("a", 3), ("b", 1), ("c", 2), ("d", 4))
        ]
        ids = await enqueue(store, tasks)
        await agl_runner(store, operation_agent, 4, max_parallel=2)  # two rollouts at once
        for rid, task in zip(ids, tasks, strict=True):
            status, reward, names = await outcome(store, rid)
            assert (status, reward) == ("succeeded", task["score"])
            assert names == ["agentlightning.operation", MESSAGE, REWARD, f"{rid}.session", REWARD]
            spans = list(await store.query_spans(rid))
            assert spans[1].attributes[BODY] == f"msg {task['q']}"  # no mixing between rollouts
            assert agl.get_reward_value(spans[2]) == task["score"] / 10
        proxied = await enqueue(store, [{"score": 0.3}])
        await agl_runner(store, proxy_agent, 1)
        assert (await outcome(store, proxied[0]))[:2] == ("succeeded", 0.3)

    asyncio.run(main())
    # The bridge leaves upstream's slot as it found it: outside a rollout, upstream's emitters fail.
    assert base.get_active_tracer() is None
    with pytest.raises(RuntimeError, match="No active tracer"):
        agl.emit_reward(1.0)


def test_agl_runner_over_upstreams_in_memory_store_stores_every_span() -> None:
    """Upstream's in-memory store checks that a span is its own ``Span`` class: every span agl's
    runner sent was refused, so every attempt failed with nothing stored (found by an
    adversarial pass)."""
    store = agl.InMemoryLightningStore()

    async def main() -> None:
        await store.add_resources(resources())
        tasks: list[dict[str, Any]] = [{"q": q, "score": s} for q, s in (("a", 3), ("b", 1))]
        ids = await enqueue(store, tasks)
        await agl_runner(store, operation_agent, 2)
        for rid, task in zip(ids, tasks, strict=True):
            status, reward, names = await outcome(store, rid)
            assert (status, reward) == ("succeeded", task["score"])
            assert names == ["agentlightning.operation", MESSAGE, REWARD, f"{rid}.session", REWARD]

    asyncio.run(main())


@store_fs.agent.rollout
async def agl_prompt_agent(task: dict[str, Any], prompt_template: store_fs.PromptTemplate) -> float:
    assert isinstance(prompt_template, store_fs.PromptTemplate)
    return float(task["score"])


def test_agl_agents_take_upstreams_resources() -> None:
    """Resources from a store that is not agl's (upstream's in-memory store, upstream's HTTP
    client) are upstream's classes: an agl ``@rollout`` agent taking a prompt template failed
    every attempt with "the rollout's resources hold no PromptTemplate" (found by an
    adversarial pass). The runner hands agl's agents agl's classes."""
    store = agl.InMemoryLightningStore()

    async def main() -> None:
        await store.add_resources(resources())
        [rid] = await enqueue(store, [{"score": 2}])
        await agl_runner(store, agl_prompt_agent, 1)
        assert (await outcome(store, rid))[:2] == ("succeeded", 2.0)

    asyncio.run(main())


def test_agl_runner_runs_upstream_lit_agents(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")

    async def main() -> None:
        await store.add_resources(resources())
        train, val = await enqueue(store, ["t"]), await enqueue(store, ["v"], mode="val")
        agent = ModeAgent()
        await agl_runner(store, agent, 2)
        assert (await outcome(store, train[0]))[:2] == ("succeeded", 1.0)
        assert (await outcome(store, val[0]))[:2] == ("succeeded", 0.0)
        assert (await outcome(store, train[0]))[2] == [REWARD, f"{train[0]}.session", REWARD]
        spans_of = await enqueue(store, [3])
        await agl_runner(store, SpanAgent(), 1)
        assert await outcome(store, spans_of[0]) == (
            "succeeded",
            3.0,
            [REWARD, f"{spans_of[0]}.session", "step"],
        )
        failing = await enqueue(store, [0])
        await agl_runner(store, FailingAgent(), 1)
        attempt = await store.get_latest_attempt(failing[0])
        assert attempt is not None
        assert attempt.metadata == {"error": "RuntimeError: agent bug"}

    asyncio.run(main())


def test_upstream_adapters_read_spans_recorded_by_agl(tmp_path: Path) -> None:
    @upstream_rollout
    async def chat(task: str, llm: Any) -> None:
        async with AsyncOpenAI(base_url=llm.endpoint, api_key="sk-mock", max_retries=0) as client:
            await client.chat.completions.create(
                model=llm.model, messages=[{"role": "user", "content": task}]
            )
        agl.emit_reward(0.5)

    store = FileStore(tmp_path / "s")

    async def main(server: MockOpenAIServer) -> None:
        await store.add_resources({"llm": agl.LLM(endpoint=server.base_url, model="mock-gpt")})
        (rid,) = await enqueue(store, ["hello there"])
        await agl_runner(store, chat, 1)
        spans = list(await store.query_spans(rid))
        triplets = agl.TracerTraceToTriplet().adapt(spans)
        assert [(t.prompt["raw_content"][0]["content"], t.reward) for t in triplets] == [("hello there", 0.5)]
        messages = agl.TraceToMessages().adapt(spans)
        assert messages[0]["messages"][-1] == {"role": "assistant", "content": "echo: hello there"}

    with MockOpenAIServer() as server:
        asyncio.run(main(server))


def test_upstream_function_agents_travel_to_runner_processes() -> None:
    # Upstream's @rollout objects do not pickle; agl sends them by their module-level name.
    with pytest.raises((pickle.PicklingError, TypeError)):
        pickle.dumps(prompt_agent)
    assert pickle.loads(pickle.dumps(shippable_agent(prompt_agent))) is prompt_agent
    agent = ModeAgent()
    assert shippable_agent(agent) is agent
    # An upstream LitAgent that was given its trainer (or ran) holds weak references, which
    # do not pickle and mean nothing in another process: it travels without them.
    agent.set_trainer(Trainer())
    copied = pickle.loads(pickle.dumps(shippable_agent(agent)))
    assert isinstance(copied, ModeAgent)
    assert copied._trainer_ref is None
    with pytest.raises(TypeError, match="module level"):
        shippable_agent(agl.rollout(lambda task, prompt_template: 1.0))


def test_an_upstream_tracer_under_agl_runner_is_refused() -> None:
    with pytest.raises(TypeError, match="upstream's tracers run under upstream's runner"):
        LitAgentRunner(tracer=agl.OtelTracer())


# -- upstream's Trainer over a FileStore ----------------------------------------------------------


@upstream_rollout
def scored_agent(task: dict[str, Any], prompt_template: Any) -> float:
    agl.emit_message(prompt_template.format(q=task["q"]))
    return float(len(prompt_template.template)) / 100 + float(task["bonus"])


class _Recorded:
    result: list[tuple[str, str, float | None]] = []


@upstream_algo
async def sweep_templates(*, store: Any) -> None:
    _Recorded.result = []
    for template in ("A {q}", "Longer {q}"):
        await store.add_resources({"main_prompt": agl.PromptTemplate(template=template, engine="f-string")})
        rollout = await store.enqueue_rollout(input={"q": "x", "bonus": 0.5}, mode="train")
        while not (done := await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0.1)):
            await asyncio.sleep(0.05)
        spans = await store.query_spans(rollout.rollout_id)
        _Recorded.result.append((template, done[0].status, agl.find_final_reward(spans)))


def test_upstream_trainer_fits_over_a_file_store(tmp_path: Path) -> None:
    runner = agl.LitAgentRunner(tracer=agl.OtelTracer(), poll_interval=0.05)
    trainer = agl.Trainer(
        algorithm=sweep_templates,
        runner=runner,
        n_runners=1,
        store=FileStore(tmp_path / "s"),
        strategy={"type": "shm", "main_thread": "algorithm"},
    )
    trainer.fit(scored_agent)
    assert _Recorded.result == [("A {q}", "succeeded", 0.55), ("Longer {q}", "succeeded", 0.6)]

    async def stored() -> list[str]:
        return [r.status for r in await FileStore(tmp_path / "s").query_rollouts()]

    assert asyncio.run(stored()) == ["succeeded", "succeeded"]  # on disk, for any other process


@upstream_algo
async def average_reward(*, store: Any, train_dataset: list[dict[str, Any]]) -> float:
    ids = [(await store.enqueue_rollout(input=task, mode="train")).rollout_id for task in train_dataset]
    done = await store.wait_for_rollouts(rollout_ids=ids, timeout=90)
    assert [r.status for r in done] == ["succeeded"] * len(ids)
    rewards = [find_final_reward(await store.query_spans(rid)) or 0.0 for rid in ids]
    return sum(rewards) / len(rewards)


def test_agl_trainer_runs_upstream_algorithms_and_agents_in_runner_processes(tmp_path: Path) -> None:
    # upstream's @algo and @rollout, agl's Trainer with upstream's keyword arguments: the
    # agent travels by name to a spawned runner process, where its upstream emit_* are kept.
    trainer = Trainer(
        algorithm=average_reward,
        n_workers=1,
        max_tasks=2,
        store=FileStore(tmp_path / "s"),
        initial_resources=resources(),
    )
    assert trainer.fit(prompt_agent, [{"q": "a", "score": 1.0}, {"q": "b", "score": 0.5}]) == 0.75

    async def names() -> list[tuple[str, list[str]]]:
        store = FileStore(tmp_path / "s")
        rollouts = await store.query_rollouts()
        return [(r.rollout_id, [s.name for s in await store.query_spans(r.rollout_id)]) for r in rollouts]

    named = asyncio.run(names())
    assert len(named) == 2
    for rollout_id, span_names in named:  # emitted, the attempt's root, then the returned reward
        assert span_names == [MESSAGE, REWARD, f"{rollout_id}.session", REWARD]
    with pytest.raises(TypeError, match="upstream's tracers run under upstream's Trainer"):
        Trainer(tracer=agl.OtelTracer())


# -- what upstream sees of agl's objects -----------------------------------------------------------


def test_stores_and_their_resources_are_also_upstream_classes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    assert isinstance(store, FileStore)
    assert isinstance(store, agl.LightningStore)
    assert isinstance(LightningStoreClient("http://127.0.0.1:9"), agl.LightningStore)
    theirs = resources()

    async def main() -> None:
        added = await store.add_resources(theirs)
        for name, value in added.resources.items():
            assert isinstance(value, type(theirs[name]))  # upstream's class
            assert isinstance(value, getattr(store_fs, type(theirs[name]).__name__))  # and agl's
            assert value == theirs[name]
            assert value.model_dump_json() == theirs[name].model_dump_json()
            back = pickle.loads(pickle.dumps(value))
            assert type(back) is getattr(store_fs, type(theirs[name]).__name__)
            assert back == value
        await store.enqueue_rollout(input=1)
        attempted = await store.dequeue_rollout(worker_id="w")
        assert isinstance(attempted, agl.AttemptedRollout)
        assert isinstance(attempted, store_fs.AttemptedRollout)
        # Upstream's wrappers pass its UNSET for "not given"; the store takes it as agl's.
        threaded = agl.LightningStoreThreaded(store)
        await threaded.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")
        rollout = await store.get_rollout_by_id(attempted.rollout_id)
        assert rollout is not None
        assert rollout.status == "succeeded"
        assert rollout.metadata == {}

    asyncio.run(main())


# -- found by an adversarial pass with upstream's objects (2026-12-07) --------------------------


def test_upstreams_server_in_front_of_a_file_store_answers_every_list_route(tmp_path: Path) -> None:
    """Upstream's ``Trainer`` puts its ``LightningStoreServer`` in front of the store; it wraps
    a page that is not its own ``PaginatedResult`` again, and every list route answered 500."""
    from agentlightning.store.client_server import LightningStoreClient as UpstreamClient
    from agentlightning.store.client_server import LightningStoreServer
    from fault_helpers import free_port

    async def scenario() -> None:
        store = FileStore(tmp_path / "s")
        port = free_port()
        server = LightningStoreServer(store, host="127.0.0.1", port=port)
        await server.start()
        client = UpstreamClient(f"http://127.0.0.1:{port}", retry_delays=(), health_retry_delays=())
        try:
            await client.add_resources({"p": agl.PromptTemplate(template="x", engine="f-string")})
            started = await client.start_rollout(input="s", worker_id="w0")
            await client.enqueue_rollout(input="q")
            span = agl.Span.from_attributes(
                rollout_id=started.rollout_id,
                attempt_id=started.attempt.attempt_id,
                sequence_id=1,
                attributes={"k": 1},
                span_id="1" * 16,
                trace_id="0" * 32,
            )
            await client.add_span(span)
            assert (await client.query_rollouts()).total == 2
            assert [s.span_id for s in await client.query_spans(started.rollout_id)] == ["1" * 16]
            assert (await client.query_attempts(started.rollout_id)).total == 1
            assert [w.worker_id for w in await client.query_workers()] == ["w0"]
            assert (await client.query_resources()).total == 1
            page = await store.query_rollouts(limit=1)
            assert isinstance(page, agl.PaginatedResult)  # and its items stay agl's
            assert type(page.items[0]).__module__.startswith("store_fs.")
        finally:
            await client.close()
            await server.stop()
            store.close()

    asyncio.run(scenario())


class ReturnsOkAgent(UpstreamLitAgent):  # type: ignore[misc]
    def rollout(self, task: Any, resources: Any, rollout: Any) -> Any:
        if task == "agl":  # agl's emitters give back a span an upstream runner accepts
            return [agl_emit_reward(0.5, propagate=False)]
        return 1.0


def test_upstream_runner_with_agl_objects_an_unknown_resources_id_and_message_status(tmp_path: Path) -> None:
    """Three defects of one adversarial pass: (1) a rollout naming a resources id no resources
    can have (``team/v1``: not checked at enqueue) made ``get_resources_by_id`` raise, which
    ended upstream's runner loop with the next rollout left queued (upstream's stores answer
    None); (2) ``emit_reward(propagate=False)`` of agl returned agl's ``SpanCoreFields``, which
    upstream's runner refused ("Invalid raw result type"); (3) agl's ``emit_message`` stored
    status OK where upstream leaves UNSET."""

    async def scenario() -> None:
        store = FileStore(tmp_path / "s")
        try:
            await store.add_resources({"p": agl.PromptTemplate(template="x", engine="f-string")})
            assert await store.get_resources_by_id("team/v1") is None
            bad = await store.enqueue_rollout(input="plain", resources_id="team/v1")
            good = await store.enqueue_rollout(input="agl")
            await upstream_runner(store, ReturnsOkAgent(), 2)
            assert (await outcome(store, good.rollout_id))[0] == "succeeded"
            # Upstream's runner skips a rollout whose resources it cannot fetch (its attempt is
            # left to the watchdog, as over upstream's own stores) and goes on to the next.
            assert (await outcome(store, bad.rollout_id))[0] == "preparing"
            assert find_final_reward(list(await store.query_spans(good.rollout_id))) == 0.5
            messages = await store.enqueue_rollout(input={"q": "m", "score": 1})
            await upstream_runner(store, agl_emitting_agent, 1)
            spans = {s.name: s for s in await store.query_spans(messages.rollout_id)}
            assert spans[MESSAGE].status.status_code == "UNSET"  # as upstream's emit_message
            assert spans[REWARD].status.status_code == "OK"
        finally:
            store.close()

    asyncio.run(scenario())


def test_upstream_tracer_over_agls_client_stores_its_spans(tmp_path: Path) -> None:
    """agl's client said ``otlp_traces: True``, so upstream's tracers exported to an OTLP
    endpoint their exporter then ignored (localhost:4318): every emitted span was lost while the
    attempt succeeded. Told False, they store spans with ``add_otel_span``."""
    from http_helpers import ServerThread

    async def scenario(port: int) -> None:
        client = LightningStoreClient(f"http://127.0.0.1:{port}")
        try:
            await client.add_resources(resources())
            rollout = await client.enqueue_rollout(input={"q": "x", "score": 0.75})
            await upstream_runner(client, prompt_agent, 1)
            status, reward, names = await outcome(client, rollout.rollout_id)
            assert status == "succeeded"
            assert MESSAGE in names
            assert names.count(REWARD) == 2  # the emitted 0.25, then the returned 0.75
            assert reward == 0.75
        finally:
            await client.close()

    store = FileStore(tmp_path / "s")
    try:
        with ServerThread(store) as server:
            asyncio.run(scenario(server.port))
    finally:
        store.close()
