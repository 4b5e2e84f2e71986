"""HTTP/1.1 framing of the store server, through raw sockets (store_fs/server/http.py's rules).

Every rule of the module docstring has a test here: keep-alive and pipelining, 400 for bad
framing (both Content-Length and Transfer-Encoding among them), 501 for transfer codings
other than chunked, 413, 431, 408 for slow clients (who never hold up anybody else), a
client leaving mid-body (nothing stored), and the request id on answers and in the log.
The server runs in this process with short timeouts (tests/http_helpers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from http_helpers import (
    FAST,
    Closed,
    RawClient,
    ServerThread,
    chunked,
    http_request,
    no_error_logs,  # noqa: F401  (an autouse fixture)
    wait_until,
)
from server_helpers import store_snapshot

from store_fs import FileStore, PromptTemplate, init_store

ENQUEUE = "/v1/agl/queues/rollouts/enqueue"
ONE_ROLLOUT = json.dumps({"rollouts": [{"input": {"q": 1}}]}).encode()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return init_store(tmp_path / "store")


@pytest.fixture
def server(store_dir: Path) -> Iterator[ServerThread]:
    store = FileStore(store_dir, create=False)
    with ServerThread(store) as srv:
        yield srv


def _rollout_count(store_dir: Path) -> int:
    store = FileStore(store_dir, create=False)
    try:
        return int(asyncio.run(store.statistics())["total_rollouts"])
    finally:
        store.close()


# -- keep-alive and pipelining ------------------------------------------------------------
def test_keep_alive_pipelining_and_connection_close(server: ServerThread) -> None:
    with RawClient(server.port) as c:
        for _ in range(3):  # HTTP/1.1: one connection, many requests
            a = c.request(http_request("GET", "/v1/agl/health"))
            assert (a.status, a.headers["connection"]) == (200, "keep-alive")
        # Pipelined: three requests in one write, answered in order.
        c.send(
            http_request("POST", ENQUEUE, ONE_ROLLOUT)
            + http_request("GET", "/v1/agl/statistics")
            + http_request("GET", "/v1/agl/nothing")
        )
        first, second, third = c.answer(), c.answer(), c.answer()
        assert (first.status, second.status, third.status) == (201, 200, 404)
        assert second.json()["total_rollouts"] == 1
        a = c.request(http_request("GET", "/v1/agl/health", headers={"Connection": "close"}))
        assert (a.status, a.headers["connection"]) == (200, "close")
        assert c.is_closed()
    with RawClient(server.port) as c:  # an upgrade request is answered as an ordinary one, then closed
        upgrade = {"Connection": "upgrade", "Upgrade": "websocket"}
        c.send(http_request("GET", "/v1/agl/health", None, upgrade) + b"\x81\x05hello")
        assert (c.answer().status, c.is_closed()) == (200, True)
    with RawClient(server.port) as c:  # HTTP/1.0 closes unless asked to keep the connection
        a = c.request(http_request("GET", "/v1/agl/health", version="HTTP/1.0"))
        assert (a.status, a.headers["connection"]) == (200, "close")
        assert c.is_closed()
    with RawClient(server.port) as c:
        for _ in range(2):
            keep = {"Connection": "keep-alive"}
            a = c.request(http_request("GET", "/v1/agl/health", None, keep, version="HTTP/1.0"))
            assert (a.status, a.headers["connection"]) == (200, "keep-alive")


def test_chunked_body_expect_continue_head_and_absolute_target(server: ServerThread, store_dir: Path) -> None:
    with RawClient(server.port) as c:
        half = len(ONE_ROLLOUT) // 2
        body = chunked(ONE_ROLLOUT[:half], ONE_ROLLOUT[half:], trailers="X-Trailer: ignored\r\n")
        a = c.request(http_request("POST", ENQUEUE, body, {"Transfer-Encoding": "chunked"}))
        assert a.status == 201
        # Expect: 100-continue: the interim answer comes before the body is sent.
        expect = {"Expect": "100-continue", "Content-Length": str(len(ONE_ROLLOUT))}
        c.send(http_request("POST", ENQUEUE, None, expect))
        assert c.sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        c.send(ONE_ROLLOUT)
        assert c.answer().status == 201
        c.send(http_request("HEAD", "/v1/agl/health"))  # no route: 405, and never a body
        a = c.answer(to_head=True)
        assert (a.status, int(a.headers["content-length"]) > 0) == (405, True)
        assert c.is_closed(0.2) is False  # nothing more came: no body
        a = c.request(http_request("GET", "http://127.0.0.1/v1/agl/statistics?x=1"))
        assert (a.status, a.json()["total_rollouts"]) == (200, 2)
    assert _rollout_count(store_dir) == 2


# -- bad framing ---------------------------------------------------------------------------
HOST = "Host: 127.0.0.1\r\n"


def _post(headers: str, body: str = "") -> bytes:
    """A POST to the enqueue route with the Host header and ``headers`` (CRLF-ended lines)."""
    return f"POST {ENQUEUE} HTTP/1.1\r\n{HOST}{headers}\r\n{body}".encode()


def _get(rest: str, target: str = "/v1/agl/health") -> bytes:
    """A GET whose request line ends in ``rest`` (version, headers and blank line)."""
    return f"GET {target} {rest}".encode()


CL3, CHUNKED = "Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n"
BAD_FRAMING: list[tuple[str, bytes, int]] = [
    ("both lengths", _post(CL3 + CHUNKED, "3\r\nabc\r\n0\r\n\r\n"), 400),
    ("both lengths, TE first", _post(CHUNKED + CL3, "3\r\nabc\r\n0\r\n\r\n"), 400),
    ("both lengths, gzip", _post(CL3 + "Transfer-Encoding: gzip\r\n", "abc"), 400),
    ("gzip, chunked", _post("Transfer-Encoding: gzip, chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"), 501),
    ("gzip", _post("Transfer-Encoding: gzip\r\n", "abc"), 501),
    ("identity", _post("Transfer-Encoding: identity\r\n", "abc"), 501),
    ("chunked not last", _post("Transfer-Encoding: chunked, gzip\r\n", "abc"), 400),
    ("chunked twice", _post(CHUNKED + CHUNKED, "0\r\n\r\n"), 400),
    ("unknown method", f"BREW / HTTP/1.1\r\n{HOST}\r\n".encode(), 501),
    ("length not a number", _post("Content-Length: 3x\r\n", "abc"), 400),
    ("negative length", _post("Content-Length: -1\r\n"), 400),
    ("length list", _post("Content-Length: 3, 3\r\n", "abc"), 400),
    ("two lengths", _post(CL3 + CL3, "abc"), 400),
    ("length overflow", _post(f"Content-Length: {'9' * 30}\r\n"), 400),
    ("bad chunk size", _post(CHUNKED, "zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk without CRLF", _post(CHUNKED, "3\r\nabcXY0\r\n\r\n"), 400),
    ("chunk size overflow", _post(CHUNKED, f"{'f' * 20}\r\n"), 400),
    ("bare LF", _get("HTTP/1.1\nHost: 127.0.0.1\n\n"), 400),
    ("obsolete line folding", _get(f"HTTP/1.1\r\n{HOST}X-A: a\r\n b\r\n\r\n"), 400),
    ("space before colon", _get("HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n"), 400),
    ("header without colon", _get(f"HTTP/1.1\r\n{HOST}Nonsense\r\n\r\n"), 400),
    ("NUL in a header", _get(f"HTTP/1.1\r\n{HOST}X-A: a\x00b\r\n\r\n"), 400),
    ("no Host", _get("HTTP/1.1\r\n\r\n"), 400),
    ("two Hosts", _get(f"HTTP/1.1\r\n{HOST}{HOST}\r\n"), 400),
    ("HTTP/1.2", _get(f"HTTP/1.2\r\n{HOST}\r\n"), 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("HTTP/0.9", b"GET /v1/agl/health\r\n\r\n", 400),
    ("space in target", _get(f"HTTP/1.1\r\n{HOST}\r\n", "/v1/agl/a b"), 400),
    ("non-ASCII target", _get(f"HTTP/1.1\r\n{HOST}\r\n", "/v1/agl/\u00e9"), 400),
    ("asterisk target", f"OPTIONS * HTTP/1.1\r\n{HOST}\r\n".encode(), 400),
    ("authority target", f"CONNECT 127.0.0.1:80 HTTP/1.1\r\n{HOST}\r\n".encode(), 400),
]


@pytest.mark.parametrize(("case", "data", "status"), BAD_FRAMING, ids=[c[0] for c in BAD_FRAMING])
def test_bad_framing_is_refused_and_the_connection_closed(
    server: ServerThread, store_dir: Path, case: str, data: bytes, status: int
) -> None:
    with RawClient(server.port) as c:
        a = c.request(data)
        assert a.status == status, (case, a.body)
        assert a.headers["connection"] == "close"
        assert "detail" in a.json()
        assert c.is_closed()
    with RawClient(server.port) as c:  # the server is fine
        assert c.request(http_request("GET", "/v1/agl/health")).status == 200
    assert _rollout_count(store_dir) == 0


def test_an_error_after_good_pipelined_requests_comes_after_their_answers(server: ServerThread) -> None:
    with RawClient(server.port) as c:
        good = http_request("GET", "/v1/agl/health") + http_request("GET", "/v1/agl/statistics")
        c.send(good + b"GET / HTTP/1.1\r\nno colon\r\n\r\n")
        assert [c.answer().status for _ in range(3)] == [200, 200, 400]
        assert c.is_closed()


# -- sizes ---------------------------------------------------------------------------------
def test_body_too_large_is_413_before_it_is_sent(server: ServerThread, store_dir: Path) -> None:
    limit = FAST.max_body_bytes
    with RawClient(server.port) as c:  # announced: refused on the head alone
        a = c.request(http_request("POST", ENQUEUE, None, {"Content-Length": str(limit + 1)}))
        assert (a.status, a.headers["connection"]) == (413, "close")
    with RawClient(server.port) as c:  # announced and sent anyway: the client still reads the 413
        a = c.request(http_request("POST", ENQUEUE, b"x" * (4 * limit)))
        assert a.status == 413
    with RawClient(server.port) as c:  # chunked: counted as the chunks arrive
        c.send(http_request("POST", ENQUEUE, None, {"Transfer-Encoding": "chunked"}))
        c.send(b"".join(b"4000\r\n" + b"y" * 0x4000 + b"\r\n" for _ in range(5)))
        assert c.answer().status == 413
        assert c.is_closed()
    with RawClient(server.port) as c:  # exactly the limit is fine (a 422: it is not JSON)
        assert c.request(http_request("POST", ENQUEUE, b" " * limit)).status == 422
    assert _rollout_count(store_dir) == 0


@pytest.mark.parametrize(
    "head",
    [
        "X-Big: " + "a" * (70 * 1024) + "\r\n",  # one header
        "".join(f"X-{i}: {'b' * 900}\r\n" for i in range(80)),  # many, above 64 KiB together
        "".join(f"X-{i}: c\r\n" for i in range(101)),  # more than 100 lines
    ],
    ids=["one-huge-header", "headers-above-64KiB", "101-headers"],
)
def test_header_limits_are_431(server: ServerThread, head: str) -> None:
    with RawClient(server.port) as c:
        a = c.request(f"GET /v1/agl/health HTTP/1.1\r\n{HOST}{head}\r\n")
        assert (a.status, a.headers["connection"]) == (431, "close")
        assert c.is_closed()


def test_a_head_that_never_ends_is_431_without_waiting_for_its_end(server: ServerThread) -> None:
    with RawClient(server.port) as c:
        c.send(f"GET /v1/agl/health HTTP/1.1\r\n{HOST}X-Endless: ")
        for _ in range(20):  # 160 KiB of one header value, never finished
            try:
                c.send(b"z" * 8192)
            except (BrokenPipeError, ConnectionResetError):
                break
        assert c.answer().status == 431


def test_endless_chunk_extension_is_refused(server: ServerThread) -> None:
    with RawClient(server.port) as c:
        c.send(http_request("POST", ENQUEUE, None, {"Transfer-Encoding": "chunked"}) + b"5;ext=")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(20):  # 160 KiB of one chunk extension; the server drops what follows its 400
                c.send(b"e" * 8192)
        assert c.answer().status == 400
        assert c.is_closed()


# -- slow clients ---------------------------------------------------------------------------
def _fast_requests(port: int, count: int) -> list[float]:
    """Seconds each of ``count`` requests took on one keep-alive connection."""
    took = []
    with RawClient(port) as c:
        for _ in range(count):
            started = time.monotonic()
            assert c.request(http_request("GET", "/v1/agl/statistics")).status == 200
            took.append(time.monotonic() - started)
    return took


def _trickle(port: int, data: bytes, pause: float, stop: threading.Event) -> tuple[float, int | None]:
    """Send ``data`` a byte at a time; (seconds until the server answered or closed, its status)."""
    started = time.monotonic()
    with RawClient(port) as c:
        c.sock.settimeout(pause)
        for byte in data:
            if stop.is_set():
                break
            try:
                c.send(bytes([byte]))
                chunk = c.sock.recv(65536)  # waits ``pause``: the server usually says nothing
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, None
            c.buffer += chunk
            break
        c.sock.settimeout(5.0)
        try:
            answer = c.answer()
        except (Closed, ConnectionResetError, TimeoutError):
            return time.monotonic() - started, None
        return time.monotonic() - started, answer.status


def test_slowloris_headers_and_bodies_time_out_without_blocking_others(store_dir: Path) -> None:
    """Ten clients trickle a head or a body a byte at a time: another client's 30 requests are
    all answered while every trickler is still waiting, and the tricklers get 408 in time."""
    limits = dataclasses.replace(FAST, header_timeout=2.0, body_timeout=2.0)
    head = http_request("GET", "/v1/agl/statistics", headers={"X-Pad": "p" * 200})
    body_request = http_request("POST", ENQUEUE, ONE_ROLLOUT * 10)
    split = body_request.index(b"\r\n\r\n") + 4
    head_part, body_part = body_request[:split], body_request[split:]
    stop = threading.Event()
    store = FileStore(store_dir, create=False)
    with ServerThread(store, limits=limits) as srv, ThreadPoolExecutor(10) as pool:
        heads = [pool.submit(_trickle, srv.port, head, 0.05, stop) for _ in range(5)]
        # The body trickles at ~20 bytes/s: far below min_body_rate.
        bodies = [pool.submit(_body_trickle, srv.port, head_part, body_part, stop) for _ in range(5)]
        time.sleep(0.2)
        took = _fast_requests(srv.port, 30)
        waiting = [not f.done() for f in heads + bodies]
        results = [f.result(10) for f in heads + bodies]
        stop.set()
    assert all(waiting), "the other client was held up until tricklers timed out"
    assert max(took) < 1.0, took
    for seconds, status in results:
        assert status == 408, results
        assert seconds < limits.header_timeout + limits.body_timeout + 1.0, results


def _body_trickle(port: int, head: bytes, body: bytes, stop: threading.Event) -> tuple[float, int | None]:
    with RawClient(port) as c:
        c.send(head)
        started = time.monotonic()
        c.sock.settimeout(0.05)
        for byte in body:
            if stop.is_set():
                break
            try:
                c.send(bytes([byte]))
                c.buffer += c.sock.recv(65536)
                break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started, None
        c.sock.settimeout(5.0)
        try:
            return time.monotonic() - started, c.answer().status
        except (Closed, ConnectionResetError):
            return time.monotonic() - started, None


def test_a_partial_request_behind_an_answered_one_still_times_out(server: ServerThread) -> None:
    with RawClient(server.port) as c:
        started = time.monotonic()
        c.send(http_request("GET", "/v1/agl/health") + b"GET /v1/agl/statis")
        assert c.answer().status == 200
        assert c.answer().status == 408  # the head's own timeout, not the idle one
        assert time.monotonic() - started < FAST.header_timeout + 1.0


def test_a_client_not_reading_its_answer_is_cut_off(
    store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``send_timeout``: an answer the client does not take is not held for ever, nor does it
    hold anybody else up."""
    caplog.set_level(logging.INFO, logger="store_fs.server")
    store = FileStore(store_dir, create=False)
    big = PromptTemplate(template="t" * (8 << 20), engine="f-string")
    asyncio.run(store.add_resources({"big": big}))
    with ServerThread(store) as srv:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", srv.port))
        try:
            reader.sendall(http_request("GET", "/v1/agl/resources/latest"))
            took = _fast_requests(srv.port, 5)
            assert max(took) < FAST.send_timeout, took  # not held up by the answer waiting to be sent
            started = time.monotonic()
            received = 0
            with contextlib.suppress(ConnectionResetError):
                time.sleep(FAST.send_timeout + 1.0)  # reads nothing meanwhile
                reader.settimeout(5.0)
                while chunk := reader.recv(1 << 20):
                    received += len(chunk)
            assert received < 8 << 20  # cut off before the whole answer went out
            assert time.monotonic() - started < FAST.send_timeout + 5.0
            assert "read nothing in" in caplog.text
        finally:
            reader.close()


