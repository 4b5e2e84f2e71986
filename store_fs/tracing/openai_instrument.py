"""OpenTelemetry spans for OpenAI chat completions (sync, async, streaming), without extra packages.

:func:`instrument_openai` patches ``openai.resources.chat.completions.Completions.create`` and
``AsyncCompletions.create``. Each call yields one CLIENT span named ``openai.chat.completion``
(upstream Agent-lightning's name) carrying the GenAI semantic-convention attributes, upstream's
flattened ``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*`` keys, and vLLM-style
``prompt_token_ids`` / ``response_token_ids`` when the response has them.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["SPAN_NAME", "instrument_openai"]

SPAN_NAME = "openai.chat.completion"
_METHOD = "create"
_MARK = "__agl_openai_instrumented__"
_log = logging.getLogger(__name__)

Attrs = dict[str, Any]


_lock = threading.Lock()
_originals: dict[type, Callable[..., Any]] = {}  # non-empty while openai is patched
# (token, tracer) pairs; the list is replaced, never mutated, so calls read it without the lock.
_registrations: list[tuple[object, trace.Tracer]] = []


def instrument_openai(tracer: trace.Tracer) -> Callable[[], None]:
    """Record every chat completion as a span of ``tracer``; returns the function that undoes it.

    Reference-counted, never double-wrapped: the first call patches the two ``create`` methods,
    later calls only register their tracer, and the most recently registered tracer that is
    still registered records the spans. Each returned undo function is idempotent and removes
    only its own registration; the last one restores the original methods (unless something
    else has since patched over ours, in which case ours stays in place as a pass-through).

    Span contract: started like ``tracer.start_as_current_span`` (a child of the caller's current
    span, current while the request runs); it ends when the call returns, or for ``stream=True``
    when the returned stream is exhausted, closed or raises. Errors are recorded on the span
    (status ERROR) and propagate unchanged. Failures inside the instrumentation itself are logged
    at DEBUG and never change the call's outcome. Streams come back wrapped in a proxy that
    delegates every other attribute to the ``openai`` stream (it is not an ``openai.Stream``).
    """
    global _registrations
    from openai.resources.chat.completions import AsyncCompletions, Completions

    token = object()
    with _lock:
        if not _originals:
            for cls, make in ((Completions, _wrap_sync), (AsyncCompletions, _wrap_async)):
                current = getattr(cls, _METHOD)
                # A wrapper left by an earlier copy of this module (reload): wrap what it wrapped.
                original = (
                    getattr(current, "__wrapped__", current) if getattr(current, _MARK, False) else current
                )
                _originals[cls] = original
                wrapper = make(original)
                setattr(wrapper, _MARK, True)
                setattr(cls, _METHOD, wrapper)
        _registrations = [*_registrations, (token, tracer)]

    def uninstrument() -> None:
        global _registrations
        with _lock:
            if not any(t is token for t, _ in _registrations):
                return
            _registrations = [(t, tr) for t, tr in _registrations if t is not token]
            if _registrations:
                return
            for cls, original in _originals.items():
                if getattr(getattr(cls, _METHOD), _MARK, False):
                    setattr(cls, _METHOD, original)
            _originals.clear()

    return uninstrument


def _active_tracer() -> trace.Tracer | None:
    registrations = _registrations
    return registrations[-1][1] if registrations else None


def _wrap_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _active_tracer()
        if tracer is None:
            return original(self, *args, **kwargs)
        with _start(tracer, self, kwargs) as span:
            try:
                result = original(self, *args, **kwargs)
            except BaseException as exc:
                _finish(span, exc)
                raise
        if kwargs.get("stream") is True and hasattr(result, "__next__"):
            return _TracedStream(result, span)
        _guard(lambda: span.set_attributes(_response_attrs(result)))
        _finish(span, None)
        return result

    return create


def _wrap_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = _active_tracer()
        if tracer is None:
            return await original(self, *args, **kwargs)
        with _start(tracer, self, kwargs) as span:
            try:
                result = await original(self, *args, **kwargs)
            except BaseException as exc:
                _finish(span, exc)
                raise
        if kwargs.get("stream") is True and hasattr(result, "__anext__"):
            return _TracedAsyncStream(result, span)
        _guard(lambda: span.set_attributes(_response_attrs(result)))
        _finish(span, None)
        return result

    return create


def _start(tracer: trace.Tracer, resource: Any, kwargs: Mapping[str, Any]) -> Any:
    attrs = _guard(lambda: _request_attrs(resource, kwargs)) or {}
    # end_on_exit=False: a stream's span outlives create(); _finish records errors and ends it.
    return tracer.start_as_current_span(
        SPAN_NAME,
        kind=SpanKind.CLIENT,
        attributes=attrs,
        record_exception=False,
        set_status_on_exception=False,
        end_on_exit=False,
    )


def _finish(span: trace.Span, exc: BaseException | None) -> None:
    if exc is not None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end()


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # tracing must never break (or skip ending the span of) the traced call
        _log.debug("openai instrumentation failed", exc_info=True)
        return None


# ---------------------------------------------------------------- attribute extraction


def _plain(obj: Any) -> Any:
    """Pydantic models and other objects to JSON-ready data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_plain(value), default=str, ensure_ascii=False)


