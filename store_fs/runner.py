"""``LitAgentRunner``: dequeue rollouts, run the agent under a tracer, report each attempt.

Per rollout: resolve its resources, open the tracer's trace context, call the
agent (async agents on the loop, sync ones in a thread), store the returned
reward or spans, and mark the attempt ``succeeded`` or ``failed`` (with the error
in the attempt's metadata). While the agent runs, the attempt is kept alive by
heartbeats; if the store says the attempt is no longer this runner's (cancelled
or expired), the agent is cancelled and nothing is reported: the decision stands.

Stopping (``event`` set, or a signal turned into it by the caller) stops
dequeuing and cancels the rollouts in flight without reporting them: their
attempts are left for the reaper, which retries them per ``RolloutConfig``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from store_fs.agent import LitAgent
from store_fs.agent import rollout as rollout_decorator
from store_fs.models import AttemptedRollout, NamedResources, Rollout, Span, SpanCoreFields
from store_fs.rewards import find_final_reward, reward_span
from store_fs.tracing.tracer import OtelTracer, Tracer

__all__ = ["LitAgentRunner", "StopEvent"]

log = logging.getLogger(__name__)


class StopEvent(Protocol):
    def is_set(self) -> bool: ...


class LitAgentRunner:
    """Runs an agent over a store's queue.

    Args:
        tracer: how spans are recorded (default: :class:`OtelTracer`).
        max_rollouts: stop after this many rollouts (None: until stopped).
        poll_interval: seconds between looks at an empty queue (± ``interval_jitter``).
        heartbeat_interval: seconds between worker heartbeats and attempt renewals.
        max_parallel: rollouts run at once by this runner.
    """

    def __init__(
        self,
        tracer: Tracer | None = None,
        max_rollouts: int | None = None,
        poll_interval: float = 5.0,
        heartbeat_interval: float = 10.0,
        interval_jitter: float = 0.5,
        *,
        max_parallel: int = 1,
    ) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.tracer = tracer or OtelTracer()
        self.max_rollouts = max_rollouts
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.interval_jitter = interval_jitter
        self.max_parallel = max_parallel
        self._agent: LitAgent | None = None
        self._store: Any = None
        self.worker_id = "Worker-Unknown"
        self.completed = 0

    # -- lifecycle -----------------------------------------------------------------
    def init(self, agent: LitAgent | Any) -> None:
        self._agent = agent if isinstance(agent, LitAgent) else rollout_decorator(agent)
        self.tracer.init()

    def init_worker(self, worker_index: int, store: Any) -> None:
        self._store = store
        self.worker_id = f"Worker-{worker_index}"
        self.tracer.init_worker(worker_index, store)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.tracer.teardown_worker(0)
        self.tracer.teardown()

    @contextlib.contextmanager
    def run_context(
        self, *, agent: LitAgent | Any, store: Any, hooks: Any = None, worker_id: int | None = None
    ) -> Iterator[LitAgentRunner]:
        """Bind the runner to an agent and a store for the duration of the block."""
        self.init(agent)
        self.init_worker(worker_id or 0, store)
        try:
            yield self
        finally:
            self.teardown()

    def _agent_or_raise(self) -> LitAgent:
        if self._agent is None or self._store is None:
            raise RuntimeError("use the runner inside run_context(agent=..., store=...)")
        return self._agent

    # -- the loop ------------------------------------------------------------------
    def _jittered(self, seconds: float) -> float:
        return max(0.01, seconds + random.uniform(-self.interval_jitter, self.interval_jitter))

    async def _sleep(self, seconds: float, event: StopEvent | None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (event and event.is_set()):
            await asyncio.sleep(min(0.1, max(end - time.monotonic(), 0)))

    async def iter(self, *, event: StopEvent | None = None) -> None:
        """Process rollouts until ``event`` is set or ``max_rollouts`` are done."""
        self._agent_or_raise()
        running: set[asyncio.Task[None]] = set()
        beat = asyncio.create_task(self._worker_heartbeats(event))
        started = 0
        try:
            while not (event and event.is_set()):
                if self.max_rollouts is not None and started >= self.max_rollouts:
                    break
                if len(running) >= self.max_parallel:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED, timeout=0.1)
                    continue
                attempted = await self._store.dequeue_rollout(worker_id=self.worker_id)
                if attempted is None:
                    await self._sleep(self._jittered(self.poll_interval), event)
                    continue
                started += 1
                task = asyncio.create_task(self._run_logged(attempted))
                running.add(task)
                task.add_done_callback(running.discard)
            while running and not (event and event.is_set()):
                await asyncio.wait(running, timeout=0.1)
        finally:
            for task in running:
                task.cancel()  # stopping: unfinished attempts are left for the reaper
            await asyncio.gather(*running, return_exceptions=True)
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _run_logged(self, attempted: AttemptedRollout) -> None:
        try:
            await self.run_rollout(attempted)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rollout %s failed", attempted.rollout_id)

    async def step(
        self,
        input: Any,
        *,
        resources: NamedResources | None = None,
        mode: Any = None,
        event: StopEvent | None = None,
    ) -> Rollout:
        """Run one rollout now, bypassing the queue; errors propagate."""
        self._agent_or_raise()
        resources_id = None
        if resources is not None:
            resources_id = (await self._store.add_resources(resources)).resources_id
        attempted = await self._store.start_rollout(
            input=input, mode=mode, resources_id=resources_id, worker_id=self.worker_id
        )
        await self.run_rollout(attempted, raise_errors=True)
        result: Rollout = await self._store.get_rollout_by_id(attempted.rollout_id)
        return result

    # -- one rollout ---------------------------------------------------------------
    async def _resources(self, attempted: AttemptedRollout) -> NamedResources:
        store = self._store
        update = (
            await store.get_resources_by_id(attempted.resources_id)
            if attempted.resources_id
            else await store.get_latest_resources()
        )
        if update is None:
            raise LookupError(f"resources {attempted.resources_id or '(latest)'} not found")
        return dict(update.resources)

    async def run_rollout(self, attempted: AttemptedRollout, *, raise_errors: bool = False) -> None:
        """Execute one attempted rollout and report its outcome."""
        agent = self._agent_or_raise()
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        start = time.monotonic()
        agent_task: asyncio.Task[Any] | None = None
        try:
            resources = await self._resources(attempted)
            async with self.tracer.trace_context(rid, store=self._store, rollout_id=rid, attempt_id=aid):
                agent_task = asyncio.create_task(self._call(agent, attempted, resources))
                keeper = asyncio.create_task(self._keep_alive(rid, aid, agent_task))
                try:
                    result = await agent_task
                finally:
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
            spans = await self._store_result(result, rid, aid)
        except asyncio.CancelledError:
            if agent_task is not None and agent_task.cancelled() and not _current_task_cancelling():
                # The attempt was cancelled or expired: its fate is decided, so no report,
                # which would only overwrite the verdict (and its retry) with "failed".
                return
            raise
        except Exception as err:
            await self._report(rid, aid, "failed", error=f"{type(err).__name__}: {err}")
            if raise_errors:
                raise
            log.warning("rollout %s failed: %s: %s", rid, type(err).__name__, err)
            return
        await self._report(rid, aid, "succeeded")
        self.completed += 1
        reward = find_final_reward(spans)
        log.info("rollout %s succeeded in %.2fs, final reward %s", rid, time.monotonic() - start, reward)

    async def _call(self, agent: LitAgent, attempted: AttemptedRollout, resources: NamedResources) -> Any:
        train = attempted.mode == "train"
        args = (attempted.input, resources, attempted)
        if agent.is_async():
            method = agent.training_rollout_async if train else agent.validation_rollout_async
            return await method(*args)
        sync = agent.training_rollout if train else agent.validation_rollout
        # A thread cannot be interrupted: a cancelled sync agent is abandoned, not stopped.
        return await asyncio.to_thread(sync, *args)

    async def _keep_alive(self, rollout_id: str, attempt_id: str, agent_task: asyncio.Task[Any]) -> None:
        """Renew the attempt while the agent runs; cancel the agent when it is no longer ours."""
        while True:
            await asyncio.sleep(self._jittered(self.heartbeat_interval))
            try:
                alive = await self._renew(rollout_id, attempt_id)
            except Exception as err:
                log.warning("heartbeat of %s failed: %s", rollout_id, err)
                continue
            if not alive:
                log.warning(
                    "attempt %s of %s was cancelled or expired: stopping its agent", attempt_id, rollout_id
                )
                agent_task.cancel()
                return

    async def _renew(self, rollout_id: str, attempt_id: str) -> bool:
        store = self._store
        if hasattr(store, "heartbeat"):
            return bool(await store.heartbeat(rollout_id, attempt_id))
        # Upstream stores: refresh the heartbeat, and learn about cancellation from the status.
        await store.update_attempt(rollout_id, attempt_id, last_heartbeat_time=time.time())
        rollout = await store.get_rollout_by_id(rollout_id)
        return rollout is not None and rollout.status != "cancelled"

    async def _store_result(self, result: Any, rollout_id: str, attempt_id: str) -> list[Span]:
        store = self._store
        captured = self.tracer.get_last_trace()
        if result is None:
            return captured
        if isinstance(result, (bool, int, float)):
            seq = await store.get_next_span_sequence_id(rollout_id, attempt_id)
            span = reward_span(float(result), rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq)
            await store.add_span(span)
            return [*captured, span]
        if isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
            return captured + [await self._add_one(item, rollout_id, attempt_id) for item in result]
        raise TypeError(f"an agent returns None, a number or a list of spans, not {type(result).__name__}")

    async def _add_one(self, item: Any, rollout_id: str, attempt_id: str) -> Span:
        store = self._store
        if isinstance(item, Span):
            await store.add_span(item)
            return item
        seq = await store.get_next_span_sequence_id(rollout_id, attempt_id)
        if isinstance(item, SpanCoreFields):
            span = Span.from_core_fields(item, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq)
        else:  # an OpenTelemetry ReadableSpan
            span = Span.from_opentelemetry(item, rollout_id, attempt_id, seq)
        await store.add_span(span)
        return span

    async def _report(self, rollout_id: str, attempt_id: str, status: str, error: str | None = None) -> None:
        fields: dict[str, Any] = {"status": status}
        if error is not None:
            fields["metadata"] = {"error": error}
        try:
            await self._store.update_attempt(rollout_id, attempt_id, **fields)
        except Exception as err:
            log.warning("could not report %s for %s: %s", status, rollout_id, err)

    async def _worker_heartbeats(self, event: StopEvent | None) -> None:
        while not (event and event.is_set()):
            stats = {"timestamp": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
            try:
                await self._store.update_worker(self.worker_id, stats)
            except Exception as err:
                log.debug("worker heartbeat failed: %s", err)
            await self._sleep(self._jittered(self.heartbeat_interval), event)


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
