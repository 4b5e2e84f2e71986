"""AgentOps as a tracer: agentops instruments the agent, our span processor stores its spans.

agentops is imported only by :meth:`AgentOpsTracer.init` (it is slow to import and patches
``builtins.__import__`` process-wide). Offline unless ``agentops_service=True``: no API key,
null span/metric exporters and no log upload, so nothing leaves the machine.

**OpenAI coverage.** agentops 0.4.21 (with openai 3.x) records only ``chat.completions.create``
(sync, async, streamed) well: ``parse`` and the Responses API get no span, the ``stream()``
helpers and ``with_streaming_response(stream=True)`` fail inside its wrapper, raw responses and
legacy streamed completions get spans without the reply. So agentops keeps plain
``chat.completions.create`` calls (its spans gain token ids and logprobs, as upstream's tracer
adds them) and every other call is routed past its wrapper to our own instrumentation
(:mod:`store_fs.tracing.openai_instrument`), recording on agentops' provider in the same
shape; a call agentops records is never recorded twice (the mechanism:
:mod:`store_fs.tracing._agentops_openai`). Each attempt's root span is agentops'
``<name or rollout id>.session`` span, adopted as the attempt's root
(:mod:`store_fs.tracing.root_span`), so a rollout's spans form one tree as under agl's default
tracer.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from store_fs.tracing._agentops_openai import acquire, patch_token_ids, share_openai
from store_fs.tracing.rollout_binding import RolloutBinding, SpanSink, current_binding
from store_fs.tracing.root_span import adopt_root_span
from store_fs.tracing.span_processor import LightningSpanProcessor
from store_fs.tracing.tracer import ProviderTracer, provider_is_off, recording_provider

__all__ = ["AgentOpsTracer"]

log = logging.getLogger(__name__)
API_KEY_ENV = "AGENTOPS_API_KEY"
_LOG_FILE_ENV = "AGENTOPS_LOGGING_TO_FILE"  # agentops writes ./agentops.log unless this is "false"


# Stand-ins for agentops' AuthenticatedOTLPExporter / OTLPMetricExporter: take their arguments, send nothing.
class _NullSpanExporter(SpanExporter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _NullMetricExporter(MetricExporter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class _GatedProcessor(LightningSpanProcessor):
    """On agentops' provider: only AgentOpsTracer rollouts (agentops instruments until exit), until closed.

    The ``None`` values agentops records for absent values (an assistant message's ``content``
    next to its ``tool_calls``) are left out by the base class.
    """

    enabled = True

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        binding = current_binding()
        if self.enabled and binding is not None and isinstance(binding.owner, AgentOpsTracer):
            super().on_start(span, parent_context)


class AgentOpsTracer(ProviderTracer):
    """Each rollout is one agentops trace; its spans go to the rollout's store.

    ``agentops_service=True`` also sends them to AgentOps (needs ``AGENTOPS_API_KEY``); otherwise
    the key is hidden from agentops until teardown. ``token_ids`` adds vLLM-style
    ``prompt_token_ids`` / ``response_token_ids`` (and ``logprobs.content``) to agentops' OpenAI
    spans; the spans of our own instrumentation always carry them.
    """

    def __init__(self, *, agentops_service: bool = False, token_ids: bool = True) -> None:
        super().__init__()
        self.agentops_service = agentops_service
        self.token_ids = token_ids

    def init(self) -> None:
        if self._provider is not None:
            return
        key = os.environ.get(API_KEY_ENV)
        if self.agentops_service and not key:
            raise RuntimeError(f"AgentOpsTracer(agentops_service=True) needs {API_KEY_ENV} to be set")
        if not self.agentops_service and key is not None:
            del os.environ[API_KEY_ENV]  # a key makes agentops authenticate with its service at init
            self._undo.append(lambda: os.environ.setdefault(API_KEY_ENV, key))
        if _has_openai():
            # agentops instruments a package when it is imported; openai imported after init()
            # fails with a circular import inside agentops and stays unwrapped until imported again.
            importlib.import_module("openai")
        agentops: Any = importlib.import_module("agentops")
        core: Any = importlib.import_module("agentops.sdk.core")
        if core.tracer.initialized:
            log.warning("agentops was initialised elsewhere; its exporters are left as they are")
        else:
            self._start_agentops(agentops, core, offline=not self.agentops_service)
        provider: TracerProvider = core.tracer.provider
        if provider_is_off(provider):
            raise RuntimeError(
                "OTEL_SDK_DISABLED=true switches off the OpenTelemetry provider AgentOps records "
                "through: AgentOpsTracer would store no LLM call and no emitted reward (unset it "
                "for the runners, or use OtelTracer, which does not follow it)"
            )
        if importlib.import_module("opentelemetry.trace").get_tracer_provider() is not provider:
            log.warning("a global TracerProvider predates agentops': its traces will be split")
        # agentops has one provider per process: tracers share one processor, or spans double.
        self._undo.append(acquire("processor", lambda: _add_processor(provider)))
        if self.token_ids:
            self._undo.append(acquire("token_ids", patch_token_ids))
        if _has_openai():
            self._undo.extend(share_openai(provider, self))
        self._provider = provider

    @staticmethod
    def _start_agentops(agentops: Any, core: Any, *, offline: bool) -> None:
        saved = core.AuthenticatedOTLPExporter, core.OTLPMetricExporter
        saved_provider = core.TracerProvider
        # Its provider with OpenTelemetry's default limit of 128 attributes a span would drop a
        # long conversation's first prompt messages, and one following OTEL_TRACES_SAMPLER could
        # drop its calls and rewards: it records everything, as agl's own tracer's. It is the
        # process's global provider too, so OTEL_SDK_DISABLED keeps it off, and init refuses.
        core.TracerProvider = functools.partial(recording_provider, keep_off_switch=True)
        if offline:
            core.AuthenticatedOTLPExporter, core.OTLPMetricExporter = _NullSpanExporter, _NullMetricExporter
            # Stays patched: agentops' InternalSpanProcessor uploads its log when a root span ends.
            processors: Any = importlib.import_module("agentops.sdk.processors")
            processors.upload_logfile = lambda *args, **kwargs: None
        no_log_file = _LOG_FILE_ENV not in os.environ
        os.environ.setdefault(_LOG_FILE_ENV, "false")
        try:
            agentops.init(auto_start_session=False, log_session_replay_url=False, log_level="ERROR")
        finally:  # only setup_telemetry() uses the exporter and provider classes
            core.AuthenticatedOTLPExporter, core.OTLPMetricExporter = saved
            core.TracerProvider = saved_provider
            if no_log_file:
                os.environ.pop(_LOG_FILE_ENV, None)
        # agentops buffers every print() for the upload; with no upload the buffer only grows.
        printing: Any = importlib.import_module("agentops.logging.instrument_logging")
        if offline and builtins.print is printing.print_logger:
            builtins.print = printing._original_print

    def teardown(self) -> None:
        super().teardown()
        self._provider = None  # agentops stays initialised: it cannot be re-initialised in-process

    @contextlib.asynccontextmanager
    async def trace_context(
        self,
        name: str | None = None,
        *,
        store: SpanSink | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
    ) -> AsyncIterator[RolloutBinding]:
        """The base context, holding one agentops trace whose ``<name or rollout_id>.session``
        span is the attempt's root (as agl's default tracer names it): spans that end up without
        a parent are stored under it."""
        self.provider  # noqa: B018 - raises before anything is opened if init() was not called
        agentops: Any = importlib.import_module("agentops")
        context = super().trace_context(name, store=store, rollout_id=rollout_id, attempt_id=attempt_id)
        async with context as binding:
            trace_context = agentops.start_trace(trace_name=name or rollout_id or "agentlightning")
            if trace_context is not None:
                adopt_root_span(binding, trace_context.span.get_span_context())
            ok = False
            try:
                yield binding
                ok = True
            finally:
                if trace_context is not None:  # ended inside the binding, so the base class drains it
                    trace_context.span.set_status(Status(StatusCode.OK if ok else StatusCode.ERROR))
                    agentops.end_trace(trace_context, end_state="Success" if ok else "Error")

    def flush_instrumentation(self) -> None:
        if self._provider is not None:
            self._provider.force_flush(5_000)


def _add_processor(provider: TracerProvider) -> Callable[[], None]:
    processor = _GatedProcessor()
    provider.add_span_processor(processor)
    return lambda: _remove_processor(provider, processor)


def _remove_processor(provider: TracerProvider, processor: _GatedProcessor) -> None:
    processor.enabled = False
    processor.shutdown()
    multi: Any = getattr(provider, "_active_span_processor", None)  # no public API removes one
    with contextlib.suppress(Exception), multi._lock:
        multi._span_processors = tuple(p for p in multi._span_processors if p is not processor)


def _has_openai() -> bool:
    return importlib.util.find_spec("openai") is not None