def _number(value: Any) -> bool:
    # Excludes openai's NOT_GIVEN / Omit sentinels and None, and bools (an int subclass).
    return isinstance(value, int | float) and not isinstance(value, bool)


def _request_attrs(resource: Any, kwargs: Mapping[str, Any]) -> Attrs:
    attrs: Attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.type": "chat",
        "gen_ai.request.streaming": kwargs.get("stream") is True,
    }
    if isinstance(kwargs.get("model"), str):
        attrs["gen_ai.request.model"] = kwargs["model"]
    params = ("temperature", "max_completion_tokens", "max_tokens", "top_p")
    for key in params:
        if _number(kwargs.get(key)):  # max_tokens, when given, overrides max_completion_tokens
            attrs[f"gen_ai.request.{key.replace('max_completion_tokens', 'max_tokens')}"] = kwargs[key]
    host = getattr(getattr(getattr(resource, "_client", None), "base_url", None), "host", None)
    if isinstance(host, str) and host:
        attrs["server.address"] = host
    messages = kwargs.get("messages")
    if isinstance(messages, list | tuple):
        for i, message in enumerate(messages):
            _message_attrs(attrs, f"gen_ai.prompt.{i}", _plain(message))
    return attrs


def _message_attrs(attrs: Attrs, prefix: str, message: Any) -> None:
    if not isinstance(message, Mapping):
        attrs[f"{prefix}.content"] = _as_text(message)
        return
    for key in ("role", "content", "name", "tool_call_id", "refusal"):
        if message.get(key) is not None:
            attrs[f"{prefix}.{key}"] = _as_text(message[key])
    for key in ("tool_calls", "function_call"):
        if message.get(key):
            attrs[f"{prefix}.{key}"] = _as_text(message[key])


