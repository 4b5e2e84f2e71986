"""One worker process of ``agl store --workers N`` (:mod:`store_fs.server.workers`).

Run as ``python -m store_fs.server._worker FD...`` by the parent: the arguments are the
inherited listening sockets, stdin carries the configuration as JSON, and ``ready`` on stdout
says the worker serves. It stops on SIGINT or SIGTERM (a second one cuts requests in flight),
or by itself once its parent is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Sequence

from store_fs.errors import AglError
from store_fs.server.app import StoreServer, log, log_to_stderr, serve
from store_fs.server.http import Limits
from store_fs.store import FileStore


def main(fds: Sequence[int]) -> None:
    config = json.loads(sys.stdin.buffer.read())
    log_to_stderr(config["log_level"])
    sockets = [socket.socket(fileno=fd) for fd in fds]
    options = config["server"]
    try:
        store = FileStore(config["root"], create=False, **config["store"])
    except (AglError, OSError) as err:  # the parent reports that this worker did not start
        log.error("agl store worker %d: cannot open the store: %s", os.getpid(), err)
        raise SystemExit(1) from None
    server = StoreServer(
        store,
        host=options["host"],
        token=options["token"],
        threads=options["threads"],
        limits=Limits(**options["limits"]),
    )
    parent = config["parent"]

    def started() -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        # The parent reads no more: anything printed later goes to the log.
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    asyncio.run(
        serve(
            server,
            config["shutdown_grace"],
            sockets=sockets,
            on_started=started,
            orphaned=lambda: os.getppid() != parent,
        )
    )


if __name__ == "__main__":
    main([int(fd) for fd in sys.argv[1:]])
