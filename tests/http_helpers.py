"""Helpers for the HTTP-layer tests: an in-process store server with short timeouts, and a
raw-socket client that reads answers byte for byte (no HTTP library between the test and
the server, so malformed requests reach it exactly as written).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from store_fs import FileStore
from store_fs.server import StoreServer
from store_fs.server.http import Limits

GUARD = 30.0  # seconds: only ever reached when something is broken

# Short enough that timeouts are tested in well under a second each.
FAST = Limits(
    max_body_bytes=64 * 1024,
    idle_timeout=1.0,
    header_timeout=0.5,
    body_timeout=0.5,
    min_body_rate=4096.0,
    send_timeout=1.0,
)


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose server logged an error: asyncio logs a protocol callback that raised
    (and then drops the connection) instead of failing the request, so only the log tells.
    Import it into a test module to apply it there."""
    yield
    errors = [
        r.getMessage() + (f" {r.exc_info[1]!r}" if r.exc_info else "")
        for r in caplog.get_records("call")
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("asyncio", "store_fs")
    ]
    assert not errors, errors


class ServerThread:
    """A :class:`StoreServer` on 127.0.0.1 (a free port), its event loop on a thread of its own.

    Leaving the ``with`` block (or :meth:`stop`) stops the server, its store threads and the
    loop thread."""

    def __init__(
        self, store: FileStore, *, threads: int = 2, limits: Limits = FAST, token: str | None = None
    ) -> None:
        self.server = StoreServer(
            store, host="127.0.0.1", port=0, threads=threads, limits=limits, token=token
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-http-loop")

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(GUARD)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        try:
            self.call(self.server.start())
        except BaseException:
            self._end_loop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, grace: float = 0.0) -> None:
        if self.loop.is_closed():
            return
        try:
            self.call(self.server.stop(grace))
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        try:
            self.call(self.loop.shutdown_default_executor())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(GUARD)
            self.loop.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""
    extra: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class Closed(Exception):
    """The server closed the connection before a whole answer arrived."""


class RawClient:
    """One TCP connection; :meth:`send` writes bytes, :meth:`answer` reads one whole answer."""

    def __init__(self, port: int, timeout: float = GUARD) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode("latin-1") if isinstance(data, str) else data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed(self.buffer[:200].decode("latin-1"))
        self.buffer += chunk

    def answer(self, *, to_head: bool = False) -> Answer:
        """The next answer (interim 1xx answers are skipped, their status lines kept in ``extra``).
        ``to_head``: it answers a HEAD request, so it has no body whatever its Content-Length."""
        extra: list[str] = []
        while True:
            while b"\r\n\r\n" not in self.buffer:
                self._fill()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            if status >= 200:
                break
            extra.append(lines[0])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if to_head else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, body, head, extra)

    def request(self, data: bytes | str) -> Answer:
        self.send(data)
        return self.answer()

    def is_closed(self, wait: float = 2.0) -> bool:
        """True when the server has closed (or reset) the connection within ``wait`` seconds and
        sent nothing more."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(GUARD)
        if chunk:
            self.buffer += chunk
            return False
        return True


def http_request(
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    *,
    version: str = "HTTP/1.1",
) -> bytes:
    """A well-formed request (Host and, with a body, Content-Length added unless given)."""
    data = body.encode() if isinstance(body, str) else body
    given = {k.lower() for k in headers or {}}
    lines = [f"{method} {path} {version}"]
    if "host" not in given:
        lines.append("Host: 127.0.0.1")
    if data is not None and "content-length" not in given and "transfer-encoding" not in given:
        lines.append(f"Content-Length: {len(data)}")
    lines.extend(f"{k}: {v}" for k, v in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b"")


def chunked(*parts: bytes, trailers: str = "") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + b"0\r\n" + trailers.encode("latin-1") + b"\r\n"


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
