"""One traced generation call: which API it is, its span, and what the SDK hands back.

:func:`call_kind` tells the three generation endpoints apart by the request's path.
:class:`CallSpan` owns the span of one call: started with the request's attributes,
ended exactly once with the response's, after one ``tool_call.<name>`` child span per tool
call in the reply (upstream's ``TraceToMessages`` reads the reply's tool calls from those).
:meth:`CallSpan.adopt` ends it from whatever the SDK's ``request()`` returned: a parsed
object, a stream (wrapped), or a raw response (``with_raw_response`` /
``with_streaming_response``: its ``parse()`` and ``close()`` are wrapped on the instance).
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from store_fs.tracing._oai_chat import ChatChunks, chat_request_attrs, chat_response_attrs
from store_fs.tracing._oai_legacy import TextChunks, text_request_attrs, text_response_attrs
from store_fs.tracing._oai_responses import ResponseEvents, responses_request_attrs, responses_response_attrs
from store_fs.tracing._oai_streams import Folder, TracedAsyncStream, TracedStream
from store_fs.tracing._oai_values import Attrs
from store_fs.tracing.rollout_binding import RolloutBinding, bind, current_binding, unbind

__all__ = ["CHAT_SPAN", "RESPONSES_SPAN", "TEXT_SPAN", "CallKind", "CallSpan", "call_kind", "guard"]

_log = logging.getLogger(__name__)
_RAW_HEADER = "X-Stainless-Raw-Response"  # openai._constants.RAW_RESPONSE_HEADER
_TOOL_KEY = re.compile(r"^gen_ai\.completion\.(\d+)\.tool_calls\.(\d+)\.(id|type|name|arguments)$")

# Span names as AgentOps 0.4.21 gives them (upstream's TracerTraceToTriplet matches LLM calls
# by name; its default pattern, r"openai\.chat\.completion", selects chat completions only).
CHAT_SPAN = "openai.chat.completion"
TEXT_SPAN = "openai.completion"
RESPONSES_SPAN = "openai.responses.create"


@dataclass(frozen=True)
class CallKind:
    span_name: str
    request_attrs: Callable[[Mapping[str, Any]], Attrs]
    response_attrs: Callable[[Any], Attrs]
    folder: Callable[[], Folder]


_CHAT = CallKind(CHAT_SPAN, chat_request_attrs, chat_response_attrs, ChatChunks)
_TEXT = CallKind(TEXT_SPAN, text_request_attrs, text_response_attrs, TextChunks)
_RESPONSES = CallKind(RESPONSES_SPAN, responses_request_attrs, responses_response_attrs, ResponseEvents)


def call_kind(options: Any) -> CallKind | None:
    """The generation API a request's options (``FinalRequestOptions``) go to, if any."""
    if str(getattr(options, "method", "")).lower() != "post":
        return None
    path = "/" + urlsplit(str(getattr(options, "url", ""))).path.strip("/")
    if path.endswith("/chat/completions"):
        return _CHAT
    if path.endswith("/completions"):
        return _TEXT
    if path.endswith("/responses"):
        return _RESPONSES
    return None


def guard(fn: Callable[[], Any]) -> Any:
    """``fn()``, or None if it raised: tracing never breaks (or skips ending) the traced call."""
    try:
        return fn()
    except Exception:
        _log.debug("openai instrumentation failed", exc_info=True)
        return None


def raw_mode(options: Any) -> str | None:
    """ "true" for ``with_raw_response``, "stream" for ``with_streaming_response``, else None."""
    headers = getattr(options, "headers", None)
    if not isinstance(headers, Mapping):
        return None
    value = headers.get(_RAW_HEADER)
    return value if isinstance(value, str) else None


