"""agl's ``POST /v1/agl/spans/batch`` and the client that uses it (docs/behaviour.md §9.2, §5.2).

Many spans go in one request and are stored as ``add_many_spans`` stores them: per attempt in
the order given, duplicates skipped, safe to send again. A server without the route (upstream's)
gets one ``POST /spans`` a span from the same client call.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_helpers import ServerThread
from server_helpers import raw_request

from store_fs import FileStore, Span
from store_fs.client import LightningStoreClient
from store_fs.errors import RolloutNotFoundError
from store_fs.server.http import Request, Response
from store_fs.server.routes import PREFIX

JSON = {"Content-Type": "application/json"}


def span(rid: str, aid: str, seq: int, name: str | None = None) -> Span:
    return Span.model_validate(
        {
            "rollout_id": rid, "attempt_id": aid, "sequence_id": seq, "trace_id": f"{seq:032x}",
            "span_id": f"{aid[-6:]}{seq:010x}", "parent_id": None, "name": name or f"s{seq}",
            "status": {"status_code": "OK"}, "attributes": {"i": seq}, "events": [], "links": [],
            "start_time": 1.0, "end_time": 2.0, "context": None, "parent": None,
            "resource": {"attributes": {}, "schema_url": ""},
        }
    )  # fmt: skip


@pytest.fixture
def fstore(tmp_path: Path) -> Iterator[FileStore]:
    store = FileStore(tmp_path / "store")
    yield store
    store.close()


def base_url(srv: ServerThread) -> str:
    return f"http://127.0.0.1:{srv.port}"


class Counted:
    """Wraps a server's request handler to record the (method, path) of each request."""

    def __init__(self, srv: ServerThread) -> None:
        self.seen: list[tuple[str, str]] = []
        self.inner = srv.server.http.handler
        srv.server.http.handler = self.handle

    async def handle(self, request: Request) -> Response:
        self.seen.append((request.method, request.path.removeprefix(PREFIX)))
        return await self.inner(request)


def _two_attempts(store: FileStore) -> tuple[tuple[str, str], tuple[str, str]]:
    first = asyncio.run(store.start_rollout(input={"q": 1}))
    second = asyncio.run(store.start_rollout(input={"q": 2}))
    return (first.rollout_id, first.attempt.attempt_id), (second.rollout_id, second.attempt.attempt_id)


def test_the_client_sends_many_spans_in_one_request_and_a_retry_stores_nothing_twice(
    fstore: FileStore,
) -> None:
    (r1, a1), (r2, a2) = _two_attempts(fstore)
    # Interleaved attempts and sequence ids out of order: each attempt keeps the order given.
    spans = [span(r1, a1, 3), span(r2, a2, 1), span(r1, a1, 1), span(r2, a2, 2), span(r1, a1, 2)]

    async def send(url: str) -> tuple[list[Span], list[Span]]:
        async with LightningStoreClient(url, retry_delays=()) as client:
            return list(await client.add_many_spans(spans)), list(await client.add_many_spans(spans))

    with ServerThread(fstore) as srv:
        counted = Counted(srv)
        stored, again = asyncio.run(send(base_url(srv)))
    assert counted.seen == [("POST", "/spans/batch"), ("POST", "/spans/batch")]
    # Grouped by attempt in first-seen order, each group in the order given (§5.2).
    grouped = [s for s in spans if s.attempt_id == a1] + [s for s in spans if s.attempt_id == a2]
    assert [s.span_id for s in stored] == [s.span_id for s in grouped]
    assert again == []  # every span_id already stored: skipped, as add_many_spans does
    for rid, aid in ((r1, a1), (r2, a2)):
        page = asyncio.run(fstore.query_spans(rid, aid, sort_by=None))
        # Stored once each, in the order the batch gave them for this attempt.
        want = [s.span_id for s in spans if s.attempt_id == aid]
        assert [s.span_id for s in page.items] == want


