"""agl's runner against upstream Agent-lightning's own ``agl store`` server (test-only extra):
rewards in emission order, no span lost, heartbeats without the heartbeat route, late spans
of an abandoned agent dropped, interrupted attempts reported failed, outcomes delivered
after an outage. (Upstream's server keeps everything in memory, so it cannot be restarted
mid-rollout; outages are injected in the client instead.)"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from fault_helpers import (
    BODY,
    PROMPT,
    STORE_CALLS,
    FaultyStore,
    Outage,
    captured,
    emits_rewards,
    emits_rewards_sync,
    free_port,
    numbered_messages,
    quick_runner,
    rewards_of,
    stuck_async,
    unreachable,
    wait_for_status,
)

from store_fs import PromptTemplate, RolloutConfig
from store_fs.agent import rollout
from store_fs.client import LightningStoreClient
from store_fs.emitter import emit_message
from store_fs.rewards import find_final_reward
from store_fs.tracing.tracer import OtelTracer

# Upstream runs only in the server subprocess: look for it without the cost of importing it here.
pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(
        importlib.util.find_spec("agentlightning") is None, reason="needs pip install -e '.[upstream]'"
    ),
]

START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Upstream's `agl store` (in memory) on 127.0.0.1, started once for this module."""
    log = tmp_path_factory.mktemp("upstream") / "server.log"
    port = free_port()
    code = "import sys; from agentlightning.cli.store import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    command = [
        sys.executable,
        "-c",
        code,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=sink, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(url + "/v1/agl/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"upstream server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.1)

        async def publish() -> None:
            async with LightningStoreClient(url) as client:
                await client.add_resources(PROMPT)

        asyncio.run(publish())
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _run(store: Any, agent: Any, n: int, **kwargs: Any) -> list[str]:
    """Run ``n`` queued rollouts with a fresh runner; the lines it logged."""
    runner = quick_runner(max_rollouts=n, **kwargs)
    with captured() as lines, runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 60)
    return lines


def test_rewards_keep_their_order_and_every_span_is_stored(upstream_url: str) -> None:
    async def scenario() -> None:
        client = LightningStoreClient(upstream_url)
        store = FaultyStore(client, max_delay=0.02, seed=3)  # random latency on every span call
        work = [{"rewards": [1.0, 2.0, 3.0, 4.0, 10.0], "pauses": [0.0] * 5} for _ in range(3)]
        try:
            for agent, transport in (
                (emits_rewards, "api"),
                (emits_rewards_sync, "api"),
                (emits_rewards, "otlp"),
            ):
                ids = [(await client.enqueue_rollout(input=task)).rollout_id for task in work]
                tracer = OtelTracer(instrument_openai=False, span_transport=transport)  # type: ignore[arg-type]
                lines = await _run(store, agent, len(ids), max_parallel=len(ids), tracer=tracer)
                for rid in ids:
                    spans = list(await client.query_spans(rid))
                    assert rewards_of(spans) == [1.0, 2.0, 3.0, 4.0, 10.0]
                    assert find_final_reward(spans) == 10.0
                    got = await client.get_rollout_by_id(rid)
                    assert got is not None
                    assert got.status == "succeeded"
                # Upstream has no heartbeat route: found out once per client, said once. (A
                # status 405 as a word: a random rollout id such as ro-...c40542 holds "405".)
                assert len([line for line in lines if "no heartbeat route" in line]) <= 1
                refused = [line for line in lines if re.search(r"\b405\b|Method Not Allowed", line)]
                assert not [line for line in refused if "no heartbeat route" not in line]
        finally:  # a failed check must not leave the client's connections to the next test
            await client.close()

    asyncio.run(scenario())


