"""Helpers for tests/test_server.py: run the store server as a subprocess and talk raw HTTP to it.

The server's stderr (one access-log line per request) goes to a file, never to a pipe
nobody reads, so a chatty server cannot block on a full pipe.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

START_TIMEOUT = 15.0
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """A store server on 127.0.0.1; ``port=0`` lets it pick a free port (read from its log)."""

    def __init__(
        self,
        store: Path,
        log: Path,
        *,
        port: int = 0,
        args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.store = store
        self.log = log
        self.cwd = cwd
        self.port = port
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        # The one server entry point: the installed `agl store` command.
        from cli_helpers import AGL

        return [AGL, "--store", str(self.store), "store", "--port", str(self.port), *self.args]

    def start(self) -> ServerProcess:
        env = dict(os.environ, AGL_STORE=str(self.store), LITELLM_LOCAL_MODEL_COST_MAP="True")
        env.pop("AGL_STORE_TOKEN", None)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(self.command(), stdout=sink, stderr=sink, env=env, cwd=self.cwd)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log.read_bytes()[offset:].decode(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.read_text(errors='replace')[-2000:]}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (like Ctrl-C), then SIGKILL if it lingers; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def raw_request(
    url: str,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, float]:
    """One request on a fresh connection; returns (status, decoded JSON or raw bytes, seconds)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = body.encode() if isinstance(body, str) else body
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    try:
        return response.status, json.loads(raw), elapsed
    except ValueError:
        return response.status, raw, elapsed


def store_snapshot(store: Path) -> dict[str, bytes]:
    """Every file of the store that carries data (queue tokens, records, spans, resources)."""
    skip = ("events", "locks")
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).parts[0] not in skip
    }