def _extra(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    extra = getattr(obj, "model_extra", None)
    return extra if isinstance(extra, Mapping) else {}


def _token_ids(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def _usage_attrs(attrs: Attrs, usage: Any) -> None:
    prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    total = getattr(usage, "total_tokens", None)
    if _number(prompt):
        attrs["gen_ai.usage.input_tokens"] = attrs["gen_ai.usage.prompt_tokens"] = prompt
    if _number(completion):
        attrs["gen_ai.usage.output_tokens"] = attrs["gen_ai.usage.completion_tokens"] = completion
    if _number(total):
        attrs["gen_ai.usage.total_tokens"] = total


def _header_attrs(attrs: Attrs, obj: Any) -> None:
    for attr, key in (
        ("id", "gen_ai.response.id"),
        ("model", "gen_ai.response.model"),
        ("system_fingerprint", "gen_ai.openai.system_fingerprint"),
    ):
        value = getattr(obj, attr, None)
        if isinstance(value, str):
            attrs[key] = value


def _response_attrs(result: Any) -> Attrs:
    """Attributes of a ``ChatCompletion`` (anything else, e.g. a raw response, yields none)."""
    choices = getattr(result, "choices", None)
    if not isinstance(choices, list):
        return {}
    attrs: Attrs = {}
    _header_attrs(attrs, result)
    finish_reasons = []
    for i, choice in enumerate(choices):
        message = _plain(getattr(choice, "message", None))
        if message is not None:
            _message_attrs(attrs, f"gen_ai.completion.{i}", message)
        reason = getattr(choice, "finish_reason", None)
        if isinstance(reason, str):
            attrs[f"gen_ai.completion.{i}.finish_reason"] = reason
            finish_reasons.append(reason)
    attrs["gen_ai.response.finish_reasons"] = finish_reasons
    _usage_attrs(attrs, getattr(result, "usage", None))
    prompt_ids = _token_ids(_extra(result).get("prompt_token_ids"))
    if prompt_ids is not None:
        attrs["prompt_token_ids"] = prompt_ids
    response_ids = _token_ids(_extra(choices[0]).get("token_ids")) if choices else None
    if response_ids is not None:
        attrs["response_token_ids"] = response_ids
    return attrs


# ---------------------------------------------------------------- streams


class _Accumulator:
    """Folds ``ChatCompletionChunk`` objects into the attributes of the equivalent completion."""

    def __init__(self) -> None:
        self.attrs: Attrs = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.prompt_ids: list[int] | None = None
        self.response_ids: list[int] = []
        self.saw_response_ids = False

    def add(self, chunk: Any) -> None:
        _header_attrs(self.attrs, chunk)
        if getattr(chunk, "usage", None) is not None:
            _usage_attrs(self.attrs, chunk.usage)
        if self.prompt_ids is None:
            self.prompt_ids = _token_ids(_extra(chunk).get("prompt_token_ids"))
        for choice in getattr(chunk, "choices", None) or []:
            index = getattr(choice, "index", 0)
            state = self.choices.setdefault(index, {"content": [], "tool_calls": {}})
            delta: Any = getattr(choice, "delta", None)
            if getattr(delta, "role", None):
                state["role"] = delta.role
            if getattr(delta, "content", None):
                state["content"].append(delta.content)
            for call in getattr(delta, "tool_calls", None) or []:  # fragments keyed by call index
                blank = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                slot = state["tool_calls"].setdefault(call.index, blank)
                slot["id"] = call.id or slot["id"]
                if call.function is not None:
                    slot["function"]["name"] += call.function.name or ""
                    slot["function"]["arguments"] += call.function.arguments or ""
            if isinstance(getattr(choice, "finish_reason", None), str):
                state["finish_reason"] = choice.finish_reason
            ids = _token_ids(_extra(choice).get("token_ids")) if index == 0 else None
            if ids is not None:
                self.saw_response_ids = True
                self.response_ids.extend(ids)

    def result(self) -> Attrs:
        attrs = dict(self.attrs)
        finish_reasons = []
        for index, state in sorted(self.choices.items()):
            prefix = f"gen_ai.completion.{index}"
            attrs[f"{prefix}.role"] = state.get("role", "assistant")
            if state["content"]:
                attrs[f"{prefix}.content"] = "".join(state["content"])
            if state["tool_calls"]:
                calls = [call for _, call in sorted(state["tool_calls"].items())]
                attrs[f"{prefix}.tool_calls"] = json.dumps(calls, ensure_ascii=False)
            if "finish_reason" in state:
                attrs[f"{prefix}.finish_reason"] = state["finish_reason"]
                finish_reasons.append(state["finish_reason"])
        attrs["gen_ai.response.finish_reasons"] = finish_reasons
        if self.prompt_ids is not None:
            attrs["prompt_token_ids"] = self.prompt_ids
        if self.saw_response_ids:
            attrs["response_token_ids"] = self.response_ids
        return attrs


class _StreamSpan:
    """Shared bookkeeping: accumulate chunks, end the span exactly once."""

    def __init__(self, stream: Any, span: trace.Span) -> None:
        self._stream = stream
        self._span = span
        self._acc = _Accumulator()
        self._done = False

    def _add(self, chunk: Any) -> None:
        _guard(lambda: self._acc.add(chunk))

    def _end(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        _guard(lambda: self._span.set_attributes(self._acc.result()))
        _finish(self._span, exc)

    def __getattr__(self, name: str) -> Any:
        if name == "_stream":  # not yet set (copy/pickle): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self._stream, name)


class _TracedStream(_StreamSpan):
    """Proxy for ``openai.Stream``: the span ends when it is exhausted, closed, or raises."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._stream)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._add(chunk)
        return chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._end(None)

    def __enter__(self) -> _TracedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _TracedAsyncStream(_StreamSpan):
    """Proxy for ``openai.AsyncStream``: the span ends when it is exhausted, closed, or raises."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._add(chunk)
        return chunk

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._end(None)

    async def __aenter__(self) -> _TracedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
