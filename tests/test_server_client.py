"""The HTTP/1.1 exchange of agl's client (``store_fs._transport``) against scripted servers.

Each test runs a small asyncio server whose every connection follows a script (answer, close
without answering, never answer), so the retry rules of docs/behaviour.md §9.6 are checked
exactly: a request that never reached the server is retried whatever it is; one whose answer
was lost only when it is safe to repeat; error replies never.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from http_helpers import ServerThread

from store_fs import FileStore, PromptTemplate
from store_fs._transport import Transport
from store_fs.client import LightningStoreClient
from store_fs.errors import RemoteStoreError, RolloutNotFoundError

Script = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": [1]}\n'


class Scripted:
    """A server on 127.0.0.1 running ``script(n, reader, writer)`` for its n-th connection;
    ``requests`` counts the requests read, ``connections`` the connections accepted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/agl"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(self.connections, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> Scripted:
        fake = Scripted(script)
        fake.server = await asyncio.start_server(fake._serve, "127.0.0.1", 0)
        servers.append(fake.server)
        return fake

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def transport(url: str, *, timeout: float = 5.0, retries: tuple[float, ...] = (0.01, 0.01)) -> Transport:
    return Transport(url, token="t0k", timeout=timeout, retry_delays=retries)


async def test_keep_alive_one_connection_for_many_requests(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    async def answer_all(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await fake.read_request(reader)
            writer.write(OK)

    fake = await scripted(answer_all)
    http = transport(fake.url)
    for i in range(5):
        assert await http.call("POST", "/x", json={"i": i}, idempotent=False) == {"a": [1]}
    assert await http.call("GET", "/y", params={"k": ["a", "b"]}, idempotent=True) == {"a": [1]}
    await http.close()
    assert fake.connections == 1
    first, last = fake.requests[0], fake.requests[-1]
    assert first.startswith(b"POST /v1/agl/x HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer t0k\r\n" in first
    assert b"\r\nHost: 127.0.0.1:" in first
    assert first.endswith(b'\r\n\r\n{"i":0}')
    assert last.startswith(b"GET /v1/agl/y?k=a&k=b HTTP/1.1\r\n")
    assert b"Content-Length" not in last  # a GET without a body announces none


async def test_chunked_replies_and_connection_close_are_honoured(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    async def chunked_then_close(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await fake.read_request(reader)
        head = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        writer.write(head + b"4\r\n[1, \r\n2\r\n2]\r\n0\r\n\r\n")
        await writer.drain()

    fake = await scripted(chunked_then_close)
    http = transport(fake.url)
    assert await http.call("POST", "/x", idempotent=False) == [1, 2]
    assert await http.call("POST", "/x", idempotent=False) == [1, 2]
    assert fake.connections == 2  # "Connection: close": the second request opened a new one
    assert fake.requests[0].endswith(b"Content-Length: 0\r\n\r\n")  # a POST always says its length
    await http.close()


async def test_a_lost_answer_is_retried_only_when_safe(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    async def hang_up(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await fake.read_request(reader)  # read, then close without a word: the answer is lost

    fake = await scripted(hang_up)
    http = transport(fake.url)
    with pytest.raises(RemoteStoreError, match="ReadError") as caught:
        await http.call("POST", "/queues/rollouts/dequeue", json={}, idempotent=False)
    assert caught.value.status is None  # transient for the runner's own retries
    assert len(fake.requests) == 1  # a dequeue is never sent twice
    with pytest.raises(RemoteStoreError, match="ReadError"):
        await http.call("POST", "/spans", json={}, idempotent=True)
    assert len(fake.requests) == 1 + 3  # the first try and both retries
    await http.close()


async def test_a_late_answer_times_out_and_is_never_read_as_the_next_one(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    async def slow_first(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await fake.read_request(reader)
            if len(fake.requests) == 1:
                await asyncio.sleep(0.5)  # past the client's timeout
            writer.write(OK)

    fake = await scripted(slow_first)
    http = transport(fake.url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RemoteStoreError, match="timed out"):
        await http.call("POST", "/x", idempotent=False)
    assert time.monotonic() - started < 0.45
    assert await http.call("POST", "/x", idempotent=False) == {"a": [1]}
    assert fake.connections == 2  # the timed-out connection was dropped, not reused
    await http.close()


async def test_a_refused_connection_is_retried_for_every_call() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http = transport(f"http://127.0.0.1:{port}/v1/agl", retries=(0.1, 0.1))
    started = time.monotonic()
    with pytest.raises(RemoteStoreError, match="ConnectError"):
        await http.call("POST", "/queues/rollouts/dequeue", idempotent=False)
    assert time.monotonic() - started >= 0.2  # both retries were waited for


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    scripted: Callable[[Script], Awaitable[Scripted]],
) -> None:
    async def one_each(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await fake.read_request(reader)
        writer.write(OK)  # keep-alive announced, then closed: a server's idle timeout
        await writer.drain()

    fake = await scripted(one_each)
    http = transport(fake.url, retries=())
    assert await http.call("POST", "/x", idempotent=False) == {"a": [1]}
    await asyncio.sleep(0.05)  # the close arrives
    assert await http.call("POST", "/x", idempotent=False) == {"a": [1]}  # sent once, answered
    assert (fake.connections, len(fake.requests)) == (2, 2)
    await http.close()


async def test_error_replies_map_to_the_store_exceptions_through_a_real_server(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    try:
        with ServerThread(store) as srv:
            async with LightningStoreClient(f"http://127.0.0.1:{srv.port}", retry_delays=()) as client:
                rollout = await client.enqueue_rollout(input={"q": 1}, idempotency_key="k")
                again = await client.enqueue_rollout(input={"q": 1}, idempotency_key="k")
                assert again.rollout_id == rollout.rollout_id
                with pytest.raises(ValueError, match="status"):
                    await client.update_rollout(rollout.rollout_id, status="bogus")  # type: ignore[arg-type]
                assert await client.get_rollout_by_id("ro-000000000000") is None
                with pytest.raises(RolloutNotFoundError):
                    await client.update_attempt("ro-000000000000", "at-00000000", status="failed")
    finally:
        store.close()


async def test_ids_spelled_like_route_words_reach_their_own_records(tmp_path: Path) -> None:
    """GET /resources/latest and POST /workers/search are routes of their own: the client sent
    a resources id 'latest' (another snapshot came back) and a worker id 'search' (a 422) to
    them (an adversarial pass). FileStore takes any safe id; so does the client now."""
    store = FileStore(tmp_path / "store")
    try:
        with ServerThread(store) as srv:
            async with LightningStoreClient(f"http://127.0.0.1:{srv.port}", retry_delays=()) as client:
                named = await client.update_resources(
                    "latest", {"p": PromptTemplate(template="L", engine="f-string")}
                )
                newer = await client.add_resources({"p": PromptTemplate(template="N", engine="f-string")})
                got = await client.get_resources_by_id("latest")
                assert got is not None
                assert (got.resources_id, got.version) == ("latest", named.version)
                latest = await client.get_latest_resources()
                assert latest is not None
                assert latest.resources_id == newer.resources_id
                worker = await client.update_worker("search", heartbeat_stats={"n": 1})
                assert worker.worker_id == "search"
                found = await client.get_worker_by_id("search")
                assert found is not None
                assert found.heartbeat_stats == {"n": 1}
    finally:
        store.close()
