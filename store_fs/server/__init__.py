"""HTTP bridge: a FileStore served over Agent-lightning's v1 REST API and OTLP/HTTP traces.

>>> from store_fs import FileStore
>>> from store_fs.server import run_server
>>> run_server(FileStore("runs/exp1"), port=4747)  # doctest: +SKIP

Clients: upstream's ``agentlightning.LightningStoreClient`` or ``store_fs.client.LightningStoreClient``.
Command line: ``agl store`` (see ``agl store --help``). ``Limits`` holds the HTTP layer's
sizes and timeouts; SIGTERM or Ctrl-C stops ``run_server`` gracefully (``shutdown_grace``).
"""

from __future__ import annotations

from store_fs.server.app import StoreServer, run_server
from store_fs.server.http import Limits

__all__ = ["Limits", "StoreServer", "run_server"]
