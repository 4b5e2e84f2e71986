"""HTTP transport of :class:`store_fs.client.LightningStoreClient`: requests, retries, error mapping.

Retries happen only for connection errors. A request that never reached the server
(connection refused, connect timeout) is retried whatever it is; one whose answer was
lost (reset, read timeout, server gone mid-request) is retried only when the caller
says it is safe to repeat (``idempotent=True``). Error replies are never retried. Longer
outages are the caller's to ride out (the runner retries with backoff: :mod:`store_fs.retrying`).

The HTTP/1.1 exchange itself is small and done here, on asyncio, with llhttp
(``httptools``, the parser the server uses) reading the replies: keep-alive connections,
one request at a time on each, kept per event loop. A general client (httpx) cost the
runner about 1 ms of CPU a request, two thirds of a runner's whole CPU in the loop
benchmark (BENCHMARKS.md, "the HTTP loop"); this costs a tenth of that. What the store's
API needs and nothing more: JSON or raw bodies, ``Content-Length`` or chunked replies,
no redirects, no cookies, no proxies, no compression.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import httptools
import orjson

from store_fs import errors
from store_fs._disk import codec
from store_fs.bearer_token import check_token
from store_fs.errors import RemoteStoreError
from store_fs.models import UNSET, Unset

__all__ = ["Reply", "Transport", "error_for_response"]

# A connection idle this long is closed rather than reused: a server may close it at any time
# after its own keep-alive timeout (uvicorn's default is 5 s), and a request sent on a connection
# the server is closing is lost without an answer.
IDLE_REUSE_SECONDS = 4.0
MAX_IDLE_CONNECTIONS = 16
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


# The server's mark on a wait's answer cut short by its stop (store_fs/server/app.py).
WAIT_CUT_HEADER = "X-Agl-Wait-Cut"
_WAIT_CUT = WAIT_CUT_HEADER.lower().encode()
# The store a server serves (FORMAT.json's store_id), on every answer; a client sends back the
# first one it saw, and a server serving another store refuses the request (421).
STORE_HEADER = "X-Agl-Store"
_STORE = STORE_HEADER.lower().encode()


class Reply:
    """A complete HTTP reply: status code and body bytes; ``cut``: a wait's answer cut short by
    the server's stop."""

    __slots__ = ("body", "cut", "status", "store")

    def __init__(self, status: int, body: bytes, cut: bool = False, store: str = "") -> None:
        self.status = status
        self.body = body
        self.cut = cut
        self.store = store

    def json(self) -> Any:
        """The body decoded as JSON; None for an empty body. Raises ``ValueError`` if it is not JSON."""
        return orjson.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def error_for_response(response: Reply) -> Exception:
    """The exception FileStore would have raised for this error reply.

    404 → the store's not-found class (``RolloutNotFoundError`` ...), 409 → ``ConflictError``,
    400 → ``InvalidIdError`` or ``ValueError`` (``TypeError`` when the server says so),
    413/422 → ``ValueError``; anything else → :class:`RemoteStoreError`.
    """
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail")
    status = response.status
    message = detail if isinstance(detail, str) else f"HTTP {status}: {detail or response.text[:200]}"
    kind = body.get("error_type")
    cls = getattr(errors, kind, None) if isinstance(kind, str) and kind in errors.__all__ else None
    if status in (400, 404, 409) and isinstance(cls, type) and issubclass(cls, errors.AglError):
        attrs = body.get("error_attrs")
        return cls.rebuild(message, attrs if isinstance(attrs, dict) else {})
    if status == 404:
        return errors.NotFoundError(message)
    if status == 409:
        return errors.ConflictError(message)
    if status in (400, 413, 422):
        return TypeError(message) if kind == "TypeError" else ValueError(message)
    return RemoteStoreError(message, status)


class _NeverSent(Exception):
    """The connection could not be opened: the request did not reach the server."""


