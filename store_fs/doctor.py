"""``agl doctor``: is the filesystem under a store fit for it, and what to change.

Each check tries the real thing in a scratch directory (``locks/doctor-<host>-<pid>/``, removed
afterwards) rather than trusting the filesystem's name: an exclusive create must refuse a second
creator, ``link(2)`` must refuse an existing name, ``rename(2)`` must replace atomically and report
a vanished source. It also reads the mount (type and options, from ``/proc/mounts``), measures this
host's clock against the file server's, says how waits will learn of changes (inotify or
polling) and what the store's durability setting protects against on this mount. docs/nfs.md
explains the advice.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from store_fs._disk import fsio
from store_fs._disk.context import Context
from store_fs._disk.format_file import read_format
from store_fs._disk.layout import Layout
from store_fs._disk.server_clock import server_offset
from store_fs._disk.watch import is_network_fs, resolve_mode
from store_fs.clock import SystemClock
from store_fs.errors import AglError, StoreNotFoundError

__all__ = ["Finding", "Level", "MountInfo", "diagnose", "mount_of"]

Level = Literal["ok", "warn", "fail"]

# NFS mount options worth a word, with the advice docs/nfs.md gives.
_NFS_ADVICE = {
    "soft": "use 'hard': a soft mount can fail a write that reached the server",
    "lookupcache=all": "prefer 'lookupcache=positive': cached misses delay new rollouts and revisions",
}
_SLOW_CACHE_SECONDS = 5.0
# Filesystems in memory: nothing on them outlives a reboot, whatever is fsynced.
_VOLATILE = frozenset({"tmpfs", "ramfs"})
# Mount options that let a disk keep "synced" writes in its volatile cache.
_NO_BARRIER = ("nobarrier", "barrier=0")


@dataclass(frozen=True)
class Finding:
    """One check: its name, how it went, and what to do about it (empty when nothing)."""

    check: str
    level: Level
    message: str
    advice: str = ""


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fstype: str
    options: tuple[str, ...]


def mount_of(path: Path, mounts: Path = Path("/proc/mounts")) -> MountInfo | None:
    """The mount that holds ``path`` (the longest mount point above it)."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best: MountInfo | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best.mount_point)):
            best = MountInfo(point, fields[2], tuple(fields[3].split(",")))
    return best


def _mount_findings(root: Path) -> list[Finding]:
    info = mount_of(root)
    if info is None:
        return [Finding("mount", "warn", "cannot read /proc/mounts: mount type unknown")]
    network = is_network_fs(root)
    kind = "a network filesystem" if network else "a local filesystem"
    out = [Finding("mount", "ok", f"{info.fstype} mounted at {info.mount_point} ({kind})")]
    if info.fstype.startswith("nfs"):
        out.extend(_nfs_option_findings(info.options))
    return out


def _nfs_option_findings(options: tuple[str, ...]) -> list[Finding]:
    out = [
        Finding("nfs options", "warn", f"mounted with {option}", advice)
        for option, advice in _NFS_ADVICE.items()
        if option in options
    ]
    if "noac" in options:
        return out
    for option in options:
        name, _, value = option.partition("=")
        if name in ("acregmax", "acdirmax", "actimeo") and value.isdigit():
            seconds = int(value)
            if seconds > _SLOW_CACHE_SECONDS:
                out.append(
                    Finding(
                        "nfs options",
                        "warn",
                        f"{option}: another host's changes may be seen up to {seconds} s late",
                        "mount with actimeo=1 (docs/nfs.md)",
                    )
                )
    return out


def _exclusive_create(scratch: Path) -> Finding:
    target = scratch / "exclusive"
    first = fsio.create_exclusive(target, b"first\n")
    second = fsio.create_exclusive(target, b"second\n")
    if first and not second and fsio.read_bytes(target) == b"first\n":
        return Finding("exclusive create", "ok", "a second creator of a name is refused")
    return Finding(
        "exclusive create", "fail", "a name could be created twice", "this filesystem cannot hold a store"
    )


def _hard_link(scratch: Path) -> Finding:
    source, target = scratch / "link-source", scratch / "link-target"
    source.write_bytes(b"x\n")
    os.link(source, target)
    try:
        os.link(source, target)
    except FileExistsError:
        return Finding("link", "ok", "link(2) refuses an existing name (record revisions rely on it)")
    return Finding("link", "fail", "link(2) replaced an existing name", "this filesystem cannot hold a store")