def test_batches_are_bounded_in_size(fstore: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import store_fs.client as client_module

    monkeypatch.setattr(client_module, "SPAN_BATCH", 2)
    (rid, aid), _ = _two_attempts(fstore)
    spans = [span(rid, aid, seq) for seq in range(1, 6)]

    async def send(url: str) -> list[Span]:
        async with LightningStoreClient(url, retry_delays=()) as client:
            return list(await client.add_many_spans(spans))

    with ServerThread(fstore) as srv:
        counted = Counted(srv)
        stored = asyncio.run(send(base_url(srv)))
    assert counted.seen == [("POST", "/spans/batch")] * 3
    assert [s.sequence_id for s in stored] == [1, 2, 3, 4, 5]


def test_a_server_without_the_route_gets_one_span_a_request(fstore: FileStore) -> None:
    """As against upstream's server: the 404 of an unknown route is seen once, then every span
    (of this call and later ones) goes by ``POST /spans``."""
    (rid, aid), _ = _two_attempts(fstore)
    with ServerThread(fstore) as srv:
        api = srv.server.api
        api.routes = [r for r in api.routes if r.template != "/spans/batch"]
        del api._literal[("POST", PREFIX + "/spans/batch")]
        counted = Counted(srv)

        async def send() -> tuple[list[Span], list[Span]]:
            async with LightningStoreClient(base_url(srv), retry_delays=()) as client:
                first = list(await client.add_many_spans([span(rid, aid, 1), span(rid, aid, 2)]))
                return first, list(await client.add_many_spans([span(rid, aid, 3)]))

        first, second = asyncio.run(send())
    assert [s.sequence_id for s in first + second] == [1, 2, 3]
    assert counted.seen == [("POST", "/spans/batch")] + [("POST", "/spans")] * 3
    page = asyncio.run(fstore.query_spans(rid, aid))
    assert [s.sequence_id for s in page.items] == [1, 2, 3]


def test_the_route_refuses_what_add_many_spans_refuses(fstore: FileStore) -> None:
    (rid, aid), _ = _two_attempts(fstore)
    good = span(rid, aid, 1).model_dump(mode="json")
    with ServerThread(fstore) as srv:
        url, path = base_url(srv), PREFIX + "/spans/batch"
        status, detail, _ = raw_request(url, "POST", path, json.dumps({"spans": [{"name": 1}]}), JSON)
        assert status == 422
        assert isinstance(detail["detail"], list)
        status, _, _ = raw_request(url, "POST", path, json.dumps([good]), JSON)  # not the object
        assert status == 422
        status, _, _ = raw_request(url, "POST", path, "{not json", JSON)
        assert status == 400
        unknown = {**good, "rollout_id": "ro-000000000000"}
        status, body, _ = raw_request(url, "POST", path, json.dumps({"spans": [unknown]}), JSON)
        assert (status, body["error_type"]) == (404, RolloutNotFoundError.__name__)
        status, body, _ = raw_request(url, "POST", path, json.dumps({"spans": []}), JSON)
        assert (status, body) == (201, [])
        # The upstream route is unchanged beside it: one span in, the span (or null) out.
        status, body, _ = raw_request(url, "POST", PREFIX + "/spans", json.dumps(good), JSON)
        assert (status, body["span_id"]) == (201, good["span_id"])
        status, body, _ = raw_request(url, "POST", PREFIX + "/spans", json.dumps(good), JSON)
        assert (status, body) == (201, None)
    assert [s.span_id for s in asyncio.run(fstore.query_spans(rid)).items] == [good["span_id"]]


@pytest.mark.parametrize("network", ["0", "1"])
def test_one_rollout_calls_leave_the_http_loop_only_on_a_network_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: str
) -> None:
    """On a local disk a span or an attempt update is answered on the HTTP loop (cheaper than the
    trip to the pool); on NFS each is several round trips, which would hold up every connection."""
    from store_fs.server.app import StoreServer

    monkeypatch.setenv("AGL_NETWORK_FS", network)
    store = FileStore(tmp_path / "store")
    server = StoreServer(store, host="127.0.0.1", port=0)
    assert store.network_filesystem is (network == "1")
    assert (server._inline == frozenset()) is (network == "1")
    assert server.api.add_span in server.api.inline
    store.close()


