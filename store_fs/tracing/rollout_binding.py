"""Which rollout the code running now belongs to, and delivery of its spans to the store.

A :class:`RolloutBinding` lives in a ``ContextVar`` while a tracer's ``trace_context`` is
open. Context variables follow asyncio tasks and threads started with a copied context,
so several rollouts running at once in one process (``max_parallel``) each tag their own
spans, which a process-global "current rollout" (upstream's approach) would mix up.

**Order.** Every span a binding receives (``deliver`` from the span processor, ``submit``
from the runner) joins one FIFO queue per binding, in the caller's thread, without
blocking. One pump per binding, on the tracer's writer thread, takes spans from the front
in batches, gives each span the next rollout sequence id in queue order (once: a retried
write keeps it) and stores the batch before it takes the next one. So the sequence ids
of one attempt's spans follow the order its agent emitted them, whatever the transport
(``add_span``, ``add_many_spans``, OTLP export) and its latency; the pumps of different
attempts interleave freely.

**No silent loss.** A failed write is retried with the tracer's
:class:`~store_fs.retrying.RetryPolicy` (capped backoff with jitter, the outage logged
once). Writes are idempotent by span id (a store keeps the first copy of a span id), so a
retry whose first try did land stores nothing twice. A span that cannot be stored (a
permanent error, or retrying given up) is counted in :attr:`RolloutBinding.lost`; the
runner then fails the attempt instead of reporting it ``succeeded``.

**Tree and secrets.** Every span passes :func:`~store_fs.tracing.credential_scrub.scrub_span`
before it is queued (credentials masked or dropped), and, once the attempt's root span is
known (:attr:`RolloutBinding.root`, see :mod:`store_fs.tracing.root_span`), a span without a
parent is hung under the root, so an attempt's spans form one tree.

**Settlement.** :meth:`RolloutBinding.close` ends delivery for good: spans still queued,
and every span delivered later (an abandoned agent that keeps running), are dropped and
counted in :attr:`RolloutBinding.dropped`, with one warning.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from store_fs.lightning_store import LightningStore as AglStore
from store_fs.models import Span, SpanContext
from store_fs.retrying import RetryPolicy, call_with_retry, is_transient
from store_fs.tracing.credential_scrub import scrub_span
from store_fs.upstream_compat import retyped

__all__ = [
    "UNFINISHED_KEY",
    "RolloutBinding",
    "SpanSink",
    "SpanTransport",
    "StoreWriter",
    "current_binding",
]

log = logging.getLogger(__name__)

SpanTransport = Literal["api", "otlp"]
_MAX_BATCH = 256

#: The attribute :meth:`RolloutBinding.end_unfinished` marks the spans it ends with.
UNFINISHED_KEY = "agentlightning.span.unfinished"
UNFINISHED_NOTE = "still open when the trace context closed, and ended then (a stream not read to its end?)"


class SpanSink(Protocol):
    """The part of a store the tracer needs (FileStore and LightningStoreClient both fit).

    Optional extras, used when present: ``get_many_span_sequence_ids`` and
    ``add_many_spans`` (batches), ``export_otlp`` (the OTLP transport).
    """

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int: ...

    async def add_span(self, span: Span) -> Span | None: ...


class StoreWriter:
    """A daemon thread running an event loop, where the bindings' pumps run."""

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

    def release(self, store: Any, timeout: float = 2.0) -> None:
        """Let ``store`` close the connections it opened on the writer's loop: an async
        ``close()`` (``LightningStoreClient``'s closes the calling loop's pool)."""
        close = getattr(store, "close", None)
        with self._lock:
            loop = self._loop
        if loop is None or not inspect.iscoroutinefunction(close):
            return
        try:
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout)
        except Exception as err:  # closing is a courtesy: never let it fail a teardown
            log.debug("closing %r on the span writer's loop failed: %s", store, err)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (waiting up to ``timeout`` s); a later submit starts a new one.

        Pumps still running are abandoned: the runner drains (or closes) every binding first.
        """
        with self._lock:
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)


@dataclass
class _Entry:
    span: Span
    readable: Any = None  # the SDK span, kept for the OTLP transport
    numbered: bool = False  # the span already has its sequence id


class RolloutBinding:
    """One open trace context: the rollout, the attempt, where its spans go, what was stored.

    Attributes:
        spans: the spans stored so far (in sequence order once :meth:`drain` returned).
        lost: spans that could not be stored; ``lost_error`` is the last reason.
        dropped: spans dropped because the binding was closed (the attempt was settled).
        closed: why the binding was closed, or None while it is open.
        sealed: why the agent's spans are no longer taken (:meth:`seal`), or None.
        flush_deadline: a ``time.monotonic()`` instant after which :meth:`drain` gives up.
        root: (trace id, span id) in hex of the attempt's root span, once it is open.
    """

    def __init__(
        self,
        rollout_id: str | None,
        attempt_id: str | None,
        store: SpanSink | None,
        writer: StoreWriter,
        owner: Any = None,
        *,
        policy: RetryPolicy | None = None,
        span_transport: SpanTransport = "api",
        give_up_after: float | None = None,
    ) -> None:
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.store = store
        self.writer = writer
        self.owner = owner  # the tracer that opened the context (emitters find it here)
        self.policy = policy or RetryPolicy()
        self.span_transport = span_transport
        self.give_up_after = give_up_after
        self.spans: list[Span] = []
        self.lost = 0
        self.lost_error: str | None = None
        self.dropped = 0
        self.closed: str | None = None
        self.sealed: str | None = None
        #: What threads started in this binding's trace context keep of it (thread_context.py).
        self.origin = Origin(self)
        # OpenTelemetry spans started in this binding's context and not ended yet, by span id.
        self._unfinished: dict[int, Any] = {}
        self.flush_deadline: float | None = None
        self.root: tuple[str, str] | None = None
        self._queue: deque[_Entry] = deque()
        self._pump: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._local_seq = 0

    @property
    def bound(self) -> bool:
        """Spans go to a store (else they are only kept in :attr:`spans`)."""
        return self.store is not None and self.rollout_id is not None and self.attempt_id is not None

    # -- receiving spans (any thread, never blocks) ---------------------------------------
    def deliver(self, readable_span: Any) -> None:
        """Queue a finished OpenTelemetry span for the store.

        Never raises (it runs inside the instrumented code's ``span.end()``): a span that
        cannot be converted is counted in :attr:`lost`, so the attempt fails instead.
        """
        rollout_id = self.rollout_id or "rollout-dummy"
        attempt_id = self.attempt_id or "attempt-dummy"
        try:
            span = Span.from_opentelemetry(readable_span, rollout_id, attempt_id, 0)
        except Exception as err:
            self._count_lost(1, err)
            return
        if self.closed is not None and self.root is not None and span.span_id == self.root[1]:
            return  # the root of an attempt settled early is no span of its agent: not counted
        if self.sealed is not None and self.closed is None:
            self._count_lost(1, RuntimeError(self.sealed))
            return
        prepared = self._prepared(span)
        # The OTLP transport exports the SDK span as it is: only when nothing had to change.
        keep = self.span_transport == "otlp" and prepared is span
        self._enqueue(_Entry(prepared, readable_span if keep else None))

    def submit(self, span: Span, *, numbered: bool = False) -> None:
        """Queue a span built by the caller (the runner's reward span, an agent's returned
        spans); ``numbered``: keep its sequence id instead of allocating one."""
        self._enqueue(_Entry(self._prepared(span), None, numbered))

    def _prepared(self, span: Span) -> Span:
        """``span`` scrubbed of credentials and, if it has no parent, hung under the root."""
        span = scrub_span(span)
        root = self.root
        if root is None or span.parent_id is not None or span.span_id == root[1]:
            return span
        trace_id, root_id = root
        context = span.context.model_copy(update={"trace_id": trace_id}) if span.context else None
        parent = SpanContext(trace_id=trace_id, span_id=root_id, is_remote=False, trace_state={})
        update = {"trace_id": trace_id, "parent_id": root_id, "context": context, "parent": parent}
        return span.model_copy(update=update)

    def _enqueue(self, entry: _Entry) -> None:
        if not self.bound:
            with self._lock:
                if not entry.numbered:
                    self._local_seq += 1
                    entry.span.sequence_id = self._local_seq
                self.spans.append(entry.span)
            return
        with self._lock:
            if self.closed is None:
                self._queue.append(entry)
                if self._pump is None:
                    self._pump = self.writer.submit(self._run_pump())
                return
            self.dropped += 1
            warn, self._warned = not self._warned, True
        if warn:
            self._warn_dropping()

    def _warn_dropping(self) -> None:
        log.warning(
            "attempt %s of %s is settled (%s): spans its agent still emits are dropped (counted, not stored)",
            self.attempt_id,
            self.rollout_id,
            self.closed,
        )

    # -- spans still open ------------------------------------------------------------------
    def started(self, otel_span: Any) -> None:
        """An OpenTelemetry span opened in this binding's context (the span processor)."""
        with self._lock:
            self._unfinished[otel_span.context.span_id] = otel_span

    def ended(self, span_id: int) -> None:
        with self._lock:
            self._unfinished.pop(span_id, None)

    def end_unfinished(self) -> int:
        """End the spans opened in this context that are still open (the root excepted), marked
        with :data:`UNFINISHED_KEY`, so that they are stored: a streamed LLM call the agent did not
        read to its end (or close) never ended, and its call was missing from an attempt that
        succeeded. Returns how many. Ending one later again is a no-op of OpenTelemetry's."""
        root = int(self.root[1], 16) if self.root is not None else None
        with self._lock:
            left = [span for span_id, span in self._unfinished.items() if span_id != root]
        for span in left:
            span.set_attribute(UNFINISHED_KEY, UNFINISHED_NOTE)
            span.end()
        return len(left)

    # -- settling ---------------------------------------------------------------------------
    def seal(self, why: str) -> None:
        """From now on the spans the agent emits (:meth:`deliver`) are not stored but counted in
        :attr:`lost`, with ``why``: the runner calls this when the agent has returned, so that a
        task or thread the agent left running cannot add a reward after the one it returned
        (the attempt fails instead). The runner's own spans (:meth:`submit`) still go."""
        with self._lock:
            self.sealed = why

    def close(self, reason: str) -> None:
        """End delivery: queued and later spans are dropped (counted, one warning). Idempotent."""
        with self._lock:
            if self.closed is not None:
                return
            self.closed = reason
            pending = len(self._queue)
            self._queue.clear()
            self.dropped += pending
            warn = pending > 0 and not self._warned
            self._warned = self._warned or warn
        if warn:
            self._warn_dropping()

    async def drain(self, deadline: float | None = None) -> None:
        """Wait until every span received so far is stored, lost or dropped.

        Past ``deadline`` (or :attr:`flush_deadline`; ``time.monotonic()``) the binding is
        closed, dropping what is still queued. Errors are counted in :attr:`lost`, not raised.
        """
        waiting: tuple[concurrent.futures.Future[None], asyncio.Future[None]] | None = None
        while True:
            with self._lock:
                pump = self._pump
            if pump is None or self.closed is not None:
                break
            until = deadline if deadline is not None else self.flush_deadline
            left = 0.1 if until is None else until - time.monotonic()
            if left <= 0:
                self.close("its spans could not be stored before the deadline")
                break
            if waiting is None or waiting[0] is not pump:
                waiting = (pump, asyncio.wrap_future(pump))
            await asyncio.wait([waiting[1]], timeout=min(0.1, left))
        with self._lock:
            self.spans.sort(key=lambda s: s.sequence_id)

    # -- the pump (on the writer's loop) ----------------------------------------------------
    async def _run_pump(self) -> None:
        while True:
            with self._lock:
                if self.closed is not None or not self._queue:
                    self._pump = None
                    return
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _MAX_BATCH))]
            try:
                await self._write(batch)
            except Exception as err:  # a bug here must not stall the queue: count and go on
                log.exception("span delivery of %s failed", self.rollout_id)
                self._count_lost(len(batch), err)

    async def _write(self, batch: Sequence[_Entry], give_up_after: float | None = None) -> None:
        limit = self.give_up_after if give_up_after is None else give_up_after
        stop = self._is_closed
        try:
            await call_with_retry(
                lambda: self._number(batch),
                what="span sequence ids",
                policy=self.policy,
                stop=stop,
                give_up_after=limit,
            )
            await call_with_retry(
                lambda: self._store_batch(batch),
                what="span write",
                policy=self.policy,
                stop=stop,
                give_up_after=limit,
            )
        except Exception as err:
            await self._failed(batch, err)
            return
        with self._lock:
            self.spans.extend(entry.span for entry in batch)

    async def _failed(self, batch: Sequence[_Entry], err: Exception) -> None:
        if self.closed is not None:
            with self._lock:
                self.dropped += len(batch)
            return
        if len(batch) > 1:
            # One bad span must not take its neighbours with it. After a permanent error each
            # span is retried as usual; after retries were given up, each gets one more try.
            patience = None if not is_transient(err) else 0.0
            for entry in batch:
                await self._write([entry], patience)
            return
        self._count_lost(len(batch), err)

    def _count_lost(self, count: int, err: BaseException) -> None:
        with self._lock:
            self.lost += count
            self.lost_error = f"{type(err).__name__}: {err}"
        log.warning("could not store %d span(s) of %s: %s", count, self.rollout_id, self.lost_error)

    def _is_closed(self) -> bool:
        return self.closed is not None

    async def _number(self, batch: Sequence[_Entry]) -> None:
        """Give sequence ids, in queue order, to the spans that have none yet."""
        assert self.store is not None
        assert self.rollout_id is not None
        assert self.attempt_id is not None
        missing = [entry for entry in batch if not entry.numbered]
        if not missing:
            return
        many = getattr(self.store, "get_many_span_sequence_ids", None)
        key = (self.rollout_id, self.attempt_id)
        if many is not None and len(missing) > 1:
            numbers = list(await many([key] * len(missing)))
        else:
            numbers = [await self.store.get_next_span_sequence_id(*key) for _ in missing]
        for entry, number in zip(missing, numbers, strict=True):
            entry.span.sequence_id = number
            entry.numbered = True

    async def _store_batch(self, batch: Sequence[_Entry]) -> None:
        export = getattr(self.store, "export_otlp", None)
        rest = list(batch)
        if export is not None and self.span_transport == "otlp":
            from store_fs.tracing.otlp_export import encode_request

            exported = [entry for entry in batch if entry.readable is not None]
            rest = [entry for entry in batch if entry.readable is None]
            if exported:
                rejected = await export(encode_request([(e.readable, e.span) for e in exported]))
                if rejected:
                    raise ValueError(f"the server rejected {rejected} of {len(exported)} exported span(s)")
        if rest:
            await self._add(rest)

    async def _add(self, entries: Sequence[_Entry]) -> None:
        assert self.store is not None
        spans = [entry.span for entry in entries]
        if AglStore not in type(self.store).__mro__:  # a Protocol: no isinstance
            # Upstream's own stores check that a span is their Span class (its in-memory store
            # refused every one): theirs as well as ours, same fields (upstream_compat.py).
            spans = retyped(spans)
        many = getattr(self.store, "add_many_spans", None)
        if many is not None and len(spans) > 1:
            await many(spans)
            return
        for span in spans:
            await self.store.add_span(span)


