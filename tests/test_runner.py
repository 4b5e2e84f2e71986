"""LitAgentRunner over a FileStore: rewards, failures, retries, timeouts, cancellation, concurrency."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from store_fs import FileStore, PromptTemplate, RolloutConfig
from store_fs.agent import LitAgent, rollout
from store_fs.attempt_run import _exit_contained
from store_fs.emitter import emit_message, emit_reward
from store_fs.models import NamedResources
from store_fs.rewards import find_final_reward
from store_fs.runner import LitAgentRunner
from store_fs.tracing.tracer import OtelTracer

PROMPT: NamedResources = {"main_prompt": PromptTemplate(template="Q: {any_question}", engine="f-string")}


def _runner(**kwargs: Any) -> LitAgentRunner:
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("heartbeat_interval", 0.1)
    kwargs.setdefault("interval_jitter", 0.0)
    return LitAgentRunner(tracer=OtelTracer(instrument_openai=False), **kwargs)


@pytest.fixture
def fs(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "store", scan_debounce_seconds=0, claim_grace_seconds=0.5)
    asyncio.run(store.add_resources(PROMPT))
    return store


@rollout
async def scored(task: str, prompt_template: PromptTemplate) -> float:
    emit_message(prompt_template.format(any_question=task))
    return 0.5 if "half" in task else 1.0


@rollout
def sync_scored(task: str, prompt_template: PromptTemplate) -> float:
    return 0.25


@rollout
async def explodes(task: str, prompt_template: PromptTemplate) -> float:
    raise RuntimeError(f"agent exploded on {task}")


async def _drain(store: FileStore, agent: Any, n: int, **kwargs: Any) -> LitAgentRunner:
    runner = _runner(max_rollouts=n, **kwargs)
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 30)
    return runner


async def test_returned_float_becomes_the_final_reward(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="half please", mode="train")
    await _drain(fs, scored, 1)
    rollout_now = await fs.get_rollout_by_id(r.rollout_id)
    assert rollout_now is not None
    assert rollout_now.status == "succeeded"
    spans = list(await fs.query_spans(r.rollout_id))
    # The agent's message, the attempt's root span (ended when the agent returned), then the
    # reward the runner builds from the returned float, hung under that root.
    assert [s.name for s in spans] == [
        "agentlightning.message",
        f"{r.rollout_id}.session",
        "agentlightning.annotation",
    ]
    assert spans[0].attributes["agentlightning.message.body"] == "Q: half please"
    assert find_final_reward(spans) == 0.5
    assert [s.sequence_id for s in spans] == [1, 2, 3]
    assert spans[2].parent_id == spans[1].span_id


async def test_sync_agents_run_too(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="x")
    await _drain(fs, sync_scored, 1)
    assert find_final_reward(list(await fs.query_spans(r.rollout_id))) == 0.25


async def test_an_exception_fails_the_attempt_with_the_error_recorded(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="boom")
    await _drain(fs, explodes, 1)
    attempt = await fs.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "failed"
    assert attempt.metadata == {"error": "RuntimeError: agent exploded on boom"}
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "failed"


@rollout
def sync_exits(task: str, prompt_template: PromptTemplate) -> float:
    if task == "exit":
        sys.exit(3)
    if task == "interrupt":
        raise KeyboardInterrupt
    return 1.0


class _AgentsOwnBaseException(BaseException):
    pass


@rollout
async def async_exits(task: str, prompt_template: PromptTemplate) -> float:
    if task == "exit":
        sys.exit(3)
    if task == "own":
        raise _AgentsOwnBaseException("not an Exception")
    if task == "generator-exit":
        raise GeneratorExit("closed by the agent")
    return 1.0


@pytest.mark.parametrize("agent", [sync_exits, async_exits], ids=["sync", "async"])
async def test_an_agent_calling_sys_exit_fails_its_attempt_and_the_runner_goes_on(
    fs: FileStore, agent: Any
) -> None:
    """SystemExit from an agent ended the runner's event loop: the attempt stayed running,
    never reported, and the next rollout was never run (found by an adversarial pass)."""
    tasks = ["exit", "ok"] + (
        ["interrupt", "ok"] if agent is sync_exits else ["own", "ok", "generator-exit", "ok"]
    )
    ids = [(await fs.enqueue_rollout(input=t)).rollout_id for t in tasks]
    await _drain(fs, agent, len(ids))  # returns: the runner was not taken down
    errors = {
        "exit": "SystemExit: 3",
        "interrupt": "KeyboardInterrupt: ",
        "own": "_AgentsOwnBaseException: not an Exception",
        "generator-exit": "GeneratorExit: closed by the agent",
        "ok": None,
    }
    for rid, task in zip(ids, tasks, strict=True):
        attempt = await fs.get_latest_attempt(rid)
        assert attempt is not None
        assert attempt.status == ("succeeded" if task == "ok" else "failed"), task
        assert (attempt.metadata or {}).get("error") == errors[task]


def test_closing_a_running_agent_still_closes_it() -> None:
    """Only a ``GeneratorExit`` the agent raises is its failure: one that ``close()`` throws in
    (a pending task's coroutine collected at shutdown) must still end the coroutine."""

    class Pending:
        def __await__(self) -> Any:
            yield None

    async def agent() -> float:
        await Pending()
        return 1.0

    running = _exit_contained(agent())
    running.send(None)  # now suspended inside the agent
    running.close()  # raises if GeneratorExit was turned into an AgentExit


async def test_failures_are_retried_per_config(fs: FileStore) -> None:
    config = RolloutConfig(max_attempts=3, retry_condition=["failed"])
    r = await fs.enqueue_rollout(input="boom", config=config)
    await _drain(fs, explodes, 3)
    attempts = list(await fs.query_attempts(r.rollout_id))
    assert [a.status for a in attempts] == ["failed", "failed", "failed"]
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "failed"


@rollout
async def sleeps(task: str, prompt_template: PromptTemplate) -> float:
    await asyncio.sleep(float(task))
    return 1.0


@rollout
async def slow_first(task: str, prompt_template: PromptTemplate, rollout: Any) -> float:
    if rollout.attempt.sequence_id == 1:
        await asyncio.sleep(30)
    return 1.0


async def test_a_timed_out_attempt_is_stopped_and_retried(fs: FileStore) -> None:
    config = RolloutConfig(timeout_seconds=0.3, max_attempts=2, retry_condition=["timeout"])
    r = await fs.enqueue_rollout(input="x", config=config)
    await _drain(fs, slow_first, 2)
    attempts = list(await fs.query_attempts(r.rollout_id))
    assert [a.status for a in attempts] == ["timeout", "succeeded"]
    # The runner's heartbeat learned the attempt had expired and stopped the agent without
    # reporting, so the reaper's verdict (and its retry) stands.
    assert attempts[0].metadata is None
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "succeeded"


async def test_cancelling_a_rollout_stops_its_agent(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="30")
    runner = _runner(max_rollouts=1)
    with runner.run_context(agent=sleeps, store=fs):
        task = asyncio.create_task(runner.iter())
        for _ in range(100):
            got = await fs.get_rollout_by_id(r.rollout_id)
            if got is not None and got.status == "preparing":
                break
            await asyncio.sleep(0.02)
        start = time.monotonic()
        await fs.cancel_rollout(r.rollout_id)
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - start < 5  # stopped long before the agent's 30 s sleep
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "cancelled"


@rollout
async def tagged(task: str, prompt_template: PromptTemplate) -> None:
    for i in range(3):
        emit_message(f"{task}-{i}")
        await asyncio.sleep(0.01)
    emit_reward(float(task[-1]) / 10)


async def test_concurrent_rollouts_keep_their_own_spans(fs: FileStore) -> None:
    ids = [(await fs.enqueue_rollout(input=f"task{i}")).rollout_id for i in range(4)]
    runner = await _drain(fs, tagged, 4, max_parallel=4)
    assert runner.completed == 4
    for i, rid in enumerate(ids):
        spans = list(await fs.query_spans(rid))
        bodies = [s.attributes.get("agentlightning.message.body") for s in spans[:3]]
        assert bodies == [f"task{i}-0", f"task{i}-1", f"task{i}-2"]
        assert find_final_reward(spans) == i / 10
        assert [s.sequence_id for s in spans] == [1, 2, 3, 4, 5]  # 3 messages, the reward, the root


async def test_stop_event_reports_attempts_in_flight_failed_so_the_retry_rule_applies(fs: FileStore) -> None:
    config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    r = await fs.enqueue_rollout(input="30", config=config)
    stop = threading.Event()
    runner = _runner()
    with runner.run_context(agent=sleeps, store=fs):
        task = asyncio.create_task(runner.iter(event=stop))
        await asyncio.sleep(0.5)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 2
    attempts = list(await fs.query_attempts(r.rollout_id))
    assert [a.status for a in attempts] == ["failed"]
    assert attempts[0].metadata == {"error": "runner interrupted"}
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "requeuing"  # the rollout's retry rule applied


async def test_cancelling_iter_reports_attempts_in_flight_failed(fs: FileStore) -> None:
    # asyncio.run cancels its main task on the first Ctrl-C: the same as a stop.
    r = await fs.enqueue_rollout(input="30")
    runner = _runner()
    with runner.run_context(agent=sleeps, store=fs):
        task = asyncio.create_task(runner.iter())
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    attempt = await fs.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "failed"
    assert attempt.metadata == {"error": "runner interrupted"}


async def test_step_runs_one_rollout_directly(fs: FileStore) -> None:
    runner = _runner()
    with runner.run_context(agent=scored, store=fs):
        result = await runner.step("half", resources=PROMPT)
    assert result.status == "succeeded"
    assert find_final_reward(list(await fs.query_spans(result.rollout_id))) == 0.5


async def test_step_propagates_agent_errors(fs: FileStore) -> None:
    runner = _runner()
    with runner.run_context(agent=explodes, store=fs), pytest.raises(RuntimeError, match="exploded"):
        await runner.step("x")


class Subclassed(LitAgent):
    async def rollout_async(self, task: Any, resources: Any, rollout: Any) -> float:
        assert rollout.attempt.attempt_id.startswith("at-")
        return 0.75


async def test_litagent_subclasses_work(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="x")
    await _drain(fs, Subclassed(), 1)
    assert find_final_reward(list(await fs.query_spans(r.rollout_id))) == 0.75


def test_emit_reward_outside_a_rollout_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no active tracer"):
        emit_reward(1.0)
    core = emit_reward({"acc": 1, "eff": 0.5}, primary_key="eff", propagate=False)
    assert core.attributes["agentlightning.reward.0.name"] == "eff"
    assert core.attributes["agentlightning.reward.1.value"] == 1.0


_left_running: list[asyncio.Task[None]] = []


@rollout
async def leaves_a_rewarding_task(task: dict[str, Any], prompt_template: PromptTemplate) -> float:
    async def late() -> None:
        await asyncio.sleep(task["delay"])
        emit_reward(0.0)

    _left_running.append(asyncio.get_running_loop().create_task(late()))
    return 1.0


async def test_a_reward_from_a_task_the_agent_left_running_never_becomes_final(fs: FileStore) -> None:
    """A fire-and-forget task's reward, arriving just after the agent returned 1.0, was stored
    after the runner's reward span and so became the final reward of a succeeded attempt
    (found by an adversarial pass). It is stored before the agent returns, or the attempt
    fails, saying why; it is never final."""
    delays = [0.0, 0.0002, 0.0005, 0.0008, 0.001, 0.0015, 0.002, 0.003] * 2
    ids = [(await fs.enqueue_rollout(input={"delay": d})).rollout_id for d in delays]
    await _drain(fs, leaves_a_rewarding_task, len(ids))
    for rid in ids:
        attempt = await fs.get_latest_attempt(rid)
        assert attempt is not None
        spans = list(await fs.query_spans(rid))
        if attempt.status == "succeeded":
            assert find_final_reward(spans) == 1.0, [s.name for s in spans]
        else:
            assert attempt.status == "failed"
            assert "emitted after the agent returned" in (attempt.metadata or {})["error"]
    _left_running.clear()
