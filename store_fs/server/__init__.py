"""HTTP bridge: a FileStore served over Agent-lightning's v1 REST API and OTLP/HTTP traces.

>>> from store_fs import FileStore
>>> from store_fs.server import run_server
>>> run_server(FileStore("runs/exp1"), port=4747)  # doctest: +SKIP

Clients: upstream's ``agentlightning.LightningStoreClient`` or ``store_fs.client.LightningStoreClient``.
Command line: ``agl store`` (see ``agl store --help``). ``Limits`` holds the HTTP layer's
sizes and timeouts; SIGTERM or Ctrl-C stops ``run_server`` gracefully (``shutdown_grace``).
``run_server(..., workers=N)`` serves from ``N`` processes sharing the address
(:mod:`store_fs.server.workers`); ``ServerStartError`` says one could not start.
"""

from __future__ import annotations

from store_fs.server.app import StoreServer, log_to_stderr, run_server
from store_fs.server.http import Limits
from store_fs.server.workers import ServerStartError

__all__ = ["Limits", "ServerStartError", "StoreServer", "log_to_stderr", "run_server"]