def test_cancellation_is_noticed_without_the_heartbeat_route(upstream_url: str) -> None:
    async def scenario() -> tuple[list[str], Any, float]:
        client = LightningStoreClient(upstream_url)
        r = await client.enqueue_rollout(input="x")
        runner = quick_runner(max_rollouts=1, heartbeat_seconds=0.2)
        with captured() as lines, runner.run_context(agent=stuck_async, store=client):
            work = asyncio.create_task(runner.iter())
            await wait_for_status(client, r.rollout_id, ["running"])
            await client.cancel_rollout(r.rollout_id)
            cancelled = time.monotonic()
            await asyncio.wait_for(work, 10)  # the agent sleeps for an hour; the runner stopped it
            took = time.monotonic() - cancelled
        attempt = await client.get_latest_attempt(r.rollout_id)
        await client.close()
        return lines, attempt, took

    lines, attempt, took = asyncio.run(scenario())
    assert took < 3
    assert attempt.status != "succeeded"
    assert attempt.metadata in (None, {})  # nothing reported over the cancellation
    assert len([line for line in lines if "no heartbeat route" in line]) == 1
    assert any("was cancelled, timed out or reaped" in line for line in lines)


@rollout
def late_sync(task: Any, prompt_template: PromptTemplate) -> float:
    emit_message("early")
    time.sleep(1.0)  # cancelled meanwhile
    for i in range(3):
        emit_message(f"late-{i}")
    return 1.0


def test_an_abandoned_agents_late_spans_are_not_stored(upstream_url: str) -> None:
    async def scenario() -> list[Any]:
        client = LightningStoreClient(upstream_url)
        r = await client.enqueue_rollout(input="x")
        runner = quick_runner(max_rollouts=1, heartbeat_seconds=0.2)
        with runner.run_context(agent=late_sync, store=client):
            work = asyncio.create_task(runner.iter())
            await wait_for_status(client, r.rollout_id, ["running"])
            await client.cancel_rollout(r.rollout_id)
            await asyncio.wait_for(work, 10)
            await asyncio.sleep(1.5)  # the abandoned agent emits its late spans meanwhile
        spans = list(await client.query_spans(r.rollout_id))
        await client.close()
        return [s.attributes.get(BODY) for s in spans]

    assert asyncio.run(scenario()) == ["early"]


def test_an_interrupted_attempt_is_reported_failed(upstream_url: str) -> None:
    async def scenario() -> tuple[list[Any], Any]:
        client = LightningStoreClient(upstream_url)
        config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
        r = await client.enqueue_rollout(input="x", config=config)
        stop = threading.Event()
        runner = quick_runner()
        with runner.run_context(agent=stuck_async, store=client):
            work = asyncio.create_task(runner.iter(event=stop))
            await wait_for_status(client, r.rollout_id, ["running"])
            stop.set()
            await asyncio.wait_for(work, 10)
        attempts = list(await client.query_attempts(r.rollout_id))
        requeued = await client.get_rollout_by_id(r.rollout_id)
        await client.cancel_rollout(r.rollout_id)  # the server is shared: leave nothing queued
        await client.close()
        return attempts, requeued

    attempts, requeued = asyncio.run(scenario())
    assert [a.status for a in attempts] == ["failed"]
    assert attempts[0].metadata == {"error": "runner interrupted"}
    assert requeued.status == "requeuing"  # the retry rule applied


def test_an_outcome_computed_during_an_outage_is_delivered_later(upstream_url: str) -> None:
    async def scenario() -> tuple[list[str], Any, list[Any]]:
        client = LightningStoreClient(upstream_url)
        r = await client.enqueue_rollout(input={"n": 3, "pause": 0.0})
        outage = Outage(1.0, unreachable)
        store = FaultyStore(client, methods=STORE_CALLS, fault=outage.fault)
        runner = quick_runner(max_rollouts=1)
        with captured() as lines, runner.run_context(agent=numbered_messages, store=store, hooks=[outage]):
            await asyncio.wait_for(runner.iter(), 30)
        got = await client.get_rollout_by_id(r.rollout_id)
        spans = list(await client.query_spans(r.rollout_id))
        await client.close()
        return lines, got, spans

    lines, got, spans = asyncio.run(scenario())
    assert got.status == "succeeded"
    assert [s.attributes.get(BODY) for s in spans if s.name == "agentlightning.message"] == ["m0", "m1", "m2"]
    assert find_final_reward(spans) == 1.0
    assert len([line for line in lines if "is unreachable" in line]) == 1
