"""Tracers: record what an agent does during a rollout as spans in the store.

:class:`OtelTracer` (the default) owns a private OpenTelemetry ``TracerProvider``
(it never replaces the global one), records every OpenAI generation call through
:mod:`store_fs.tracing.openai_instrument`, opens one root span per attempt
(:mod:`store_fs.tracing.root_span`) and sends spans to the rollout's store as they
end. It needs no network and no API key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Status, StatusCode

from store_fs.models import Attributes, Span, SpanCoreFields, TraceStatus
from store_fs.retrying import RetryPolicy
from store_fs.tracing.rollout_binding import (
    RolloutBinding,
    SpanSink,
    SpanTransport,
    StoreWriter,
    bind,
    closed,
    context_binding,
    current_binding,
    opened,
    unbind,
)
from store_fs.tracing.root_span import rollout_root_span
from store_fs.tracing.span_processor import LightningSpanProcessor
from store_fs.tracing.thread_context import carry_trace_contexts

__all__ = ["OtelTracer", "ProviderTracer", "SpanRecorder", "Tracer", "active_tracer"]

log = logging.getLogger(__name__)


class Tracer:
    """What a runner needs from a tracer. Subclasses decide how spans are produced.

    Span delivery (order, retries, settlement) is :class:`RolloutBinding`'s. Settings a
    runner may change: ``span_transport`` ("api": ``add_span`` calls; "otlp": OTLP/HTTP
    export to an ``agl store`` server, for stores that offer ``export_otlp``),
    ``retry_policy`` and ``span_retry_seconds`` (how long a failing span write is retried
    before the span counts as lost; None: as long as the attempt lasts).
    """

    span_transport: SpanTransport = "api"
    span_retry_seconds: float | None = None

    def __init__(self) -> None:
        self._writer = StoreWriter()
        self._store: SpanSink | None = None
        self._last: list[Span] = []
        self.retry_policy = RetryPolicy()

    # Tracers travel to runner processes (spawn): only their settings are pickled.
    _RUNTIME: tuple[str, ...] = ("_writer", "_store", "_last", "retry_policy")

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        Tracer.__init__(self)

    # -- lifecycle -----------------------------------------------------------------
    def init(self) -> None:
        """Prepare the tracer in the process that will run rollouts."""

    def init_worker(self, worker_id: int, store: SpanSink | None = None) -> None:
        self._store = store

    def teardown_worker(self, worker_id: int) -> None:
        store, self._store = self._store, None
        self._writer.release(store)

    def teardown(self) -> None:
        self._writer.close(timeout=2.0)

    @contextlib.contextmanager
    def lifespan(self, store: SpanSink | None = None) -> Iterator[Tracer]:
        self.init()
        self.init_worker(0, store)
        try:
            yield self
        finally:
            self.teardown_worker(0)
            self.teardown()

    # -- tracing -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def trace_context(
        self,
        name: str | None = None,
        *,
        store: SpanSink | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
    ) -> AsyncIterator[RolloutBinding]:
        """Everything traced inside belongs to ``rollout_id``/``attempt_id`` (give both or neither).

        On exit, waits until all the context's spans are stored, lost or dropped (see
        :meth:`RolloutBinding.drain`); the binding tells which.
        """
        if (rollout_id is None) != (attempt_id is None):
            raise ValueError("rollout_id and attempt_id must be given together")
        if context_binding() is not None:
            raise RuntimeError("a trace context is already open in this task")
        binding = RolloutBinding(
            rollout_id,
            attempt_id,
            store or self._store,
            self._writer,
            owner=self,
            policy=self.retry_policy,
            span_transport=self.span_transport,
            give_up_after=self.span_retry_seconds,
        )
        from store_fs.tracing.upstream_bridge import upstream_emitters

        carry_trace_contexts()  # threads the agent starts belong to its rollout (thread_context.py)
        token = bind(binding)
        opened(binding)
        try:
            with upstream_emitters():  # upstream's emit_* record here too
                yield binding
        finally:
            binding.end_unfinished()
            closed(binding)
            unbind(token)
            self.flush_instrumentation()
            await binding.drain()
            self._last = list(binding.spans)

    def flush_instrumentation(self) -> None:
        """Make sure spans that ended inside the context have reached the processor."""

    def get_last_trace(self) -> list[Span]:
        """Spans captured in the most recently closed trace context."""
        return list(self._last)

    def create_span(
        self,
        name: str,
        attributes: Attributes | None = None,
        timestamp: float | None = None,
        status: TraceStatus | None = None,
    ) -> SpanCoreFields:
        """Record an instant span (rewards, annotations) in the current trace context; its
        status UNSET unless given (as upstream's)."""
        now = time.time() if timestamp is None else timestamp
        return SpanCoreFields(
            name=name,
            status=status or TraceStatus(status_code="UNSET"),
            attributes=dict(attributes or {}),
            start_time=now,
            end_time=now,
        )


def active_tracer() -> tuple[Tracer, RolloutBinding] | None:
    """The tracer whose trace context the caller runs in, if any."""
    binding = current_binding()
    if binding is None or not isinstance(binding.owner, Tracer):
        return None
    return binding.owner, binding


class ProviderTracer(Tracer):
    """A tracer whose spans come from an OpenTelemetry ``TracerProvider`` it sets up in ``init``.

    Subclasses set ``_provider`` and push undo callbacks onto ``_undo`` in ``init``;
    ``teardown`` runs the undos in reverse order.
    """

    def __init__(self) -> None:
        super().__init__()
        self._provider: TracerProvider | None = None
        self._undo: list[Callable[[], object]] = []

    _RUNTIME = (*Tracer._RUNTIME, "_provider", "_undo")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._provider = None
        self._undo = []

    @property
    def provider(self) -> TracerProvider:
        if self._provider is None:
            raise RuntimeError("call init() first")
        return self._provider

    def teardown(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        super().teardown()

    def _tracer(self) -> otel_trace.Tracer:
        return self.provider.get_tracer("agentlightning")

    def create_span(
        self,
        name: str,
        attributes: Attributes | None = None,
        timestamp: float | None = None,
        status: TraceStatus | None = None,
    ) -> SpanCoreFields:
        core = super().create_span(name, attributes, timestamp, status)
        start_ns = int((core.start_time or time.time()) * 1e9)
        span = self._tracer().start_span(name, attributes=dict(core.attributes), start_time=start_ns)
        code = {"OK": StatusCode.OK, "ERROR": StatusCode.ERROR}.get(core.status.status_code, StatusCode.UNSET)
        span.set_status(Status(code, core.status.description))
        span.end(end_time=start_ns)
        return core

    @contextlib.contextmanager
    def operation_context(
        self,
        name: str,
        attributes: Attributes | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> Iterator[SpanRecorder]:
        """A span around a block, as upstream's tracers offer: the block records on the
        :class:`SpanRecorder`; an exception escaping it is recorded, with status ``ERROR``."""
        start_ns = None if start_time is None else int(start_time * 1e9)
        span = self._tracer().start_span(name, attributes=dict(attributes or {}), start_time=start_ns)
        recorder = SpanRecorder(span)
        try:
            with otel_trace.use_span(span, end_on_exit=False, record_exception=False):
                yield recorder
        except Exception as err:
            recorder.record_exception(err)
            raise
        finally:
            span.end(end_time=None if end_time is None else int(end_time * 1e9))


class SpanRecorder:
    """Records on an open OpenTelemetry span (upstream's ``SpanRecordingContext``)."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def record_exception(self, exception: BaseException) -> None:
        self.span.record_exception(exception)
        self.record_status("ERROR", str(exception))

    def record_attributes(self, attributes: Attributes) -> None:
        self.span.set_attributes(dict(attributes))

    def record_status(self, status_code: str, description: str | None = None) -> None:
        code = {"OK": StatusCode.OK, "ERROR": StatusCode.ERROR}.get(str(status_code), StatusCode.UNSET)
        self.span.set_status(Status(code, description if code is StatusCode.ERROR else None))

    def get_otel_span(self) -> Any:
        return self.span

    def get_recorded_span(self) -> SpanCoreFields:
        """The span's fields so far (its end time once the block is over)."""
        span = self.span
        return SpanCoreFields(
            name=span.name,
            status=TraceStatus.from_opentelemetry(span.status),
            attributes=dict(span.attributes or {}),
            start_time=None if span.start_time is None else span.start_time / 1e9,
            end_time=None if span.end_time is None else span.end_time / 1e9,
        )


# OpenTelemetry's SDK keeps 128 attributes, events and links per span by default and drops the
# rest without a word: a chat call of 70 messages lost its first prompt messages (the system
# prompt) and its model name. The limits are lifted, each unless an environment variable sets
# it (the attribute counts also follow OTEL_ATTRIBUTE_COUNT_LIMIT): a user who asks gets a limit.
_COUNT_LIMITS: Final = {
    "max_span_attributes": ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"),
    "max_event_attributes": ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"),
    "max_link_attributes": ("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT"),
    "max_events": ("OTEL_SPAN_EVENT_COUNT_LIMIT",),
    "max_links": ("OTEL_SPAN_LINK_COUNT_LIMIT",),
}


def unlimited_span_limits() -> SpanLimits:
    """Span limits without the SDK's default counts (those set by environment variables stay)."""
    unset: Any = SpanLimits.UNSET
    chosen = {name: None if set(envs) & os.environ.keys() else unset for name, envs in _COUNT_LIMITS.items()}
    return SpanLimits(**chosen)


def recording_provider(*, keep_off_switch: bool = False, **kwargs: Any) -> TracerProvider:
    """A ``TracerProvider`` for training data: every span is recorded, and none loses
    attributes to the SDK's default limits (:func:`unlimited_span_limits`).

    ``OTEL_TRACES_SAMPLER`` and ``OTEL_SDK_DISABLED`` are settings of an application's own
    telemetry: followed here, ``always_off`` or ``traceidratio`` dropped an agent's LLM calls
    and emitted rewards without a word, and the attempt still succeeded. The sampler does not
    apply; nor does the off switch, unless ``keep_off_switch`` (a provider that is also the
    process's global one, whose owner then refuses to record: :func:`provider_is_off`).
    """
    provider = TracerProvider(sampler=ALWAYS_ON, span_limits=unlimited_span_limits(), **kwargs)
    if not keep_off_switch and provider_is_off(provider):
        # OTEL_SDK_DISABLED=true hands out no-op tracers; the SDK offers no public switch, and
        # tests/test_tracer_environment.py fails if this stops working.
        provider._disabled = False
    return provider


def provider_is_off(provider: TracerProvider) -> bool:
    """``OTEL_SDK_DISABLED`` made ``provider`` hand out no-op tracers."""
    return bool(getattr(provider, "_disabled", False))


class OtelTracer(ProviderTracer):
    """OpenTelemetry SDK + our OpenAI instrumentation; spans go to the rollout's store.

    Each trace context opens the attempt's root span, ``<name or rollout id>.session``, which
    every span of the attempt descends from (see :mod:`store_fs.tracing.root_span`).

    Args:
        instrument_openai: record OpenAI generation calls (chat completions, completions,
            Responses; sync, async, streaming).
        instrument: extra ``callable(tracer_provider) -> uninstrument`` hooks, e.g. for
            other OpenTelemetry instrumentations that accept a ``tracer_provider``.
        span_transport: "api" (``add_span`` calls, any store) or "otlp" (OTLP/HTTP export
            to the server of a ``LightningStoreClient``; other stores use "api").
    """

    def __init__(
        self,
        *,
        instrument_openai: bool = True,
        instrument: list[Callable[[TracerProvider], Callable[[], None]]] | None = None,
        span_transport: SpanTransport = "api",
    ) -> None:
        super().__init__()
        if span_transport not in ("api", "otlp"):
            raise ValueError(f"span_transport must be 'api' or 'otlp', not {span_transport!r}")
        self.span_transport = span_transport
        self._instrument_openai = instrument_openai
        self._extra = list(instrument or [])

    def init(self) -> None:
        if self._provider is not None:
            return
        self._provider = recording_provider()
        self._provider.add_span_processor(LightningSpanProcessor())
        if self._instrument_openai:
            from store_fs.tracing.openai_instrument import instrument_openai

            self._undo.append(instrument_openai(self._provider.get_tracer("agentlightning.openai"), self))
        self._undo.extend(hook(self._provider) for hook in self._extra)

    def teardown(self) -> None:
        super().teardown()
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None

    @contextlib.asynccontextmanager
    async def trace_context(
        self,
        name: str | None = None,
        *,
        store: SpanSink | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
    ) -> AsyncIterator[RolloutBinding]:
        """The base context, with the attempt's root span open (and current) inside it."""
        tracer = self._tracer()  # raises before anything is opened if init() was not called
        context = super().trace_context(name, store=store, rollout_id=rollout_id, attempt_id=attempt_id)
        async with context as binding:
            with rollout_root_span(tracer, binding, name or rollout_id or "agentlightning"):
                try:
                    yield binding
                finally:
                    binding.end_unfinished()  # before the root, which they descend from

    @contextlib.contextmanager
    def operation(self, name: str, attributes: dict[str, Any] | None = None) -> Iterator[Any]:
        """A span around a block of the agent's own code."""
        with self._tracer().start_as_current_span(name, attributes=attributes) as span:
            yield span
