"""``agl store --workers N``: several server processes on one port, with real processes.

The workers share the port and the store directory; the parent replaces a worker that dies;
workers stop by themselves when the parent is killed; a worker that cannot start stops the
server with an error. (SIGTERM with requests in flight: ``test_server_shutdown.py``.)
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from cli_helpers import AGL
from http_helpers import RawClient, http_request, wait_until
from proc_helpers import alive
from server_helpers import ServerProcess, raw_request

from store_fs import FileStore, init_store
from store_fs.client import LightningStoreClient
from store_fs.models import Span
from store_fs.server import Limits, ServerStartError, http
from store_fs.server.http import _SharedListener
from store_fs.server.workers import bind_listening, serve_in_workers

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def enqueue(url: str, i: int) -> str:
    status, body, _ = raw_request(
        url, "POST", "/v1/agl/queues/rollouts/enqueue", f'{{"rollouts": [{{"input": {i}}}]}}', AUTH
    )
    assert status == 201, body
    rollout_id: str = body[0]["rollout_id"]
    return rollout_id


async def _loop(url: str, ids: list[str]) -> None:
    """Two clients (two connections, maybe two workers) run every rollout; a third waits."""
    clients = [LightningStoreClient(url, token=TOKEN) for _ in range(3)]
    try:

        async def runner(client: LightningStoreClient, name: str) -> None:
            while (attempted := await client.dequeue_rollout(worker_id=name)) is not None:
                rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
                for seq in (1, 2):
                    span = Span.from_attributes(
                        attributes={"seq": seq}, rollout_id=rid, attempt_id=aid, sequence_id=seq
                    )
                    await client.add_span(span)
                await client.update_attempt(rid, aid, status="succeeded")

        waiting = asyncio.create_task(clients[2].wait_for_rollouts(rollout_ids=ids, timeout=30))
        await asyncio.gather(runner(clients[0], "a"), runner(clients[1], "b"))
        done = await waiting
        assert sorted(r.rollout_id for r in done) == sorted(ids)
        assert {r.status for r in done} == {"succeeded"}
    finally:
        for client in clients:
            await client.close()


def test_workers_share_the_port_the_token_and_the_store(tmp_path: Path) -> None:
    store_dir = tmp_path / "new-store"  # created by the parent, opened by every worker
    args = ["--workers", "2", "--token", TOKEN]
    # Modules in the working directory do not shadow the real ones in the workers.
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "signal.py").write_text("raise SystemExit(3)\n")
    with ServerProcess(store_dir, tmp_path / "server.log", args=args, cwd=tmp_path / "work") as server:
        assert server.proc is not None
        assert f"(store {store_dir}, 2 worker processes)" in server.log_text()
        workers = children(server.proc.pid)
        assert len(workers) == 2
        assert all(alive(pid) for pid in workers)
        status, _, _ = raw_request(server.url, "GET", "/v1/agl/statistics")
        assert status == 401  # whichever worker answered, it knows the token
        ids = [enqueue(server.url, i) for i in range(12)]  # a fresh connection each
        asyncio.run(_loop(server.url, ids))
        assert children(server.proc.pid) == workers  # nobody died on the way
    assert server.proc is None
    store = FileStore(store_dir, create=False)
    assert store.check() == []
    stats = asyncio.run(store.statistics())
    assert (stats["total_rollouts"], stats["total_spans"]) == (12, 24)
    assert not any(alive(pid) for pid in workers)


def test_a_dead_worker_is_replaced_and_a_killed_parent_takes_the_workers_down(tmp_path: Path) -> None:
    server = ServerProcess(init_store(tmp_path / "store"), tmp_path / "server.log", args=["--workers", "2"])
    replaced: set[int] = set()
    try:
        server.start()
        assert server.proc is not None
        parent = server.proc.pid
        first = children(parent)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: len(children(parent)) == 2 and victim not in children(parent), 20)
        assert "exited with code -9: starting another" in server.log_text()
        replaced = children(parent)
        assert wait_until(lambda: raw_request(server.url, "GET", "/v1/agl/health")[0] == 200, 20)
        assert [enqueue(server.url, i) for i in range(4)]  # served, by either worker

        os.kill(parent, signal.SIGKILL)  # no chance to stop its workers: they notice alone
        server.proc.wait(10)
        assert wait_until(lambda: not any(alive(pid) for pid in replaced), 10)
        assert wait_until(lambda: port_is_free(server.port), 10)
    finally:
        server.stop()
        for pid in replaced:  # only if the test failed before they stopped
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert FileStore(tmp_path / "store", create=False).check() == []


def test_a_replacement_killed_before_it_serves_is_replaced_in_turn(tmp_path: Path) -> None:
    """A replacement worker that died before it said it was ready stopped the whole server with
    "a server worker did not start" (found by an adversarial pass): only a worker failing at
    start-up should. It counts as one more death, and another replaces it."""
    server = ServerProcess(init_store(tmp_path / "store"), tmp_path / "server.log", args=["--workers", "2"])
    try:
        server.start()
        assert server.proc is not None
        parent = server.proc.pid
        first = children(parent)
        os.kill(min(first), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (children(parent) - first) and time.monotonic() < deadline:
            time.sleep(0.005)
        replacement = children(parent) - first
        assert replacement, "no replacement started"
        for pid in replacement:
            os.kill(pid, signal.SIGKILL)  # before it serves (the parent waits ~0.1 s for its "ready")
        assert wait_until(lambda: len(children(parent)) == 2, 20)
        assert server.proc.poll() is None, server.log_text()
        assert wait_until(lambda: raw_request(server.url, "GET", "/v1/agl/health")[0] == 200, 20)
        assert [enqueue(server.url, i) for i in range(4)]
    finally:
        server.stop()


BODY = b'{"rollouts": [{"input": "sent during the stop"}]}'


def _in_flight(port: int) -> RawClient:
    """A connection whose enqueue request is in flight: head parsed, half the body sent."""
    client = RawClient(port)
    head = {"Expect": "100-continue", "Content-Length": str(len(BODY))}
    client.send(http_request("POST", "/v1/agl/queues/rollouts/enqueue", None, head))
    assert client.sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.send(BODY[:20])
    return client


@pytest.mark.parametrize("gap", [0.0, 0.5])
def test_a_second_signal_cuts_requests_in_flight_in_every_worker(tmp_path: Path, gap: float) -> None:
    """Also when both signals arrive before the stop begins (gap 0; SIGTERM then SIGINT, which
    cannot merge into one): the parent must not relay them as one signal sent twice."""
    args = ["--workers", "2", "--shutdown-grace", "60"]
    server = ServerProcess(init_store(tmp_path / "store"), tmp_path / "server.log", args=args)
    with server, _in_flight(server.port) as stuck:
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        if gap:
            time.sleep(gap)
            assert server.proc.poll() is None  # waiting for the body, up to the grace period
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(15) == 0
        assert time.monotonic() - started < 15  # not the 60 s grace period
        assert stuck.is_closed(1.0)
    assert asyncio.run(FileStore(tmp_path / "store", create=False).statistics())["total_rollouts"] == 0


def test_a_service_manager_signalling_every_process_still_stops_gracefully(tmp_path: Path) -> None:
    """systemd's default stop sends SIGTERM to the parent and to each worker: one signal each,
    not a second one for the workers."""
    server = ServerProcess(init_store(tmp_path / "store"), tmp_path / "server.log", args=["--workers", "2"])
    with server, _in_flight(server.port) as slow:
        assert server.proc is not None
        for pid in [server.proc.pid, *children(server.proc.pid)]:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        slow.send(BODY[20:])
        answer = slow.answer()
        assert (answer.status, answer.headers["connection"]) == (201, "close")
        assert server.proc.wait(15) == 0
    assert asyncio.run(FileStore(tmp_path / "store", create=False).statistics())["total_rollouts"] == 1


# In a worker only: importing the store hangs (as on a stuck filesystem).
HANG_AT_START = """
import sys, time
class Hang:
    def find_spec(self, name, path=None, target=None):
        if name == "store_fs.store":
            time.sleep(120)
