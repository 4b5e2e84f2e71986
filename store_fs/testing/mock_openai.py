"""A stdlib-only OpenAI-compatible server on 127.0.0.1, for tests and offline examples.

Serves ``GET /v1/models`` and, as JSON or SSE streams, ``POST /v1/chat/completions``,
``POST /v1/completions`` and ``POST /v1/responses``, with deterministic replies (plain text,
tool calls, structured outputs, logprobs) and vLLM-style token ids (one "token" per UTF-8 byte),
so any HTTP client, including ``openai.OpenAI(base_url=server.base_url, api_key="sk-mock")`` and
its ``parse``/``stream`` helpers, works without a network. How a reply is decided (tool calls,
structured output, truncation) is in ``_mock_reply``; each API's wire format in ``_mock_chat``,
``_mock_completions`` and ``_mock_responses``.

Example::

    with MockOpenAIServer() as server:
        client = openai.OpenAI(api_key="sk-mock", base_url=server.base_url)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

Run standalone with ``python -m store_fs.testing.mock_openai --port 8765``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from store_fs.testing import _mock_chat, _mock_completions, _mock_responses
from store_fs.testing._mock_http import (
    BadRequest,
    JsonReply,
    MockHTTPServer,
    StreamReply,
    error_reply,
    sse_frame,
)
from store_fs.testing._mock_reply import Context, Responder, last_user_text
from store_fs.testing._mock_text import score_of, text_of

__all__ = ["MockOpenAIServer", "Responder", "default_responder", "judge_score", "last_user_message"]

_JUDGE_WORDS = re.compile(r"\b(score[sd]?|scoring|rate[sd]?|rating|grade[sd]?|grading)\b", re.IGNORECASE)
_ERROR_TYPES = {429: "rate_limit_exceeded", 500: "server_error"}


@dataclass(frozen=True)
class _Api:
    """One POST endpoint: ``check`` rejects malformed bodies, ``handle`` answers well-formed ones."""

    check: Callable[[dict[str, Any]], None]
    handle: Callable[[dict[str, Any], Context], JsonReply | StreamReply]


_ROUTES = {
    "/v1/chat/completions": _Api(_mock_chat.check, _mock_chat.handle),
    "/v1/completions": _Api(_mock_completions.check, _mock_completions.handle),
    "/v1/responses": _Api(_mock_responses.check, _mock_responses.handle),
}


def last_user_message(body: dict[str, Any]) -> str:
    """The text of the last ``user`` message in ``body`` ("" if none); list content is joined text parts."""
    messages = body.get("messages")
    return last_user_text(messages if isinstance(messages, list) else [])


def judge_score(text: str) -> float:
    """A stable pseudo-score in [0, 1] with two decimals, from a SHA-256 of ``text``."""
    return score_of(text)


def default_responder(body: dict[str, Any]) -> str:
    """The default deterministic reply.

    If the conversation ends with tool results (``tool`` messages), the reply quotes them:
    ``"tool results: <name> -> <content>; ..."`` (the name found through the assistant's
    ``tool_calls``, else the ``tool_call_id``). Otherwise, if the last user message asks to score,
    rate or grade something (whole words, any case), the reply is :func:`judge_score` of that
    message formatted with two decimals, e.g. ``"0.42"``; else it is ``"echo: <last user message>"``.
    """
    results = _trailing_tool_results(body)
    if results:
        return "tool results: " + "; ".join(f"{name} -> {content}" for name, content in results)
    text = last_user_message(body)
    if _JUDGE_WORDS.search(text):
        return f"{judge_score(text):.2f}"
    return f"echo: {text}"


def _trailing_tool_results(body: dict[str, Any]) -> list[tuple[str, str]]:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    names = {
        call.get("id"): fn.get("name")
        for m in messages
        for call in m.get("tool_calls") or []
        if isinstance(call, dict) and isinstance(fn := call.get("function"), dict)
    }
    results: list[tuple[str, str]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        call_id = message.get("tool_call_id")
        results.append((str(names.get(call_id) or call_id), text_of(message.get("content"))))
    return results[::-1]


class MockOpenAIServer:
    """An OpenAI-compatible server (chat completions, completions, responses) on a daemon thread.

    Args:
        responder: maps a chat-shaped request body to the reply text; defaults to
            :func:`default_responder`. Completions requests reach it as
            ``{**body, "messages": [{"role": "user", "content": <prompt>}]}`` (once per prompt),
            Responses requests as ``{**body, "messages": <instructions and input as chat messages>}``.
        host: interface to bind; loopback by default.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` / :attr:`base_url`).
        model: the id listed by ``/v1/models`` and used in replies when a request names no model.

    Contracts: replies are deterministic functions of the request (except ``id``-like fields and
    times); ``usage`` counts equal the lengths of the token-id lists (UTF-8 bytes); token limits
    (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``) truncate text replies; a
    streamed reply assembles to the non-streamed one. :attr:`requests` holds every well-formed
    request body received, of any endpoint, including ones answered by an injected failure, and
    :attr:`paths` the matching request paths (``"/v1/chat/completions"``...). The server starts on
    :meth:`start` or ``__enter__`` and :meth:`stop` (or ``__exit__``) shuts it down, closes open
    connections and joins its threads.
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
        self.paths: list[str] = []
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._stream_breaks: list[int] = []
        self._ids = itertools.count(1)
        self._httpd: MockHTTPServer | None = None
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
        self._httpd = MockHTTPServer((self._host, self._port), self)
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
        """Answer the next ``times`` model requests (any POST endpoint) with HTTP ``status`` and an
        OpenAI error body."""
        if not 400 <= status <= 599 or times < 0:
            raise ValueError("status must be 4xx/5xx and times >= 0")
        with self._lock:
            self._failures.extend([status] * times)

    def break_next_stream(self, after: int = 1) -> None:
        """End the next streamed reply after its first ``after`` frames with an OpenAI error
        event, as a server failing part-way through a stream does: ``data: {"error": ...}`` for
        chat and completions (the SDK raises ``APIError``), an ``error`` event for the Responses
        API (the SDK hands it to the caller)."""
        if after < 0:
            raise ValueError("after must be >= 0")
        with self._lock:
            self._stream_breaks.append(after)

    def get(self, path: str) -> JsonReply:
        """Serve a GET (the HTTP layer calls this): only ``/v1/models``."""
        if path != "/v1/models":
            return error_reply(404, f"no route GET {path}", "not_found")
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "mock"}
        return JsonReply(200, {"object": "list", "data": [model]})

    def post(self, path: str, raw: bytes) -> JsonReply | StreamReply:
        """Serve a POST (the HTTP layer calls this): 404 unknown path, 400 malformed body, an
        injected failure, 500 if the responder raises, else the endpoint's reply."""
        api = _ROUTES.get(path)
        if api is None:
            return error_reply(404, f"no route POST {path}", "not_found")
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the request body must be a JSON object")
            api.check(body)
        except ValueError as exc:  # BadRequest, or JSON that does not parse
            message = str(exc) if isinstance(exc, BadRequest) else "request body is not JSON"
            return error_reply(400, message, "invalid_request_error")
        self._record(path, body)
        status = self._take_failure()
        if status is not None:
            return error_reply(status, f"injected failure ({status})", _ERROR_TYPES.get(status, "api_error"))
        try:
            reply = api.handle(body, Context(self.responder, self.model, self._new_id))
        except Exception as exc:  # a broken responder is a test bug; report it like a server fault
            return error_reply(500, f"responder failed: {exc!r}", "server_error")
        if isinstance(reply, StreamReply):
            with self._lock:
                after = self._stream_breaks.pop(0) if self._stream_breaks else None
            if after is not None:
                reply = StreamReply(_broken_after(reply.frames, after, path.endswith("/responses")))
        return reply

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def _record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(body)
            self.paths.append(path)

    def _take_failure(self) -> int | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None


def _broken_after(frames: Iterable[bytes], after: int, responses: bool) -> Iterator[bytes]:
    yield from itertools.islice(frames, after)
    message = "injected failure mid-stream"
    if responses:
        code = "server_error"
        yield sse_frame(
            {"type": "error", "code": code, "message": message, "sequence_number": after}, "error"
        )
    else:
        yield sse_frame({"error": {"message": message, "type": "server_error", "code": None}})


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
