"""A small HTTP/1.1 server on asyncio streams: just what the store API needs.

Supported: keep-alive (HTTP/1.1 default, HTTP/1.0 with ``Connection: keep-alive``),
``Content-Length`` and chunked request bodies, ``Expect: 100-continue``, a body size
limit (413), an idle timeout for kept-alive connections, optional bearer-token auth,
and one access-log line per request (method, path, status, milliseconds).

Not supported, because no client of the store API needs them: TLS (put a proxy in
front), HTTP/2, pipelined requests are answered in order but not in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HttpError", "HttpServer", "Request", "Response"]

log = logging.getLogger("store_fs.server")

MAX_HEADER_BYTES = 64 * 1024
# A refused (413) body up to this size is read and dropped so the client sees the answer.
DRAIN_LIMIT = 256 * 1024 * 1024
DRAIN_SECONDS = 5.0

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass
class Request:
    """A parsed request. ``path`` is still percent-encoded (the router decodes each segment,
    so an encoded ``/`` stays inside its segment); header names are lower-case; ``query``
    keeps repeated keys in order."""

    method: str
    target: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """A protocol-level failure answered with ``status`` and a JSON ``detail``; closes the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[int, str], Response]


class HttpServer:
    """Serve ``handler`` over HTTP/1.1.

    Args:
        handler: turns a request into a response; it must not raise (the server turns a
            stray exception into a 500 and keeps serving, but logs it as a bug).
        render_error: builds the response for protocol errors (bad framing, 401, 413).
        token: when set, every request except ``public_paths`` needs
            ``Authorization: Bearer <token>`` (else 401).
        max_body_bytes: larger request bodies are refused with 413 before being read.
        idle_timeout: seconds a kept-alive connection may wait for its next request.
    """

    def __init__(
        self,
        handler: Handler,
        render_error: ErrorRenderer,
        *,
        token: str | None = None,
        public_paths: frozenset[str] = frozenset(),
        max_body_bytes: int = 64 * 1024 * 1024,
        idle_timeout: float = 75.0,
    ) -> None:
        self._handler = handler
        self._render_error = render_error
        self._token = token.encode() if token else None
        self._public = public_paths
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; empty before :meth:`start`."""
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES)

    async def stop(self) -> None:
        """Stop accepting, then end every open connection (in-flight requests are cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # -- one connection ----------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the peer went away or idled out: nothing to answer
        except asyncio.CancelledError:
            pass  # server shutdown
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection must be closed."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
        except asyncio.IncompleteReadError as err:
            if err.partial.strip():
                log.debug("connection closed mid-header")
            return False
        except asyncio.LimitOverrunError:
            await self._write(writer, self._render_error(431, "request header too large"), close=True)
            return False
        started = time.perf_counter()
        method = path = "-"
        request: Request | None = None
        try:
            request, keep_alive = _parse_head(head)
            method, path = request.method, request.path
            self._authorize(request)
            request.body = await self._read_body(request, reader, writer)
        except HttpError as err:
            response = self._render_error(err.status, err.detail)
            await self._write(writer, response, close=True)
            _access(method, path, response.status, started)
            if err.status == 413 and request is not None:
                await self._discard_body(request, reader)
            return False
        try:
            response = await self._handler(request)
        except Exception:  # a handler bug must not take the server down
            log.exception("unhandled error serving %s %s", method, path)
            response = self._render_error(500, "Internal server error")
        await self._write(writer, response, close=not keep_alive)
        _access(method, path, response.status, started)
        return keep_alive

    def _authorize(self, request: Request) -> None:
        if self._token is None or request.path in self._public:
            return
        scheme, _, given = request.header("authorization").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise HttpError(401, "missing or wrong bearer token")

    async def _read_body(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        chunked = "chunked" in request.header("transfer-encoding").lower()
        length_text = request.header("content-length")
        if not chunked and not length_text:
            return b""
        length = 0
        if not chunked:
            if not length_text.isdigit():
                raise HttpError(400, "bad Content-Length")
            length = int(length_text)
            if length > self.max_body_bytes:
                raise HttpError(413, f"request body larger than {self.max_body_bytes} bytes")
        if request.header("expect").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not chunked:
            return await reader.readexactly(length)
        return await self._read_chunked(reader)

    async def _discard_body(self, request: Request, reader: asyncio.StreamReader) -> None:
        """Read and drop a refused body of moderate size before closing.

        Closing a socket with unread data makes the kernel send a reset, and a client still
        sending would then see "connection reset" instead of the 413. Huge bodies are not
        worth reading: for those the reset stands.
        """
        length = request.header("content-length")
        remaining = int(length) if length.isdigit() else 0
        if remaining > DRAIN_LIMIT:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DRAIN_SECONDS):
                while remaining > 0:
                    chunk = await reader.read(min(remaining, 1 << 16))
                    if not chunk:
                        return
                    remaining -= len(chunk)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad chunk size") from None
            if size == 0:
                # Trailers (ignored) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(parts)
            total += size
            if total > self.max_body_bytes:
                raise HttpError(413, f"request body larger than {self.max_body_bytes} bytes")
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError(400, "bad chunk framing")

    async def _write(self, writer: asyncio.StreamWriter, response: Response, *, close: bool) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        lines.extend(f"{k}: {v}" for k, v in response.headers.items())
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()


def _parse_head(head: bytes) -> tuple[Request, bool]:
    """Parse the request line and headers; returns the request and whether to keep the connection."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        key = name.lower()
        # Repeated headers combine with commas (RFC 9110 5.3).
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if "content-length" in headers and "transfer-encoding" in headers:
        raise HttpError(400, "both Content-Length and Transfer-Encoding given")
    split = urlsplit(target)
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps connections open unless told otherwise; HTTP/1.0 only when asked.
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    request = Request(
        method=method.upper(),
        target=target,
        path=split.path,
        query=parse_qsl(split.query, keep_blank_values=True),
        headers=headers,
    )
    return request, keep_alive


def _access(method: str, path: str, status: int, started: float) -> None:
    log.info("%s %s %d %.1fms", method, path, status, (time.perf_counter() - started) * 1000)