if any("store_fs.server._worker" in arg for arg in sys.orig_argv[1:4]):
    sys.meta_path.insert(0, Hang())
"""


@pytest.mark.parametrize("how", ["interrupted", "killed"])
def test_workers_hanging_at_start_do_not_outlive_their_parent(tmp_path: Path, how: str) -> None:
    """Ctrl-C stops the start at once; a killed parent's starting workers exit by themselves."""
    (tmp_path / "hang").mkdir()
    (tmp_path / "hang" / "sitecustomize.py").write_text(HANG_AT_START)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "hang"), os.environ.get("PYTHONPATH", "")])
    )
    command = [AGL, "--store", str(tmp_path / "store"), "store", "--port", "0", "--workers", "2"]
    with (tmp_path / "server.log").open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env)
    starting: set[int] = set()
    try:
        assert wait_until(lambda: len(children(proc.pid)) == 2, 20)
        starting = children(proc.pid)
        os.kill(proc.pid, signal.SIGINT if how == "interrupted" else signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: not any(alive(pid) for pid in starting), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in starting:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    if how == "interrupted":
        assert proc.returncode == 0


def test_a_worker_that_cannot_start_stops_the_server_with_an_error(tmp_path: Path) -> None:
    store = FileStore(init_store(tmp_path / "store"), create=False)
    assert store.open_options is not None
    store.open_options["durability"] = "neither"  # every worker's FileStore refuses it
    before = children(os.getpid())
    with pytest.raises(ServerStartError, match="did not start"):
        serve_in_workers(
            store, 2, host="127.0.0.1", port=0, token=None, threads=2, limits=Limits(), shutdown_grace=1.0
        )
    assert children(os.getpid()) <= before  # none left behind


def test_worker_processes_need_the_main_thread(tmp_path: Path) -> None:
    store = FileStore(init_store(tmp_path / "store"), create=False)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            serve_in_workers,
            store,
            2,
            host="127.0.0.1",
            port=0,
            token=None,
            threads=2,
            limits=Limits(),
            shutdown_grace=1.0,
        )
        with pytest.raises(ValueError, match="main thread"):
            running.result(30)


