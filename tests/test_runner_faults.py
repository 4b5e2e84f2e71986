"""The runner and tracer under faults, in process: FileStore writes that fail for a while,
spans that cannot be stored, attempts settled under a running agent, outcomes computed
during an outage, heartbeats, hooks and unsupported results.

(A real ``agl store`` killed and restarted, and signals to ``agl run``: test_runner_outages.py.)
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import (
    BODY,
    PROMPT,
    STORE_CALLS,
    DiskFaults,
    FaultyStore,
    Outage,
    captured,
    eio,
    numbered_messages,
    quick_runner,
    wait_for_status,
)

from store_fs import FileStore, PromptTemplate, RolloutConfig
from store_fs.agent import rollout
from store_fs.emitter import emit_message, emit_reward
from store_fs.models import Span
from store_fs.rewards import find_final_reward
from store_fs.tracing.rollout_binding import RolloutBinding, current_binding


@pytest.fixture
def fs(tmp_path: Path) -> FileStore:
    store = FileStore(tmp_path / "store", scan_debounce_seconds=0, claim_grace_seconds=0.5)
    asyncio.run(store.add_resources(PROMPT))
    return store


def _bodies(spans: list[Span]) -> list[Any]:
    return [s.attributes.get(BODY) for s in spans if s.name == "agentlightning.message"]


async def _every_succeeded_attempt_holds_every_span(store: FileStore, rollout_id: str, n: int) -> int:
    """Check the invariant for one rollout; returns how many of its attempts succeeded."""
    succeeded = 0
    for attempt in await store.query_attempts(rollout_id):
        if attempt.status != "succeeded":
            continue
        succeeded += 1
        spans = list(await store.query_spans(rollout_id, attempt.attempt_id))
        assert _bodies(spans) == [f"m{i}" for i in range(n)]
        assert find_final_reward(spans) == 1.0
        assert spans[-1].name == "agentlightning.annotation"
    return succeeded


async def test_filestore_writes_failing_for_a_while_lose_no_span(
    fs: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = RolloutConfig(max_attempts=5, retry_condition=["unresponsive", "failed"])
    ids = [
        (await fs.enqueue_rollout(input={"n": 5, "pause": 0.03}, config=config)).rollout_id for _ in range(6)
    ]
    disk = DiskFaults(monkeypatch)
    rng = random.Random(7)
    runner = quick_runner(max_parallel=3)

    async def chaos() -> None:
        while True:
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            disk.failing = not disk.failing

    with captured() as lines, runner.run_context(agent=numbered_messages, store=fs):
        work = asyncio.create_task(runner.iter())
        flipper = asyncio.create_task(chaos())
        await asyncio.sleep(1.5)
        flipper.cancel()
        disk.failing = False
        for rid in ids:
            await wait_for_status(fs, rid, ["succeeded", "failed"], timeout=30)
        work.cancel()
        await asyncio.gather(work, flipper, return_exceptions=True)
    assert disk.injected > 0
    for rid in ids:
        assert await _every_succeeded_attempt_holds_every_span(fs, rid, 5) == 1
    starts = [line for line in lines if "is unreachable" in line]
    ends = [line for line in lines if "answers again" in line]
    assert starts, "the outages were not logged"
    assert len(starts) - len(ends) in (0, 1)  # one line when each outage starts, one when it ends


@rollout
async def refused_span(task: Any, prompt_template: PromptTemplate) -> float:
    for i in range(3):
        emit_message(f"m{i}")
    return 1.0


def _refuse_m1(error: Exception) -> Any:
    def fault(name: str, args: tuple[Any, ...]) -> Exception | None:
        spans = args[0] if name == "add_many_spans" else args[:1] if name == "add_span" else []
        return error if any(s.attributes.get(BODY) == "m1" for s in spans) else None

    return fault


@pytest.mark.parametrize("transient", [False, True])
async def test_a_span_that_cannot_be_stored_fails_the_attempt_naming_how_many(
    fs: FileStore, transient: bool
) -> None:
    r = await fs.enqueue_rollout(input="x")
    error = eio("add_span") if transient else ValueError("refused by the store")
    store = FaultyStore(fs, fault=_refuse_m1(error))
    runner = quick_runner(max_rollouts=1)
    runner.tracer.span_retry_seconds = 0.3  # a write failing transiently is given up after that
    with runner.run_context(agent=refused_span, store=store):
        await asyncio.wait_for(runner.iter(), 30)
    attempt = await fs.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "failed"
    assert attempt.metadata is not None
    assert attempt.metadata["error"].startswith("1 span(s) of this attempt could not be stored")
    assert type(error).__name__ in attempt.metadata["error"]
    spans = list(await fs.query_spans(r.rollout_id))
    assert _bodies(spans) == ["m0", "m2"]  # its neighbours were stored
    assert find_final_reward(spans) == 1.0


async def surrogate_text(task: Any, prompt_template: PromptTemplate) -> float:
    emit_message("cut \ud83d")  # a reply cut inside an emoji's surrogate pair
    emit_message("pair \ud83d\ude00, lone \udfff")
    return 1.0


async def test_a_lone_surrogate_in_recorded_text_is_mended_not_fatal(fs: FileStore) -> None:
    """The defect: one lone surrogate in an LLM's reply made the store refuse the span (JSON
    cannot hold it), and the attempt failed over one character of recorded text."""
    r = await fs.enqueue_rollout(input="x")
    runner = quick_runner(max_rollouts=1)
    with runner.run_context(agent=surrogate_text, store=fs):
        await asyncio.wait_for(runner.iter(), 30)
    attempt = await fs.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "succeeded", attempt.metadata
    spans = list(await fs.query_spans(r.rollout_id))
    assert _bodies(spans) == ["cut \ufffd", "pair \U0001f600, lone \ufffd"]
    assert find_final_reward(spans) == 1.0


class Bindings:
    """A hook that keeps each attempt's span binding, to read its counters afterwards."""

    def __init__(self) -> None:
        self.seen: list[RolloutBinding] = []

    async def on_trace_start(self, *, agent: Any, runner: Any, tracer: Any, rollout: Any) -> None:
        binding = current_binding()
        assert binding is not None
        self.seen.append(binding)


