"""``StoreServer``: a FileStore served over upstream's v1 REST API and OTLP/HTTP traces.

Status codes: success codes as upstream (docs/behaviour.md §9.2). Caller mistakes are 4xx with
``{"detail": "<one line>"}`` (plus ``error_type``/``error_attrs`` for the store's own
errors, so clients can raise the same exception class): not found 404, invalid id /
bad JSON / bad paging 400, conflict 409, validation 422 (``detail`` is a list),
missing token 401, body too large 413. Anything unexpected is a 500 and the server
keeps serving. Getters answer 200 ``null`` for unknown ids, as upstream does.

Concurrency: the HTTP layer (:mod:`store_fs.server.http`) runs on one event loop. Calls that
read or write one rollout's few files (:attr:`StoreApi.inline`: a span, an attempt update, a
heartbeat, a get) run on that loop too, unless the store is on a network filesystem: on a
local disk they take tens of microseconds of syscalls, and the
two cross-thread wake-ups of a trip to the pool cost more than that (the server's CPU per
``POST /spans`` fell from ~920 to ~500 µs without them; BENCHMARKS.md, "the HTTP loop"). So does
a dequeue of one rollout once this process has listed the queue (listing it is what can take a
while). Every other call (enqueues, searches, statistics, batches, OTLP decoding, waits), with the JSON
encoding of its answer, runs on a :class:`~.loop_pool.LoopPool`, so that a long call on one
connection does not hold up the others. ``/health`` is answered on the HTTP loop itself.

Stopping (:meth:`StoreServer.stop`): with a grace period, requests in flight finish and
are answered; a ``wait_for_rollouts`` in progress is answered at once with what has
finished so far, as if its timeout had passed, so that a long wait does not hold up the
stop. Without one (or when it runs out), open requests are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from store_fs._transport import STORE_HEADER, WAIT_CUT_HEADER
from store_fs.errors import AglError, StoreNotFoundError, mapping_for
from store_fs.server import otlp
from store_fs.server.http import HttpServer, Limits, Request, Response
from store_fs.server.loop_pool import LoopPool, PoolClosedError
from store_fs.server.routes import PREFIX, Call, Handler, StoreApi
from store_fs.server.schemas import BadRequest
from store_fs.store import FileStore

__all__ = ["Limits", "StoreServer", "run_server"]

log = logging.getLogger("store_fs.server")

_OTLP_UNSUPPORTED = frozenset({"/v1/metrics", "/v1/logs", "/v1/development/profiles"})
SHUTDOWN_GRACE = 10.0
ORPHAN_CHECK_SECONDS = 0.5


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def json_response(status: int, payload: Any) -> Response:
    return Response(status, orjson.dumps(_jsonable(payload), default=str))


def error_response(status: int, detail: str, **extra: Any) -> Response:
    one_line = " ".join(detail.split()) if isinstance(detail, str) else detail
    return json_response(status, {"detail": one_line, **extra})


def response_for_exception(err: Exception) -> Response:
    """Map an exception raised while serving a request to its response (see module docstring
    and :data:`store_fs.errors.ERROR_TABLE`)."""
    if isinstance(err, PoolClosedError):
        return error_response(503, "server is shutting down")
    if isinstance(err, BadRequest):
        return error_response(err.status, err.detail)
    if isinstance(err, ValidationError):
        # pydantic's own JSON, not decoded and dumped again: the errors repeat the offending
        # input, which may be nested deeper than orjson writes (a 500 for a client's mistake).
        detail = err.json(include_url=False, include_context=False).encode()
        return Response(422, b'{"detail":' + detail + b"}")
    row = mapping_for(err)
    if row is None:
        log.exception("unexpected error", exc_info=err)
        return error_response(500, "Internal server error", error_type=type(err).__name__)
    if not row.client_error:
        log.error("store error: %s", err)
        return error_response(row.http_status, str(err), error_type=type(err).__name__)
    if isinstance(err, AglError):
        attrs = {k: v for k, v in err.attrs.items() if isinstance(v, (str, int, float, bool, type(None)))}
        return error_response(row.http_status, str(err), error_type=type(err).__name__, error_attrs=attrs)
    log.debug("rejected request argument", exc_info=err)
    return error_response(row.http_status, str(err) or type(err).__name__, error_type=type(err).__name__)


class StoreServer:
    """Serve ``store`` on ``host:port`` (port 0 picks a free port; see :attr:`port`).

    The server keeps no state of its own, so any number of servers (and direct FileStore
    users) may share one store directory. ``token``: require ``Authorization: Bearer``
    on everything but ``GET /v1/agl/health``. ``threads``: how many store calls run at
    once (see :mod:`store_fs.server.loop_pool`; None picks :func:`~.loop_pool.default_size`);
    waiting calls such as ``wait_for_rollouts`` do not count against it. ``limits``: the
    HTTP layer's sizes and timeouts (:class:`~.http.Limits`; when given, ``max_body_bytes``
    is ignored). A host that is not a loopback address gets a warning in the log.
    """

    def __init__(
        self,
        store: FileStore,
        *,
        host: str = "127.0.0.1",
        port: int = 4747,
        token: str | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
        threads: int | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.store = store
        self.pool = LoopPool(threads)
        self.host = host
        self.port = port
        self.api = StoreApi(store)
        # On a network filesystem each of those calls is several round trips to the file
        # server (milliseconds), and with durability="fsync" a write waits for the disk (the
        # reads too may: the watchdog scan they start can expire attempts): run on the loop
        # they would hold up every other connection.
        self._slow_calls = store.network_filesystem or store.durability == "fsync"
        self._inline = frozenset() if self._slow_calls else self.api.inline
        self._has_token = bool(token)
        self._draining = asyncio.Event()
        self.http = HttpServer(
            self.handle,
            lambda status, detail: error_response(status, detail),
            token=token,
            public_paths=frozenset({PREFIX + "/health"}),
            limits=limits or Limits(max_body_bytes=max_body_bytes),
        )

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, sockets: Sequence[socket.socket] = ()) -> None:
        """Listen on ``host``:``port`` and log where; or, as one of several worker processes
        (:mod:`.workers`), on ``sockets`` bound by the parent, which says where it listens."""
        self.pool.start()  # before listening: the first request may come at once
        try:
            await self.http.start(self.host, self.port, sockets)
        except BaseException:
            await self.pool.aclose()
            raise
        bound = self.http.sockets
        if bound:
            self.port = bound[0][1]
        if sockets:
            log.info("agl store worker %d serving (%d store threads)", os.getpid(), self.pool.size)
            return
        warn_if_exposed([addr for addr, _ in bound], has_token=self._has_token)
        log.warning(
            "agl store server listening on %s (store %s, %d store threads)",
            self.endpoint,
            self.store.root,
            self.pool.size,
        )

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening; give requests in flight ``grace`` seconds to finish (0: cut them
        now; see the module docstring); then stop the store threads and close the store."""
        if grace > 0:
            self._draining.set()  # ends long waits early, with their answer
        await self.http.stop(grace)  # cancelling a request also cancels its store call
        await self.pool.aclose()
        self.store.close()

    def _cheap_dequeue(self, call: Call) -> bool:
        """A dequeue of one rollout from a queue this process has listed already: inline too.
        Its store call then costs about what a span's does, and the trip to a store thread
        and back cost more than the call (BENCHMARKS.md, "the HTTP loop")."""
        if self._slow_calls or not self.store.dequeue_is_cheap():
            return False
        try:
            body = call.json()
        except BadRequest:
            return False  # refused on a store thread, like any other
        return body is None or (isinstance(body, dict) and body.get("limit", 1) == 1)

    def force_stop(self) -> None:
        """Cut a graceful :meth:`stop` short (its wait for requests in flight ends now)."""
        self.http.force_stop()

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises. Every answer names the store (``X-Agl-Store``);
        a request naming another one (a client that talked to this address when it served
        another store) is refused with 421 before it can change anything here."""
        expected = request.header(STORE_HEADER)
        served = self.store.store_id  # None: a store made before stores had ids
        try:
            self.store.check_still_here()
            gone = None
        except StoreNotFoundError as err:  # removed, moved away or replaced under the server
            gone = str(err)
        if gone is not None:
            response = error_response(503, f"{gone}: restart the server")
        elif expected and expected != served:
            response = error_response(
                421,
                f"this server serves store {served or '(no id)'}, not {expected}, "
                "the store this client began with: was the server restarted on another directory?",
            )
        else:
            response = await self._answer(request)
        if served is not None:
            response.headers[STORE_HEADER] = served
        return response

    async def _answer(self, request: Request) -> Response:
        try:
            if request.path == "/v1/traces":
                if request.method != "POST":
                    return error_response(405, "Method Not Allowed")
                return await self._traces(request)
            if request.path in _OTLP_UNSUPPORTED:
                return Response(501, b"", content_type="text/plain")
            found = self.api.match(request.method, request.path)
            if found is None:
                return error_response(404, "Not Found")
            if found is False:
                return error_response(405, "Method Not Allowed")
            handler, params = found
            if handler == self.api.health:  # no store call: not worth a trip to the pool
                return json_response(200, {"status": "ok"})
            call = Call(request, params, self.store)
            if handler == self.api.wait_for_rollouts:
                return await self._long_poll(handler, call)
            if handler in self._inline or (handler == self.api.dequeue and self._cheap_dequeue(call)):
                return await _respond(handler, call)
            return await self.pool.run(_respond(handler, call))
        except Exception as err:
            return response_for_exception(err)

    async def _long_poll(self, handler: Handler, call: Call) -> Response:
        """A wait, unless the server starts a graceful stop or the client leaves first: then the
        wait is cancelled and asked again with timeout 0, which answers with the rollouts
        finished by now (a wait of hours must not outlive the client that asked). An answer cut
        short by a stop says so in the header ``X-Agl-Wait-Cut`` (agl's client asks again, with
        the time left; upstream's, which polls every 0.1 s, reads it as any answer)."""
        work = asyncio.ensure_future(self.pool.run(_respond(handler, call)))
        draining = asyncio.ensure_future(self._draining.wait())
        left = asyncio.ensure_future(call.request.client_left.wait())
        try:
            await asyncio.wait({work, draining, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            draining.cancel()
            left.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
        if not work.cancelled():
            return work.result()
        request = call.request
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):  # else it is refused again, at once
            request = dataclasses.replace(request, body=orjson.dumps({**body, "timeout": 0}))
        response = await self.pool.run(_respond(handler, Call(request, call.params, call.store)))
        if self._draining.is_set() and response.status == 200:
            response.headers[WAIT_CUT_HEADER] = "stopping"
        return response

    async def _traces(self, request: Request) -> Response:
        content_type = request.header("content-type").split(";")[0].strip().lower()
        if content_type != otlp.PROTOBUF:
            return _otlp_status(400, f"Content-Type must be {otlp.PROTOBUF}")
        try:
            reply = await self.pool.run(self._export(request))
        except Exception as err:
            response = response_for_exception(err)
            message = orjson.loads(response.body).get("detail", "error")
            return _otlp_status(response.status, str(message))
        headers: dict[str, str] = {}
        if "gzip" in request.header("accept-encoding").lower():
            reply = otlp.gzip_bytes(reply)
            headers["Content-Encoding"] = "gzip"
        return Response(200, reply, content_type=otlp.PROTOBUF, headers=headers)

    async def _export(self, request: Request) -> bytes:
        """On a pool loop: inflate, parse and store an OTLP body; the serialized reply."""
        payload = otlp.decode_body(request.body, request.header("content-encoding"), self.http.max_body_bytes)
        return await otlp.export(self.store, payload)


def warn_if_exposed(addresses: Sequence[str], *, has_token: bool) -> None:
    """Log a warning when the server listens on an address other machines can reach."""
    exposed = sorted({addr for addr in addresses if not _is_loopback(addr)})
    if exposed:
        log.warning(
            "bound to %s: the store is reachable from other machines%s",
            ", ".join(exposed),
            "" if has_token else " without a token (set --token / AGL_STORE_TOKEN)",
        )


def log_to_stderr(level: int | str) -> None:
    """Send the server's log (one line per request at INFO) to stderr at ``level``."""
    server_log = logging.getLogger("store_fs.server")
    server_log.setLevel(level)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    server_log.addHandler(handler)
    server_log.propagate = False


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


async def _respond(handler: Handler, call: Call) -> Response:
    """On a pool loop: the store call and the encoding of its answer (a big page of spans
    takes a while to encode, which would hold up every other request on the server's loop)."""
    status, payload = await handler(call)
    try:
        return json_response(status, payload)
    except orjson.JSONEncodeError as err:
        # After the store call: what it did stands, so this is no client mistake (a 4xx would
        # say nothing was done).
        return error_response(500, f"the answer could not be written as JSON: {err}")


def _otlp_status(status: int, message: str) -> Response:
    """OTLP/HTTP errors carry a protobuf ``google.rpc.Status`` (plain text if that is unavailable)."""
    try:
        from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return Response(status, message.encode(), content_type="text/plain")
    body: bytes = status_pb2.Status(code=3, message=message).SerializeToString()
    return Response(status, body, content_type=otlp.PROTOBUF)


def run_server(
    store: FileStore,
    *,
    host: str = "127.0.0.1",
    port: int = 4747,
    token: str | None = None,
    max_body_bytes: int = 64 * 1024 * 1024,
    threads: int | None = None,
    limits: Limits | None = None,
    shutdown_grace: float = SHUTDOWN_GRACE,
    workers: int = 1,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM, then stop gracefully: requests in
    flight get up to ``shutdown_grace`` seconds to finish (a second signal cuts them at once).

    ``threads``: store calls run at once (None: :func:`store_fs.server.loop_pool.default_size`);
    ``limits``: the HTTP layer's sizes and timeouts (see :class:`StoreServer`); ``workers``:
    server processes sharing the address (:mod:`store_fs.server.workers`), each with
    ``threads`` store threads; more than one lets the server use more than one core.
    """
    limits = limits or Limits(max_body_bytes=max_body_bytes)
    if workers > 1:
        from store_fs.server.workers import serve_in_workers

        serve_in_workers(
            store,
            workers,
            host=host,
            port=port,
            token=token,
            threads=threads,
            limits=limits,
            shutdown_grace=shutdown_grace,
        )
        return
    server = StoreServer(store, host=host, port=port, token=token, threads=threads, limits=limits)
    asyncio.run(serve(server, shutdown_grace))


async def serve(
    server: StoreServer,
    shutdown_grace: float,
    *,
    sockets: Sequence[socket.socket] = (),
    on_started: Callable[[], None] | None = None,
    orphaned: Callable[[], bool] | None = None,
    cut_signal: int | None = None,
) -> None:
    """Start ``server`` (on ``sockets`` if given), call ``on_started``, serve until SIGINT or
    SIGTERM, or until ``orphaned()`` turns true (asked twice a second), then stop gracefully
    (see :func:`run_server`): a second SIGINT or SIGTERM cuts the requests still in flight.

    With ``cut_signal`` (a worker process, :mod:`.workers`), SIGINT and SIGTERM only ever
    stop gracefully, however many arrive (a service manager may signal every process of the
    group as well as the parent, which relays), and ``cut_signal`` cuts."""
    stopping = asyncio.Event()
    cut = False

    def request_stop(force: bool) -> None:
        nonlocal cut
        if force and not cut:
            log.warning("agl store server: cutting requests in flight")
            cut = True
            server.force_stop()  # ends a graceful stop's wait, if one has begun
        stopping.set()

    loop = asyncio.get_running_loop()
    handlers: list[tuple[int, Callable[[], None]]] = [
        (sig, lambda: request_stop(cut_signal is None and stopping.is_set()))
        for sig in (signal.SIGINT, signal.SIGTERM)
    ]
    if cut_signal is not None:
        handlers.append((cut_signal, lambda: request_stop(True)))
    for sig, handler in handlers:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    await server.start(sockets)
    try:
        if on_started is not None:
            on_started()
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), ORPHAN_CHECK_SECONDS if orphaned else None)
            if orphaned is not None and orphaned():
                log.warning("agl store worker %d: the server process is gone, stopping", os.getpid())
                break
    finally:
        log.warning("agl store server stopping")
        await server.stop(0.0 if cut else shutdown_grace)
