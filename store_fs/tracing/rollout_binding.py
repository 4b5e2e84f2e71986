"""Which rollout the code running now belongs to, and delivery of its spans to the store.

A :class:`RolloutBinding` lives in a ``ContextVar`` while a tracer's
``trace_context`` is open. Context variables follow asyncio tasks and
``asyncio.to_thread`` calls, so several rollouts running at once in one process
(``max_parallel``) each tag their own spans, which a process-global "current
rollout" (upstream's approach) would mix up.

Spans are converted when they end (in the caller's thread) and written by one
background thread with its own event loop, in the order they ended, so that
``on_end`` never blocks on storage and sequence numbers follow end order.
Leaving the trace context waits until every span of the rollout is stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from store_fs.models import Span

__all__ = ["RolloutBinding", "SpanSink", "StoreWriter", "current_binding"]

log = logging.getLogger(__name__)


class SpanSink(Protocol):
    """The part of a store the tracer needs (FileStore and LightningStoreClient both fit)."""

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int: ...

    async def add_span(self, span: Span) -> Span | None: ...


class StoreWriter:
    """A daemon thread running an event loop that performs store calls in submission order."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._serve, args=(self._loop,), name="agl-span-writer", daemon=True
                )
                self._thread.start()
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure())

    def close(self) -> None:
        """Stop the thread after the calls already submitted; a later submit starts a new one."""
        with self._lock:
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


@dataclass
class RolloutBinding:
    """One open trace context: the rollout, the attempt, where its spans go, what was captured."""

    rollout_id: str | None
    attempt_id: str | None
    store: SpanSink | None
    writer: StoreWriter
    owner: Any = None  # the tracer that opened the context (emitters find it here)
    spans: list[Span] = field(default_factory=list)
    _pending: list[concurrent.futures.Future[Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local_seq: int = 0

    def deliver(self, readable_span: Any) -> None:
        """Convert a finished OpenTelemetry span and queue it for the store (never blocks)."""
        if self.store is None or self.rollout_id is None or self.attempt_id is None:
            with self._lock:
                self._local_seq += 1
                seq = self._local_seq
            span = Span.from_opentelemetry(
                readable_span, self.rollout_id or "rollout-dummy", self.attempt_id or "attempt-dummy", seq
            )
            with self._lock:
                self.spans.append(span)
            return
        span = Span.from_opentelemetry(readable_span, self.rollout_id, self.attempt_id, 0)
        future = self.writer.submit(self._store(span))
        with self._lock:
            self._pending.append(future)

    async def _store(self, span: Span) -> None:
        assert self.store is not None
        span.sequence_id = await self.store.get_next_span_sequence_id(span.rollout_id, span.attempt_id)
        stored = await self.store.add_span(span)
        with self._lock:
            self.spans.append(stored or span)

    async def drain(self) -> None:
        """Wait until every span delivered so far is stored (errors are logged, not raised)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            try:
                await asyncio.wrap_future(future)
            except Exception as err:
                log.warning("could not store a span of %s: %s", self.rollout_id, err)
        with self._lock:
            self.spans.sort(key=lambda s: s.sequence_id)


_current: contextvars.ContextVar[RolloutBinding | None] = contextvars.ContextVar("agl_rollout", default=None)


def current_binding() -> RolloutBinding | None:
    """The binding of the trace context the caller runs in, if any."""
    return _current.get()


def bind(binding: RolloutBinding | None) -> contextvars.Token[RolloutBinding | None]:
    return _current.set(binding)


def unbind(token: contextvars.Token[RolloutBinding | None]) -> None:
    _current.reset(token)
