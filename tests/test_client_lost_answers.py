"""agl's client where a request's answer is lost, and where an id or a value would change the
request: found by an adversarial pass of the server and its client.

- ``update_rollout(status="requeuing")`` was retried after a lost answer as every update is;
  a runner that dequeued the rollout in between then saw it queued again, and a third runner
  got a third attempt beside the second, live one.
- An empty id made another route's URL (``/rollouts//attempts``): a 404 the client took for a
  server without that route (one empty-id heartbeat switched it to the fallback heartbeat for
  good), where FileStore refuses the id.
- Bytes in an enqueued rollout's input or metadata were sent as text (``b"abc"`` stored as
  ``"abc"``), where FileStore refuses them.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from http_helpers import ServerThread

from store_fs import FileStore
from store_fs.client import LightningStoreClient
from store_fs.errors import InvalidIdError, RemoteStoreError, UnstorableValueError


class AnswerLosingProxy:
    """Passes requests to a server; the answer to the first request ``lose`` picks is thrown
    away once the server has acted on it (the connection cut), after ``meanwhile`` ran."""

    def __init__(self, port: int, lose: Callable[[bytes], bool], meanwhile: Callable[[], Awaitable[None]]):
        self.upstream = port
        self.lose = lose
        self.meanwhile = meanwhile
        self.lost = 0
        self.port = 0

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        return head + (await reader.readexactly(int(length[1])) if length else b"")

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream)
        try:
            while True:
                try:
                    request = await self._message(client_in)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                server_out.write(request)
                answer = await self._message(server_in)
                if not self.lost and self.lose(request):
                    self.lost += 1
                    await self.meanwhile()
                    client_out.transport.abort()
                    return
                client_out.write(answer)
                await client_out.drain()
        finally:
            server_out.close()
            client_out.close()


async def test_a_requeue_whose_answer_was_lost_is_not_sent_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    rollout = await store.enqueue_rollout("task")
    assert await store.dequeue_rollout(worker_id="A") is not None
    second: list[int] = []

    async def runner_b_dequeues() -> None:
        got = await store.dequeue_rollout(worker_id="B")
        assert got is not None
        second.append(got.attempt.sequence_id)

    def the_requeue(request: bytes) -> bool:
        return request.startswith(f"POST /v1/agl/rollouts/{rollout.rollout_id} ".encode())

    with ServerThread(store) as server:
        proxy = AnswerLosingProxy(server.port, the_requeue, runner_b_dequeues)
        listening = await proxy.start()
        try:
            async with LightningStoreClient(f"http://127.0.0.1:{proxy.port}", retry_delays=(0.05,)) as client:
                with pytest.raises(RemoteStoreError):  # the answer lost: the caller decides
                    await client.update_rollout(rollout.rollout_id, status="requeuing")
        finally:
            listening.close()
            await listening.wait_closed()
    assert proxy.lost == 1
    assert second == [2]  # runner B took the requeued rollout
    assert await store.dequeue_rollout(worker_id="C") is None  # ... and it was queued once
    attempts = (await store.query_attempts(rollout.rollout_id)).items
    assert [a.worker_id for a in attempts] == ["A", "B"]
    store.close()


async def test_ids_and_values_the_store_refuses_are_refused_before_sending(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    rollout = await store.enqueue_rollout("task")
    with ServerThread(store) as server:
        async with LightningStoreClient(f"http://127.0.0.1:{server.port}", retry_delays=()) as client:
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: client.get_rollout_by_id(""),
                lambda: client.update_rollout("", status="cancelled"),
                lambda: client.start_attempt(""),
                lambda: client.query_attempts(""),
                lambda: client.update_attempt(rollout.rollout_id, "", status="failed"),
                lambda: client.heartbeat(rollout.rollout_id, ""),
                lambda: client.get_worker_by_id(""),
                lambda: client.update_worker(""),
                lambda: client.update_resources("", {}),
            ]
            for call in calls:
                with pytest.raises(InvalidIdError, match="must not be empty"):
                    await call()
            # The heartbeat route is still used: an empty id was not taken for a missing route.
            assert client._heartbeat_route
            for value in (b"abc", {"nested": b"v"}):
                with pytest.raises(UnstorableValueError):
                    await client.enqueue_rollout(value)
                with pytest.raises(UnstorableValueError):
                    await client.enqueue_rollout("task", metadata={"m": value})
            assert (await client.query_rollouts()).total == 1  # nothing else was stored
    store.close()


async def test_a_server_whose_store_was_replaced_or_removed_refuses_every_request(tmp_path: Path) -> None:
    """The server went on serving the directory under the old store's id: a client that began
    on the old store had its enqueues and dequeues taken into the new one (no 421), a new
    client learned the old id, and after ``rm -r`` reads answered 200 with an empty store."""
    root = tmp_path / "store"
    store = FileStore(root)
    with ServerThread(store) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with LightningStoreClient(url, retry_delays=()) as client:
            await client.enqueue_rollout("before")
            root.rename(tmp_path / "moved")
            replacement = FileStore(root)  # another store at the same path
            with pytest.raises(RemoteStoreError, match="replaced while it was read"):
                await client.enqueue_rollout("after")
            assert await client.dequeue_rollout() is None  # a failing dequeue is None (as upstream's)
            async with LightningStoreClient(url, retry_delays=()) as newcomer:
                with pytest.raises(RemoteStoreError, match="replaced"):
                    await newcomer.query_rollouts()
            assert (await replacement.statistics())["total_rollouts"] == 0  # nothing written into it
            replacement.close()
            shutil.rmtree(root)
            with pytest.raises(RemoteStoreError, match="any more"):
                await client.statistics()
    store.close()


async def test_an_answer_that_is_not_json_is_a_remote_store_error() -> None:
    """``agl run`` pointed at another web server ended in "unexpected JSONDecodeError"."""

    async def not_a_store(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_a_store, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with LightningStoreClient(f"http://127.0.0.1:{port}", retry_delays=()) as client:
            with pytest.raises(RemoteStoreError, match=r"not JSON: is .* an agl store"):
                await client.get_rollout_by_id("ro-000000000000")
    finally:
        server.close()
        await server.wait_closed()