class Origin:
    """A trace context as the threads started inside it keep it: its binding (a weak reference,
    so a long-lived thread keeps no rollout's spans in memory) and when it opened and ended,
    as places in the order of every opening and ending in the process (:func:`opened`,
    :func:`closed`), which outlive the binding. A ``pinned`` origin is one a thread or pool task
    was started with after the context had ended: by an agent the runner abandoned (timed out,
    cancelled), whose threads work for no later rollout (:func:`origin_to_inherit`)."""

    __slots__ = ("binding", "ended", "opened", "pinned")

    def __init__(self, binding: RolloutBinding) -> None:
        self.binding = weakref.ref(binding)
        self.opened: int | None = None
        self.ended: int | None = None
        self.pinned = False

    def pinned_copy(self) -> Origin:
        copy = Origin.__new__(Origin)
        copy.binding, copy.opened, copy.ended, copy.pinned = self.binding, self.opened, self.ended, True
        return copy


# Set in a thread started inside a trace context (thread_context.py), to that context's origin.
_inherited: contextvars.ContextVar[Origin | None] = contextvars.ContextVar(
    "agl_inherited_rollout", default=None
)
_current: contextvars.ContextVar[RolloutBinding | None] = contextvars.ContextVar("agl_rollout", default=None)

# The bindings whose trace context is open in this process (a tuple, replaced whole under the
# lock, so readers need none).
_open: tuple[RolloutBinding, ...] = ()
_open_lock = threading.Lock()
_order = itertools.count(1)  # places of openings and endings, taken under the lock


