"""One worker process of ``agl store --workers N`` (:mod:`store_fs.server.workers`).

Started by the parent's bootstrap (``workers.BOOTSTRAP``, run by ``python -P -c``), which
first starts a thread that exits the process if the parent dies before the worker serves, then
calls :func:`main`. Its arguments are the parent's process id and the inherited listening
sockets; stdin carries the configuration as JSON, and ``ready`` on stdout says the worker
serves. SIGINT and SIGTERM stop it gracefully, ``CUT_SIGNAL`` (SIGUSR1) cuts the requests still
in flight, and once serving it stops gracefully by itself when its parent is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
from collections.abc import Sequence

from store_fs.server.app import StoreServer, log, log_to_stderr, serve
from store_fs.server.http import Limits
from store_fs.server.workers import CUT_SIGNAL
from store_fs.store import FileStore


def main(parent: int, fds: Sequence[int], serving: threading.Event) -> None:
    """Serve on the sockets ``fds``; set ``serving`` once serving (the bootstrap's orphan
    check then leaves the stop to :func:`~store_fs.server.app.serve`)."""
    config = json.loads(sys.stdin.buffer.read())
    log_to_stderr(config["log_level"])
    sockets = [socket.socket(fileno=fd) for fd in fds]
    options = config["server"]
    try:
        store = FileStore(config["root"], create=False, **config["store"])
        server = StoreServer(
            store,
            host=options["host"],
            token=options["token"],
            threads=options["threads"],
            limits=Limits(**options["limits"]),
        )
    except Exception as err:  # the parent reports that this worker did not start
        log.error("agl store worker %d cannot start: %s", os.getpid(), err)
        raise SystemExit(1) from None

    def on_started() -> None:
        try:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the parent is gone: serve() notices and stops
            pass
        # The parent reads no more: anything printed later goes to the log.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        serving.set()

    asyncio.run(
        serve(
            server,
            config["shutdown_grace"],
            sockets=sockets,
            on_started=on_started,
            orphaned=lambda: os.getppid() != parent,
            cut_signal=CUT_SIGNAL,
        )
    )