class _Lost(Exception):
    """The connection failed after the request was (maybe) sent: its answer is lost."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time (:meth:`exchange`)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.cut = False
        self.store = ""
        self.reply: asyncio.Future[Reply] | None = None
        self.dead = False  # closed, or in a state no next request may use
        self.keep_alive = True
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reply is None:  # nothing asked: an idle connection the server talks on is unusable
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(_Lost(f"malformed reply: {err}"))

    def eof_received(self) -> bool:
        self._fail(_Lost("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.dead = True
        self._fail(_Lost(f"connection lost: {exc or 'closed by the server'}"))

    # -- llhttp callbacks ---------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == _WAIT_CUT:
            self.cut = True
        elif lowered == _STORE:
            self.store = value.decode("latin-1")

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        reply = Reply(self.parser.get_status_code(), b"".join(self.body), self.cut, self.store)
        self.body = []
        self.cut = False
        self.store = ""
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(reply)

    # -- use ------------------------------------------------------------------------
    async def exchange(self, request: bytes) -> Reply:
        """Send one request and read its reply (raises :class:`_Lost` if the connection fails)."""
        assert self.transport is not None
        assert self.reply is None
        self.reply = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(request)
            reply = await self.reply
        except BaseException:
            self.close()  # cancelled or failed mid-exchange: a late reply would answer the next request
            raise
        finally:
            self.reply = None
        if not self.keep_alive:
            self.close()
        return reply

    def usable(self, now: float) -> bool:
        transport = self.transport
        fresh = now - self.idle_since < IDLE_REUSE_SECONDS
        return fresh and not self.dead and transport is not None and not transport.is_closing()

    def close(self) -> None:
        self.dead = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, err: Exception) -> None:
        self.dead = True
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(err)


class _Pool:
    """The idle connections of one event loop to one server."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.idle: list[_Connection] = []

    async def acquire(self) -> _Connection:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            hostname = self.host if self.tls else None
            _, connection = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self.tls, server_hostname=hostname
            )
        except (OSError, ssl.SSLError) as err:
            raise _NeverSent(f"{type(err).__name__}: {err}") from err
        return connection

    def release(self, connection: _Connection) -> None:
        if connection.dead or len(self.idle) >= MAX_IDLE_CONNECTIONS:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self.idle.append(connection)

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.idle.clear()


async def _once(pool: _Pool, request: bytes, timeout: float | None) -> Reply:
    """One try: a connection from ``pool``, the request, its reply (the connection goes back to
    the pool). Raises :class:`_NeverSent` or :class:`_Lost`, a timeout included."""
    sent = False
    try:
        async with asyncio.timeout(timeout):
            connection = await pool.acquire()
            sent = True
            reply = await connection.exchange(request)
    except TimeoutError:
        raise (_Lost if sent else _NeverSent)(f"timed out after {timeout} s") from None
    pool.release(connection)
    return reply