def current_binding() -> RolloutBinding | None:
    """The binding of the trace context the caller runs in.

    Then, in a thread started inside a trace context (:func:`inherit`), that context's binding
    while it is open. Once that context has ended, the thread works for the process's only
    open rollout if that one opened after the end (a helper thread reused by later rollouts).
    If none opened since, or the thread was started after the context had ended (a pinned
    origin: by an abandoned agent), it is a straggler of its own rollout, and gets that
    rollout's binding (if it still exists), which counts the spans as lost or dropped: never a
    rollout running beside it or after it, whose final reward a straggler's reward would
    become. If one opened since and others run too, None (whom it works for cannot be told).

    Other code outside any trace context (a thread started outside every rollout) is
    attributed to the process's only open binding, as upstream's process-wide tracer records
    it. None when no binding is open, or several: which rollout such code works for cannot
    be told (:func:`lose_unattributed`).
    """
    binding = _current.get()
    if binding is not None:
        return binding
    origin = _inherited.get()
    open_now = _open
    if origin is not None and (origin.ended is None or origin.pinned or _straggling(origin, open_now)):
        return origin.binding()
    return open_now[0] if len(open_now) == 1 else None


def _straggling(origin: Origin, open_now: tuple[RolloutBinding, ...]) -> bool:
    """A thread of ``origin``'s trace context, which has ended, with no rollout opened since."""
    ended = origin.ended
    return ended is not None and not any((b.origin.opened or 0) > ended for b in open_now)


