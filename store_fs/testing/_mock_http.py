"""The mock OpenAI server's HTTP layer: a threaded keep-alive server, JSON and SSE replies.

The server knows nothing about OpenAI: it hands ``GET``/``POST`` requests to a :class:`Backend`
and writes back what the backend returns, a :class:`JsonReply` or a :class:`StreamReply` (sent as
``text/event-stream`` with chunked transfer encoding). Every reply carries an ``x-request-id``.
"""

from __future__ import annotations

import http.server
import itertools
import json
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

DONE_FRAME = b"data: [DONE]\n\n"
"""The frame that ends a chat or completions stream (the Responses API sends none)."""


class BadRequest(ValueError):
    """A malformed request body. Never leaves the mock server: it becomes an HTTP 400 reply."""


@dataclass(frozen=True)
class JsonReply:
    """A JSON reply with an HTTP status."""

    status: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class StreamReply:
    """A 200 server-sent-events reply; ``frames`` are complete SSE frames, produced lazily."""

    frames: Iterable[bytes]


def error_reply(status: int, message: str, kind: str) -> JsonReply:
    """An OpenAI-shaped error body (``{"error": {"message", "type", "param", "code"}}``)."""
    return JsonReply(status, {"error": {"message": message, "type": kind, "param": None, "code": kind}})


def sse_frame(payload: dict[str, Any], event: str | None = None) -> bytes:
    """One SSE frame: an optional ``event:`` line, then ``data: <json>``."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


class Backend(Protocol):
    """What the HTTP layer serves: it maps a path (and a POST body) to a reply."""

    def get(self, path: str) -> JsonReply: ...

    def post(self, path: str, raw: bytes) -> JsonReply | StreamReply: ...


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do
    disable_nagle_algorithm = True  # without TCP_NODELAY each keep-alive call stalls ~40 ms
    server: MockHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and examples own the console

    def do_GET(self) -> None:
        self._send(self.server.backend.get(self.path.rstrip("/")))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self._send(self.server.backend.post(self.path.rstrip("/"), raw))

    def _send(self, reply: JsonReply | StreamReply) -> None:
        if isinstance(reply, JsonReply):
            self._send_json(reply)
        else:
            self._send_stream(reply.frames)

    def _head(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("x-request-id", f"req_mock_{next(self.server.request_ids)}")

    def _send_json(self, reply: JsonReply) -> None:
        data = json.dumps(reply.payload, ensure_ascii=False).encode("utf-8")
        self._head(reply.status, "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, frames: Iterable[bytes]) -> None:
        self._head(200, "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for frame, last in _with_last(frames):
            # The last frame and the terminating empty chunk go in one write: clients stop reading
            # at the final event, and the connection must be reusable right after.
            self.wfile.write(b"%x\r\n%s\r\n%s" % (len(frame), frame, b"0\r\n\r\n" if last else b""))


def _with_last(frames: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    iterator = iter(frames)
    previous = next(iterator, None)
    while previous is not None:
        current = next(iterator, None)
        yield previous, current is None
        previous = current


class MockHTTPServer(http.server.ThreadingHTTPServer):
    """Tracks connection threads and sockets so :meth:`close_connections` can end keep-alive handlers."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: Backend) -> None:
        self.backend = backend
        self.request_ids = itertools.count(1)
        self._live: dict[threading.Thread, socket.socket] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            daemon=True,
            name="mock-openai-conn",
        )
        with self._live_lock:
            self._live[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients drop connections mid-stream (openai stops reading at [DONE]), and stop() shuts
        # sockets under live handlers: socket errors are expected. Anything else is a bug; show it.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self, timeout: float) -> None:
        """Shut every open connection's socket and join its handler thread."""
        with self._live_lock:
            live = list(self._live.items())
        for _, sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        for thread, _ in live:
            thread.join(timeout)
