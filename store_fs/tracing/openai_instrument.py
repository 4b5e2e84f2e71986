"""OpenTelemetry spans for every generation call of the ``openai`` SDK, without extra packages.

One CLIENT span per call, whatever the SDK entry point: chat completions (``create``,
``parse``, the ``stream()`` helper), legacy completions (``create``) and the Responses API
(``create``, ``parse``, ``stream()``); sync and async; streamed or not; through
``with_raw_response`` and ``with_streaming_response`` too. Span names and attribute keys
are AgentOps 0.4.21's (``openai.chat.completion``, ``openai.completion``,
``openai.responses.create``), which upstream Agent-lightning's adapters read; the full
attribute set is in docs/tracing-attributes.md.

**Where the patch sits.** All those entry points end in one method of the SDK's base
clients, ``SyncAPIClient.request`` / ``AsyncAPIClient.request`` (``parse`` posts directly,
``stream()`` goes through ``create``, the raw-response wrappers call the bound methods they
captured, retries loop inside ``request``). Patching there gives each call exactly one span,
and also covers clients and resources created before instrumentation, whose bound methods
(``resource._post``, ``with_raw_response.create``) were captured earlier. The request's path
(``/chat/completions``, ``/completions``, ``/responses``) picks the API; other requests pass
through untouched.

Credentials: no header is recorded; each call registers the client's API key and credential
headers with :mod:`store_fs.tracing.credential_scrub`, which masks them in stored spans.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from store_fs.tracing._oai_calls import CHAT_SPAN, RESPONSES_SPAN, TEXT_SPAN, CallSpan, call_kind, raw_mode
from store_fs.tracing.credential_scrub import remember_client_secrets
from store_fs.tracing.rollout_binding import current_binding

__all__ = ["CHAT_SPAN", "RESPONSES_SPAN", "SPAN_NAME", "TEXT_SPAN", "instrument_openai"]

SPAN_NAME = CHAT_SPAN  # the name of chat-completion spans (kept for earlier callers)
_METHOD = "request"
_MARK = "__agl_openai_instrumented__"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_originals: dict[type, Callable[..., Any]] = {}  # non-empty while openai is patched
# (token, tracer, owner) triples; the list is replaced, never mutated, so calls read it without the lock.
_registrations: list[tuple[object, trace.Tracer, object]] = []


def instrument_openai(tracer: trace.Tracer, owner: object = None) -> Callable[[], None]:
    """Record every generation call as a span of ``tracer``; returns the function that undoes it.

    Reference-counted, never double-wrapped: the first call patches the two base clients'
    ``request`` methods, later calls only register their tracer. Which registration records a
    call: the most recent one whose ``owner`` (the agl tracer registering) owns the rollout the
    call runs in (:attr:`RolloutBinding.owner`), so with several tracers initialised in one
    process each rollout's calls land on its own tracer's provider; failing that (a call
    outside any rollout, or in the rollout of a tracer that did not register), the most
    recent registration. Each returned undo function is idempotent and removes only its own
    registration; the last one restores the original methods (unless something else has
    since patched over ours: ours then stays, passing calls through).

    Span contract: a child of the caller's current span, current while the HTTP request runs;
    it ends when the call returns, or, for a stream, when the stream is exhausted, closed (or
    its response closed) or raises; for ``with_streaming_response``, when its response is
    parsed or closed. Errors are recorded on the span (status ERROR) and propagate unchanged.
    Failures inside the instrumentation are logged at DEBUG and never change the call's
    outcome. Streams come back wrapped in a proxy that delegates every other attribute to the
    SDK's stream (it is not an ``openai.Stream`` instance).
    """
    global _registrations
    from openai._base_client import AsyncAPIClient, SyncAPIClient

    token = object()
    with _lock:
        if not _originals:
            for cls, make in ((SyncAPIClient, _wrap_sync), (AsyncAPIClient, _wrap_async)):
                current = cls.__dict__[_METHOD]
                # A wrapper left by an earlier copy of this module (reload): wrap what it wrapped.
                original = current.__wrapped__ if getattr(current, _MARK, False) else current
                _originals[cls] = original
                wrapper = make(original)
                setattr(wrapper, _MARK, True)
                setattr(cls, _METHOD, wrapper)
        _registrations = [*_registrations, (token, tracer, owner)]

    def uninstrument() -> None:
        global _registrations
        with _lock:
            if not any(entry[0] is token for entry in _registrations):
                return
            _registrations = [entry for entry in _registrations if entry[0] is not token]
            if _registrations:
                return
            for cls, original in _originals.items():
                if getattr(cls.__dict__[_METHOD], _MARK, False):
                    setattr(cls, _METHOD, original)
            _originals.clear()

    return uninstrument


def _active_tracer() -> trace.Tracer | None:
    """The tracer recording OpenAI calls made here and now, if any (see :func:`instrument_openai`)."""
    registrations = _registrations
    if not registrations:
        return None
    binding = current_binding()
    owner = None if binding is None else binding.owner
    if owner is not None:
        for _, tracer, registered_by in reversed(registrations):
            if registered_by is owner:
                return tracer
    return registrations[-1][1]


def _begin(client: Any, options: Any) -> CallSpan | None:
    tracer = _active_tracer()
    kind = None if tracer is None else call_kind(options)
    if tracer is None or kind is None:
        return None
    headers = getattr(options, "headers", None)
    try:
        remember_client_secrets(client, headers if isinstance(headers, dict) else None)
        return CallSpan(tracer, kind, client, options)
    except Exception:  # never let tracing fail the call: it then runs untraced
        _log.debug("openai instrumentation failed to start a span", exc_info=True)
        return None


def _wrap_sync(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        call = _begin(self, options)
        if call is None:
            return original(self, cast_to, options, *args, **kwargs)
        with call.current():
            try:
                result = original(self, cast_to, options, *args, **kwargs)
            except BaseException as exc:
                call.end(dict, exc)
                raise
        remember_client_secrets(self)  # a key from a provider is known only after the call
        return call.adopt(result, raw_mode(options))

    return request


def _wrap_async(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        call = _begin(self, options)
        if call is None:
            return await original(self, cast_to, options, *args, **kwargs)
        with call.current():
            try:
                result = await original(self, cast_to, options, *args, **kwargs)
            except BaseException as exc:
                call.end(dict, exc)
                raise
        remember_client_secrets(self)
        return call.adopt(result, raw_mode(options))

    return request
