"""One attempt, run by :class:`~store_fs.runner.LitAgentRunner`: from its resources to its
reported outcome, through store outages, cancellation and interruption.

The life of an :class:`AttemptRun`:

1. The rollout's resources are read (retried through outages); hook ``on_rollout_start``.
2. The tracer's trace context opens (a :class:`~store_fs.tracing.rollout_binding.RolloutBinding`);
   hook ``on_trace_start``; the agent runs: an async agent as a task, a sync agent on a
   daemon thread of its own, so a sync agent stuck in a blocking call can be left behind
   without holding up the process's exit. When it returns: hook ``on_trace_end``.
3. The context closes, flushing the spans the agent emitted; the result (a reward, spans)
   is queued behind them and flushed too. Writes are retried through outages.
4. Hook ``on_rollout_end``; then the outcome is reported: ``succeeded``, or ``failed`` with
   the agent's error, the unsupported result, or how many spans could not be stored. The
   report is retried through outages and delivered when the store answers again, unless
   the attempt was settled meanwhile: the store is asked (``heartbeat``) right before.

From the start to the report a keeper renews the attempt every ``heartbeat_seconds``.
When the store says the attempt is no longer this runner's (cancelled, timed out, reaped),
the attempt is **abandoned**: its binding is closed (spans the agent still emits are
dropped, counted, one warning), the agent is cancelled (a sync agent's thread is left to
finish alone) and nothing is reported: the store's decision, and its retry, stand.

When the runner stops (:meth:`AttemptRun.interrupt`), the agent is cancelled, pending spans
get half of the grace period, and the attempt is reported ``failed`` with the error
"runner interrupted", so the rollout's retry rule applies.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from store_fs.agent import AgentLike
from store_fs.errors import NotFoundError
from store_fs.models import AttemptedRollout, NamedResources, Span, SpanCoreFields
from store_fs.retrying import call_with_retry, is_transient, renew_attempt
from store_fs.rewards import find_final_reward, reward_span
from store_fs.tracing.rollout_binding import RolloutBinding
from store_fs.upstream_compat import as_ours, retyped

if TYPE_CHECKING:
    from store_fs.runner import LitAgentRunner

__all__ = [
    "ACCEPTED_RESULTS",
    "INTERRUPTED",
    "AgentExit",
    "AttemptRun",
    "result_spans",
    "start_in_daemon_thread",
]

log = logging.getLogger("store_fs.runner")

INTERRUPTED = "runner interrupted"
ACCEPTED_RESULTS = (
    "a float (the final reward), None, or a list of spans "
    "(Span, SpanCoreFields, upstream's Span or SpanCoreFields, OpenTelemetry ReadableSpan, or span dicts)"
)


class AttemptRun:
    """One attempted rollout in the hands of a runner (see the module docstring).

    Attributes:
        abandoned: why the store took the attempt back, or None.
        interrupted: the runner is stopping; the attempt will be reported failed.
        reported: the status reported to the store, or None.
    """

    def __init__(self, runner: LitAgentRunner, attempted: AttemptedRollout) -> None:
        self.runner = runner
        self.attempted = attempted
        self.rollout_id = attempted.rollout_id
        self.attempt_id = attempted.attempt.attempt_id
        self.abandoned: str | None = None
        self.interrupted = False
        self.reported: str | None = None
        self.started = False  # run() has begun: cancelling it now reports it (else it never runs)
        self.binding: RolloutBinding | None = None
        self.error: str | None = None
        self._deadline: float | None = None
        self._agent: asyncio.Future[Any] | None = None
        self._let_go: asyncio.Future[None] | None = None  # done when abandoned
        self._started = time.monotonic()

    # -- called by the keeper and the runner --------------------------------------------------
    def abandon(self, reason: str) -> None:
        """The attempt is no longer ours: stop delivering its spans, stop its agent, report nothing."""
        if self.abandoned is None:
            self.abandoned = reason
            log.warning("attempt %s of %s %s: stopping its agent", self.attempt_id, self.rollout_id, reason)
        if self.binding is not None:
            self.binding.close(reason)
        if self._agent is not None and not self._agent.done():
            self._agent.cancel()
        if self._let_go is not None and not self._let_go.done():
            self._let_go.set_result(None)

    def interrupt(self, deadline: float) -> None:
        """The runner is stopping: everything of this attempt must be over by ``deadline``
        (``time.monotonic()``); pending spans get half of the time left."""
        self.interrupted = True
        self._deadline = deadline
        if self.binding is not None:
            self.binding.flush_deadline = time.monotonic() + (deadline - time.monotonic()) / 2

    # -- the attempt --------------------------------------------------------------------------
    async def run(self, *, raise_errors: bool = False) -> None:
        """Run the attempt and report its outcome; with ``raise_errors`` the agent's error
        (or the result's) is raised after the report."""
        self.started = True
        if self.interrupted:  # the runner stopped before this began (it was being dequeued)
            self.error = INTERRUPTED
            if await self._report("failed", INTERRUPTED):
                self._log_outcome("failed", INTERRUPTED, [])
            return
        keeper = asyncio.create_task(self._keep_alive())
        failure: Exception | None = None
        try:
            try:
                await self._execute()
            except asyncio.CancelledError:
                if self.abandoned is None:
                    await self._interrupted()
                raise
            except Exception as err:
                failure = err
                self.error = str(err) if isinstance(err, AgentExit) else describe_error(err)
            await self._finish_even_if_stopped()
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if self.binding is not None:  # settled, one way or another: late spans are not stored
                self.binding.close(
                    self.abandoned or f"the runner is done with it ({self.reported or 'unreported'})"
                )
        if failure is not None and raise_errors and self.abandoned is None:
            raise failure

    async def _finish_even_if_stopped(self) -> None:
        """:meth:`_finish`; a stop that lands meanwhile (in the ``on_rollout_end`` hook, or while
        the report waits out an outage) still reports the outcome, within the stop's grace: it
        was lost, and the attempt stayed ``running``."""
        try:
            await self._finish()
        except asyncio.CancelledError:
            if self.abandoned is None and self.reported is None:
                if not self.interrupted:
                    self.interrupt(time.monotonic() + self.runner.interrupt_grace_seconds)
                status, error = self._verdict()
                if await self._report(status, error):
                    self._log_outcome(status, error, list(self.binding.spans) if self.binding else [])
            raise

    async def _interrupted(self) -> None:
        if not self.interrupted:  # cancelled from outside the runner: the same as a stop
            self.interrupt(time.monotonic() + self.runner.interrupt_grace_seconds)
        self.error = INTERRUPTED
        await self._finish()

    async def _execute(self) -> None:
        resources = await self._resources()
        await self._hook("on_rollout_start", rollout=self.attempted)
        result = await self._traced(resources)
        if self.abandoned is not None or self.binding is None:
            return
        # The returned value is the final word: a span from a task or thread the agent left
        # running, arriving from now on, would follow it (a late reward would become final).
        self.binding.seal("emitted after the agent returned, by a task or thread it did not wait for")
        # After the trace context, as upstream: the result's spans follow every span the
        # context produced (an AgentOps session span ends only when the context closes).
        for span, numbered in result_spans(result, self.rollout_id, self.attempt_id):
            self.binding.submit(span, numbered=numbered)
        await self.binding.drain()

    async def _traced(self, resources: NamedResources) -> Any:
        """Run the agent inside the tracer's trace context; its spans are flushed on exit."""
        tracer = self.runner.tracer
        async with tracer.trace_context(
            self.rollout_id, store=self.runner.store, rollout_id=self.rollout_id, attempt_id=self.attempt_id
        ) as binding:
            self.binding = binding
            if self.abandoned is not None:
                binding.close(self.abandoned)
                return None
            if self.interrupted and self._deadline is not None:
                binding.flush_deadline = self._deadline
            await self._hook("on_trace_start", tracer=tracer, rollout=self.attempted)
            result = await self._call_agent(resources)
            if self.abandoned is None:
                await self._hook("on_trace_end", tracer=tracer, rollout=self.attempted)
        return result

    async def _resources(self) -> NamedResources:
        store = self.runner.store
        resources_id = self.attempted.resources_id

        async def fetch() -> Any:
            if resources_id:
                return await store.get_resources_by_id(resources_id)
            return await store.get_latest_resources()

        update = await call_with_retry(
            fetch, what="resources", policy=self.runner.retry_policy, stop=self._given_up
        )
        if update is None:
            raise LookupError(f"resources {resources_id or '(latest)'} not found")
        # A store that is not agl's hands out upstream's classes: agl's agents look for agl's
        # (an upstream agent gets both again from start_agent).
        return {name: as_ours(resource) for name, resource in update.resources.items()}

    async def _call_agent(self, resources: NamedResources) -> Any:
        future = start_agent(self.runner.agent, self.attempted, resources)
        future.add_done_callback(_retrieve)
        self._agent = future
        self._let_go = asyncio.get_running_loop().create_future()
        try:
            # Not a plain await: neither a stopping runner nor an abandoned attempt waits for
            # an agent that ignores its cancellation.
            await asyncio.wait([future, self._let_go], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            future.cancel()
            if not self.interrupted:  # cancelled by the caller: bound the flush on the way out too
                self.interrupt(time.monotonic() + self.runner.interrupt_grace_seconds)
            raise
        if self.abandoned is not None:
            return None
        if future.cancelled():
            raise RuntimeError("the agent was cancelled")
        return future.result()

    # -- the outcome --------------------------------------------------------------------------
    def _verdict(self) -> tuple[str, str | None]:
        if self.error == INTERRUPTED:  # its spans were cut short on purpose
            return "failed", INTERRUPTED
        binding = self.binding
        missing = (binding.lost + binding.dropped) if binding is not None else 0
        if missing:
            detail = (
                binding.lost_error if binding is not None and binding.lost_error else "not stored in time"
            )
            lost = f"{missing} span(s) of this attempt could not be stored ({detail})"
            return "failed", storable_error(f"{self.error}; {lost}" if self.error else lost)
        if self.error is not None:
            return "failed", storable_error(self.error)
        return "succeeded", None

    async def _finish(self) -> None:
        spans = list(self.binding.spans) if self.binding is not None else []
        await self._hook("on_rollout_end", rollout=self.attempted, spans=spans)
        if self.abandoned is not None:
            return
        status, error = self._verdict()
        if await self._report(status, error):
            self._log_outcome(status, error, spans)

    async def _report(self, status: str, error: str | None) -> bool:
        """Deliver the outcome, through outages, unless the attempt is settled first."""
        fields: dict[str, Any] = {"status": status}
        if error is not None:
            fields["metadata"] = {"error": error}
        store = self.runner.store

        async def once() -> bool:
            # Stores write a late verdict over an earlier one: ask first whether it is still ours.
            if not await renew_attempt(store, self.rollout_id, self.attempt_id):
                return False
            await store.update_attempt(self.rollout_id, self.attempt_id, **fields)
            return True

        call = call_with_retry(
            once, what="outcome report", policy=self.runner.retry_policy, stop=self._given_up
        )
        try:
            delivered = await (call if self._deadline is None else asyncio.wait_for(call, self._time_left()))
        except Exception as err:
            if not await self._found_reported(status):
                log.warning(
                    "could not report %s for %s: %s: %s", status, self.rollout_id, type(err).__name__, err
                )
                return False
            delivered = True  # it landed; its answer was lost
        if not delivered and await self._found_reported(status):
            delivered = True  # the report landed, its answer was lost (an outage): not the store's verdict
        if not delivered:
            log.warning(
                "attempt %s of %s was settled by the store before its outcome (%s) was reported: "
                "the store's decision stands",
                self.attempt_id,
                self.rollout_id,
                status,
            )
            return False
        self.reported = status
        return True

    async def _found_reported(self, status: str) -> bool:
        """Whether the store holds this attempt with ``status`` (best effort, a few seconds at most)."""
        limit = 5.0 if self._deadline is None else max(0.5, self._time_left())
        try:
            attempts = await asyncio.wait_for(self.runner.store.query_attempts(self.rollout_id), limit)
        except Exception:
            return False
        return any(a.attempt_id == self.attempt_id and a.status == status for a in attempts)

    def _log_outcome(self, status: str, error: str | None, spans: Sequence[Span]) -> None:
        took = time.monotonic() - self._started
        if status == "succeeded":
            self.runner.completed += 1
            reward = find_final_reward(spans)
            log.info("rollout %s succeeded in %.2fs, final reward %s", self.rollout_id, took, reward)
        else:
            log.warning("rollout %s failed after %.2fs: %s", self.rollout_id, took, error)

    def _time_left(self) -> float:
        return 0.0 if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _given_up(self) -> bool:
        return self.abandoned is not None or (self._deadline is not None and self._time_left() <= 0)

    # -- keeping the attempt alive ------------------------------------------------------------
    async def _keep_alive(self) -> None:
        runner = self.runner
        outage = runner.retry_policy.outage
        while self.abandoned is None:
            await asyncio.sleep(runner.jittered(runner.heartbeat_seconds))
            sent = time.monotonic()
            try:
                alive = await renew_attempt(runner.store, self.rollout_id, self.attempt_id)
            except NotFoundError:
                alive = False
            except Exception as err:
                if is_transient(err):
                    outage.failed("attempt heartbeat", err)
                else:
                    log.warning("heartbeat of %s failed: %s: %s", self.rollout_id, type(err).__name__, err)
                continue
            outage.ended(sent)
            if not alive:
                self.abandon("was cancelled, timed out or reaped (the store says it is no longer ours)")

    async def _hook(self, name: str, **kwargs: Any) -> None:
        """Call ``name`` on every hook that has it, as upstream does; a failing hook is logged."""
        for hook in self.runner.hooks:
            method = getattr(hook, name, None)
            if method is None:
                continue
            try:
                result = method(agent=self.runner.agent, runner=self.runner, **kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s hook %r failed", name, hook)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the agent's error as seen: an abandoned agent's failure is nobody's business."""
    if not future.cancelled():
        future.exception()


class AgentExit(Exception):
    """The agent raised ``SystemExit`` (``sys.exit()``), another ``BaseException`` that is no
    ``Exception``, or ``KeyboardInterrupt`` on its own thread. Any of them would end the
    runner's event loop or its task unreported, leaving the attempt running: they are turned
    into this error, which fails the attempt like any other, and the runner goes on.
    (``KeyboardInterrupt`` in an async agent is left alone: on the runner's thread it may be a
    real Ctrl-C, which must stop the runner.)"""

    def __init__(self, err: BaseException) -> None:
        super().__init__(describe_error(err))


def describe_error(err: BaseException) -> str:
    """``Type: message`` of an agent's error, whatever its ``__str__`` does (one that raises
    made the runner itself fail where it describes the agent's failure)."""
    try:
        message = str(err)
    except Exception as inner:  # the agent's own __str__, which may raise anything
        message = f"<its message could not be read: {type(inner).__name__}>"
    return f"{type(err).__name__}: {message}"


# An error kept in an attempt's metadata is cut to this many characters (head and tail kept):
# a 5 MB message was stored whole in every revision, or refused by a server's body limit, and
# then the attempt was never reported at all.
MAX_ERROR_CHARS = 8192


def storable_error(text: str) -> str:
    """``text`` as an attempt's ``metadata.error`` can hold it: valid Unicode (a lone
    surrogate, from a file name ``os.listdir`` decoded, written as ``\\udce9``), at most
    :data:`MAX_ERROR_CHARS` characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_ERROR_CHARS:
        cut = len(text) - MAX_ERROR_CHARS
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]} [... {cut} characters cut ...] {text[-half:]}"
    return text


async def _exit_contained(agent_call: Awaitable[Any]) -> Any:
    try:
        return await agent_call
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise  # cancellation, a real Ctrl-C: not the agent's failure
    except GeneratorExit as err:
        if _thrown_here(err):
            raise  # this coroutine is being closed (``close()`` throws it in at the ``await``)
        raise AgentExit(err) from err  # raised by the agent's own code
    except BaseException as err:  # SystemExit, or an agent's own BaseException subclass
        if isinstance(err, Exception):
            raise
        raise AgentExit(err) from err


def _thrown_here(err: BaseException) -> bool:
    """Whether ``err`` was thrown into the frame that caught it rather than raised below it.

    Closing a coroutine closes the one it awaits first, then throws ``GeneratorExit`` at the
    closed one's own ``await``: its traceback then holds that frame alone."""
    return err.__traceback__ is None or err.__traceback__.tb_next is None


def start_agent(
    agent: AgentLike, attempted: AttemptedRollout, resources: NamedResources
) -> asyncio.Future[Any]:
    """Start the agent's rollout method for the attempt's mode; its result as a future.

    With upstream Agent-lightning loaded, the resources and the rollout are also instances of
    upstream's classes, which its agents look for (:func:`~store_fs.upstream_compat.retyped`).
    """
    train = attempted.mode == "train"
    # resources and rollout by keyword, as upstream's runner passes them: an agent whose
    # method names them in another order gets each where it asked for it.
    kwargs: dict[str, Any] = {"resources": retyped(resources), "rollout": retyped(attempted)}
    if agent.is_async():
        method = agent.training_rollout_async if train else agent.validation_rollout_async
        return asyncio.ensure_future(_exit_contained(method(attempted.input, **kwargs)))
    sync = agent.training_rollout if train else agent.validation_rollout
    return start_in_daemon_thread(functools.partial(sync, attempted.input, **kwargs))


def start_in_daemon_thread(func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run ``func(*args)`` on a new daemon thread, in a copy of the caller's context.

    Unlike ``asyncio.to_thread`` (the loop's default executor, whose threads the
    interpreter waits for at exit), a daemon thread stuck in a blocking call does not keep
    the process alive: a stopping runner can leave it behind. Cancelling the future does
    not stop the thread; its result is then ignored.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def target() -> None:
        try:
            result = context.run(func, *args)
        except BaseException as err:  # the agent's failure, delivered to the awaiting loop
            # As an Exception a future takes: a SystemExit set on it would end the loop awaiting
            # it, and a StopIteration cannot be set on one at all (the future never settled and
            # the runner waited for good).
            failure = err
            if not isinstance(err, Exception) or isinstance(err, StopIteration):
                failure = AgentExit(err)
                failure.__cause__ = err
            outcome: tuple[Callable[[Any], None], Any] = (future.set_exception, failure)
        else:
            outcome = (future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:
            pass  # the loop is gone: nobody waits for this result any more

    threading.Thread(
        target=target,
        name=f"agl-agent-{getattr(getattr(func, 'func', func), '__name__', 'sync')}",  # a partial's function
        daemon=True,
    ).start()
    return future


def result_spans(result: Any, rollout_id: str, attempt_id: str) -> list[tuple[Span, bool]]:
    """The spans an agent's return value stands for, each with "has its own sequence id".

    Raises TypeError for any other value, naming its type and what is accepted.
    """
    if result is None:
        return []
    if isinstance(result, (bool, int, float)):
        reward = reward_span(float(result), rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=0)
        return [(reward, False)]
    if isinstance(result, (list, tuple)):
        return [_item_span(item, rollout_id, attempt_id) for item in result]
    raise TypeError(f"the agent returned a {type(result).__name__}; a rollout returns {ACCEPTED_RESULTS}")


def _item_span(item: Any, rollout_id: str, attempt_id: str) -> tuple[Span, bool]:
    if isinstance(item, Span):
        return item, True
    if isinstance(item, SpanCoreFields):
        return Span.from_core_fields(item, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=0), False
    if isinstance(item, dict):
        if "span_id" in item:
            fields = {"rollout_id": rollout_id, "attempt_id": attempt_id, "sequence_id": 0, **item}
            return Span.model_validate(fields), "sequence_id" in item
        core = SpanCoreFields.model_validate(item)
        return Span.from_core_fields(core, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=0), False
    if callable(getattr(item, "get_span_context", None)):  # an OpenTelemetry ReadableSpan
        return Span.from_opentelemetry(item, rollout_id, attempt_id, 0), False
    if callable(getattr(item, "model_dump", None)):  # a span of another library (upstream's), by fields
        fields = item.model_dump()
        if isinstance(fields, dict):
            return _item_span(fields, rollout_id, attempt_id)
    raise TypeError(
        f"the agent returned a list holding a {type(item).__name__}; a rollout returns {ACCEPTED_RESULTS}"
    )