# The attempt's timeout leaves a second attempt time to finish on a loaded machine (0.3 s did
# not, once, on a 2-core CI run); the first attempt's late spans come well after its timeout.
ATTEMPT_TIMEOUT = 0.8
LATE_AFTER = 2.0


@rollout
def late_sync(task: Any, prompt_template: PromptTemplate, rollout: Any) -> float:
    emit_message("early")
    if rollout.attempt.sequence_id == 1:
        time.sleep(LATE_AFTER)  # the attempt times out meanwhile
        for i in range(3):
            emit_message(f"late-{i}")
    return 1.0


@rollout
async def late_stubborn(task: Any, prompt_template: PromptTemplate, rollout: Any) -> float:
    emit_message("early")
    if rollout.attempt.sequence_id == 1:
        try:
            await asyncio.sleep(LATE_AFTER)
        except asyncio.CancelledError:
            pass  # ignores its cancellation and goes on
        for i in range(3):
            emit_message(f"late-{i}")
        await asyncio.sleep(0)
    return 1.0


@pytest.mark.parametrize("agent", [late_sync, late_stubborn], ids=["sync", "async-ignoring-cancel"])
async def test_an_abandoned_agents_late_spans_are_not_stored(fs: FileStore, agent: Any) -> None:
    config = RolloutConfig(timeout_seconds=ATTEMPT_TIMEOUT, max_attempts=2, retry_condition=["timeout"])
    r = await fs.enqueue_rollout(input="x", config=config)
    hook = Bindings()
    runner = quick_runner(max_rollouts=2)
    with captured() as lines, runner.run_context(agent=agent, store=fs, hooks=[hook]):
        started = time.monotonic()
        await asyncio.wait_for(runner.iter(), 30)
        # the first attempt's agent has emitted its late spans by then
        await asyncio.sleep(max(0.0, started + LATE_AFTER + 0.5 - time.monotonic()))
    first, second = list(await fs.query_attempts(r.rollout_id))
    assert (first.status, second.status) == ("timeout", "succeeded")
    assert first.metadata is None  # nothing reported over the reaper's verdict
    assert _bodies(list(await fs.query_spans(r.rollout_id, first.attempt_id))) == ["early"]
    assert hook.seen[0].dropped == 3
    assert hook.seen[0].closed is not None
    assert len([line for line in lines if "spans its agent still emits are dropped" in line]) == 1
    spans = list(await fs.query_spans(r.rollout_id, second.attempt_id))
    assert find_final_reward(spans) == 1.0