class CallSpan:
    """The span of one call; see the module docstring."""

    def __init__(self, tracer: trace.Tracer, kind: CallKind, client: Any, options: Any) -> None:
        self.kind = kind
        self.tracer = tracer
        self.binding: RolloutBinding | None = current_binding()
        body = getattr(options, "json_data", None)
        body = body if isinstance(body, Mapping) else {}
        attrs: Attrs = guard(lambda: kind.request_attrs(body)) or {}
        host = getattr(getattr(client, "base_url", None), "host", None)
        if isinstance(host, str) and host:
            attrs["server.address"] = host
        self.streaming = body.get("stream") is True
        self.span = tracer.start_span(kind.span_name, kind=SpanKind.CLIENT, attributes=attrs)
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.done = False
        self._ending = threading.Lock()  # a stream may be closed in one thread while read in another

    def current(self) -> Any:
        """Makes the span current while the request runs (HTTP hooks see it)."""
        return trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    # -- ending ---------------------------------------------------------------------------
    def fold(self, folder: Folder, item: Any) -> None:
        """Fold one stream item in, noting the time to the first generated token."""
        produced = guard(lambda: folder.add(item))
        if produced and self.first_token is None:
            self.first_token = time.monotonic() - self.started

    def end(self, attrs_of: Callable[[], Attrs], exc: BaseException | None) -> None:
        """End the span (once): response attributes, tool-call children, error if any."""
        with self._ending:
            if self.done:
                return
            self.done = True
        attrs = guard(attrs_of) or {}
        if self.first_token is not None:
            attrs["gen_ai.streaming.time_to_first_token"] = self.first_token
            attrs["gen_ai.streaming.time_to_generate"] = time.monotonic() - self.started - self.first_token
        guard(lambda: self.span.set_attributes(attrs))
        guard(lambda: self._tool_spans(attrs))
        if exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        self.span.end()

    def _tool_spans(self, attrs: Attrs) -> None:
        calls: dict[tuple[int, int], dict[str, str]] = {}
        for key, value in attrs.items():
            match = _TOOL_KEY.match(key)
            if match:
                calls.setdefault((int(match[1]), int(match[2])), {})[match[3]] = value
        if not calls:
            return
        parent = trace.set_span_in_context(self.span)
        # A stream may end in another task or thread: its spans still belong to this rollout.
        token = bind(self.binding)
        try:
            for _, call in sorted(calls.items()):
                name = call.get("name", "")
                child = self.tracer.start_span(f"tool_call.{name}", context=parent, kind=SpanKind.INTERNAL)
                child.set_attributes(
                    {
                        "agentops.span.kind": "tool",
                        "tool.name": name,
                        "tool.parameters": call.get("arguments", ""),
                        "tool.call.id": call.get("id", ""),
                        "tool.call.type": call.get("type", "function"),
                    }
                )
                child.set_status(Status(StatusCode.OK))
                child.end()
        finally:
            unbind(token)

    # -- what the SDK returned ------------------------------------------------------------
    def adopt(self, result: Any, raw: str | None) -> Any:
        """End the span from ``result`` (or arrange for it to end later); returns what the
        caller gets: ``result`` itself, or a traced stream in place of an SDK stream."""
        from openai import AsyncStream, Stream

        if isinstance(result, Stream):
            return TracedStream(result, self, self.kind.folder())
        if isinstance(result, AsyncStream):
            return TracedAsyncStream(result, self, self.kind.folder())
        if raw is not None and hasattr(result, "parse"):
            self._adopt_raw(result, eager=raw == "true" and not self.streaming)
            return result
        self.end(lambda: self.kind.response_attrs(result), None)
        return result

    def _adopt_raw(self, response: Any, *, eager: bool) -> None:
        if eager:  # the body is read already; parse() caches, so the caller gets this object
            self.end(lambda: self.kind.response_attrs(response.parse()), None)
            return
        guard(lambda: _RawResponse(self, response))


class _RawResponse:
    """Instance-level wrappers of a raw response's ``parse()`` and ``close()``.

    The first plain ``parse()`` (no ``to=``) is adopted: a stream comes back traced, an
    object ends the span. ``close()`` ends the span too: with what a traced stream folded so
    far, or, if nothing was parsed, with the body parsed now (a JSON reply is small, and the
    caller is discarding the response anyway).
    """

    def __init__(self, call: CallSpan, response: Any) -> None:
        self.call = call
        self.parse = response.parse
        self.close = getattr(response, "close", None)
        self.adopted: list[Any] = []
        is_async = inspect.iscoroutinefunction(self.parse)
        response.parse = self._parse_async if is_async else self._parse_sync
        if self.close is not None:
            closing_async = inspect.iscoroutinefunction(self.close)
            response.close = self._close_async if closing_async else self._close_sync

    def _take(self, value: Any) -> Any:
        if not self.adopted:
            self.adopted.append(self.call.adopt(value, None))
        return self.adopted[0]

    def _parse_sync(self, *args: Any, **kwargs: Any) -> Any:
        value = self.parse(*args, **kwargs)
        return value if args or kwargs else self._take(value)

    async def _parse_async(self, *args: Any, **kwargs: Any) -> Any:
        value = await self.parse(*args, **kwargs)
        return value if args or kwargs else self._take(value)

    def _end_stream(self) -> bool:
        stream = self.adopted[0] if self.adopted else None
        if isinstance(stream, TracedStream | TracedAsyncStream):
            stream._end(None)
            return True
        return False

    def _close_sync(self) -> None:
        if not self.adopted and not self.call.streaming:
            guard(self._parse_sync)
        try:
            assert self.close is not None
            self.close()
        finally:
            if not self._end_stream():
                self.call.end(dict, None)

    async def _close_async(self) -> None:
        if not self.adopted and not self.call.streaming:
            try:
                await self._parse_async()
            except Exception:
                _log.debug("parsing a closed raw response failed", exc_info=True)
        try:
            assert self.close is not None
            await self.close()
        finally:
            if not self._end_stream():
                self.call.end(dict, None)