class _Counted(asyncio.Protocol):
    def __init__(self, accepted: list[asyncio.BaseTransport]) -> None:
        self.accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.accepted.append(transport)


async def test_workers_take_turns_at_connections_that_arrive_together() -> None:
    """Two workers' listeners on one socket (here two descriptors of it in one event loop, so
    both are woken by the same connections): each takes one per wake-up, so six connections
    opened at once are shared three and three, not all taken by whoever woke first."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        accepted: list[list[asyncio.BaseTransport]] = [[], []]
        listeners = [
            # Any protocol will do here; the server's is an HTTP connection.
            _SharedListener(loop, listening.dup(), cast(Any, functools.partial(_Counted, accepted[i])))
            for i in range(2)
        ]
        clients = [socket.create_connection(listening.getsockname()) for _ in range(6)]
        try:
            assert await asyncio.to_thread(wait_until, lambda: sum(map(len, accepted)) == 6)
            assert [len(a) for a in accepted] == [3, 3]
        finally:
            for client in clients:
                client.close()
            for listener in listeners:
                listener.close()
                await listener.wait_closed()
            for transport in accepted[0] + accepted[1]:
                transport.close()


class _OutOfDescriptors(socket.socket):
    """A listening socket whose first accept fails as with too many open files."""

    calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.calls == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_a_failed_accept_pauses_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "ACCEPT_RETRY_SECONDS", 0.3)
    loop = asyncio.get_running_loop()
    with _OutOfDescriptors(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        accepted: list[asyncio.BaseTransport] = []
        listener = _SharedListener(loop, listening, cast(Any, functools.partial(_Counted, accepted)))
        with socket.create_connection(listening.getsockname()):
            await asyncio.sleep(0.15)
            assert (listening.calls, accepted) == (1, [])  # paused: the socket is still readable
            assert await asyncio.to_thread(wait_until, lambda: len(accepted) == 1)
            assert listening.calls == 2
        listener.close()
        accepted[0].close()


def test_bind_listening_takes_one_port_for_every_address() -> None:
    sockets = bind_listening("localhost", 0)  # 127.0.0.1, and ::1 where the machine has it
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        assert 0 not in ports
        assert all(sock.getsockname()[0] in ("127.0.0.1", "::1") for sock in sockets)
        with pytest.raises(OSError, match="in use"):
            bind_listening("127.0.0.1", ports.pop())  # in use
    finally:
        for sock in sockets:
            sock.close()