def test_a_slow_reader_of_a_big_answer_gets_all_of_it(store_dir: Path) -> None:
    """Taking longer than ``send_timeout`` over an answer is fine while the client keeps reading."""
    store = FileStore(store_dir, create=False)
    asyncio.run(store.add_resources({"big": PromptTemplate(template="t" * (3 << 20), engine="f-string")}))
    with ServerThread(store) as srv:
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        reader.connect(("127.0.0.1", srv.port))
        try:
            reader.settimeout(10.0)
            reader.sendall(http_request("GET", "/v1/agl/resources/latest"))
            started, data, length = time.monotonic(), b"", None
            while length is None or len(data) < length:
                chunk = reader.recv(65536)
                assert chunk, f"cut off after {len(data)} bytes"
                data += chunk
                if length is None and b"\r\n\r\n" in data:
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                time.sleep(0.02)
            assert time.monotonic() - started > FAST.send_timeout  # slower than the timeout, whole
        finally:
            reader.close()
    assert data.count(b"t") > 3 << 20


def test_idle_and_silent_connections_are_closed(server: ServerThread) -> None:
    with RawClient(server.port) as silent, RawClient(server.port) as idle:
        assert idle.request(http_request("GET", "/v1/agl/health")).status == 200
        started = time.monotonic()
        assert silent.is_closed(FAST.header_timeout + 1.5)  # never sent a byte
        assert time.monotonic() - started < FAST.header_timeout + 1.5
        assert idle.is_closed(FAST.idle_timeout + 1.5)  # kept alive, then idle too long
        assert silent.buffer == idle.buffer == b""  # closed without an answer: nothing was asked