def test_on_a_durable_store_every_call_leaves_the_http_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With durability="fsync" a span, an attempt update or a dequeue waits for the disk, and so
    may a read (the watchdog scan it starts can expire attempts): on the HTTP loop each would
    hold up every connection, so they run on store threads (where threads syncing the same file
    share one sync)."""
    monkeypatch.setenv("AGL_NETWORK_FS", "0")
    store = FileStore(tmp_path / "store", durability="fsync")
    ids = [asyncio.run(store.enqueue_rollout({"i": i})).rollout_id for i in range(2)]
    ran_on: list[tuple[str, str]] = []
    for name in ("dequeue_rollout", "add_span", "update_attempt", "get_rollout_by_id"):
        original = getattr(store, name)

        async def recorded(*args: Any, _name: str = name, _call: Any = original, **kwargs: Any) -> Any:
            ran_on.append((_name, threading.current_thread().name))
            return await _call(*args, **kwargs)

        monkeypatch.setattr(store, name, recorded)
    with ServerThread(store) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        dequeue = PREFIX + "/queues/rollouts/dequeue"
        for _ in ids:  # the second dequeue comes from the first one's listing
            status, answer, _ = raw_request(url, "POST", dequeue, json.dumps({"worker_id": "w"}), JSON)
            assert status == 200, answer
        rid, aid = answer[0]["rollout_id"], answer[0]["attempt"]["attempt_id"]
        body = span(rid, aid, 1).model_dump_json()
        status, answer, _ = raw_request(url, "POST", PREFIX + "/spans", body, JSON)
        assert status == 201, answer
        update = json.dumps({"status": "succeeded"})
        status, answer, _ = raw_request(url, "POST", f"{PREFIX}/rollouts/{rid}/attempts/{aid}", update, JSON)
        assert status == 200, answer
        status, answer, _ = raw_request(url, "GET", f"{PREFIX}/rollouts/{rid}")
        assert status == 200, answer
    loop = srv.thread.name
    assert [(name, thread == loop) for name, thread in ran_on] == [
        ("dequeue_rollout", False),
        ("dequeue_rollout", False),
        ("add_span", False),
        ("update_attempt", False),
        ("get_rollout_by_id", False),
    ]
    store.close()


def test_a_dequeue_runs_on_the_http_loop_once_the_queue_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing the queue can take a while (~0.1 s for 20,000 rollouts): the first dequeue of a
    process, and one after the listing ran dry, go to a store thread; a dequeue of one rollout
    from the listing is as cheap as a span, and is answered on the HTTP loop."""
    monkeypatch.setenv("AGL_NETWORK_FS", "0")
    store = FileStore(tmp_path / "store")
    ids = [asyncio.run(store.enqueue_rollout({"i": i})).rollout_id for i in range(4)]
    ran_on: list[tuple[str, str]] = []
    for name in ("dequeue_rollout", "dequeue_many_rollouts"):
        original = getattr(store, name)

        async def recorded(*args: Any, _name: str = name, _call: Any = original, **kwargs: Any) -> Any:
            ran_on.append((_name, threading.current_thread().name))
            return await _call(*args, **kwargs)

        monkeypatch.setattr(store, name, recorded)
    path = PREFIX + "/queues/rollouts/dequeue"
    with ServerThread(store) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        got = []
        for body in ({"worker_id": "w"}, {}, {"limit": 2}, {"worker_id": "w"}):
            status, answer, _ = raw_request(url, "POST", path, json.dumps(body), JSON)
            assert status == 200, answer
            got += [a["rollout_id"] for a in answer]
    assert got == ids
    loop = srv.thread.name
    assert [(name, thread == loop) for name, thread in ran_on] == [
        ("dequeue_rollout", False),  # lists the queue
        ("dequeue_rollout", True),  # from the listing
        ("dequeue_many_rollouts", False),  # several at once
        ("dequeue_rollout", False),  # the listing ran dry: list again
    ]
