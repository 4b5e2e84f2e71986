"""``LitAgentRunner``: dequeue rollouts, run the agent under a tracer, report each attempt.

The runner's loop dequeues work (up to ``max_parallel`` attempts at once) and hands each
attempt to an :class:`~store_fs.attempt_run.AttemptRun`, which runs the agent under the
tracer, flushes its spans in emission order, keeps the attempt alive with heartbeats, and
reports the outcome (see :mod:`store_fs.attempt_run`).

Faults (docs/runner.md): every store call of the runner (dequeue, heartbeats, span writes,
outcome reports) is retried through outages of any length with capped exponential backoff
and jitter; an outage is logged once when it starts and once when it ends. An outcome
computed during an outage is delivered when the store answers again, unless the attempt
was settled meanwhile.

Stopping (``event`` set, a signal turned into it by the caller, or ``iter`` cancelled):
dequeuing stops, the agents in flight are cancelled, and their attempts are reported
``failed`` with the error "runner interrupted" (so the rollout's retry rule applies)
within ``interrupt_grace_seconds``; what is not done by then is left to the reaper.
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

from store_fs.agent import AgentLike, LitAgent, as_agent
from store_fs.attempt_run import AttemptRun
from store_fs.models import AttemptedRollout, NamedResources, Rollout
from store_fs.retrying import OutageLog, RetryPolicy, call_with_retry, describe_store, is_transient
from store_fs.tracing.tracer import OtelTracer, Tracer

__all__ = ["LitAgentRunner", "StopEvent"]

log = logging.getLogger(__name__)


class StopEvent(Protocol):
    def is_set(self) -> bool: ...


def _is_set(event: StopEvent | None) -> bool:
    return event is not None and event.is_set()


async def _dequeue_one(store: Any, worker_id: str | None) -> AttemptedRollout | None:
    """One attempt from ``store``. On agl's HTTP client with ``dequeue_many_rollouts``, which
    (unlike its ``dequeue_rollout``, upstream's way) raises when the server cannot be reached;
    on any other store with ``dequeue_rollout`` (a store may implement only that one)."""
    from store_fs.client import LightningStoreClient

    if isinstance(store, LightningStoreClient):
        got = await store.dequeue_many_rollouts(limit=1, worker_id=worker_id)
        return got[0] if got else None
    single: AttemptedRollout | None = await store.dequeue_rollout(worker_id=worker_id)
    return single


class LitAgentRunner:
    """Runs an agent over a store's queue.

    Args:
        tracer: how spans are recorded (default: :class:`OtelTracer`).
        max_rollouts: stop after this many rollouts (None: until stopped).
        poll_interval: seconds between looks at an empty queue (± ``interval_jitter``).
        heartbeat_interval: upstream's name for ``heartbeat_seconds``.
        max_parallel: rollouts run at once by this runner.
        heartbeat_seconds: seconds between worker heartbeats and attempt renewals (overrides
            ``heartbeat_interval``). An attempt is renewed with the store's ``heartbeat``, or,
            against a server without that route, by ``update_attempt(last_heartbeat_time=...)``.
        retry_cap_seconds: the longest wait between two tries of a failing store call.
        interrupt_grace_seconds: how long a stopping runner gives its in-flight attempts to
            flush their spans and report ``failed`` ("runner interrupted").
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
        heartbeat_seconds: float | None = None,
        retry_cap_seconds: float = 5.0,
        interrupt_grace_seconds: float = 4.0,
    ) -> None:
        heartbeat = heartbeat_interval if heartbeat_seconds is None else heartbeat_seconds
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        if heartbeat <= 0:
            raise ValueError(f"heartbeat_seconds must be positive, not {heartbeat}")
        if retry_cap_seconds <= 0 or interrupt_grace_seconds < 0:
            raise ValueError("retry_cap_seconds must be positive and interrupt_grace_seconds not negative")
        if tracer is not None and not isinstance(tracer, Tracer):
            raise TypeError(
                f"{type(tracer).__name__} is not an agl tracer: agl's runner records spans with "
                "store_fs.tracing.OtelTracer (or AgentOpsTracer); upstream's tracers run under "
                "upstream's runner"
            )
        self.tracer = tracer or OtelTracer()
        self.max_rollouts = max_rollouts
        self.poll_interval = poll_interval
        self.heartbeat_seconds = heartbeat
        self.interval_jitter = interval_jitter
        self.max_parallel = max_parallel
        self.retry_cap_seconds = retry_cap_seconds
        self.interrupt_grace_seconds = interrupt_grace_seconds
        self.retry_policy = RetryPolicy(cap_seconds=retry_cap_seconds)
        self.hooks: list[Any] = []
        self._agent: AgentLike | None = None
        self._store: Any = None
        self.worker_id = "Worker-Unknown"
        self.completed = 0

    @property
    def heartbeat_interval(self) -> float:
        """Upstream's name for :attr:`heartbeat_seconds`."""
        return self.heartbeat_seconds

    @property
    def agent(self) -> AgentLike:
        return self._agent_or_raise()

    @property
    def store(self) -> Any:
        self._agent_or_raise()
        return self._store

    # -- lifecycle -----------------------------------------------------------------
    def init(self, agent: LitAgent | Any, *, hooks: Sequence[Any] | None = None, **kwargs: Any) -> None:
        """Bind the agent (see :func:`~store_fs.agent.as_agent`; an agent with ``set_runner``,
        as upstream's ``LitAgent`` has, is told its runner); ``hooks`` are upstream-style
        ``Hook`` objects (any object with some of ``on_rollout_start``, ``on_trace_start``,
        ``on_trace_end``, ``on_rollout_end``)."""
        self._agent = as_agent(agent)
        set_runner = getattr(self._agent, "set_runner", None)
        if callable(set_runner):
            set_runner(self)
        self.hooks = list(hooks or [])
        self.tracer.init()

    def init_worker(self, worker_index: int, store: Any, **kwargs: Any) -> None:
        self._store = store
        self.worker_id = f"Worker-{worker_index}"
        self.retry_policy = RetryPolicy(
            cap_seconds=self.retry_cap_seconds, outage=OutageLog(describe_store(store))
        )
        self.tracer.retry_policy = self.retry_policy
        self.tracer.init_worker(worker_index, store)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.tracer.teardown_worker(0)
        self.tracer.teardown()
        self.hooks = []

    @contextlib.contextmanager
    def run_context(
        self,
        *,
        agent: LitAgent | Any,
        store: Any,
        hooks: Sequence[Any] | None = None,
        worker_id: int | None = None,
    ) -> Iterator[LitAgentRunner]:
        """Bind the runner to an agent, a store and hooks for the duration of the block."""
        self.init(agent, hooks=hooks)
        self.init_worker(worker_id or 0, store)
        try:
            yield self
        finally:
            self.teardown()

    def _agent_or_raise(self) -> AgentLike:
        if self._agent is None or self._store is None:
            raise RuntimeError("use the runner inside run_context(agent=..., store=...)")
        return self._agent

    # -- the loop ------------------------------------------------------------------
    def jittered(self, seconds: float) -> float:
        """``seconds`` ± ``interval_jitter`` (at least 10 ms)."""
        return max(0.01, seconds + random.uniform(-self.interval_jitter, self.interval_jitter))

    async def _sleep(self, seconds: float, event: StopEvent | None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not _is_set(event):
            await asyncio.sleep(min(0.1, max(end - time.monotonic(), 0)))

    async def iter(self, *, event: StopEvent | None = None) -> None:
        """Process rollouts until ``event`` is set or ``max_rollouts`` are done.

        Stopping (``event``, or this call cancelled) reports the attempts in flight ``failed``
        ("runner interrupted") within ``interrupt_grace_seconds``.
        """
        self._agent_or_raise()
        running: dict[asyncio.Task[None], AttemptRun] = {}
        beat = asyncio.create_task(self._worker_heartbeats(event))
        try:
            await self._dispatch(event, running)
            while running and not _is_set(event):
                await asyncio.wait(list(running), timeout=0.1)
        finally:
            await self._interrupt(running)
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _dispatch(self, event: StopEvent | None, running: dict[asyncio.Task[None], AttemptRun]) -> None:
        started = 0
        while not _is_set(event):
            if self.max_rollouts is not None and started >= self.max_rollouts:
                return
            if len(running) >= self.max_parallel:
                await asyncio.wait(list(running), return_when=asyncio.FIRST_COMPLETED, timeout=0.1)
                continue
            attempted = await self._dequeue(event)
            if attempted is None:
                await self._sleep(self.jittered(self.poll_interval), event)
                continue
            started += 1
            run = AttemptRun(self, attempted)
            task = asyncio.create_task(self._run_logged(run))
            running[task] = run
            task.add_done_callback(lambda done: running.pop(done, None))

    async def _dequeue(self, event: StopEvent | None) -> AttemptedRollout | None:
        """The next attempt, or None (queue empty, stopping, or an error already logged)."""
        store = self._store
        try:
            attempted: AttemptedRollout | None = await call_with_retry(
                lambda: _dequeue_one(store, self.worker_id),
                what="dequeue",
                policy=self.retry_policy,
                stop=lambda: _is_set(event),
            )
        except Exception as err:
            if not _is_set(event):  # a permanent error: logged, and tried again after a poll interval
                log.error("dequeue failed: %s: %s", type(err).__name__, err)
            return None
        return attempted

    async def _interrupt(self, running: dict[asyncio.Task[None], AttemptRun]) -> None:
        """Cancel the attempts in flight; each reports itself failed ("runner interrupted")."""
        if not running:
            return
        grace = self.interrupt_grace_seconds
        log.warning(
            "stopping: reporting %d attempt(s) in flight as failed (runner interrupted)", len(running)
        )
        deadline = time.monotonic() + grace
        tasks = list(running)
        for task in tasks:
            run = running[task]
            run.interrupt(deadline)
            if run.started:  # one not begun yet reports itself failed when it does (a cancel
                task.cancel()  # before its first step would close it unreported: left preparing)
        _, late = await asyncio.wait(tasks, timeout=grace + 0.5)
        for task in late:  # past the grace period: left to the reaper
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    async def _run_logged(self, run: AttemptRun) -> None:
        try:
            await run.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rollout %s failed", run.rollout_id)

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

    async def run_rollout(self, attempted: AttemptedRollout, *, raise_errors: bool = False) -> None:
        """Execute one attempted rollout and report its outcome (see :mod:`store_fs.attempt_run`)."""
        self._agent_or_raise()
        await AttemptRun(self, attempted).run(raise_errors=raise_errors)

    async def _worker_heartbeats(self, event: StopEvent | None) -> None:
        outage = self.retry_policy.outage
        while not _is_set(event):
            stats = {"timestamp": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
            sent = time.monotonic()
            try:
                await self._store.update_worker(self.worker_id, stats)
            except Exception as err:
                if is_transient(err):
                    outage.failed("worker heartbeat", err)
                else:
                    log.debug("worker heartbeat failed: %s", err)
            else:
                outage.ended(sent)
            await self._sleep(self.jittered(self.heartbeat_seconds), event)
