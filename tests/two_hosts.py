"""Two simulated NFS clients ("hosts") of one backing directory, as a pytest fixture.

``two_hosts`` is a fixture factory: ``hosts = two_hosts(attr_timeout=1.0, ...)`` mounts
``tests/nfs_fuse.py`` twice over one fresh backing directory under ``tmp_path`` and
returns a :class:`TwoHosts` with ``hosts.a`` and ``hosts.b`` (mount points, stats) and
``hosts.backing``. Every mount is unmounted (``fusermount3 -u``, lazily if busy) and
every filesystem process is stopped (SIGTERM, then SIGKILL) when the test ends,
passed or failed. Where ``/dev/fuse``, ``fusermount3``/``fusermount``, libfuse or the
``mfusepy`` package is missing, the test is skipped with the reason.

Use it from a test module with ``from two_hosts import two_hosts  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

NFS_FUSE = Path(__file__).with_name("nfs_fuse.py")
STATS_NAME = ".nfs_fuse_stats"


def fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def unavailable_reason() -> str | None:
    """Why two FUSE mounts cannot be made here (None when they can)."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if fusermount() is None:
        return "neither fusermount3 nor fusermount is installed (Debian package fuse3)"
    if not (ctypes.util.find_library("fuse3") or ctypes.util.find_library("fuse")):
        return "libfuse is not installed (Debian package fuse3 / libfuse3-3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the mfusepy package is not installed (pip install -e '.[test]')"
    return None


def _mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.resolve())
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 1)
    except OSError:
        return os.path.ismount(mountpoint)


@dataclass
class Host:
    """One mount of the shared backing directory: a simulated NFS client."""

    name: str
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path
    stats_file: Path
    options: dict[str, Any] = field(default_factory=dict)

    def ops(self) -> dict[str, int]:
        """The filesystem's operation counters right now (read through the mount)."""
        data = json.loads((self.path / STATS_NAME).read_bytes())
        return dict(data["ops"])

    def __str__(self) -> str:
        return str(self.path)


@dataclass
class TwoHosts:
    backing: Path
    a: Host
    b: Host


def ops_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def mount(
    backing: Path,
    mountpoint: Path,
    *,
    name: str,
    attr_timeout: float,
    entry_timeout: float,
    negative_timeout: float,
    latency_ms: float = 0.0,
    extra: tuple[str, ...] = (),
    startup_timeout: float = 15.0,
) -> Host:
    """Start one ``nfs_fuse.py`` process and wait until its mount is live."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.with_name(f"{mountpoint.name}.log")
    stats = mountpoint.with_name(f"{mountpoint.name}.stats.json")
    argv = [
        sys.executable,
        str(NFS_FUSE),
        str(backing),
        str(mountpoint),
        f"--attr-timeout={attr_timeout}",
        f"--entry-timeout={entry_timeout}",
        f"--negative-timeout={negative_timeout}",
        f"--latency-ms={latency_ms}",
        f"--stats={stats}",
        *extra,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    host = Host(
        name,
        mountpoint,
        proc,
        log,
        stats,
        {
            "attr_timeout": attr_timeout,
            "entry_timeout": entry_timeout,
            "negative_timeout": negative_timeout,
            "latency_ms": latency_ms,
        },
    )
    deadline = time.monotonic() + startup_timeout
    while not (_mounted(mountpoint) and (mountpoint / STATS_NAME).exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            unmount(host)
            raise RuntimeError(f"nfs_fuse did not mount {mountpoint}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return host


def unmount(host: Host, timeout: float = 10.0) -> None:
    """Unmount and stop the filesystem process, whatever state it is in."""
    tool = fusermount()
    if tool is not None and _mounted(host.path):
        done = subprocess.run([tool, "-u", str(host.path)], capture_output=True, check=False)
        if done.returncode != 0 and _mounted(host.path):
            subprocess.run([tool, "-u", "-z", str(host.path)], capture_output=True, check=False)
    proc = host.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
    if tool is not None and _mounted(host.path):  # the process died without unmounting
        subprocess.run([tool, "-u", "-z", str(host.path)], capture_output=True, check=False)


@contextlib.contextmanager
def mounted_two_hosts(
    base: Path,
    *,
    attr_timeout: float = 1.0,
    entry_timeout: float = 1.0,
    negative_timeout: float = 1.0,
    latency_ms: float = 0.0,
    latency_ms_b: float | None = None,
    extra: tuple[str, ...] = (),
    trace_dir: Path | None = None,
) -> Iterator[TwoHosts]:
    """Mount host A and host B over ``base/backing``; unmount both however the block ends.

    ``trace_dir``: each host appends a line per request to ``trace_dir/host-<name>.trace``
    (``nfs_fuse.py --trace``)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    backing = base / "backing"
    backing.mkdir(parents=True, exist_ok=True)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    hosts: list[Host] = []

    def traced(name: str) -> tuple[str, ...]:
        return extra if trace_dir is None else (*extra, f"--trace={trace_dir / f'host-{name}.trace'}")

    try:
        for name, latency in (("a", latency_ms), ("b", latency_ms if latency_ms_b is None else latency_ms_b)):
            hosts.append(
                mount(
                    backing,
                    base / f"host-{name}",
                    name=name,
                    attr_timeout=attr_timeout,
                    entry_timeout=entry_timeout,
                    negative_timeout=negative_timeout,
                    latency_ms=latency,
                    extra=traced(name),
                )
            )
        yield TwoHosts(backing, hosts[0], hosts[1])
    finally:
        for host in reversed(hosts):
            unmount(host)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Callable[..., TwoHosts]]:
    """Factory: ``two_hosts(**options)`` mounts a fresh pair of hosts (see :func:`mounted_two_hosts`)."""
    with contextlib.ExitStack() as stack:
        count = [0]

        def make(**options: Any) -> TwoHosts:
            count[0] += 1
            base = tmp_path / f"nfs{count[0]}"
            return stack.enter_context(mounted_two_hosts(base, **options))

        yield make
