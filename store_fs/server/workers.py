"""Several ``agl store`` processes on one address (``agl store --workers N``).

One server process runs its HTTP layer and most store calls on one core. With ``N`` workers,
the parent binds the listening sockets, starts ``N`` worker processes that inherit them
(:data:`BOOTSTRAP`, then ``store_fs.server._worker``), and each new connection goes to whichever
worker accepts it first. Workers accept one connection per wake-up, so connections opened
together spread over them, and a busy worker leaves new ones to idle workers. A keep-alive
connection stays with its worker.

This is safe because a server keeps no state of its own: each worker opens the store directory
like any other process sharing it (docs/behaviour.md §9.1), runs its own watchdog, and wakes its
own waits from the store's file events, so a request may land on any worker.

The parent:

- says where it listens (the same log line as one process) once every worker serves;
- relays SIGINT and SIGTERM: the first stops every worker gracefully, a second (before or
  during the stop) sends them :data:`CUT_SIGNAL` to cut the requests in flight, as a second
  signal does to one process. Workers run in their own session, so a terminal's Ctrl-C reaches
  them only through the parent; and they take any number of SIGINT or SIGTERM as a graceful
  stop, so a service manager that signals the whole group does not cut them;
- replaces a worker that dies while serving (its clients' connections are cut; clients retry).
  A worker that cannot start stops the whole server with an error.

A worker whose parent is killed (``kill -9``) notices within half a second: while starting it
exits at once, while serving it stops gracefully. Either way the address is freed for a new
server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from store_fs.server.http import Limits
from store_fs.store import FileStore

__all__ = ["ServerStartError", "bind_listening", "serve_in_workers"]

log = logging.getLogger("store_fs.server")

BACKLOG = 1024
READY_TIMEOUT = 60.0  # a worker imports, opens the store, then serves: seconds on a slow machine
POLL_SECONDS = 0.1
KILL_AFTER = 5.0  # beyond the grace period, before a worker that will not stop is killed
RESTARTS_PER_MINUTE = 10  # more deaths than this: something is wrong, stop rather than churn
PORT_ATTEMPTS = 5
#: What the parent sends its workers on a second SIGINT or SIGTERM: cut what is in flight.
#: Not a second SIGTERM: a repeated signal may merge with the first before the worker sees it,
#: and a service manager may send every process of the group a SIGTERM of its own.
CUT_SIGNAL = signal.SIGUSR1

#: A worker's first lines (``python -P -c BOOTSTRAP PARENT_PID FD...``). Before anything of
#: store_fs is imported (an import, like opening the store, can hang on a stuck filesystem), a
#: thread exits the worker if the parent dies before it serves: a worker that never started
#: must not outlive the parent holding the listening socket. Serving, it stops gracefully by
#: itself (``store_fs.server._worker``).
BOOTSTRAP = """\
import os, sys, threading
parent, serving = int(sys.argv[1]), threading.Event()
def exit_if_orphaned():
    while not serving.wait(0.5):
        if os.getppid() != parent:
            os._exit(1)