def test_a_body_arriving_fast_enough_is_not_timed_out(server: ServerThread, store_dir: Path) -> None:
    """``body_timeout`` is extended by a second per ``min_body_rate`` bytes received."""
    body = json.dumps({"rollouts": [{"input": "x" * 6000}]}).encode()
    with RawClient(server.port) as c:
        c.send(http_request("POST", ENQUEUE, None, {"Content-Length": str(len(body))}))
        for i in range(0, len(body), 1500):  # ~1 s in all, twice body_timeout, at ~6 KB/s
            c.send(body[i : i + 1500])
            time.sleep(0.25)
        assert c.answer().status == 201
    assert _rollout_count(store_dir) == 1


def test_a_client_leaving_mid_body_stores_nothing(server: ServerThread, store_dir: Path) -> None:
    before = store_snapshot(store_dir)
    span_body = ONE_ROLLOUT
    for cut in (1, len(span_body) // 2, len(span_body) - 1):
        with RawClient(server.port) as c:
            c.send(http_request("POST", ENQUEUE, span_body)[: -(len(span_body) - cut)])
        with RawClient(server.port) as c:  # chunked, the last chunk missing
            te = {"Transfer-Encoding": "chunked"}
            c.send(http_request("POST", ENQUEUE, chunked(span_body[:cut]), te)[:-5])
    assert _fast_requests(server.port, 3)
    assert store_snapshot(store_dir) == before
    assert _rollout_count(store_dir) == 0


# -- identity ---------------------------------------------------------------------------------
def test_request_ids_on_answers_and_in_the_access_log(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="store_fs.server")
    with RawClient(server.port) as c:
        mine = c.request(http_request("GET", "/v1/agl/health", headers={"X-Request-ID": "trace-42"}))
        made = c.request(http_request("GET", "/v1/agl/statistics"))
        odd = c.request(http_request("GET", "/v1/agl/health", headers={"X-Request-ID": "bad id\x7f"}))
    assert mine.headers["x-request-id"] == "trace-42"
    generated = {made.headers["x-request-id"], odd.headers["x-request-id"]}
    assert len(generated) == 2
    assert "trace-42" not in generated
    assert all(" " not in g for g in generated)
    assert wait_until(lambda: "GET /v1/agl/statistics 200" in caplog.text)
    assert "id=trace-42" in caplog.text
    assert f"id={made.headers['x-request-id']}" in caplog.text
    assert "date" in made.headers


def test_bearer_token_is_checked_before_the_body_is_read(store_dir: Path) -> None:
    store = FileStore(store_dir, create=False)
    with ServerThread(store, token="s3cret") as srv, RawClient(srv.port) as c:
        a = c.request(http_request("POST", ENQUEUE, None, {"Content-Length": "1000"}))
        assert (a.status, a.headers["connection"]) == (401, "close")
        with RawClient(srv.port) as ok:
            auth = {"Authorization": "Bearer s3cret"}
            assert ok.request(http_request("POST", ENQUEUE, ONE_ROLLOUT, auth)).status == 201
            assert ok.request(http_request("GET", "/v1/agl/health")).status == 200
            wrong = {"Authorization": "Bearer s3cret2"}
            assert ok.request(http_request("GET", "/v1/agl/statistics", headers=wrong)).status == 401
    assert _rollout_count(store_dir) == 1


def test_only_loopback_addresses_are_quiet() -> None:
    from store_fs.server.app import _is_loopback

    assert all(_is_loopback(a) for a in ("127.0.0.1", "127.8.9.1", "::1"))
    assert not any(_is_loopback(a) for a in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.5", "example.org"))
