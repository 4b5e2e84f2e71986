"""The server runs store calls on a pool of event-loop threads, so requests overlap.

Overlap is proven without timing: a store method is wrapped to block its thread on a
``threading.Event`` (as synchronous file I/O does), and another request must be answered
while it is held. Every wait on an event or a result has a generous guard so that a
regression fails instead of hanging; no assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from server_helpers import raw_request

from store_fs import FileStore, init_store
from store_fs.server import StoreServer
from store_fs.server.loop_pool import LoopPool, PoolClosedError, default_size

with warnings.catch_warnings(), contextlib.suppress(ImportError):
    # Imported once here, so its import-time deprecation warnings (LiteLLM's) are not errors.
    warnings.simplefilter("ignore")
    import agentlightning  # noqa: F401

GUARD = 30.0  # seconds: only ever reached when something is broken
POOL_PREFIX = "agl-store-"
JSON = {"Content-Type": "application/json"}
ROLLOUT_KEY, ATTEMPT_KEY = "agentlightning.rollout_id", "agentlightning.attempt_id"


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(POOL_PREFIX)]


@pytest.fixture(autouse=True)
def _no_leaked_pool_threads() -> Iterator[None]:
    assert not _pool_threads(), "a previous test leaked store threads"
    yield
    assert not _pool_threads(), "this test leaked store threads"


@pytest.fixture
def fstore(tmp_path: Path) -> Iterator[FileStore]:
    store = FileStore(init_store(tmp_path / "store"), create=False)
    yield store
    store.close()


class ServerThread:
    """A :class:`StoreServer` on 127.0.0.1 (a free port) with its event loop on a thread of its
    own, so a test can make blocking requests. Leaving the ``with`` block (or :meth:`stop`)
    stops the server, its store threads and the loop thread."""

    def __init__(self, store: FileStore, *, threads: int) -> None:
        self.server = StoreServer(store, host="127.0.0.1", port=0, threads=threads)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(GUARD)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self._call(self.server.start())
        except BaseException:
            self._end_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self._call(self.server.stop())
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        try:
            self._call(self.loop.shutdown_default_executor())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(GUARD)
            self.loop.close()


def hold_store_method(
    monkeypatch: pytest.MonkeyPatch, store: FileStore, name: str
) -> tuple[threading.Event, threading.Event]:
    """Make ``store.<name>`` block its thread until released; returns (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    original: Callable[..., Coroutine[Any, Any, Any]] = getattr(store, name)

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        # A synchronous block, like the store's file I/O: the thread can do nothing else.
        if not release.wait(GUARD):
            raise TimeoutError("the test never released the store call")
        return await original(*args, **kwargs)

    monkeypatch.setattr(store, name, held)
    return entered, release


def _otlp_body(rollout_id: str, attempt_id: str) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    request = ExportTraceServiceRequest()
    span = (
        request.resource_spans.add()
        .scope_spans.add()
        .spans.add(name="held", trace_id=b"\x01" * 16, span_id=b"\x02" * 8, start_time_unix_nano=10**18)
    )
    span.attributes.extend(
        [
            KeyValue(key=ROLLOUT_KEY, value=AnyValue(string_value=rollout_id)),
            KeyValue(key=ATTEMPT_KEY, value=AnyValue(string_value=attempt_id)),
        ]
    )
    body: bytes = request.SerializeToString()
    return body


@pytest.mark.parametrize("held_method", ["query_spans", "add_many_spans"])
def test_a_busy_store_call_does_not_stall_other_requests(
    fstore: FileStore, monkeypatch: pytest.MonkeyPatch, held_method: str
) -> None:
    """While one request is held inside the store (a span query, or an OTLP export), a request
    to another route is answered; then the held one completes too."""
    attempted = asyncio.run(fstore.start_rollout(input=None))
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    entered, release = hold_store_method(monkeypatch, fstore, held_method)
    with ServerThread(fstore, threads=2) as srv, ThreadPoolExecutor(1) as client:
        if held_method == "query_spans":
            held = client.submit(
                raw_request, srv.url, "GET", f"/v1/agl/spans?rollout_id={rid}", None, {}, GUARD
            )
        else:
            headers = {"Content-Type": "application/x-protobuf"}
            held = client.submit(
                raw_request, srv.url, "POST", "/v1/traces", _otlp_body(rid, aid), headers, GUARD
            )
        try:
            assert entered.wait(GUARD), "the held request never reached the store"
            status, stats, _ = raw_request(srv.url, "GET", "/v1/agl/statistics", timeout=GUARD)
            assert status == 200
            assert stats["total_rollouts"] == 1
            assert not held.done()  # still inside the store: the two requests overlapped
        finally:
            release.set()
        status, payload, _ = held.result(GUARD)
        assert status == 200
    if held_method == "query_spans":
        assert payload["items"] == []
    else:
        spans = asyncio.run(fstore.query_spans(rid))
        assert [s.name for s in spans.items] == ["held"]


def test_a_waiting_call_holds_no_thread(fstore: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a single store thread, a ``wait_for_rollouts`` in progress leaves it free: other
    requests (including the one that finishes the awaited rollout) are served meanwhile."""
    rid = asyncio.run(fstore.enqueue_rollout(input={"q": 1})).rollout_id
    entered = threading.Event()
    original = fstore.wait_for_rollouts

    async def wait(*, rollout_ids: list[str], timeout: float | None = None) -> Any:
        entered.set()
        return await original(rollout_ids=rollout_ids, timeout=timeout)

    monkeypatch.setattr(fstore, "wait_for_rollouts", wait)
    body = json.dumps({"rollout_ids": [rid], "timeout": None})  # no deadline: only the finish ends it
    with ServerThread(fstore, threads=1) as srv, ThreadPoolExecutor(1) as client:
        waiting = client.submit(raw_request, srv.url, "POST", "/v1/agl/waits/rollouts", body, JSON, GUARD)
        assert entered.wait(GUARD), "the wait never reached the store"
        status, stats, _ = raw_request(srv.url, "GET", "/v1/agl/statistics", timeout=GUARD)
        assert (status, stats["total_rollouts"]) == (200, 1)
        assert not waiting.done()
        update = json.dumps({"status": "succeeded"})
        status, updated, _ = raw_request(srv.url, "POST", f"/v1/agl/rollouts/{rid}", update, JSON, GUARD)
        assert (status, updated["status"]) == (200, "succeeded")
        status, finished, _ = waiting.result(GUARD)
    assert status == 200
    assert [(r["rollout_id"], r["status"]) for r in finished] == [(rid, "succeeded")]


def test_stop_cancels_calls_in_progress_and_joins_the_threads(
    fstore: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = asyncio.run(fstore.enqueue_rollout(input=None)).rollout_id
    entered, cancelled = threading.Event(), threading.Event()
    original = fstore.wait_for_rollouts

    async def wait(*, rollout_ids: list[str], timeout: float | None = None) -> Any:
        entered.set()
        try:
            return await original(rollout_ids=rollout_ids, timeout=timeout)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    monkeypatch.setattr(fstore, "wait_for_rollouts", wait)
    body = json.dumps({"rollout_ids": [rid], "timeout": None})
    with ThreadPoolExecutor(1) as client:
        srv = ServerThread(fstore, threads=2)
        with srv:
            threads = srv.server.pool.threads
            assert len(threads) == 2
            assert all(t.is_alive() for t in threads)
            waiting = client.submit(raw_request, srv.url, "POST", "/v1/agl/waits/rollouts", body, JSON, GUARD)
            assert entered.wait(GUARD)
            srv.stop()
            assert cancelled.is_set()  # the store call was cancelled, not abandoned
            assert not any(t.is_alive() for t in threads)
            assert not srv.server.pool.running
        with pytest.raises(ConnectionError):  # the cut request: the server closed the connection
            waiting.result(GUARD)


@pytest.mark.upstream
async def test_concurrent_dequeues_through_upstream_client_claim_each_rollout_once(
    fstore: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N runners dequeue at once through upstream's client over M < N queued rollouts: each
    rollout is handed out exactly once, and the other calls find the queue empty. The first
    ``THREADS`` dequeues are held at a barrier so that they claim at the same moment, one on
    each store thread."""
    pytest.importorskip("agentlightning")
    from agentlightning.store.client_server import LightningStoreClient as UpstreamClient

    threads, runners, queued = 4, 12, 5
    ids = [(await fstore.enqueue_rollout(input={"i": i})).rollout_id for i in range(queued)]
    gate = threading.Barrier(threads, timeout=GUARD)
    lock = threading.Lock()
    entries = 0
    served: list[str | None] = []
    original = fstore.dequeue_rollout

    async def dequeue(worker_id: str | None = None) -> Any:
        nonlocal entries
        with lock:
            entries += 1
            gated = entries <= threads
        if gated:
            # Blocks this store thread; the barrier only opens once every thread holds one.
            gate.wait()
        result = await original(worker_id=worker_id)
        with lock:
            served.append(None if result is None else result.rollout_id)
        return result

    monkeypatch.setattr(fstore, "dequeue_rollout", dequeue)
    with ServerThread(fstore, threads=threads) as srv:
        client = UpstreamClient(srv.url, retry_delays=(), health_retry_delays=())
        try:
            results = await asyncio.gather(
                *(client.dequeue_rollout(worker_id=f"runner-{i}") for i in range(runners))
            )
        finally:
            await client.close()
    # Upstream's client turns errors into None: the server-side tally shows every call answered.
    assert len(served) == runners
    assert sorted(r for r in served if r is not None) == sorted(ids)
    claimed = [r.rollout_id for r in results if r is not None]
    assert sorted(claimed) == sorted(ids)
    assert results.count(None) == runners - queued
    for rid in ids:
        attempts = await fstore.query_attempts(rid)
        assert len(attempts.items) == 1  # claimed once: no second attempt was ever started


async def test_loop_pool_contract() -> None:
    """Least-busy placement, results and errors carried back, cancellation forwarded, and
    no work accepted outside start() .. close()."""
    assert 4 <= default_size() <= 8
    with pytest.raises(ValueError, match="at least one thread"):
        LoopPool(0)
    pool = LoopPool(3, name="agl-store-unit")

    async def where() -> str:
        return threading.current_thread().name

    refused = where()
    with pytest.raises(PoolClosedError):
        await pool.run(refused)  # not started: the coroutine is closed, never left pending
    pool.start()
    try:
        # Three calls held at once (a barrier of three) must be on three different threads.
        barrier = threading.Barrier(3, timeout=GUARD)

        async def held() -> str:
            barrier.wait()
            return threading.current_thread().name

        names = await asyncio.gather(*(pool.run(held()) for _ in range(3)))
        assert sorted(names) == [f"agl-store-unit-{i}" for i in range(3)]

        async def fails() -> None:
            raise KeyError("from the pool")

        with pytest.raises(KeyError, match="from the pool"):
            await pool.run(fails())

        started, cancelled = threading.Event(), threading.Event()

        async def forever() -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        task = asyncio.ensure_future(pool.run(forever()))
        assert await asyncio.to_thread(started.wait, GUARD)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(cancelled.wait, GUARD)  # the pool-side coroutine saw it
    finally:
        assert await pool.aclose()
    assert not pool.running
    with pytest.raises(PoolClosedError):
        await pool.run(where())
