"""Rewards and LLM calls from threads that did not inherit the rollout's context.

A ``threading.Thread`` or a thread pool's worker starts without the caller's context variables,
so it is in no trace context. Such code used to lose its rewards and LLM calls without a word
while the attempt ended ``succeeded``; upstream's process-wide tracer records them. Now: with one
rollout running in the process they are its own; with several, every open attempt fails, saying
how to carry the context (docs/behaviour.md, the tracer).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from store_fs import FileStore, PromptTemplate
from store_fs.agent import rollout
from store_fs.emitter import emit_reward
from store_fs.models import NamedResources
from store_fs.rewards import find_final_reward
from store_fs.runner import LitAgentRunner
from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.tracer import OtelTracer

PROMPT: NamedResources = {"main_prompt": PromptTemplate(template="Q: {any_question}", engine="f-string")}


@pytest.fixture
def fs(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "store", scan_debounce_seconds=0, claim_grace_seconds=0.5)
    asyncio.run(store.add_resources(PROMPT))
    return store


async def _drain(store: FileStore, agent: Any, n: int, **kwargs: Any) -> LitAgentRunner:
    runner = LitAgentRunner(
        tracer=OtelTracer(),
        poll_interval=0.05,
        heartbeat_interval=0.1,
        interval_jitter=0.0,
        max_rollouts=n,
        **kwargs,
    )
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 30)
    return runner


def _in_thread(target: Any, *args: Any) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as err:  # the agent of this test looks at what the thread raised
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


@rollout
def rewarded_from_a_thread(task: str, prompt_template: PromptTemplate) -> None:
    _in_thread(emit_reward, 0.7)


async def test_a_reward_emitted_from_a_plain_thread_is_the_rollouts(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="x")
    await _drain(fs, rewarded_from_a_thread, 1)
    done = await fs.get_rollout_by_id(r.rollout_id)
    assert done is not None
    assert done.status == "succeeded"
    assert find_final_reward(list(await fs.query_spans(r.rollout_id))) == 0.7


def _calls_in_a_pool(base_url: str) -> None:
    import openai

    client = openai.OpenAI(api_key="sk-mock", base_url=base_url)
    with ThreadPoolExecutor(2) as pool:
        list(
            pool.map(
                lambda i: client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"q{i}"}]
                ),
                range(2),
            )
        )


async def test_llm_calls_from_a_thread_pool_are_traced(fs: FileStore) -> None:
    with MockOpenAIServer() as mock:

        @rollout
        def pooled(task: str, prompt_template: PromptTemplate) -> float:
            _calls_in_a_pool(mock.base_url)
            return 1.0

        r = await fs.enqueue_rollout(input="x")
        await _drain(fs, pooled, 1)
    done = await fs.get_rollout_by_id(r.rollout_id)
    assert done is not None
    assert done.status == "succeeded"
    spans = list(await fs.query_spans(r.rollout_id))
    calls = [s for s in spans if s.name == "openai.chat.completion"]
    assert len(calls) == 2
    root = next(s for s in spans if s.name.endswith(".session") or s.parent_id is None)
    assert all(c.parent_id is not None for c in calls)  # hung under the attempt's root
    assert root.span_id in {c.parent_id for c in calls}


@rollout
async def rewarded_from_a_thread_together(task: str, prompt_template: PromptTemplate) -> None:
    await asyncio.sleep(0.3)  # both rollouts are running when the threads emit
    errors: list[BaseException] = []

    def emit() -> None:
        try:
            emit_reward(0.5)
        except RuntimeError as err:
            errors.append(err)

    thread = threading.Thread(target=emit)
    thread.start()
    await asyncio.to_thread(thread.join)
    assert errors, "a reward that no rollout can own must not pass unnoticed"
    await asyncio.sleep(0.3)


async def test_with_several_rollouts_running_an_unattributable_reward_fails_each(fs: FileStore) -> None:
    ids = [(await fs.enqueue_rollout(input=f"t{i}")).rollout_id for i in range(2)]
    await _drain(fs, rewarded_from_a_thread_together, 2, max_parallel=2)
    for rid in ids:
        attempt = await fs.get_latest_attempt(rid)
        assert attempt is not None
        assert attempt.status == "failed", attempt
        reason = str((attempt.metadata or {}).get("error", ""))
        assert "copy_context" in reason, attempt.metadata