threading.Thread(target=exit_if_orphaned, daemon=True).start()
from store_fs.server._worker import main
main(parent, [int(fd) for fd in sys.argv[2:]], serving)
"""


class ServerStartError(RuntimeError):
    """A worker process could not start serving, or workers keep dying."""


def bind_listening(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, all on one port (port 0: the
    first socket picks a free one and the others take it too). ``OSError`` if any bind fails."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    for attempt in range(PORT_ATTEMPTS):
        try:
            return _bind_all(infos, port)
        except OSError as err:
            # Port 0: the port the first address got may be taken on another one; pick again.
            if port != 0 or err.errno != errno.EADDRINUSE or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _bind_all(infos: Sequence[tuple[Any, ...]], port: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str | int]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # IPv4 addresses get their own socket, as in asyncio
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve_in_workers(
    store: FileStore,
    count: int,
    *,
    host: str,
    port: int,
    token: str | None,
    threads: int | None,
    limits: Limits,
    shutdown_grace: float,
) -> None:
    """Serve ``store`` from ``count`` worker processes until SIGINT or SIGTERM (module docstring).
    Call it from the main thread (it handles the signals).

    ``OSError`` if the address cannot be bound; :class:`ServerStartError` if a worker cannot
    start, or workers keep dying; ``ValueError`` outside the main thread, or for a store opened
    with an injected clock.
    """
    if store.open_options is None:
        raise ValueError("a store opened with an injected clock cannot be served by worker processes")
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("serving with worker processes takes the main thread (it handles the signals)")
    from store_fs.server.app import warn_if_exposed

    config = {
        "root": str(store.root),
        "store": store.open_options,
        "server": {"host": host, "token": token, "threads": threads, "limits": dataclasses.asdict(limits)},
        "shutdown_grace": shutdown_grace,
        "log_level": log.getEffectiveLevel(),
    }
    signals = _Signals()
    try:
        sockets = bind_listening(host, port)
        bound = [sock.getsockname() for sock in sockets]
        pool = _Pool(config, sockets, count)
        try:
            if pool.start_all(signals):
                warn_if_exposed([address[0] for address in bound], has_token=bool(token))
                shown = f"[{host}]" if ":" in host else host
                log.warning(
                    "agl store server listening on http://%s:%d (store %s, %d worker processes)",
                    shown,
                    bound[0][1],
                    store.root,
                    count,
                )
                pool.supervise(signals)
        finally:
            for sock in sockets:  # no new connections once the workers close theirs too
                sock.close()
            pool.stop(signals, shutdown_grace)
    finally:
        signals.restore()
        store.close()


class _Signals:
    """SIGINT and SIGTERM counted instead of raising, for the parent's supervising loop."""

    def __init__(self) -> None:
        self.count = 0
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Pool:
    def __init__(self, config: dict[str, Any], sockets: Sequence[socket.socket], count: int) -> None:
        self._config = json.dumps(config).encode()
        self._fds = [sock.fileno() for sock in sockets]
        self._count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self._deaths: list[float] = []

    def _spawn(self) -> subprocess.Popen[bytes]:
        # -P: the working directory does not go on the path (a json.py or another checkout's
        # store_fs there would shadow the real ones in the workers only).
        command = [sys.executable, "-P", "-c", BOOTSTRAP, str(os.getpid()), *map(str, self._fds)]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=self._fds,
            start_new_session=True,  # Ctrl-C reaches the parent only; it relays it once
        )
        self.procs.append(proc)  # reaped and its pipe closed by stop(), whatever happens next
        assert proc.stdin is not None
        # The configuration (the token among it) goes through a pipe, never argv. A worker that
        # died at once breaks the pipe: waiting for its "ready" reports it.
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            proc.stdin.write(self._config)
        return proc

    def _await_ready(self, proc: subprocess.Popen[bytes], signals: _Signals) -> bool:
        """True once ``proc`` serves; False if a signal came first (the server is stopping);
        :class:`ServerStartError` if it exits or stays silent for :data:`READY_TIMEOUT`."""
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        readable = False
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while not readable:
                readable = bool(selector.select(POLL_SECONDS))
                if not readable and signals.count:
                    return False
                if not readable and time.monotonic() > deadline:
                    break
        line = proc.stdout.readline() if readable else b""  # "ready", or b"" once it exited
        proc.stdout.close()
        if line.strip() == b"ready":
            return True
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        raise ServerStartError(f"a server worker did not start (exit code {code}; its log is above)")

    def start_all(self, signals: _Signals) -> bool:
        """Start every worker; True once all serve, False if a signal came first."""
        started = [self._spawn() for _ in range(self._count)]
        return all(self._await_ready(proc, signals) for proc in started)

    def supervise(self, signals: _Signals) -> None:
        """Until a signal: replace workers that die."""
        while signals.count == 0:
            time.sleep(POLL_SECONDS)
            for proc in [p for p in self.procs if p.poll() is not None]:
                if signals.count:
                    return
                self._count_death()
                code = proc.returncode
                log.warning("agl store worker %d exited with code %d: starting another", proc.pid, code)
                self.procs.remove(proc)
                if not self._replace(signals):
                    return

    def _count_death(self) -> None:
        now = time.monotonic()
        self._deaths = [t for t in self._deaths if now - t < 60] + [now]
        if len(self._deaths) > RESTARTS_PER_MINUTE:
            raise ServerStartError(f"server workers keep dying ({len(self._deaths)} in a minute)")

    def _replace(self, signals: _Signals) -> bool:
        """Start a worker in place of a dead one; False if a signal came first. A replacement
        that dies before it serves is one more death (the same limit), not the end of the
        server: only at start-up does a worker that cannot start stop it."""
        while True:
            proc = self._spawn()
            try:
                return self._await_ready(proc, signals)
            except ServerStartError as err:
                self.procs.remove(proc)
                if proc.stdout is not None:
                    proc.stdout.close()
                self._count_death()
                log.warning("%s: starting another", err)

    def stop(self, signals: _Signals, grace: float) -> None:
        """Stop every worker gracefully; on a second signal (before or during the stop) tell
        them to cut what is in flight; kill the ones still there after ``grace`` and a margin."""
        log.warning("agl store server stopping")
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        cut = False
        deadline = time.monotonic() + grace + KILL_AFTER
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            if signals.count >= 2 and not cut:
                cut = True
                for proc in live:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(CUT_SIGNAL)
            time.sleep(POLL_SECONDS)
        for proc in live:
            if proc.poll() is None:
                log.warning("agl store worker %d did not stop: killed", proc.pid)
                proc.kill()
        for proc in self.procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()  # a worker that never said it was ready