def _rename(scratch: Path) -> Finding:
    source, target = scratch / "rename-source", scratch / "rename-target"
    source.write_bytes(b"new\n")
    target.write_bytes(b"old\n")
    os.rename(source, target)
    replaced = target.read_bytes() == b"new\n" and not source.exists()
    vanished = not fsio.move(scratch / "no-such-token", scratch / "claimed-token")
    if replaced and vanished:
        return Finding("rename", "ok", "rename(2) replaces atomically and reports a vanished source")
    return Finding("rename", "fail", "rename(2) does not behave as claims need", "use another filesystem")


def _clock(ctx: Context) -> Finding:
    offset = server_offset(ctx)
    text = (
        f"this host's clock is {abs(offset):.3f} s {'behind' if offset > 0 else 'ahead of'} the file server's"
    )
    if abs(offset) < 1.0:
        return Finding("clock", "ok", text)
    return Finding(
        "clock",
        "warn",
        text,
        "agl judges ages on the server's clock, so this is safe; sync clocks (NTP) for readable times",
    )


def _watch(root: Path) -> Finding:
    mode = resolve_mode("auto", root)
    if mode == "poll":
        return Finding("wake-ups", "ok", "waits poll events/ (inotify cannot see other hosts' writes here)")
    return Finding(
        "wake-ups",
        "ok",
        "waits use inotify",
        "if other machines write this store through another mount, set AGL_WATCH=poll",
    )


def _durability(layout: Layout, info: MountInfo | None) -> Finding | None:
    """What the store's durability setting (docs/format.md, "Durability") protects against on
    this mount; None for a directory that holds no store yet."""
    try:
        setting = read_format(layout).durability
    except StoreNotFoundError:
        return None
    except AglError as err:
        return Finding("durability", "fail", str(err))
    if info is not None and info.fstype in _VOLATILE:
        return Finding(
            "durability",
            "warn",
            f"{setting}, but the store is in memory ({info.fstype}): a reboot or power cut loses all of it",
            "keep a store you cannot lose on a disk",
        )
    if setting == "process":
        return Finding(
            "durability",
            "ok",
            "process: survives kill -9 of any process; a power cut can lose the last writes",
            f"to survive power loss too: agl init --durability fsync {shlex.quote(str(layout.root))}"
            " (writes then wait for the disk)",
        )
    unsafe = [option for option in _NO_BARRIER if info is not None and option in info.options]
    if unsafe:
        return Finding(
            "durability",
            "warn",
            f"fsync, but mounted with {unsafe[0]}: the disk may keep synced writes in its volatile cache",
            "remount with write barriers for fsync to survive power loss",
        )
    return Finding(
        "durability",
        "ok",
        "fsync: records, queue changes, index lines and spans are on disk when their call returns"
        " (survives power loss; heartbeats and events are not synced)",
    )


def _space(root: Path) -> Finding:
    stats = os.statvfs(root)
    free_bytes = stats.f_bavail * stats.f_frsize
    free_inodes = stats.f_favail
    text = f"{free_bytes / 2**30:.1f} GiB and {free_inodes:,} inodes free"
    if free_bytes < 2**30 or (stats.f_files and free_inodes < 100_000):
        return Finding("space", "warn", text, "a long run keeps every span: free some room or prune")
    return Finding("space", "ok", text)


def diagnose(root: str | Path) -> list[Finding]:
    """Every check on the filesystem under the store at ``root``; :class:`StoreNotFoundError`
    when ``root`` is not a directory."""
    root = Path(root)
    if not root.is_dir():
        raise StoreNotFoundError(str(root))
    layout = Layout(root)
    ctx = Context(layout, SystemClock())
    base = layout.locks if layout.locks.is_dir() else root
    scratch = base / f"doctor-{ctx.writer}-{time.monotonic_ns()}"
    findings = _mount_findings(root)
    scratch.mkdir()
    try:
        for check in (_exclusive_create, _hard_link, _rename):
            try:
                findings.append(check(scratch))
            except OSError as err:
                findings.append(Finding(check.__name__.strip("_").replace("_", " "), "fail", str(err)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    findings.append(_clock(ctx))
    findings.append(_watch(root))
    durability = _durability(layout, mount_of(root))
    if durability is not None:
        findings.append(durability)
    findings.append(_space(root))
    return findings
