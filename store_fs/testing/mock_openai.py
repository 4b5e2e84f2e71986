"""A stdlib-only OpenAI-compatible chat server on 127.0.0.1, for tests and offline examples.

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (JSON and SSE streaming) with
deterministic replies and vLLM-style token ids (one "token" per UTF-8 byte), so any HTTP client,
including ``openai.OpenAI(base_url=server.base_url, api_key="sk-mock")``, works without a network.

Example::

    with MockOpenAIServer() as server:
        client = openai.OpenAI(api_key="sk-mock", base_url=server.base_url)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

Run standalone with ``python -m store_fs.testing.mock_openai --port 8765``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import itertools
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

__all__ = ["MockOpenAIServer", "Responder", "default_responder", "judge_score", "last_user_message"]

Responder = Callable[[dict[str, Any]], str]
"""Maps a chat-completion request body to the assistant's reply text."""

_JUDGE_WORDS = re.compile(r"\b(score[sd]?|scoring|rate[sd]?|rating|grade[sd]?|grading)\b", re.IGNORECASE)
_ERROR_TYPES = {429: "rate_limit_exceeded", 500: "server_error"}


def last_user_message(body: dict[str, Any]) -> str:
    """The text of the last ``user`` message in ``body`` ("" if none); list content is joined text parts."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def judge_score(text: str) -> float:
    """A stable pseudo-score in [0, 1] with two decimals, from a SHA-256 of ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 101 / 100


def default_responder(body: dict[str, Any]) -> str:
    """The default deterministic reply.

    If the last user message asks to score, rate or grade something (whole words, any case),
    the reply is :func:`judge_score` of that message formatted with two decimals, e.g. ``"0.42"``;
    otherwise it is ``"echo: <last user message>"``.
    """
    text = last_user_message(body)
    if _JUDGE_WORDS.search(text):
        return f"{judge_score(text):.2f}"
    return f"echo: {text}"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _prompt_token_ids(body: dict[str, Any]) -> list[int]:
    # A byte-level "chat template": deterministic, and the count doubles as usage.prompt_tokens.
    rendered = "".join(
        f"{m.get('role', '')}: {_text_of(m.get('content'))}\n"
        for m in body.get("messages") or []
        if isinstance(m, dict)
    )
    return list(rendered.encode("utf-8"))


