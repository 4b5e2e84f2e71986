"""``StoreServer``: a FileStore served over upstream's v1 REST API and OTLP/HTTP traces.

Status codes: success codes as upstream (docs/behaviour.md §9.2). Caller mistakes are 4xx with
``{"detail": "<one line>"}`` (plus ``error_type``/``error_attrs`` for the store's own
errors, so clients can raise the same exception class): not found 404, invalid id /
bad JSON / bad paging 400, conflict 409, validation 422 (``detail`` is a list),
missing token 401, body too large 413. Anything unexpected is a 500 and the server
keeps serving. Getters answer 200 ``null`` for unknown ids, as upstream does.

Concurrency: the HTTP layer runs on one event loop; every store call (and the JSON
encoding of its answer, and OTLP decoding) runs on a :class:`~.loops.LoopPool`, so
requests on different connections overlap instead of queueing behind one another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from store_fs.errors import AglError, mapping_for
from store_fs.server import otlp
from store_fs.server.http import HttpServer, Request, Response
from store_fs.server.loop_pool import LoopPool, PoolClosedError
from store_fs.server.routes import PREFIX, Call, Handler, StoreApi
from store_fs.server.schemas import BadRequest
from store_fs.store import FileStore

__all__ = ["StoreServer", "run_server"]

log = logging.getLogger("store_fs.server")

_OTLP_UNSUPPORTED = frozenset({"/v1/metrics", "/v1/logs", "/v1/development/profiles"})


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
        return error_response(400, err.detail)
    if isinstance(err, ValidationError):
        detail = orjson.loads(err.json(include_url=False, include_context=False))
        return json_response(422, {"detail": detail})
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
    once (see :mod:`store_fs.server.loop_pool`; None picks :func:`~.loops.default_size`);
    waiting calls such as ``wait_for_rollouts`` do not count against it.
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
    ) -> None:
        self.store = store
        self.pool = LoopPool(threads)
        self.host = host
        self.port = port
        self.api = StoreApi(store)
        self._has_token = bool(token)
        self.http = HttpServer(
            self.handle,
            lambda status, detail: error_response(status, detail),
            token=token,
            public_paths=frozenset({PREFIX + "/health"}),
            max_body_bytes=max_body_bytes,
        )

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        if self.host in ("0.0.0.0", "::", ""):
            log.warning(
                "binding %s: the store is reachable from other machines%s",
                self.host or "all interfaces",
                "" if self._has_token else " without a token (set --token / AGL_STORE_TOKEN)",
            )
        self.pool.start()  # before listening: the first request may come at once
        try:
            await self.http.start(self.host, self.port)
        except BaseException:
            await self.pool.aclose()
            raise
        bound = self.http.sockets
        if bound:
            self.port = bound[0][1]
        log.warning(
            "agl store server listening on %s (store %s, %d store threads)",
            self.endpoint,
            self.store.root,
            self.pool.size,
        )

    async def stop(self) -> None:
        """Stop listening, cut open requests, then stop the store threads and close the store."""
        await self.http.stop()  # cancelling the requests also cancels their store calls
        await self.pool.aclose()
        self.store.close()

    async def handle(self, request: Request) -> Response:
        """Answer one request; never raises."""
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
            return await self.pool.run(_respond(handler, Call(request, params, self.store)))
        except Exception as err:
            return response_for_exception(err)

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


async def _respond(handler: Handler, call: Call) -> Response:
    """On a pool loop: the store call and the encoding of its answer (a big page of spans
    takes a while to encode, which would hold up every other request on the server's loop)."""
    status, payload = await handler(call)
    return json_response(status, payload)


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
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then stop cleanly (open requests are cut).

    ``threads``: store calls run at once (None: :func:`store_fs.server.loop_pool.default_size`).
    """
    server = StoreServer(
        store, host=host, port=port, token=token, max_body_bytes=max_body_bytes, threads=threads
    )

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopping.set)
        await server.start()
        try:
            await stopping.wait()
        finally:
            log.warning("agl store server stopping")
            await server.stop()

    asyncio.run(main())
