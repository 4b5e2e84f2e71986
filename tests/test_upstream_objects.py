"""Upstream Agent-lightning 0.3's own pydantic objects are accepted in process, by their field
values, and what comes back is agl's model with the same JSON (issue: keep your code, change
the store line)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

agl = pytest.importorskip("agentlightning")

from store_fs import FileStore  # noqa: E402
from store_fs.models import (  # noqa: E402
    LLM,
    EnqueueRolloutRequest,
    PromptTemplate,
    ProxyLLM,
    RolloutConfig,
    Span,
)

pytestmark = pytest.mark.upstream


def same_json(ours: Any, theirs: Any) -> bool:
    return bool(ours.model_dump(mode="json") == theirs.model_dump(mode="json"))


def upstream_resources() -> dict[str, Any]:
    return {
        "prompt": agl.PromptTemplate(template="Answer: {q}", engine="f-string"),
        "llm": agl.LLM(endpoint="http://127.0.0.1:1/v1", model="m", sampling_parameters={"t": 0.1}),
        "proxy": agl.ProxyLLM(endpoint="http://127.0.0.1:2/v1", model="p"),
    }


def test_resources(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileStore(tmp_path / "s")
    theirs = upstream_resources()

    async def main() -> None:
        added = await store.add_resources(theirs)
        assert isinstance(added.resources["prompt"], PromptTemplate)
        assert isinstance(added.resources["llm"], LLM)
        assert isinstance(added.resources["proxy"], ProxyLLM)
        assert isinstance(added.resources["proxy"], agl.ProxyLLM)  # both, with upstream loaded
        for name, value in theirs.items():
            assert same_json(added.resources[name], value), name
        updated = await store.update_resources(added.resources_id, {"prompt": theirs["prompt"]})
        assert updated.version == 2
        latest = await store.get_latest_resources()
        assert latest is not None
        assert same_json(latest.resources["prompt"], theirs["prompt"])

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    # Taking upstream's ProxyLLM by its fields does not read its endpoint attribute (which warns).
    assert "discouraged" not in caplog.text


def test_rollout_configs_and_requests(tmp_path: Path) -> None:
    asyncio.run(_rollout_configs_and_requests(FileStore(tmp_path / "s")))


def test_rollout_configs_and_requests_through_agls_client(tmp_path: Path) -> None:
    """``update_rollout(config=<upstream RolloutConfig>)`` through agl's client failed: "Type is
    not JSON serializable: RolloutConfig" (only agl's class was dumped)."""
    from server_helpers import ServerProcess

    from store_fs.client import LightningStoreClient

    server = ServerProcess(tmp_path / "s", tmp_path / "server.log").start()
    try:

        async def main() -> None:
            client = LightningStoreClient(server.url)
            try:
                await _rollout_configs_and_requests(client)
            finally:
                await client.close()

        asyncio.run(main())
    finally:
        server.stop()


async def _rollout_configs_and_requests(store: Any) -> None:
    config = agl.RolloutConfig(timeout_seconds=5.0, max_attempts=3, retry_condition=["failed", "timeout"])
    queued = await store.enqueue_rollout(input={"q": 1}, config=config)
    assert isinstance(queued.config, RolloutConfig)
    assert same_json(queued.config, config)
    started = await store.start_rollout(input=2, config=config)
    assert same_json(started.config, config)
    many = await store.enqueue_many_rollouts(
        [agl.EnqueueRolloutRequest(input=i, mode="train", config=config) for i in range(3)]
    )
    assert [r.input for r in many] == [0, 1, 2]
    assert all(same_json(r.config, config) for r in many)
    changed = await store.update_rollout(queued.rollout_id, config=agl.RolloutConfig(max_attempts=7))
    assert changed.config.max_attempts == 7
    assert EnqueueRolloutRequest.model_validate(agl.EnqueueRolloutRequest(input="x")).input == "x"


def test_spans(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")

    async def main() -> None:
        await store.enqueue_rollout(input=1)
        attempted = await store.dequeue_rollout()
        assert attempted is not None
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        theirs = [
            agl.Span.from_attributes(
                rollout_id=rid,
                attempt_id=aid,
                sequence_id=await store.get_next_span_sequence_id(rid, aid),
                name=f"step-{i}",
                attributes={"k": i},
            )
            for i in range(3)
        ]
        assert await store.add_span(theirs[0]) is not None
        stored = await store.add_many_spans(theirs[1:])
        assert len(stored) == 2
        page = await store.query_spans(rid)
        assert [s.name for s in page] == ["step-0", "step-1", "step-2"]
        for ours, upstream in zip(page, theirs, strict=True):
            assert isinstance(ours, Span)
            assert same_json(ours, upstream)
        # And back: upstream validates agl's span unchanged.
        assert same_json(agl.Span.model_validate(page.items[0].model_dump()), page.items[0])

    asyncio.run(main())
