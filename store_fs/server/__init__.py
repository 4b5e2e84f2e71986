"""HTTP bridge: a FileStore served over Agent-lightning's v1 REST API and OTLP/HTTP traces.

>>> from store_fs import FileStore
>>> from store_fs.server import run_server
>>> run_server(FileStore("runs/exp1"), port=4747)  # doctest: +SKIP

Clients: upstream's ``agentlightning.LightningStoreClient`` or ``store_fs.client.LightningStoreClient``.
Command line: ``agl store`` (see ``agl store --help``).
"""

from __future__ import annotations

from store_fs.server.app import StoreServer, run_server

__all__ = ["StoreServer", "run_server"]