async def test_an_outcome_computed_during_an_outage_is_delivered_when_the_store_returns(
    fs: FileStore,
) -> None:
    r = await fs.enqueue_rollout(input={"n": 2, "pause": 0.0})
    outage = Outage(1.0)
    store = FaultyStore(fs, methods=STORE_CALLS, fault=outage.fault)
    runner = quick_runner(max_rollouts=1)
    with captured() as lines, runner.run_context(agent=numbered_messages, store=store, hooks=[outage]):
        await asyncio.wait_for(runner.iter(), 30)
    assert store.failures["update_attempt"] + store.failures["heartbeat"] > 0
    spans = list(await fs.query_spans(r.rollout_id))
    assert _bodies(spans) == ["m0", "m1"]
    assert find_final_reward(spans) == 1.0
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "succeeded"
    assert len([line for line in lines if "is unreachable" in line]) == 1
    assert len([line for line in lines if "answers again" in line]) == 1


class LikeUpstreamsClient(FaultyStore):
    """A store as upstream's HTTP client is one: no ``heartbeat`` (the runner reads statuses
    instead), and ``get_rollout_by_id`` / ``get_latest_attempt`` answer None when the server
    cannot be reached, as for a rollout that does not exist."""

    def __getattr__(self, name: str) -> Any:
        if name == "heartbeat":
            raise AttributeError(name)
        attr = super().__getattr__(name)
        if name not in ("get_rollout_by_id", "get_latest_attempt"):
            return attr

        async def swallowed(*args: Any, **kwargs: Any) -> Any:
            try:
                return await attr(*args, **kwargs)
            except OSError:
                return None

        return swallowed


class OutageWhileRunning(Outage):
    async def on_trace_start(self, **kwargs: Any) -> None:
        await Outage.on_trace_end(self)  # down from the agent's start, for ``seconds``

    async def on_trace_end(self, **kwargs: Any) -> None:
        pass


async def test_a_store_answering_none_in_an_outage_does_not_drop_the_attempt(fs: FileStore) -> None:
    """With upstream's client, a heartbeat during a 1 s outage read "no such rollout" and the
    runner dropped its attempt unreported: the rollout stayed running for good (found by an
    adversarial pass). None from a getter is now confirmed by a call that raises when the
    store cannot answer."""
    r = await fs.enqueue_rollout(input={"n": 3, "pause": 0.3})
    outage = OutageWhileRunning(0.6)
    store = LikeUpstreamsClient(
        fs, methods=(*STORE_CALLS, "query_rollouts", "query_attempts"), fault=outage.fault
    )
    runner = quick_runner(max_rollouts=1)
    with runner.run_context(agent=numbered_messages, store=store, hooks=[outage]):
        await asyncio.wait_for(runner.iter(), 30)
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "succeeded"
    assert _bodies(list(await fs.query_spans(r.rollout_id))) == ["m0", "m1", "m2"]


class CancelDuringOutage(Outage):
    def __init__(self, seconds: float, store: FileStore) -> None:
        super().__init__(seconds)
        self.store = store

    async def on_rollout_end(self, *, rollout: Any, **kwargs: Any) -> None:
        await self.store.cancel_rollout(rollout.rollout_id)  # settled while the runner cannot report


async def test_an_outcome_is_not_delivered_when_the_attempt_was_settled_meanwhile(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input={"n": 1, "pause": 0.0})
    outage = CancelDuringOutage(0.5, fs)
    store = FaultyStore(fs, methods=STORE_CALLS, fault=outage.fault)
    runner = quick_runner(max_rollouts=1)
    with captured() as lines, runner.run_context(agent=numbered_messages, store=store, hooks=[outage]):
        await asyncio.wait_for(runner.iter(), 30)
    attempt = await fs.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status != "succeeded"
    got = await fs.get_rollout_by_id(r.rollout_id)
    assert got is not None
    assert got.status == "cancelled"
    assert any(
        "was settled by the store before its outcome (succeeded) was reported" in line for line in lines
    )


@rollout
async def sleeps_a_second(task: Any, prompt_template: PromptTemplate) -> float:
    await asyncio.sleep(1.0)
    return 1.0


async def test_heartbeat_seconds_sets_the_attempts_heartbeat_interval(fs: FileStore) -> None:
    await fs.enqueue_rollout(input="x")
    store = FaultyStore(fs, methods=["heartbeat"])
    runner = quick_runner(max_rollouts=1, heartbeat_seconds=0.2)
    assert runner.heartbeat_interval == 0.2  # upstream's name for it
    with runner.run_context(agent=sleeps_a_second, store=store):
        await asyncio.wait_for(runner.iter(), 30)
    assert 4 <= store.calls["heartbeat"] <= 8  # ~5 renewals in 1 s, and one before the report
    with pytest.raises(ValueError, match="heartbeat_seconds"):
        quick_runner(heartbeat_seconds=0)


