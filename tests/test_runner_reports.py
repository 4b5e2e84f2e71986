"""Every attempt a runner takes ends reported, whatever stops it or whatever its agent raises.

Found by an adversarial pass on the runner: a stop that came while a dequeue was answered, or
after the agent returned but before its outcome landed, left the attempt ``preparing`` or
``running`` for good; an error message the store could not hold (a lone surrogate from a file
name, megabytes of text) left the failure unreported; a sync agent raising ``StopIteration``
or a ``BaseException`` whose ``str()`` raises hung its runner; and agent methods got
``resources`` and ``rollout`` by position where upstream passes them by keyword.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import PROMPT, quick_runner

from store_fs import FileStore
from store_fs.agent import LitAgent
from store_fs.attempt_run import INTERRUPTED, MAX_ERROR_CHARS
from store_fs.models import Attempt, AttemptedRollout, RolloutConfig


@pytest.fixture
def fs(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "store", scan_debounce_seconds=0, claim_grace_seconds=0.5)
    asyncio.run(store.add_resources(PROMPT))
    return store


async def _attempts(store: FileStore, rollout_id: str) -> list[Attempt]:
    return list(await store.query_attempts(rollout_id))


class Returns(LitAgent):
    def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        return 1.0


async def test_a_stop_while_an_attempt_is_dequeued_reports_it_failed(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input=0)
    stop = threading.Event()
    dequeue = fs.dequeue_rollout
    dequeue_many = fs.dequeue_many_rollouts

    async def then_stop(*args: Any, **kwargs: Any) -> Any:
        got = await dequeue(*args, **kwargs)
        stop.set()  # Ctrl-C lands while the answer is on its way back
        return got

    async def many_then_stop(*args: Any, **kwargs: Any) -> Any:
        got = await dequeue_many(*args, **kwargs)
        stop.set()
        return got

    fs.dequeue_rollout = then_stop  # type: ignore[method-assign]
    fs.dequeue_many_rollouts = many_then_stop  # type: ignore[method-assign]
    runner = quick_runner()
    with runner.run_context(agent=Returns(), store=fs):
        await asyncio.wait_for(runner.iter(event=stop), 20)
    (attempt,) = await _attempts(fs, r.rollout_id)
    assert attempt.status == "failed", attempt  # was left "preparing", with nothing to reap it
    assert attempt.metadata == {"error": INTERRUPTED}


class SlowEndHook:
    def __init__(self) -> None:
        self.entered = threading.Event()

    async def on_rollout_end(self, **kwargs: Any) -> None:
        self.entered.set()
        await asyncio.sleep(30)


async def test_a_stop_after_the_agent_returned_still_reports_its_outcome(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input=0)
    hook = SlowEndHook()
    runner = quick_runner(interrupt_grace_seconds=5)
    with runner.run_context(agent=Returns(), store=fs, hooks=[hook]):
        task = asyncio.create_task(runner.iter())
        while not hook.entered.is_set():
            await asyncio.sleep(0.01)
        task.cancel()  # a stop while the hook runs, after the agent returned
        await asyncio.gather(task, return_exceptions=True)
    (attempt,) = await _attempts(fs, r.rollout_id)
    assert attempt.status == "succeeded", attempt  # was left "running"


class RaisesOdd(LitAgent):
    def rollout(self, task: Any, resources: Any, rollout: Any) -> float:
        if task == "surrogate":
            raise ValueError("cannot parse " + os.fsdecode(b"caf\xe9.txt"))  # as os.listdir decodes it
        if task == "huge":
            raise RuntimeError("x" * 3_000_000)
        if task == "stop-iteration":
            raise StopIteration("next() on an exhausted iterator")
        if task == "unprintable":
            raise _Unprintable()
        return 1.0


class _Unprintable(BaseException):
    def __str__(self) -> str:
        raise ValueError("no str")


@pytest.mark.parametrize("task", ["surrogate", "huge", "stop-iteration", "unprintable"])
async def test_an_odd_failure_is_reported_and_retried(fs: FileStore, task: str) -> None:
    r = await fs.enqueue_rollout(input=task, config=RolloutConfig(max_attempts=2, retry_condition=["failed"]))
    runner = quick_runner()
    with runner.run_context(agent=RaisesOdd(), store=fs):
        runner.max_rollouts = 2  # the attempt and its retry: the runner never hangs on one
        await asyncio.wait_for(runner.iter(), 30)
    attempts = await _attempts(fs, r.rollout_id)
    assert [a.status for a in attempts] == ["failed", "failed"]
    error = str((attempts[0].metadata or {}).get("error"))
    assert len(error) <= MAX_ERROR_CHARS + 100
    error.encode("utf-8")  # storable: no lone surrogate
    expected = {
        "surrogate": "ValueError: cannot parse caf\\udce9.txt",
        "huge": "characters cut",
        "stop-iteration": "StopIteration: next() on an exhausted iterator",
        "unprintable": "_Unprintable: <its message could not be read: ValueError>",
    }[task]
    assert expected in error


class KeywordOrder(LitAgent):
    """Names its parameters in another order than the base class: upstream passes both by keyword."""

    def training_rollout(self, task: Any, rollout: Any, resources: Any) -> float:  # type: ignore[override]
        assert isinstance(rollout, AttemptedRollout)
        assert isinstance(resources, dict)
        return 1.0


async def test_agent_methods_get_resources_and_rollout_by_keyword(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input=0, mode="train")
    runner = quick_runner(max_rollouts=1)
    with runner.run_context(agent=KeywordOrder(), store=fs):
        await asyncio.wait_for(runner.iter(), 20)
    (attempt,) = await _attempts(fs, r.rollout_id)
    assert attempt.status == "succeeded", attempt.metadata


async def test_a_report_whose_answer_was_lost_counts_as_delivered(
    fs: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    r = await fs.enqueue_rollout(input=0)
    update = fs.update_attempt
    lost: list[int] = []

    async def answer_lost(rollout_id: str, attempt_id: str, **kwargs: Any) -> Any:
        result = await update(rollout_id, attempt_id, **kwargs)
        if kwargs.get("status") == "succeeded" and not lost:
            lost.append(1)
            raise OSError(5, "I/O error after the write landed")
        return result

    fs.update_attempt = answer_lost  # type: ignore[method-assign,assignment]
    runner = quick_runner(max_rollouts=1)
    with runner.run_context(agent=Returns(), store=fs):
        await asyncio.wait_for(runner.iter(), 20)
    assert lost
    (attempt,) = await _attempts(fs, r.rollout_id)
    assert attempt.status == "succeeded"
    assert runner.completed == 1
    assert "settled by the store before its outcome" not in caplog.text
