"""HTTP/1.1 for the store server: llhttp parses the bytes, this module keeps the connections.

Parsing and framing (request line, headers, ``Content-Length`` and chunked bodies, and
every malformed variant of them) is done by llhttp, the parser of Node.js, through
``httptools`` (the parser under uvicorn), in its strict mode. This module runs one
:class:`asyncio.BufferedProtocol` per connection around it: requests in order, the limits,
the timeouts, the answers to bad requests, and a graceful stop.

Why this and not uvicorn (with httptools or h11), h11 alone, or the hand-written parser it
replaces? Measured with ``benchmarks/bench_http.py`` on a shared 2-core VM: the server
process's CPU time per request (user + system), httpx keep-alive client, 2,000 requests a
loop, medians of 3-5 interleaved rounds (the former parser: the same loop against its
``http.py`` from before this change, which ``--layer`` no longer has):

==================================================  ===========  ============
HTTP layer alone (a handler that answers at once)   GET µs/req   POST µs/req
==================================================  ===========  ============
this module (httptools, BufferedProtocol)           125          170
the former hand-written parser on asyncio streams   ~210         ~280
uvicorn + httptools (raw ASGI app, no framework)    195          280
uvicorn + h11                                       320          445
==================================================  ===========  ============

With the store behind it (``agl store``, before → after, two runs of 5 rounds):
``GET /v1/agl/health`` 380 → 135 and 420 → 150 µs/req (it is also answered on the HTTP
loop now, without a trip to the store threads); ``POST /v1/agl/spans`` 690 → 645 and
755 → 745 µs/req, where the store call and the two cross-thread wake-ups that reach it
(:mod:`.loop_pool`) are now most of the cost (since then, calls on one rollout's files run
on this loop instead: ~500 µs/req, :mod:`store_fs.server.app`). The client saw 470 → 620 and 630 → 880
health requests a second, 380 → 330 and 435 → 490 span requests: httpx's own ~1 ms a
request and the VM's other load decide those more than the server does.

* Correctness: uvicorn answers every protocol error 400 (no 413, 431 or 501), has no header
  or body timeout (a client trickling a header holds its connection for ever; only the idle
  keep-alive timer exists) and its httptools protocol takes ``Transfer-Encoding: gzip,
  chunked`` for plain chunked, as the hand-written parser did. Fixing that would mean the
  code written here anyway, under the ASGI layer that the table shows costs more.
* h11 is correct but pure Python: parsing and framing one POST took ~100 µs against ~10 µs
  for the hand-written parser and ~5 µs for httptools.
* Reading into one preallocated buffer (``BufferedProtocol``) instead of a plain protocol's
  ``recv(256 KiB)`` saves an mmap, mremap and munmap per request; timeouts are deadlines
  checked by one sweep a tick, not a timer per request phase.

The rules (RFC 9112), each tested through raw sockets in ``tests/test_http_framing.py``:

* Keep-alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection:
  keep-alive``. Pipelined requests are answered in order, one at a time.
* 400: a malformed request line, header, ``Content-Length`` or chunk; both
  ``Content-Length`` and ``Transfer-Encoding``; ``chunked`` not last; an HTTP/1.1 request
  without exactly one ``Host``; a version other than 1.0 and 1.1.
* 501: a transfer coding other than ``chunked`` (``gzip, chunked`` too); an unknown method.
* 413: a body larger than ``max_body_bytes``, announced or counted as chunks arrive.
* 431: request line and headers above :data:`MAX_HEADER_BYTES`, or over :data:`MAX_HEADERS` lines.
* 408: a head not complete ``header_timeout`` seconds after its first byte; a body slower
  than ``body_timeout`` seconds plus one second per ``min_body_rate`` bytes received. A new
  connection must start its request within ``header_timeout``; a kept-alive one within
  ``idle_timeout``, else it is closed without an answer.
* A client that reads nothing of its answer for ``send_timeout`` seconds is cut off.
* After an error answer the connection closes: half-closed first and drained for up to
  :data:`LINGER_SECONDS` (at most :data:`DRAIN_LIMIT` bytes), so that a client still sending
  reads the answer instead of a connection reset.
* :meth:`HttpServer.stop` with a grace period: stop accepting, close idle connections, let
  the requests in flight finish (answered with ``Connection: close``), cut what is left
  when the period ends. Requests whose head or body is still arriving count as in flight.

Also: ``Expect: 100-continue``, optional bearer-token auth (compared in constant time),
``X-Request-ID`` (the client's, if it is a short token, else a new one) on every answer and
in the access log line (method, path, status, milliseconds, id). Not supported: TLS (put a
proxy in front), HTTP/2, upgrades (an upgrade request is answered as an ordinary one, then
the connection closes; one with a body gets 501, as its body could not be read).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import itertools
import logging
import math
import os
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import parse_qsl

import httptools

from store_fs.bearer_token import check_token

__all__ = ["HttpServer", "Request", "Response"]

log = logging.getLogger("store_fs.server")

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
READ_SIZE = 64 * 1024
# After an error answer, the rest of the request is read and dropped, up to this much and this long.
DRAIN_LIMIT = 256 * 1024 * 1024
LINGER_SECONDS = 5.0
ACCEPT_RETRY_SECONDS = 1.0  # after accept() failed for want of resources (as asyncio waits)

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


@dataclass
class Request:
    """A parsed request. ``path`` is still percent-encoded (the router decodes each segment,
    so an encoded ``/`` stays inside its segment); header names are lower-case, repeated
    headers joined with ", "; ``query`` keeps repeated keys in order."""

    method: str
    target: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes = b""
    request_id: str = "-"
    keep_alive: bool = True
    # Set once the client can no longer be waiting for this answer (it closed or half-closed
    # the connection): long polls then answer at once instead of holding their wait.
    client_left: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[int, str], Response]


@dataclass(frozen=True)
class Limits:
    """Sizes and timeouts of :class:`HttpServer` (seconds, bytes); see the module docstring."""

    max_body_bytes: int = 64 * 1024 * 1024
    idle_timeout: float = 75.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    min_body_rate: float = 8 * 1024.0
    send_timeout: float = 30.0


class HttpServer:
    """Serve ``handler`` over HTTP/1.1 (see the module docstring for the rules).

    Args:
        handler: turns a request into a response; it should not raise (a stray exception is
            answered 500 and logged as a bug; the server keeps serving).
        render_error: builds the answer to a request refused here (bad framing, 401, 408,
            413, 431, 501).
        token: when set, every request except ``public_paths`` needs
            ``Authorization: Bearer <token>`` (else 401).
        limits: sizes and timeouts.
    """

    def __init__(
        self,
        handler: Handler,
        render_error: ErrorRenderer,
        *,
        token: str | None = None,
        public_paths: frozenset[str] = frozenset(),
        limits: Limits = Limits(),
    ) -> None:
        self.handler = handler
        self.render_error = render_error
        # Digests of equal length: compare_digest then takes the same time whatever was sent.
        self._token = hashlib.sha256(check_token(token).encode()).digest() if token else None
        self.public_paths = public_paths
        self.limits = limits
        self.draining = False
        self._servers: list[asyncio.Server | _SharedListener] = []
        self._connections: set[_Connection] = set()
        self._all_closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(3).hex()
        self._sweeper: asyncio.Task[None] | None = None
        # Every connection reads into this one buffer and parses what it got at once (llhttp
        # copies what it keeps): no allocation per read, unlike a plain Protocol's recv(256 KiB).
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; empty before :meth:`start`."""
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    async def start(self, host: str, port: int, sockets: Sequence[socket.socket] = ()) -> None:
        """Listen on ``host``:``port``, or on ``sockets`` already bound and listening (then
        ``host`` and ``port`` are ignored: several processes share them, see ``workers.py``)."""
        loop = asyncio.get_running_loop()
        protocol = lambda: _Connection(self)  # noqa: E731
        if sockets:
            try:
                for sock in sockets:
                    self._servers.append(_SharedListener(loop, sock, protocol))
            except BaseException:
                for server in self._servers:
                    server.close()
                self._servers = []
                raise
        else:
            self._servers = [await loop.create_server(protocol, host, port)]
        self._sweeper = loop.create_task(self._sweep())

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; close idle connections; give requests in flight ``grace`` seconds to
        be answered (0: none); then cut every connection left and cancel its request."""
        self.draining = True
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.shutdown()
        if grace > 0 and self._connections:
            self._all_closed.clear()
            try:
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
            except TimeoutError:
                log.warning("%d request(s) still in flight after %.1f s: cut", len(self._connections), grace)
        tasks = [c.task for c in self._connections if c.task is not None]
        for connection in list(self._connections):
            connection.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    def force_stop(self) -> None:
        """End a graceful :meth:`stop`'s wait now (a second Ctrl-C)."""
        self._all_closed.set()

    async def _sweep(self) -> None:
        """Time connections out. One sweep a tick instead of a timer per request phase: a
        deadline is then an attribute set, and timeouts are late by at most one tick."""
        limits = self.limits
        shortest = min(limits.header_timeout, limits.body_timeout, limits.idle_timeout, LINGER_SECONDS)
        tick = min(1.0, max(0.01, shortest / 10))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for connection in [c for c in self._connections if c.deadline <= now]:
                try:
                    connection.expire(now)
                except Exception:  # one connection's trouble must not stop the sweep
                    log.exception("timing out a connection failed")
                    connection.abort()

    # -- used by the connections -----------------------------------------------
    def authorized(self, request: Request) -> bool:
        if self._token is None or request.path in self.public_paths:
            return True
        scheme, _, given = request.header("authorization").partition(" ")
        digest = hashlib.sha256(given.strip().encode("latin-1")).digest()
        # Both sides are always compared, so the time taken says nothing about the token.
        return hmac.compare_digest(digest, self._token) and scheme.lower() == "bearer"

    def request_id(self, given: str) -> str:
        if given and _REQUEST_ID.fullmatch(given):
            return given
        return f"{self._id_prefix}-{next(self._ids):x}"

    def opened(self, connection: _Connection) -> None:
        self._connections.add(connection)

    def closed(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._all_closed.set()


class _Phase(enum.Enum):
    IDLE = 0  # between requests
    HEAD = 1  # request line and headers arriving
    BODY = 2  # head complete, body arriving


@dataclass
class _Refusal:
    """An answer decided here (not by the handler), after which the connection closes."""

    status: int
    detail: str
    request: Request | None = None
    linger: bool = True


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is kept on the connection."""


class _Message:
    """The request being parsed."""

    __slots__ = ("body", "body_size", "head_size", "headers", "request", "started", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.request: Request | None = None
        self.started = 0.0


class _SharedListener:
    """Accept connections on a socket other processes listen on too (``agl store --workers``),
    one per wake-up.

    asyncio's own server accepts every connection waiting when it wakes, so one idle worker
    took all the connections a batch of clients opened at once: in half the loop benchmark's
    runs one of two workers served every runner while the other did nothing. Taking one at a
    time lets every worker woken by the same connections take its share, and a busy worker
    (not waiting in the event loop) leaves new connections to the idle ones.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Callable[[], _Connection]
    ) -> None:
        sock.setblocking(False)
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._pending: set[asyncio.Task[None]] = set()
        self._retry: asyncio.TimerHandle | None = None
        self.sockets = (sock,)
        loop.add_reader(sock.fileno(), self._accept_one)

    def _accept_one(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up meanwhile
        except OSError as err:
            # Out of file descriptors, say. The socket stays readable, so listening on would
            # spin: pause, as asyncio's own server does, and let the queue wait.
            log.warning("accepting a connection failed: %s; retrying in %.0f s", err, ACCEPT_RETRY_SECONDS)
            self._loop.remove_reader(self._sock.fileno())
            self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
            return
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol, conn)
        except Exception as err:
            conn.close()
            log.warning("a connection could not be set up: %s", err)

    def _resume(self) -> None:
        self._retry = None
        self._loop.add_reader(self._sock.fileno(), self._accept_one)

    def close(self) -> None:
        """Stop accepting (this process's copy of the socket is closed; connections stay)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parses with llhttp, answers in order (see the module docstring)."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.phase = _Phase.IDLE
        self.message = _Message()
        self.queue: deque[Request | _Refusal] = deque()
        self.task: asyncio.Task[None] | None = None
        self.answering: Request | None = None  # the request ``task`` answers
        self.refusal: _Refusal | None = None
        self.broken = False  # no more parsing: a refusal is on its way
        self.close_after = False  # close once the queued answers are out
        self.lingering = False
        self.lost = False
        self.raw_head = 0  # bytes received while a head was incomplete
        self.stalled = 0  # body-phase bytes that carried no chunk data (extensions, trailers)
        self.progress = False
        self.drained = 0
        # When the current phase times out (loop time); checked by the server's sweep.
        self.deadline = math.inf
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio.BufferedProtocol ----------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.server.read_buffer[:nbytes])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.opened(self)
        if self.server.draining:
            transport.abort()
            return
        self.deadline = self.loop.time() + self.limits.header_timeout

    def data_received(self, data: memoryview) -> None:
        if self.lingering:
            self._discard(len(data))
            return
        if self.broken:
            return
        before = self.phase
        self.progress = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was complete and is answered; what follows is not HTTP.
            self.broken = self.close_after = True
        except httptools.HttpParserError as err:
            self._refuse(*self._status_for(err))
            return
        self._watch_sizes(before, len(data))

    def _client_left(self) -> None:
        if self.answering is not None and self.task is not None and not self.task.done():
            self.answering.client_left.set()

    def eof_received(self) -> bool:
        if self.lingering or (self.task is None and not self.queue):
            return False  # the transport closes
        self.close_after = True  # a request was complete: answer it, then close
        self._client_left()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_left()
        self.lost = True
        self.deadline = math.inf
        self._wake_writer()
        if self.task is None or self.task.done():
            self.server.closed(self)
        # else: still counted until its answer is ready, so that a stop waits for the store call

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # -- llhttp callbacks (called from feed_data) ------------------------------------
    def on_message_begin(self) -> None:
        self.phase = _Phase.HEAD
        self.message = _Message()
        self.raw_head = 0
        self.deadline = self.loop.time() + self.limits.header_timeout

    def on_url(self, url: bytes) -> None:
        self.message.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are checked once the head is complete; until then :meth:`_watch_sizes` bounds them.
        if self.phase is _Phase.HEAD:
            self.message.headers.append((name, value))
            return
        # A trailer of a chunked body: counted, otherwise ignored.
        self.message.head_size += len(name) + len(value) + 4
        if self.message.head_size > MAX_HEADER_BYTES:
            self._reject(_Refusal(431, f"request head and trailers larger than {MAX_HEADER_BYTES} bytes"))

    def on_headers_complete(self) -> None:
        self.phase = _Phase.BODY
        request, hosts = self._build_request()
        self.message.request = request
        problem = self._check_head(request, hosts)
        if problem is not None:
            self._reject(problem)
        if request.header("expect").lower() == "100-continue" and self.task is None and not self.queue:
            self._write(_CONTINUE)
        self.message.started = now = self.loop.time()
        self.deadline = now + self.limits.body_timeout

    def on_body(self, data: bytes) -> None:
        message = self.message
        message.body_size += len(data)
        self.progress = True
        if message.body_size > self.limits.max_body_bytes:
            self._reject(self._too_large(message.request))
        message.body.append(data)

    def on_chunk_header(self) -> None:
        self.progress = True

    def on_message_complete(self) -> None:
        self.phase = _Phase.IDLE
        self.deadline = math.inf
        message = self.message
        request = message.request
        assert request is not None
        request.body = b"".join(message.body) if len(message.body) != 1 else message.body[0]
        request.keep_alive = self.parser.should_keep_alive()
        self.queue.append(request)
        if self.task is None:
            self._next()
        elif self.transport is not None:
            self.transport.pause_reading()  # one request waiting is enough: back-pressure

    # -- the head -------------------------------------------------------------------
    def _build_request(self) -> tuple[Request, int]:
        """The request from its head, and how many Host headers it had."""
        message = self.message
        headers: dict[str, str] = {}
        hosts = 0
        size = len(message.url)
        for raw_name, raw_value in message.headers:
            size += len(raw_name) + len(raw_value) + 4
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            if name in headers:
                headers[name] = f"{headers[name]}, {value}"
            else:
                headers[name] = value
            hosts += name == "host"
        message.head_size = size
        try:
            url = httptools.parse_url(message.url)
        except httptools.HttpParserInvalidURLError:
            path, query = "", b""
        else:
            path, query = url.path.decode("latin-1"), url.query or b""
        request = Request(
            method=self.parser.get_method().decode("latin-1"),
            target=message.url.decode("latin-1"),
            path=path,
            query=parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else [],
            headers=headers,
            request_id=self.server.request_id(headers.get("x-request-id", "")),
        )
        return request, hosts

    def _check_head(self, request: Request, hosts: int) -> _Refusal | None:
        """The rules llhttp leaves to the server, in the order a client would want them reported."""
        if self.message.head_size > MAX_HEADER_BYTES or len(self.message.headers) > MAX_HEADERS:
            detail = f"request head above {MAX_HEADER_BYTES} bytes or {MAX_HEADERS} lines"
            return _Refusal(431, detail, request)
        version = self.parser.get_http_version()
        coding = request.header("transfer-encoding")
        if version not in ("1.1", "1.0"):
            return _Refusal(400, f"unsupported HTTP version {version}", request)
        if coding and coding.strip().lower() != "chunked":
            return _Refusal(501, f"unsupported Transfer-Encoding {coding!r}", request)
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            return _Refusal(400, "an HTTP/1.1 request needs exactly one Host header", request)
        if not request.path.startswith("/"):
            return _Refusal(400, f"unsupported request target {request.target[:100]!r}", request)
        length = request.header("content-length")
        if length and int(length) > self.limits.max_body_bytes:
            return self._too_large(request, announced=int(length))
        if self.parser.should_upgrade() and (coding or (length and int(length) > 0)):
            # llhttp hands what follows an upgrade request's head over as the new protocol's
            # bytes: served, the request would be acted on without its body.
            detail = "a request asking to switch protocols (Upgrade) cannot carry a body here"
            return _Refusal(501, detail, request)
        if not self.server.authorized(request):
            return _Refusal(401, "missing or wrong bearer token", request)
        return None

    def _too_large(self, request: Request | None, announced: int = 0) -> _Refusal:
        limit = self.limits.max_body_bytes
        # A huge announced body is not worth reading: closing at once resets the sender.
        return _Refusal(413, f"request body larger than {limit} bytes", request, announced <= DRAIN_LIMIT)

    def _reject(self, refusal: _Refusal) -> None:
        if refusal.request is None:
            refusal.request = self.message.request
        self.refusal = refusal
        raise _Rejected(refusal.detail)

    def _status_for(self, err: httptools.HttpParserError) -> tuple[int, str, Request | None, bool]:
        refusal = self.refusal
        if refusal is not None:
            return refusal.status, refusal.detail, refusal.request, refusal.linger
        if isinstance(err, httptools.HttpParserInvalidMethodError):
            return 501, "unknown method", None, True
        return 400, f"malformed request: {err}", self.message.request, True

    def _watch_sizes(self, before: _Phase, size: int) -> None:
        """Bound what llhttp buffers without calling back: a head that never ends, chunk
        extensions or trailers that never end."""
        if self.phase is _Phase.HEAD:
            self.raw_head = self.raw_head + size if before is _Phase.HEAD else 0
            if self.raw_head > MAX_HEADER_BYTES:
                self._refuse(431, f"request head larger than {MAX_HEADER_BYTES} bytes", None, True)
        elif self.phase is _Phase.BODY and before is _Phase.BODY and not self.progress:
            self.stalled += size
            if self.stalled > MAX_HEADER_BYTES:
                self._refuse(400, "malformed request: chunk framing too long", self.message.request, True)
        else:
            self.stalled = 0

    # -- timers ---------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """The deadline has passed (called by the server's sweep): act by phase."""
        if self.lingering or self.lost:
            self.abort()
            return
        if self.task is not None:
            return  # answering: a request arriving behind this one is timed once it is answered
        self.deadline = math.inf
        if self.broken:
            return  # a refusal is on its way
        if self.phase is _Phase.IDLE:
            self._close()  # no request started in time: nothing to answer
        elif self.phase is _Phase.HEAD:
            self._refuse(408, "request head not received in time", None, True)
        else:
            self._body_expired(now)

    def _body_expired(self, now: float) -> None:
        """The body may take ``body_timeout`` plus a second per ``min_body_rate`` bytes received."""
        message = self.message
        deadline = message.started + self.limits.body_timeout + message.body_size / self.limits.min_body_rate
        if deadline > now:
            self.deadline = deadline
        else:
            self._refuse(408, "request body not received in time", message.request, True)

    # -- answering --------------------------------------------------------------------
    def _refuse(self, status: int, detail: str, request: Request | None, linger: bool) -> None:
        """Stop parsing; answer ``status`` once the answers before it are out, then close."""
        self.broken = True
        self.deadline = math.inf
        self.queue.append(_Refusal(status, detail, request, linger))
        if self.task is None:
            self._next()

    def _next(self) -> None:
        """Start on the next queued item, or wait for the next request, or close."""
        self.task = None
        if self.lost:
            return
        if not self.queue:
            if self.close_after or self.server.draining:
                self._close()
            elif self.transport is not None:
                self.transport.resume_reading()
                if self.phase is _Phase.IDLE:  # else the next request's own deadline stands
                    self.deadline = self.loop.time() + self.limits.idle_timeout
            return
        item = self.queue.popleft()
        if isinstance(item, _Refusal):
            self._send_refusal(item)
        else:
            self.answering = item
            self.task = self.loop.create_task(self._answer(item))

    async def _answer(self, request: Request) -> None:
        try:
            await self._answer_one(request)
        finally:
            if self.lost:  # the client left meanwhile; a stopping server waited for this answer
                self.server.closed(self)

    async def _answer_one(self, request: Request) -> None:
        started = time.perf_counter()
        try:
            response = await self.server.handler(request)
        except Exception:  # a handler bug must not take the connection down unanswered
            log.exception("unhandled error: %s %s id=%s", request.method, request.path, request.request_id)
            response = self.server.render_error(500, "Internal server error")
        # Requests already received are answered before a half-closed or stopping connection closes.
        closing = self.close_after or self.server.draining
        keep = request.keep_alive and not (closing and not self.queue)
        self._write_response(response, request, keep)
        _access(request.method, request.path, response.status, started, request.request_id)
        if not await self._drained():
            return
        if keep:
            self._next()
        else:
            self.task = None
            self._close()

    def _send_refusal(self, refusal: _Refusal) -> None:
        request = refusal.request
        rid = request.request_id if request is not None else self.server.request_id("")
        response = self.server.render_error(refusal.status, refusal.detail)
        self._write_response(response, request, False, rid)
        method, path = (request.method, request.path) if request is not None else ("-", "-")
        _access(method, path, refusal.status, time.perf_counter(), rid)
        if refusal.linger:
            self._linger()
        else:
            self._close()

    def _write_response(self, response: Response, request: Request | None, keep: bool, rid: str = "") -> None:
        body = response.body
        status_line = _STATUS_LINES.get(response.status) or f"HTTP/1.1 {response.status} Unknown\r\n".encode()
        head = [
            f"Content-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n"
            f"X-Request-ID: {request.request_id if request is not None else rid}\r\nDate: {_http_date()}\r\n"
        ]
        head.extend(f"{k}: {v}\r\n" for k, v in response.headers.items())
        head.append("\r\n")
        data = status_line + "".join(head).encode("latin-1")
        if request is None or request.method != "HEAD":
            data += body
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost and not self.transport.is_closing():
            self.transport.write(data)

    async def _drained(self) -> bool:
        """Wait until the client has taken most of the answer; False if it is gone or was cut off
        for taking nothing in ``send_timeout`` (a slow reader of a big answer is not cut off)."""
        transport = self.transport
        while self.write_paused and not self.lost and transport is not None:
            left = transport.get_write_buffer_size()
            self.drain_waiter = self.loop.create_future()
            try:
                async with asyncio.timeout(self.limits.send_timeout):
                    await self.drain_waiter
            except TimeoutError:
                if transport.get_write_buffer_size() < left:
                    continue  # slow, but reading
                log.info("client read nothing in %.0f s: connection cut", self.limits.send_timeout)
                self.abort()
                return False
            finally:
                self.drain_waiter = None
        return not self.lost

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- closing ------------------------------------------------------------------------
    def _close(self) -> None:
        self.deadline = math.inf
        if self.transport is not None:
            self.transport.close()

    def _linger(self) -> None:
        """Half-close and drop what the client still sends (so it sees the answer, not a reset)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.lingering = True
        self.queue.clear()
        transport.resume_reading()
        try:
            if transport.can_write_eof():
                transport.write_eof()
        except OSError:  # the client is already gone
            self.abort()
            return
        self.deadline = self.loop.time() + LINGER_SECONDS

    def _discard(self, size: int) -> None:
        self.drained += size
        if self.drained > DRAIN_LIMIT:
            self.abort()

    def shutdown(self) -> None:
        """The server is stopping: close now if idle, else after the answers in progress."""
        self.close_after = True
        if self.lingering:
            self.abort()
        elif self.task is None and not self.queue and self.phase is _Phase.IDLE:
            self._close()

    def abort(self) -> None:
        self.deadline = math.inf
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _access(method: str, path: str, status: int, started: float, request_id: str) -> None:
    elapsed = (time.perf_counter() - started) * 1000
    log.info("%s %s %d %.1fms id=%s", method, path, status, elapsed, request_id)
