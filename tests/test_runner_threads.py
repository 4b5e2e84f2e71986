"""Rewards and LLM calls from threads.

A ``threading.Thread`` or a thread pool's worker starts without the caller's context variables.
Such code used to lose its rewards and LLM calls without a word while the attempt ended
``succeeded``; upstream's process-wide tracer records them. Now threads and pool tasks carry
the trace context of the code that starts them (store_fs/tracing/thread_context.py), so each
belongs to its own rollout however many run. Code in a thread started outside every trace
context belongs to the only open one; with several open, every open attempt fails, saying how to
carry the context (docs/behaviour.md, the tracer).
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from store_fs import FileStore, PromptTemplate, RolloutConfig
from store_fs.agent import rollout
from store_fs.emitter import emit_reward
from store_fs.models import NamedResources
from store_fs.rewards import find_final_reward
from store_fs.runner import LitAgentRunner
from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.rollout_binding import (
    Origin,
    RolloutBinding,
    StoreWriter,
    closed,
    current_binding,
    inherit,
    lose_unattributed,
    opened,
)
from store_fs.tracing.tracer import OtelTracer

REWARD = "agentlightning.reward.0.value"
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
async def rewarded_from_its_own_threads(task: str, prompt_template: PromptTemplate) -> None:
    await asyncio.sleep(0.2)  # both rollouts are running when the threads emit
    reward = float(task[1:]) / 10
    thread = threading.Thread(target=emit_reward, args=(reward,))
    thread.start()
    await asyncio.to_thread(thread.join)
    with ThreadPoolExecutor(1) as pool:  # a pool's worker, reused by the other rollout's task
        await asyncio.wrap_future(pool.submit(emit_reward, reward + 0.05))
    await asyncio.sleep(0.2)


async def test_with_several_rollouts_running_each_threads_rewards_are_its_own(fs: FileStore) -> None:
    """With two rollouts at once a thread's reward could not be told apart and failed both
    attempts; threads and pool tasks now carry the trace context of the code starting them."""
    ids = [(await fs.enqueue_rollout(input=f"t{i}")).rollout_id for i in (1, 2)]
    await _drain(fs, rewarded_from_its_own_threads, 2, max_parallel=2)
    for i, rid in zip((1, 2), ids, strict=True):
        attempt = await fs.get_latest_attempt(rid)
        assert attempt is not None
        assert attempt.status == "succeeded", attempt.metadata
        spans = list(await fs.query_spans(rid))
        rewards = [s.attributes[REWARD] for s in spans if s.name == "agentlightning.annotation"]
        assert rewards == [i / 10, i / 10 + 0.05]


def _worker_started_outside_every_rollout() -> threading.Thread:
    """A long-lived worker thread (as a library's), started before any trace context opened."""
    import queue

    jobs: queue.Queue[tuple[Any, threading.Event] | None] = queue.Queue()

    def work() -> None:
        while (job := jobs.get()) is not None:
            fn, done = job
            try:
                fn()
            except RuntimeError as err:
                errors.append(err)
            done.set()

    errors: list[BaseException] = []
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.jobs = jobs  # type: ignore[attr-defined]
    thread.errors = errors  # type: ignore[attr-defined]
    return thread


@rollout
async def rewarded_from_an_outside_worker(task: str, prompt_template: PromptTemplate) -> None:
    await asyncio.sleep(0.3)  # both rollouts are running when the worker emits
    worker = _outside_worker[0]
    done = threading.Event()
    worker.jobs.put((lambda: emit_reward(0.5), done))
    await asyncio.to_thread(done.wait, 10)
    assert worker.errors, "a reward that no rollout can own must not pass unnoticed"
    await asyncio.sleep(0.3)


_outside_worker: list[Any] = []


async def test_with_several_rollouts_running_an_unattributable_reward_fails_each(fs: FileStore) -> None:
    _outside_worker[:] = [_worker_started_outside_every_rollout()]
    ids = [(await fs.enqueue_rollout(input=f"t{i}")).rollout_id for i in range(2)]
    await _drain(fs, rewarded_from_an_outside_worker, 2, max_parallel=2)
    _outside_worker[0].jobs.put(None)
    for rid in ids:
        attempt = await fs.get_latest_attempt(rid)
        assert attempt is not None
        assert attempt.status == "failed", attempt
        reason = str((attempt.metadata or {}).get("error", ""))
        assert "copy_context" in reason, attempt.metadata


_jobs: queue.Queue[tuple[Any, threading.Event]] = queue.Queue()
_helper: list[threading.Thread] = []


def _serve() -> None:
    while True:
        fn, done = _jobs.get()
        try:
            fn()
        finally:
            done.set()


def _in_helper_thread(fn: Any) -> None:
    """A helper thread started lazily by the first rollout and reused by the next ones, as a
    background worker or event loop of an agent's library is."""
    if not _helper:
        _helper.append(threading.Thread(target=_serve, daemon=True, name="helper"))
        _helper[0].start()
    done = threading.Event()
    _jobs.put((fn, done))
    done.wait(10)


@rollout
def rewarded_by_a_reused_helper(task: str, prompt_template: PromptTemplate) -> None:
    _in_helper_thread(lambda: emit_reward(float(task)))


async def test_a_helper_thread_reused_by_later_rollouts_works_for_each(fs: FileStore) -> None:
    """The helper was tied to the rollout that started it: later rollouts' rewards went to that
    finished rollout and were dropped, and they succeeded without them (found in review).
    A thread belongs to its rollout only while that one runs; then to the only open one."""
    ids = [(await fs.enqueue_rollout(input=str(v))).rollout_id for v in (0.1, 0.2, 0.3)]
    await _drain(fs, rewarded_by_a_reused_helper, 3)
    for value, rid in zip((0.1, 0.2, 0.3), ids, strict=True):
        attempt = await fs.get_latest_attempt(rid)
        assert attempt is not None
        assert attempt.status == "succeeded", attempt.metadata
        assert find_final_reward(list(await fs.query_spans(rid))) == value


_a_ended = threading.Event()
_straggled = threading.Event()


class _AWaitsForItsStraggler:
    """Rollout A's end hook: A's trace context has closed, and its verdict waits until the
    thread A left running has emitted."""

    async def on_rollout_end(self, *, agent: Any, runner: Any, rollout: Any, spans: Any) -> None:
        if rollout.input == "A":
            _a_ended.set()
            await asyncio.to_thread(_straggled.wait, 10)


def _straggler() -> None:
    _a_ended.wait(10)
    try:
        emit_reward(0.99)  # A's, after A returned
    finally:
        _straggled.set()


@rollout
async def leaves_a_straggler(task: str, prompt_template: PromptTemplate) -> float | None:
    if task == "A":
        threading.Thread(target=_straggler, daemon=True).start()
        return 0.1
    emit_reward(0.5)
    await asyncio.to_thread(_straggled.wait, 10)  # B runs while A's straggler emits
    return None


async def test_a_straggler_threads_reward_fails_its_own_attempt_never_a_rollout_beside_it(
    fs: FileStore,
) -> None:
    """A thread rollout A left running emitted after A returned, while rollout B ran beside it:
    the reward went to B (the only open trace context) and became B's final reward, and A
    succeeded. It is A's, and its attempt fails (found by an adversarial pass)."""
    _a_ended.clear()
    _straggled.clear()
    a = (await fs.enqueue_rollout(input="A")).rollout_id
    b = (await fs.enqueue_rollout(input="B")).rollout_id
    runner = LitAgentRunner(
        tracer=OtelTracer(), poll_interval=0.05, interval_jitter=0.0, max_rollouts=2, max_parallel=2
    )
    with runner.run_context(agent=leaves_a_straggler, store=fs, hooks=[_AWaitsForItsStraggler()]):
        await asyncio.wait_for(runner.iter(), 30)
    assert _straggled.is_set()
    b_spans = list(await fs.query_spans(b))
    assert find_final_reward(b_spans) == 0.5
    assert [s.attributes[REWARD] for s in b_spans if s.name == "agentlightning.annotation"] == [0.5]
    attempt = await fs.get_latest_attempt(a)
    assert attempt is not None
    assert attempt.status == "failed"
    assert "emitted after the agent returned" in str((attempt.metadata or {}).get("error")), attempt.metadata


def test_a_thread_whose_rollout_ended_works_only_for_a_rollout_opened_after() -> None:
    """Whom a thread started in rollout A works for once A's trace context ended: a rollout
    opened since, when it is the only one open; never one that ran beside A; and a straggler
    whose rollout is gone is nobody's (not counted against the rollouts running)."""
    writer = StoreWriter()

    def binding() -> RolloutBinding:
        return RolloutBinding(None, None, None, writer)

    def seen_from_a_thread_of(origin: Origin) -> RolloutBinding | None:
        found: list[RolloutBinding | None] = []

        def look() -> None:
            inherit(origin)
            found.append(current_binding())

        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        return found[0]

    a, beside = binding(), binding()
    opened(a)
    opened(beside)
    assert seen_from_a_thread_of(a.origin) is a
    closed(a)
    assert seen_from_a_thread_of(a.origin) is a  # a straggler: A's binding counts it
    later = binding()
    opened(later)
    assert seen_from_a_thread_of(a.origin) is None  # two open, one opened since: cannot tell
    closed(beside)
    assert seen_from_a_thread_of(a.origin) is later  # a helper thread reused by a later rollout
    closed(later)

    gone, sibling, other = binding(), binding(), binding()
    opened(gone)
    opened(sibling)
    opened(other)
    origin = gone.origin
    closed(gone)
    del gone
    gc.collect()
    assert seen_from_a_thread_of(origin) is None
    counted: list[int] = []

    def lose() -> None:
        inherit(origin)
        counted.append(lose_unattributed("a span"))

    thread = threading.Thread(target=lose)
    thread.start()
    thread.join()
    assert counted == [0]
    assert sibling.lost == other.lost == 0
    closed(sibling)
    closed(other)


_good_started = threading.Event()
_zombie_done = threading.Event()


@rollout
def abandoned_then_emits(task: str, prompt_template: PromptTemplate) -> float | None:
    """The first rollout is timed out by the store and abandoned while it waits; it then emits
    -1.0 from a pool task and from a new thread, while the next rollout runs."""
    if task == "zombie":
        _good_started.wait(20)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(emit_reward, -1.0).result()
        _in_thread(emit_reward, -1.0)
        _zombie_done.set()
        return -1.0
    emit_reward(1.0)
    _good_started.set()
    _zombie_done.wait(20)
    return None


async def test_an_abandoned_agents_new_threads_never_reward_the_next_rollout(tmp_path: Path) -> None:
    """The defect (an adversarial pass): a sync agent the store timed out kept running, as
    documented, and its rewards from a pool task or a thread it started then were taken for a
    helper thread's working for the next rollout: that rollout succeeded with final reward
    -1.0 instead of its own 1.0. A thread started after its rollout ended is a straggler."""
    _good_started.clear()
    _zombie_done.clear()
    store = FileStore(tmp_path / "store", scan_debounce_seconds=0)
    try:
        await store.add_resources(PROMPT)
        zombie = await store.enqueue_rollout(input="zombie", config=RolloutConfig(timeout_seconds=0.5))
        good = await store.enqueue_rollout(input="good")
        await _drain(store, abandoned_then_emits, 2)
        assert _zombie_done.wait(20)
        spans = list(await store.query_spans(good.rollout_id))
        assert [s.attributes[REWARD] for s in spans if REWARD in s.attributes] == [1.0]
        assert find_final_reward(spans) == 1.0
        assert (await store.get_rollout_by_id(good.rollout_id)).status == "succeeded"  # type: ignore[union-attr]
        assert (await store.get_rollout_by_id(zombie.rollout_id)).status == "failed"  # type: ignore[union-attr]
    finally:
        store.close()