def origin_to_inherit() -> Origin | None:
    """What a thread started now, or a task handed to a pool now, inherits
    (:mod:`store_fs.tracing.thread_context`): the caller's own trace context, or what its
    own thread inherited: the origin of the rollout the caller works for now
    (:func:`current_binding`). One that has ended is pinned: the caller is an agent the runner
    abandoned, or a straggler of one, and what it starts is a straggler too (it was taken for
    a helper thread reused by the next rollout, and an abandoned agent's reward became that
    rollout's final reward)."""
    binding = _current.get()
    origin = binding.origin if binding is not None else _inherited.get()
    if origin is None or origin.ended is None or origin.pinned:
        return origin
    if binding is None:
        working_for = current_binding()
        if working_for is not None and working_for.origin is not origin:
            return working_for.origin  # a helper thread reused by a later rollout: that one's
        if working_for is None and not _straggling(origin, _open):
            return origin  # whom it works for cannot be told: neither can its thread's
    return origin.pinned_copy()


def inherit(origin: Origin) -> None:
    """This thread was started inside the trace context of ``origin`` (:func:`current_binding`
    says whom its code works for)."""
    _inherited.set(origin)


def run_inherited(origin: Origin | None, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` as code of ``origin``'s trace context (None: of none), whatever the
    calling thread inherited (a pool's worker runs tasks of many rollouts)."""
    current, inherited = _current.set(None), _inherited.set(origin)
    try:
        return fn(*args, **kwargs)
    finally:
        _inherited.reset(inherited)
        _current.reset(current)


def context_binding() -> RolloutBinding | None:
    """The binding of the caller's own trace context only (no process-wide fallback)."""
    return _current.get()


def opened(binding: RolloutBinding) -> None:
    """``binding``'s trace context is open: code outside any context may be attributed to it."""
    global _open
    with _open_lock:
        binding.origin.opened = next(_order)
        _open = (*_open, binding)


def closed(binding: RolloutBinding) -> None:
    global _open
    with _open_lock:
        binding.origin.ended = next(_order)
        _open = tuple(b for b in _open if b is not binding)


def lose_unattributed(what: str) -> int:
    """Count ``what`` (a span recorded outside any trace context while several are open) as
    lost by every open binding, so that none of their attempts ends ``succeeded`` without it;
    returns how many. One warning says how to keep the context."""
    open_now = _open
    if len(open_now) < 2:
        return 0
    origin = _inherited.get()
    if origin is not None and (origin.pinned or _straggling(origin, open_now)):
        return 0  # a straggler of a rollout that ended (whose binding is gone): none of theirs
    err = RuntimeError(
        f"{what} outside any rollout's trace context while {len(open_now)} rollouts run in this "
        "process: which one it belongs to cannot be told (start threads with "
        "contextvars.copy_context().run, or use asyncio.to_thread)"
    )
    for binding in open_now:
        binding._count_lost(1, err)
    return len(open_now)


def bind(binding: RolloutBinding | None) -> contextvars.Token[RolloutBinding | None]:
    return _current.set(binding)


def unbind(token: contextvars.Token[RolloutBinding | None]) -> None:
    _current.reset(token)