class Recorder:
    """An upstream-style hook (keyword-only async methods) that records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def on_rollout_start(self, *, agent: Any, runner: Any, rollout: Any) -> None:
        self.calls.append(("on_rollout_start", current_binding()))

    async def on_trace_start(self, *, agent: Any, runner: Any, tracer: Any, rollout: Any) -> None:
        self.calls.append(("on_trace_start", current_binding()))

    async def on_trace_end(self, *, agent: Any, runner: Any, tracer: Any, rollout: Any) -> None:
        self.calls.append(("on_trace_end", current_binding()))

    async def on_rollout_end(self, *, agent: Any, runner: Any, rollout: Any, spans: Any) -> None:
        self.calls.append(("on_rollout_end", [s.name for s in spans]))


@rollout
async def one_message(task: Any, prompt_template: PromptTemplate) -> float:
    emit_message("hi")
    return 0.5


async def test_hooks_are_called_where_upstream_calls_them(fs: FileStore) -> None:
    await fs.enqueue_rollout(input="x")
    hook = Recorder()
    runner = quick_runner(max_rollouts=1)
    with runner.run_context(agent=one_message, store=fs, hooks=[hook, object()]):
        await asyncio.wait_for(runner.iter(), 30)
    names = [name for name, _ in hook.calls]
    assert names == ["on_rollout_start", "on_trace_start", "on_trace_end", "on_rollout_end"]
    assert hook.calls[0][1] is None  # before the trace context
    assert hook.calls[1][1] is not None  # inside it
    assert hook.calls[2][1] is hook.calls[1][1]
    # Every span of the attempt, its root (`<rollout id>.session`) included.
    rollout_id = (await fs.query_rollouts())[0].rollout_id
    assert hook.calls[3][1] == [
        "agentlightning.message",
        f"{rollout_id}.session",
        "agentlightning.annotation",
    ]


@rollout
async def returns_text(task: Any, prompt_template: PromptTemplate) -> Any:
    return "a string is no reward"


@rollout
async def returns_span_dicts(task: Any, prompt_template: PromptTemplate) -> Any:
    return (
        [emit_reward(0.25, propagate=False).model_dump(), {"not": "a span"}]
        if task == "bad"
        else [
            emit_message("from a dict", propagate=False).model_dump(),
            emit_reward(0.25, propagate=False).model_dump(),
        ]
    )


async def test_an_unsupported_result_fails_the_attempt_naming_the_type(fs: FileStore) -> None:
    r = await fs.enqueue_rollout(input="x")
    runner = quick_runner(max_rollouts=1)
    with runner.run_context(agent=returns_text, store=fs):
        await asyncio.wait_for(runner.iter(), 30)
    attempt = await fs.get_latest_attempt(r.rollout_id)
    assert attempt is not None
    assert attempt.status == "failed"
    assert attempt.metadata is not None
    error = attempt.metadata["error"]
    assert error.startswith("TypeError: the agent returned a str; a rollout returns a float")
    assert "None" in error
    assert "list of spans" in error


async def test_a_list_of_span_dicts_is_accepted_and_a_bad_one_refused(fs: FileStore) -> None:
    good = await fs.enqueue_rollout(input="good")
    bad = await fs.enqueue_rollout(input="bad")
    runner = quick_runner(max_rollouts=2)
    with runner.run_context(agent=returns_span_dicts, store=fs):
        await asyncio.wait_for(runner.iter(), 30)
    spans = list(await fs.query_spans(good.rollout_id))
    assert _bodies(spans) == ["from a dict"]
    assert find_final_reward(spans) == 0.25
    attempt = await fs.get_latest_attempt(bad.rollout_id)
    assert attempt is not None
    assert attempt.status == "failed"
    assert attempt.metadata is not None
    assert "SpanCoreFields" in attempt.metadata["error"]


def test_upstream_clients_connection_errors_are_transient() -> None:
    """A server killed mid-request makes upstream's client raise aiohttp's errors, which the
    runner took for permanent: a span or an outcome given up at once (found by an adversarial pass)."""
    aiohttp = pytest.importorskip("aiohttp")
    from store_fs.retrying import is_transient

    request = aiohttp.RequestInfo(url=aiohttp.client.URL("http://127.0.0.1:1/x"), method="GET", headers={})

    def reply(status: int) -> Exception:
        err: Exception = aiohttp.ClientResponseError(request, (), status=status)
        return err

    assert is_transient(aiohttp.ServerDisconnectedError())
    assert is_transient(aiohttp.ClientPayloadError("cut short"))
    assert is_transient(reply(503))
    assert is_transient(reply(429))
    assert not is_transient(reply(404))
    assert not is_transient(ValueError("bad"))
