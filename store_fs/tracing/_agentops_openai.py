"""How the AgentOps tracer shares OpenAI calls with agentops, and the token ids it adds to agentops' spans.

Mechanism behind :mod:`store_fs.tracing.agentops_tracer`, in three parts:

* **Routing** (:func:`share_openai`). agentops 0.4.21 records plain ``chat.completions.create``
  calls in full; for other calls its wrappers fail or record no reply. Such calls are routed
  past agentops' wrapper to agl's instrumentation (:mod:`store_fs.tracing.openai_instrument`,
  patched lower, at the SDK's ``request``), recording on agentops' provider through
  :class:`BesideAgentOps`, which records nothing while agentops' wrapper runs: one span per call.
* **Token ids** (:func:`patch_token_ids`). agentops' chat spans gain vLLM-style
  ``prompt_token_ids`` / ``response_token_ids`` and ``logprobs.content``, from whole replies
  and from streamed chunks.
* **Once per process** (:func:`acquire`). agentops has one provider per process; these patches
  are set up by the first tracer and undone when the last one releases them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes as OtelAttributes

__all__ = ["BesideAgentOps", "acquire", "agentops_records", "marking", "patch_token_ids", "share_openai"]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- once per process


_lock = threading.Lock()
_shared: dict[str, tuple[int, Callable[[], object]]] = {}  # key -> (users, undo)


def acquire(key: str, setup: Callable[[], Callable[[], object]]) -> Callable[[], None]:
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


# ---------------------------------------------------------------- which calls agentops records


def share_openai(provider: TracerProvider, owner: object) -> list[Callable[[], object]]:
    """agentops keeps the OpenAI calls it records in full; our instrumentation, recording on
    agentops' provider, takes the rest of the calls made in ``owner``'s rollouts. Returns the undos."""
    from store_fs.tracing.openai_instrument import instrument_openai

    routing = acquire("routing", _route_openai)
    beside = BesideAgentOps(provider.get_tracer("agentlightning.openai"))
    return [routing, instrument_openai(beside, owner)]


_RAW_HEADER = "X-Stainless-Raw-Response"  # openai._constants.RAW_RESPONSE_HEADER


def agentops_records(kwargs: Mapping[str, Any]) -> bool:
    """Whether a ``chat.completions.create`` call is one agentops 0.4.21 records in full.

    Not raw responses (it would read, or break, the caller's response) and not calls that
    pass the SDK's "omitted" sentinels: the SDK's ``stream()`` helper sends every parameter,
    and agentops fails on an omitted ``tools`` or ``messages``.
    """
    import openai

    headers = kwargs.get("extra_headers")
    if isinstance(headers, Mapping) and _RAW_HEADER in headers:
        return False
    return not any(isinstance(value, openai.Omit | openai.NotGiven) for value in kwargs.values())


def _is_agentops_wrapper(method: Any) -> bool:
    wrapper = getattr(method, "_self_wrapper", None)  # a wrapt FunctionWrapper's wrapper function
    return str(getattr(wrapper, "__module__", "")).startswith("agentops.") and hasattr(method, "__wrapped__")


# True while agentops' wrapper runs the SDK method: our instrumentation then records nothing.
_in_agentops: contextvars.ContextVar[bool] = contextvars.ContextVar("agl_in_agentops", default=False)


def marking(original: Any, is_async: bool) -> Callable[..., Any]:
    """``original`` (an SDK method) run with :data:`_in_agentops` set (until awaited, if async)."""
    if is_async:

        @functools.wraps(original)
        async def run_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            token = _in_agentops.set(True)
            try:
                return await original(self, *args, **kwargs)
            finally:
                _in_agentops.reset(token)

        return run_async

    @functools.wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _in_agentops.set(True)
        try:
            return original(self, *args, **kwargs)
        finally:
            _in_agentops.reset(token)

    return run


def _router(owner: type, wrapper: Any, original: Any, is_async: bool) -> Callable[..., Any]:
    """``create`` calling agentops' ``wrapper`` for the calls it records, ``original`` otherwise."""

    def target(self: Any, kwargs: Mapping[str, Any]) -> Any:
        return wrapper.__get__(self, owner) if agentops_records(kwargs) else functools.partial(original, self)

    if is_async:

        @functools.wraps(original)
        async def create_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await target(self, kwargs)(*args, **kwargs)

        return create_async

    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        return target(self, kwargs)(*args, **kwargs)

    return create


def _route_openai() -> Callable[[], None]:
    """Share OpenAI calls between agentops and our instrumentation; returns the undo.

    agentops' wrappers of ``chat.completions.create`` and legacy ``completions.create`` run the
    SDK method with :data:`_in_agentops` set (also when reached through a method captured
    before, e.g. an older ``with_raw_response``). In front of them: chat calls go through
    :func:`_router`; legacy calls always bypass agentops (its streamed spans lack the reply).
    """
    chat: Any = importlib.import_module("openai.resources.chat.completions")
    legacy: Any = importlib.import_module("openai.resources.completions")
    saved: list[tuple[type, Any, Any, Any]] = []
    # The SDK's async methods are plain functions returning coroutines (``required_args``).
    routes = [(chat.Completions, True, False), (chat.AsyncCompletions, True, True)]
    routes += [(legacy.Completions, False, False), (legacy.AsyncCompletions, False, True)]
    for owner, is_chat, is_async in routes:
        wrapper = owner.__dict__.get("create")
        if not _is_agentops_wrapper(wrapper):
            continue  # agentops did not wrap it (or someone wrapped over it): leave it alone
        original = wrapper.__wrapped__
        wrapper.__wrapped__ = marking(original, is_async)
        routed = _router(owner, wrapper, original, is_async) if is_chat else original
        owner.create = routed
        saved.append((owner, wrapper, original, routed))

    uncontain = _contain_streams()

    def undo() -> None:
        uncontain()
        for owner, wrapper, original, routed in reversed(saved):
            wrapper.__wrapped__ = original
            if owner.__dict__.get("create") is routed:
                owner.create = wrapper
        saved.clear()

    return undo


def _contain_streams() -> Callable[[], None]:
    """Keep agentops' chat stream spans from taking over the caller's context; returns the undo.

    agentops 0.4.21 makes a stream's span the current span when the stream is made, and puts
    the caller's back only when the stream is read to its end. A stream that failed part-way
    (the sync wrapper does not even end its span then) or that the agent stopped reading
    stayed the parent of every later span of the attempt, its error lost, and was stored last,
    as unfinished (found by an adversarial pass). Here the caller's context is put back as the
    stream is made (agentops' own later detach puts back the same), and an error while the sync
    stream is read ends its span as failed, as agentops' async wrapper does.
    """

    def targets(wrappers: Any) -> list[tuple[Any, str, Callable[[Any], Any]]]:
        out: list[tuple[Any, str, Callable[[Any], Any]]] = [
            (cls, "__init__", _leaving_context)
            for cls in (wrappers.OpenaiStreamWrapper, wrappers.OpenAIAsyncStreamWrapper)
        ]
        return [*out, (wrappers.OpenaiStreamWrapper, "__next__", _ending_on_error)]

    return _wrap_stream_module(targets, "keep its OpenAI stream spans out of the caller's context")


def _wrap_stream_module(
    targets: Callable[[Any], list[tuple[Any, str, Callable[[Any], Any]]]], purpose: str
) -> Callable[[], None]:
    """Wrap each ``(owner, attribute, wrapper maker)`` that ``targets`` names in agentops' OpenAI
    stream module; returns the undo. Another agentops version without those names keeps its
    own behaviour (logged: what agl could not do, ``purpose``)."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        wrappers: Any = importlib.import_module("agentops.instrumentation.providers.openai.stream_wrapper")
        for owner, attr, make in targets(wrappers):
            original = getattr(owner, attr)
            setattr(owner, attr, make(original))
            saved.append((owner, attr, original))
    except Exception as err:
        log.warning("cannot make agentops %s: %s", purpose, err)

    def undo() -> None:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)
        saved.clear()

    return undo


def _leaving_context(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        before = otel_context.get_current()
        original(self, *args, **kwargs)
        otel_context.attach(before)  # the stream's span is not the caller's current span

    return __init__


def _ending_on_error(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    @functools.wraps(original)
    def __next__(self: Any) -> Any:
        try:
            return original(self)
        except StopIteration:
            raise
        except Exception as err:
            span = getattr(self, "_span", None)
            if span is not None and span.is_recording():
                span.record_exception(err)
                span.set_status(Status(StatusCode.ERROR, str(err)))
                span.end()
            raise

    return __next__


class _SkippedSpan(NonRecordingSpan):
    """Stands for a span not recorded because agentops records the call (or its parent was skipped)."""


def _inside_agentops_call(context: Context | None) -> bool:
    return _in_agentops.get() or isinstance(trace.get_current_span(context), _SkippedSpan)


class BesideAgentOps(trace.Tracer):
    """Our OpenAI instrumentation's tracer under AgentOps: no span inside agentops' LLM spans.

    A call agentops records reaches our instrumentation (which sits lower, at the SDK's
    request) with :data:`_in_agentops` set; its span, and its tool-call children, become
    non-recording, so each call has one span.
    """

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: OtelAttributes = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        if _inside_agentops_call(context):
            # Carries the current span's context, so what starts beneath still joins the trace.
            return _SkippedSpan(trace.get_current_span(context).get_span_context())
        return self._inner.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: OtelAttributes = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time, False, False)
        with trace.use_span(span, end_on_exit, record_exception, set_status_on_exception) as current:
            yield current


# ---------------------------------------------------------------- token ids on agentops' spans


def _extra(obj: Any) -> Mapping[str, Any]:
    extra = getattr(obj, "model_extra", None)
    return extra if isinstance(extra, Mapping) else {}


def _ids(value: Any) -> list[int] | None:
    ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return value if ok else None


def _logprobs(choice: Any) -> dict[str, str]:
    # As upstream's AgentOps patch records them: each token's logprob entry, dumped, as JSON text.
    logprobs = getattr(choice, "logprobs", None)
    found = {}
    for kind in ("content", "refusal"):
        entries = getattr(logprobs, kind, None)
        if isinstance(entries, list):
            found[f"logprobs.{kind}"] = json.dumps([_dumped(entry) for entry in entries])
    return found


def _dumped(entry: Any) -> Any:
    return entry.model_dump() if hasattr(entry, "model_dump") else entry


def _parsed(response: Any) -> Any:
    """A raw response's completion: agentops has parsed it already (``parse()`` caches)."""
    parse = getattr(response, "parse", None)
    if response is None or hasattr(response, "choices") or not callable(parse):
        return response
    if inspect.iscoroutinefunction(parse):  # an async raw response: agentops cannot have read it
        return None
    return parse()


def _response_extras(value: Any) -> dict[str, Any]:
    """Token ids and logprobs of a chat completion (or of a raw response's), where present."""
    response = _parsed(value)
    first = (getattr(response, "choices", None) or [None])[0]
    found = {
        "prompt_token_ids": _ids(_extra(response).get("prompt_token_ids")),
        "response_token_ids": _ids(_extra(first).get("token_ids")),
        **(_logprobs(first) if first is not None else {}),
    }
    return {k: v for k, v in found.items() if v is not None}


def _with_response_ids(original: Any) -> Any:
    def handle_chat_attributes(*args: Any, **kwargs: Any) -> Any:
        attrs = original(*args, **kwargs)
        try:  # runs inside agentops' wrapper, where an exception would fail the traced call
            attrs.update(_response_extras(kwargs.get("return_value")))
        except Exception:
            log.debug("cannot read token ids for agentops' span", exc_info=True)
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


def patch_token_ids() -> Callable[[], None]:
    """Wrap agentops' OpenAI chat attribute extraction and stream wrappers; returns the undo."""

    def targets(wrappers: Any) -> list[tuple[Any, str, Callable[[Any], Any]]]:
        out: list[tuple[Any, str, Callable[[Any], Any]]] = [
            (wrappers, "handle_chat_attributes", _with_response_ids)
        ]
        for cls in (wrappers.OpenaiStreamWrapper, wrappers.OpenAIAsyncStreamWrapper):
            out += [(cls, "_process_chunk", _collecting), (cls, "_finalize_stream", _stamping)]
        return out

    return _wrap_stream_module(targets, "add token ids to its OpenAI spans")
