"""A reward is never out of order: the spans of one attempt are stored in the order its agent
emitted them, with sequence ids in that order, on every transport (FileStore in process,
the HTTP client, OTLP export), whatever the transport's latency, while attempts run
concurrently with each other."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import PROMPT, FaultyStore, emits_rewards, emits_rewards_sync, quick_runner, rewards_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import ServerProcess

from store_fs import FileStore
from store_fs.client import LightningStoreClient
from store_fs.rewards import find_final_reward
from store_fs.tracing.tracer import OtelTracer

REWARDS = st.lists(st.floats(-100, 100, allow_nan=False).map(lambda x: round(x, 3)), min_size=1, max_size=8)
PAUSES = st.sampled_from([0.0, 0.0, 0.001, 0.01])


@st.composite
def tasks(draw: st.DrawFn, max_rollouts: int = 3) -> list[dict[str, Any]]:
    """1..max_rollouts tasks, each a random reward sequence with random pauses in between."""
    out = []
    for _ in range(draw(st.integers(1, max_rollouts))):
        rewards = draw(REWARDS)
        out.append({"rewards": rewards, "pauses": [draw(PAUSES) for _ in rewards]})
    return out


async def run_and_check(
    store: Any, work: list[dict[str, Any]], *, sync: bool, transport: str = "api"
) -> None:
    """Run the tasks concurrently on one runner; each rollout's rewards come back as emitted."""
    ids = [(await store.enqueue_rollout(input=task)).rollout_id for task in work]
    tracer = OtelTracer(instrument_openai=False, span_transport=transport)  # type: ignore[arg-type]
    runner = quick_runner(tracer=tracer, max_parallel=len(work), max_rollouts=len(work))
    with runner.run_context(agent=emits_rewards_sync if sync else emits_rewards, store=store):
        await asyncio.wait_for(runner.iter(), 60)
    for rid, task in zip(ids, work, strict=True):
        spans = list(await store.query_spans(rid))
        assert rewards_of(spans) == task["rewards"]
        assert find_final_reward(spans) == task["rewards"][-1]
        seqs = [s.sequence_id for s in spans]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        got = await store.get_rollout_by_id(rid)
        assert got is not None
        assert got.status == "succeeded"
    close = getattr(store, "close", None)
    if inspect.iscoroutinefunction(close):
        await close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("order")
    FileStore(base / "store")
    with ServerProcess(base / "store", base / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def resources_published(server: ServerProcess) -> str:
    async def publish() -> None:
        async with LightningStoreClient(server.url) as client:
            await client.add_resources(PROMPT)

    asyncio.run(publish())
    return server.url


@pytest.mark.parametrize("transport", ["api", "otlp"])
def test_rewards_emitted_back_to_back_end_with_the_last_one(resources_published: str, transport: str) -> None:
    # The case: rewards 1, 2, 3, 4, 10 in five concurrent rollouts over HTTP.
    work = [{"rewards": [1.0, 2.0, 3.0, 4.0, 10.0], "pauses": [0.0] * 5} for _ in range(5)]
    asyncio.run(
        run_and_check(LightningStoreClient(resources_published), work, sync=False, transport=transport)
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=tasks(), sync=st.booleans(), seed=st.integers(0, 2**32))
def test_filestore_with_random_delays_keeps_emission_order(
    tmp_path: Path, work: list[dict[str, Any]], sync: bool, seed: int
) -> None:
    inner = FileStore(tmp_path / "store")
    asyncio.run(inner.add_resources(PROMPT))
    store = FaultyStore(inner, max_delay=0.01, seed=seed)
    asyncio.run(run_and_check(store, work, sync=sync))


@settings(max_examples=8, deadline=None)
@given(
    work=tasks(), sync=st.booleans(), seed=st.integers(0, 2**32), transport=st.sampled_from(["api", "otlp"])
)
def test_http_with_random_delays_keeps_emission_order(
    resources_published: str, work: list[dict[str, Any]], sync: bool, seed: int, transport: str
) -> None:
    store = FaultyStore(LightningStoreClient(resources_published), max_delay=0.02, seed=seed)
    asyncio.run(run_and_check(store, work, sync=sync, transport=transport))


def test_otlp_export_carries_the_sequence_ids(resources_published: str) -> None:
    # The spans did travel by OTLP: the server stored the sequence id attribute the tracer sent.
    client = LightningStoreClient(resources_published)
    work = [{"rewards": [3.0, 1.0], "pauses": [0.0, 0.0]}]
    asyncio.run(run_and_check(FaultyStore(client), work, sync=False, transport="otlp"))

    async def newest() -> list[Any]:
        rollouts = await client.query_rollouts(sort_by="start_time", sort_order="desc", limit=1)
        return list(await client.query_spans(rollouts.items[0].rollout_id))

    async def newest_then_close() -> list[Any]:
        try:
            return await newest()
        finally:
            await client.close()

    spans = asyncio.run(newest_then_close())
    assert [s.attributes.get("agentlightning.span_sequence_id") for s in spans] == [
        s.sequence_id for s in spans
    ]