def _pieces(text: str) -> list[str]:
    # Word-sized deltas whose concatenation is exactly ``text``.
    return re.findall(r"\s*\S+\s*|\s+", text) or [""]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do
    disable_nagle_algorithm = True  # without TCP_NODELAY each keep-alive call stalls ~40 ms
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and examples own the console

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.rstrip("/") == "/v1/models":
            model = {"id": owner.model, "object": "model", "created": 0, "owned_by": "mock"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_error(404, f"no route GET {self.path}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_error(404, f"no route POST {self.path}", "not_found")
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_error(400, "request body is not JSON", "invalid_request_error")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400, "'messages' must be a list", "invalid_request_error")
            return
        owner = self.server.owner
        owner._record(body)
        status = owner._take_failure()
        if status is not None:
            self._send_error(status, f"injected failure ({status})", _ERROR_TYPES.get(status, "api_error"))
            return
        try:
            reply = owner.responder(body)
        except Exception as exc:  # a broken responder is a test bug; report it like a server fault
            self._send_error(500, f"responder failed: {exc!r}", "server_error")
            return
        if body.get("stream") is True:
            self._send_stream(body, *owner._complete(body, reply))
        else:
            self._send_json(200, owner._completion_json(body, *owner._complete(body, reply)))

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, kind: str) -> None:
        self._send_json(status, {"error": {"message": message, "type": kind, "param": None, "code": kind}})

    def _send_stream(self, body: dict[str, Any], text: str, finish_reason: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in self.server.owner._chunks(body, text, finish_reason):
            data = f"data: {json.dumps(event)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        done = b"data: [DONE]\n\n"
        # [DONE] and the terminating empty chunk in one write: the client stops reading at [DONE].
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


class _HTTPServer(http.server.ThreadingHTTPServer):
    """Tracks connection threads and sockets so ``close_connections`` can end keep-alive handlers."""

    daemon_threads = True
    owner: MockOpenAIServer

    def __init__(self, address: tuple[str, int], owner: MockOpenAIServer) -> None:
        self.owner = owner
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
        with self._live_lock:
            live = list(self._live.items())
        for _, sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer
        for thread, _ in live:
            thread.join(timeout)


class MockOpenAIServer:
    """An OpenAI-compatible chat-completions server on a background daemon thread.

    Args:
        responder: maps the request body to the reply text; defaults to :func:`default_responder`.
        host: interface to bind; loopback by default.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` / :attr:`base_url`).
        model: the id listed by ``/v1/models`` and used in replies when a request names no model.

    Contracts: replies are deterministic functions of the request (except ``id`` and ``created``);
    ``usage`` counts equal the lengths of ``prompt_token_ids`` / ``choices[0].token_ids`` (UTF-8
    bytes); ``max_tokens`` / ``max_completion_tokens`` truncate the reply (``finish_reason`` =
    ``"length"``); a streamed reply concatenates to the non-streamed one. :attr:`requests` holds
    every well-formed chat-completion body received, including ones answered by an injected failure.
    The server starts on :meth:`start` or ``__enter__`` and :meth:`stop` (or ``__exit__``) shuts
    it down, closes open connections and joins its threads.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "mock-gpt",
    ) -> None:
        self.responder: Responder = responder or default_responder
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (only meaningful once started)."""
        return self._httpd.server_address[1] if self._httpd is not None else self._port

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1``: pass as the OpenAI client's ``base_url``."""
        return f"http://{self._host}:{self.port}/v1"

    def start(self) -> MockOpenAIServer:
        """Bind and serve on a daemon thread; returns ``self``. Raises ``RuntimeError`` if running."""
        if self._httpd is not None:
            raise RuntimeError("MockOpenAIServer is already running")
        self._httpd = _HTTPServer((self._host, self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="mock-openai"
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close open connections and join the threads. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections(timeout)
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        self._httpd = self._thread = None

    def __enter__(self) -> MockOpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` chat requests with HTTP ``status`` and an OpenAI error body."""
        if not 400 <= status <= 599 or times < 0:
            raise ValueError("status must be 4xx/5xx and times >= 0")
        with self._lock:
            self._failures.extend([status] * times)

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _complete(self, body: dict[str, Any], reply: str) -> tuple[str, str]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        encoded = reply.encode("utf-8")
        if isinstance(limit, int) and 0 < limit < len(encoded):
            return encoded[:limit].decode("utf-8", errors="ignore"), "length"
        return reply, "stop"

    def _header(self, body: dict[str, Any], obj: str) -> dict[str, Any]:
        model = body.get("model")
        return {
            "id": f"chatcmpl-mock-{next(self._ids)}",
            "object": obj,
            "created": int(time.time()),
            "model": model if isinstance(model, str) and model else self.model,
            "system_fingerprint": "fp_mock",
        }

    def _completion_json(self, body: dict[str, Any], text: str, finish_reason: str) -> dict[str, Any]:
        prompt_ids, reply_ids = _prompt_token_ids(body), list(text.encode("utf-8"))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": None,
            "token_ids": reply_ids,
        }
        return {
            **self._header(body, "chat.completion"),
            "choices": [choice],
            "usage": _usage(len(prompt_ids), len(reply_ids)),
            "prompt_token_ids": prompt_ids,
        }

    def _chunks(self, body: dict[str, Any], text: str, finish_reason: str) -> Iterator[dict[str, Any]]:
        head = self._header(body, "chat.completion.chunk")
        prompt_ids = _prompt_token_ids(body)

        def chunk(
            delta: dict[str, Any], finish: str | None = None, ids: list[int] | None = None
        ) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            if ids is not None:
                choice["token_ids"] = ids
            return {**head, "choices": [choice]}

        # As vLLM does with return_token_ids: prompt ids on the first chunk, reply ids per delta.
        yield {**chunk({"role": "assistant", "content": ""}, ids=[]), "prompt_token_ids": prompt_ids}
        if text:
            for piece in _pieces(text):
                yield chunk({"content": piece}, ids=list(piece.encode("utf-8")))
        yield chunk({}, finish_reason)
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield {**head, "choices": [], "usage": _usage(len(prompt_ids), len(text.encode("utf-8")))}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; prints the base URL (one line, flushed) once listening."""
    parser = argparse.ArgumentParser(prog="python -m store_fs.testing.mock_openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument("--model", default="mock-gpt")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)  # so `kill` also shuts the server down cleanly
    with MockOpenAIServer(host=args.host, port=args.port, model=args.model) as server:
        print(server.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