class Transport:
    """JSON requests to ``base`` (e.g. ``http://h:4747/v1/agl``), one connection pool per event loop."""

    def __init__(
        self, base: str, *, token: str | None, timeout: float, retry_delays: Sequence[float]
    ) -> None:
        self.base = base
        self.timeout = timeout
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        auth = f"Authorization: Bearer {check_token(token)}\r\n" if token else ""
        self._fixed_headers = f"Host: {parts.netloc}\r\n{auth}Accept: application/json\r\n"
        self._retry_delays = tuple(retry_delays)
        #: The store the server served at the first answer (None until then, or for a server
        #: that does not say: upstream's). Requests carry it, so that a server restarted on
        #: another store refuses them (421) instead of taking their writes.
        self.store_id: str | None = None
        # Connections are bound to the loop that opened them; tracers run their own loops.
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Pool(self._host, self._port, self._tls)
        return pool

    async def close(self) -> None:
        """Close the running loop's idle connections (a later call opens new ones)."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            pool.close()

    @staticmethod
    def _encode(method: str, path: str, json: Any) -> bytes | None:
        try:
            body = None if json is None else orjson.dumps(json, option=_JSON_OPTIONS)
        except orjson.JSONEncodeError as err:  # refused here as the server would refuse it
            raise errors.UnstorableValueError(f"the body of {method} {path}", str(err)) from None
        # NaN orjson sent as null, keys it wrote alike (1 and "1") that the server reads as one.
        reason = None if body is None else codec.unstorable_reason(json)
        if reason is not None:
            raise errors.UnstorableValueError(f"the body of {method} {path}", reason)
        return body

    def _request(self, method: str, target: str, body: bytes | None, content_type: str) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\n{self._fixed_headers}"
        if self.store_id is not None:
            head += f"{STORE_HEADER}: {self.store_id}\r\n"
        if body is not None or method == "POST":
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body or b'')}\r\n"
        return (head + "\r\n").encode("latin-1") + (body or b"")

    async def _send(
        self,
        request: bytes | Callable[[], tuple[bytes, float | None]],
        timeout: float | None,
        idempotent: bool,
        what: str,
        time_left: Callable[[], bool] | None = None,
    ) -> Reply:
        """One request with the retry rules of the module docstring; the reply, whatever its status.

        ``request`` may be made anew for each try, with its own timeout (a wait sends the time
        it has left). A wait's answer cut short by a stopping server is asked again while
        ``time_left()``; once it is not, that answer (or the last one) stands."""
        pool = self._pool()
        cut: Reply | None = None
        for attempt in range(len(self._retry_delays) + 1):
            payload, limit = request() if callable(request) else (request, timeout)
            try:
                reply = await _once(pool, payload, limit)
                if reply.store and self.store_id is None:
                    self.store_id = reply.store  # sent back from now on (see STORE_HEADER)
                if not reply.cut or time_left is None or not time_left():
                    return reply
                # A wait answered early by a stopping server: asked again (its new body holds
                # the time left) of the server that comes back, as after a lost answer.
                if attempt >= len(self._retry_delays):
                    raise RemoteStoreError(f"{what}: the server stopped before the wait ended")
                cut = reply
                await asyncio.sleep(self._retry_delays[attempt])
                continue
            except (_NeverSent, _Lost) as err:
                if cut is not None and time_left is not None and not time_left():
                    return cut  # the wait's time is up: what the stopping server answered stands
                never_sent = isinstance(err, _NeverSent)
                if attempt >= len(self._retry_delays) or not (never_sent or idempotent):
                    kind = "ConnectError" if never_sent else "ReadError"
                    raise RemoteStoreError(f"{what}: {kind}: {err}") from err
                await asyncio.sleep(self._retry_delays[attempt])
        raise AssertionError("unreachable")  # pragma: no cover

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        idempotent: bool,
        timeout: float | Unset | None = UNSET,
        per_try: Callable[[], tuple[Any, float | None]] | None = None,
        time_left: Callable[[], bool] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON of a 2xx reply, else the error of :func:`error_for_response`.

        ``per_try``: instead of ``json`` and ``timeout``, called before each try for the body and
        the timeout of that try. ``time_left``: for a wait, whether an answer cut short by a
        stopping server is worth asking again."""
        target = self._prefix + path
        if params:
            target += "?" + urlencode(params, doseq=True)
        limit = self.timeout if isinstance(timeout, Unset) else timeout

        def request() -> tuple[bytes, float | None]:
            body, try_limit = (json, limit) if per_try is None else per_try()
            encoded = self._encode(method, path, body)
            return self._request(method, target, encoded, "application/json"), try_limit

        once = request()[0] if per_try is None else request  # bodies that do not change: encoded once
        reply = await self._send(once, limit, idempotent, f"{method} {path}", time_left)
        if 200 <= reply.status < 300:
            try:
                return reply.json()
            except ValueError:  # another web server at that address, say
                raise RemoteStoreError(
                    f"the answer to {method} {path} is not JSON: is {self.base} an agl store?"
                ) from None
        raise error_for_response(reply)

    async def post_bytes(self, url: str, body: bytes, content_type: str) -> bytes:
        """POST a raw body to ``url`` (outside the JSON API, e.g. OTLP, on the same server); the
        reply's bytes.

        Retried like an idempotent call: the only user, OTLP span export, is safe to repeat
        (a span already stored is not stored again).
        """
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = self._request("POST", target, body, content_type)
        reply = await self._send(request, self.timeout, True, f"POST {url}")
        if 200 <= reply.status < 300:
            return reply.body
        raise error_for_response(reply)
