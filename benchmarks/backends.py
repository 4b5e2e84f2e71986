"""The stores under comparison, and how each process opens one.

===================  ==============================================================
``fs``               our ``FileStore`` on a local directory, default durability
``fs-fsync``         the same with ``durability="fsync"``
``agl-http``         our ``agl store`` server process, upstream's ``LightningStoreClient``
``agl-own``          our ``agl store`` server process, our ``store_fs.client.LightningStoreClient``
``agl-http-fsync``   ``agl-http`` on a store set to ``durability="fsync"`` (``agl init --durability``)
``up-mem``           upstream's ``InMemoryLightningStore``, in the measuring process
``up-http``          upstream's ``agl store`` server process, upstream's client
===================  ==============================================================

Every measurement gets a fresh :class:`Deployment` (new directory, new server).
A deployment has a *spec*, a string a child process turns back into a store with
:func:`open_spec`, so runners really are separate processes. ``up-mem`` lives in
one process by construction: its "runners" are tasks of the measuring process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# agentlightning imports litellm, which otherwise fetches a price list from the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@dataclass(frozen=True)
class Backend:
    name: str
    label: str
    kind: str  # "fs", "http" or "memory"
    durability: str = "process"
    server: str | None = None  # "ours" or "upstream" for kind == "http"
    client: str = "upstream"  # whose LightningStoreClient talks to the server (kind == "http")
    workers: int = 1  # processes of our server (``agl store --workers``)

    @property
    def multiprocess(self) -> bool:
        return self.kind != "memory"


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("fs", "FileStore, runners as processes", "fs"),
        Backend("fs-fsync", "FileStore, durability=fsync", "fs", durability="fsync"),
        Backend("agl-http", "agl store (ours) + upstream client", "http", server="ours"),
        Backend("agl-own", "agl store (ours) + agl client", "http", server="ours", client="agl"),
        Backend("agl-http-fsync", "agl store on an fsync store + upstream client", "http", "fsync", "ours"),
        Backend("up-mem", "upstream InMemoryLightningStore, one process", "memory"),
        Backend("up-http", "upstream agl store + upstream client", "http", server="upstream"),
    )
}
BASELINE = "up-http"


def peak_rss_kb(pid: int | str = "self") -> int | None:
    """A process's peak resident set (VmHWM), in kilobytes; None if it is gone.

    Not ``getrusage().ru_maxrss``: Linux carries a forked parent's peak across
    ``exec``, so every spawned child would report at least its parent's size.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_workers(backend: Backend, workers: int) -> Backend:
    """``backend`` (one of ours over HTTP) served by ``workers`` server processes, named
    ``<name>-w<workers>``, and registered in :data:`BACKENDS`."""
    assert backend.server == "ours", backend
    variant = dataclasses.replace(backend, name=f"{backend.name}-w{workers}", workers=workers)
    BACKENDS[variant.name] = variant
    return variant


def _server_command(server: str, store_dir: Path, port: int, workers: int = 1) -> list[str]:
    if server == "ours":
        # `agl store` of this environment (creates the store when missing).
        agl = str(Path(sys.executable).parent / "agl")
        return [
            agl, "--store", str(store_dir), "store", "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
        ]  # fmt: skip
    code = "import sys; from agentlightning.cli.store import main; sys.exit(main(sys.argv[1:]))"
    return [
        sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING",
    ]  # fmt: skip


class ServerProcess:
    """A store server on 127.0.0.1, started and stopped by the benchmark."""

    def __init__(self, server: str, store_dir: Path, log: Path, workers: int = 1) -> None:
        self.server = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.started_in = 0.0
        with log.open("ab") as sink:
            start = time.perf_counter()
            self.proc = subprocess.Popen(
                _server_command(server, store_dir, self.port, workers), stdout=sink, stderr=sink, cwd=ROOT
            )
        self._wait_healthy(start)

    def _wait_healthy(self, start: float, timeout: float = 60.0) -> None:
        deadline = start + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/v1/agl/health", timeout=1) as reply:
                    if reply.status == 200:
                        self.started_in = time.perf_counter() - start
                        return
            except OSError:
                time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.server} server did not start: {self.log.read_text()[-1500:]}")

    def peak_rss_kb(self) -> int | None:
        """The live server's peak resident set so far."""
        return peak_rss_kb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Deployment:
    """One fresh store of a backend. ``spec`` is None for the in-process store."""

    def __init__(self, backend: Backend, base: Path) -> None:
        self.backend = backend
        self.dir = Path(tempfile.mkdtemp(prefix=f"{backend.name}-", dir=base))
        self.server: ServerProcess | None = None
        self.memory: Any = None
        if backend.kind == "fs":
            from store_fs import init_store

            init_store(self.dir / "store", durability=backend.durability)
            self.spec: str | None = f"fs:{backend.durability}:{self.dir / 'store'}"
        elif backend.kind == "http":
            assert backend.server is not None
            if backend.durability != "process":
                from store_fs import init_store

                # The store's setting, which `agl store` follows.
                init_store(self.dir / "store", durability=backend.durability)
            self.server = ServerProcess(
                backend.server, self.dir / "store", self.dir / "server.log", backend.workers
            )
            # Both prefixes are 5 characters: workloads.startup strips them by length.
            self.spec = f"{'aglc' if backend.client == 'agl' else 'http'}:{self.server.url}"
        else:
            from agentlightning.store.memory import InMemoryLightningStore

            self.memory = InMemoryLightningStore()
            self.spec = None

    def open(self) -> Any:
        """A store for the measuring process itself."""
        if self.memory is not None:
            return self.memory
        assert self.spec is not None
        return open_spec(self.spec)

    def close(self) -> None:
        """Stop the server; the store stays on disk until the whole run ends (``compare.py``).

        Deleting a store between measurements slowed the next ones: on an ext4 without a
        journal (this VM's), every inode freed in the last 60-300 s is skipped, one cache
        lookup each, by every later file creation (BENCHMARKS.md, "the disk").
        """
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def deployed(backend: Backend, base: Path) -> Iterator[Deployment]:
    deployment = Deployment(backend, base)
    try:
        yield deployment
    finally:
        deployment.close()


def open_spec(spec: str) -> Any:
    """Open the store a spec names, in this process."""
    kind, _, rest = spec.partition(":")
    if kind == "fs":
        from store_fs import FileStore

        durability, _, path = rest.partition(":")
        return FileStore(path, create=False, durability=durability)  # type: ignore[arg-type]
    if kind == "http":
        from agentlightning.store.client_server import LightningStoreClient

        return LightningStoreClient(rest, retry_delays=(0.5, 1.0), health_retry_delays=(0.1, 0.5))
    if kind == "aglc":
        from store_fs.client import LightningStoreClient as AglClient

        return AglClient(rest, retry_delays=(0.5, 1.0))
    raise ValueError(f"unknown store spec {spec!r}")


def span_model(spec: str | None) -> Any:
    """The Span class the store at ``spec`` takes (ours for FileStore and our client, else upstream's)."""
    if spec is not None and spec.startswith(("fs:", "aglc:")):
        from store_fs import Span

        return Span
    from agentlightning.types import Span as UpstreamSpan

    return UpstreamSpan


async def close_store(store: Any) -> None:
    """Release what a store holds (HTTP sessions, file descriptors)."""
    closer = getattr(store, "close", None)
    if closer is None:
        return
    result = closer()
    if hasattr(result, "__await__"):
        await result
