"""AgentOps as a tracer: agentops instruments the agent, our span processor stores its spans.

agentops is imported only by :meth:`AgentOpsTracer.init` (it is slow to import and patches
``builtins.__import__`` process-wide). Offline unless ``agentops_service=True``: no API key,
null span/metric exporters and no log upload, so nothing leaves the machine. Our own OpenAI
wrapper stays off (agentops records ``openai.chat.completion`` spans); token ids are added.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode

from store_fs.tracing.rollout_binding import RolloutBinding, SpanSink, current_binding
from store_fs.tracing.span_processor import LightningSpanProcessor
from store_fs.tracing.tracer import ProviderTracer

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
    """On agentops' provider: only AgentOpsTracer rollouts (agentops instruments until exit), until closed."""

    enabled = True

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        binding = current_binding()
        if self.enabled and binding is not None and isinstance(binding.owner, AgentOpsTracer):
            super().on_start(span, parent_context)


class AgentOpsTracer(ProviderTracer):
    """Each rollout is one agentops trace; its spans go to the rollout's store.

    ``agentops_service=True`` also sends them to AgentOps (needs ``AGENTOPS_API_KEY``); otherwise
    the key is hidden from agentops until teardown. ``token_ids`` adds vLLM-style
    ``prompt_token_ids`` / ``response_token_ids`` to agentops' OpenAI spans.
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
        from store_fs.tracing.openai_instrument import _active_tracer

        if _active_tracer() is not None:
            log.warning("store_fs' OpenAI instrumentation is active too: completions get two spans")
        agentops: Any = importlib.import_module("agentops")
        core: Any = importlib.import_module("agentops.sdk.core")
        if core.tracer.initialized:
            log.warning("agentops was initialised elsewhere; its exporters are left as they are")
        else:
            self._start_agentops(agentops, core, offline=not self.agentops_service)
        provider: TracerProvider = core.tracer.provider
        if importlib.import_module("opentelemetry.trace").get_tracer_provider() is not provider:
            log.warning("a global TracerProvider predates agentops': its traces will be split")
        # agentops has one provider per process: tracers share one processor, or spans double.
        self._undo.append(_acquire("processor", lambda: _add_processor(provider)))
        if self.token_ids:
            self._undo.append(_acquire("token_ids", _patch_token_ids))
        self._provider = provider

    @staticmethod
    def _start_agentops(agentops: Any, core: Any, *, offline: bool) -> None:
        saved = core.AuthenticatedOTLPExporter, core.OTLPMetricExporter
        if offline:
            core.AuthenticatedOTLPExporter, core.OTLPMetricExporter = _NullSpanExporter, _NullMetricExporter
            # Stays patched: agentops' InternalSpanProcessor uploads its log when a root span ends.
            processors: Any = importlib.import_module("agentops.sdk.processors")
            processors.upload_logfile = lambda *args, **kwargs: None
        no_log_file = _LOG_FILE_ENV not in os.environ
        os.environ.setdefault(_LOG_FILE_ENV, "false")
        try:
            agentops.init(auto_start_session=False, log_session_replay_url=False, log_level="ERROR")
        finally:  # only setup_telemetry() uses the exporter classes
            core.AuthenticatedOTLPExporter, core.OTLPMetricExporter = saved
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
        """The base context, holding one agentops trace (root span ``<rollout_id>.session``)."""
        self.provider  # noqa: B018 - raises before anything is opened if init() was not called
        agentops: Any = importlib.import_module("agentops")
        context = super().trace_context(name, store=store, rollout_id=rollout_id, attempt_id=attempt_id)
        async with context as binding:
            trace = agentops.start_trace(trace_name=rollout_id or name or "agentlightning")
            ok = False
            try:
                yield binding
                ok = True
            finally:
                if trace is not None:  # ended inside the binding, so the base class drains it
                    trace.span.set_status(Status(StatusCode.OK if ok else StatusCode.ERROR))
                    agentops.end_trace(trace, end_state="Success" if ok else "Error")

    def flush_instrumentation(self) -> None:
        if self._provider is not None:
            self._provider.force_flush(5_000)


_lock = threading.Lock()
_shared: dict[str, tuple[int, Callable[[], object]]] = {}  # key -> (users, undo)


def _acquire(key: str, setup: Callable[[], Callable[[], object]]) -> Callable[[], None]:
    """Run ``setup`` once per process; its undo runs when the last user releases it."""
    with _lock:
        users, undo = _shared[key] if key in _shared else (0, setup())
        _shared[key] = (users + 1, undo)
    released = False

    def release() -> None:
        nonlocal released
        with _lock:
            if released:
                return
            released = True
            users, undo = _shared.pop(key)
            if users > 1:
                _shared[key] = (users - 1, undo)
            else:
                undo()

    return release


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


# ---------------------------------------------------------------- token ids on agentops' spans


def _extra(obj: Any) -> Mapping[str, Any]:
    extra = getattr(obj, "model_extra", None)
    return extra if isinstance(extra, Mapping) else {}


def _ids(value: Any) -> list[int] | None:
    ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return value if ok else None


def _with_response_ids(original: Any) -> Any:
    def handle_chat_attributes(*args: Any, **kwargs: Any) -> Any:
        attrs = original(*args, **kwargs)
        response = kwargs.get("return_value")
        first = (getattr(response, "choices", None) or [None])[0]
        found = {
            "prompt_token_ids": _ids(_extra(response).get("prompt_token_ids")),
            "response_token_ids": _ids(_extra(first).get("token_ids")),
        }
        attrs.update({k: v for k, v in found.items() if v is not None})
        return attrs

    return handle_chat_attributes


def _collecting(original: Any) -> Any:
    # vLLM streams: prompt ids on the first chunk, reply ids with each delta.
    def _process_chunk(self: Any, chunk: Any) -> Any:
        ids: dict[str, list[int]] = self.__dict__.setdefault("_agl_token_ids", {})
        prompt = _ids(_extra(chunk).get("prompt_token_ids"))
        if prompt is not None:
            ids.setdefault("prompt_token_ids", prompt)
        for choice in getattr(chunk, "choices", None) or []:
            reply = _ids(_extra(choice).get("token_ids")) if getattr(choice, "index", 0) == 0 else None
            if reply is not None:
                ids.setdefault("response_token_ids", []).extend(reply)
        return original(self, chunk)

    return _process_chunk


def _stamping(original: Any) -> Any:
    def _finalize_stream(self: Any) -> Any:
        for key, value in self.__dict__.get("_agl_token_ids", {}).items():
            self._span.set_attribute(key, value)
        return original(self)

    return _finalize_stream


def _patch_token_ids() -> Callable[[], None]:
    """Wrap agentops' OpenAI chat attribute extraction and stream wrappers; returns the undo."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        wrappers: Any = importlib.import_module("agentops.instrumentation.providers.openai.stream_wrapper")
        targets = [(wrappers, "handle_chat_attributes", _with_response_ids)]
        for cls in (wrappers.OpenaiStreamWrapper, wrappers.OpenAIAsyncStreamWrapper):
            targets += [(cls, "_process_chunk", _collecting), (cls, "_finalize_stream", _stamping)]
        for owner, attr, make in targets:
            original = getattr(owner, attr)
            setattr(owner, attr, make(original))
            saved.append((owner, attr, original))
    except Exception as err:  # another agentops version: its spans simply lack token ids
        log.warning("cannot add token ids to agentops' OpenAI spans: %s", err)

    def undo() -> None:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)
        saved.clear()

    return undo
