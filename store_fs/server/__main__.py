"""``python -m store_fs.server --store DIR [--host H] [--port P] [--token T] [--threads N]``: serve a store.

Logs (one line per request at INFO, warnings always) go to stderr. The first warning
line names the bound address, so ``--port 0`` callers can learn the port.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from store_fs.errors import AglError
from store_fs.server.app import run_server
from store_fs.store import FileStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store_fs.server", description=__doc__)
    parser.add_argument("--store", default=os.environ.get("AGL_STORE"), help="store directory (AGL_STORE)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4747, help="0 picks a free port")
    parser.add_argument("--token", default=os.environ.get("AGL_STORE_TOKEN"), help="bearer token")
    parser.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument(
        "--threads", type=int, default=None, help="store calls served at once (default: 2 per CPU, 4 to 8)"
    )
    parser.add_argument("--create", action="store_true", help="create the store if missing")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if not args.store:
        parser.error("--store (or AGL_STORE) is required")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = FileStore(args.store, create=args.create)
        run_server(
            store,
            host=args.host,
            port=args.port,
            token=args.token or None,
            max_body_bytes=args.max_body_bytes,
            threads=args.threads,
        )
    except (AglError, OSError) as err:
        sys.stderr.write(f"agl store: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
