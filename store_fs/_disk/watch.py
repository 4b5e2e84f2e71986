"""Waking up when the store changes, with watchfiles.

Events are hints: callers re-read the tree after every wake-up. Writers append
one line to ``events/<writer>.jsonl`` on every rollout status change, so waiters
watch that one small directory (not the whole tree, which would exhaust inotify
watches on big stores).

inotify cannot see changes made by other NFS clients, so on network
filesystems (detected from ``/proc/mounts``) watchfiles polls instead; the
``AGL_WATCH`` environment variable (``auto``, ``inotify`` or ``poll``) or the
``watch_mode`` store setting overrides the choice. Each feed is one inotify
instance, and the kernel allows a user 128 of them (``fs.inotify.max_user_instances``)
across all its processes: a feed that cannot have one polls instead, so a server
with hundreds of waiters serves them all, a little later.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Literal

__all__ = ["ChangeFeed", "WatchMode", "is_network_fs", "resolve_mode"]

log = logging.getLogger(__name__)

WatchMode = Literal["auto", "inotify", "poll"]

_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs", "afs"}
_NETWORK_FUSE = ("fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone")

POLL_DELAY_MS = 250


def _mount_fstype(path: Path, mounts_file: Path) -> str | None:
    try:
        with open(mounts_file) as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    target = str(path.resolve())
    best: tuple[int, str] | None = None
    for fields in mounts:
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fields[2])
    return best[1] if best else None


def is_network_fs(path: Path, mounts: Path = Path("/proc/mounts")) -> bool:
    """Whether ``path`` lives on a filesystem where inotify misses other machines' changes.

    ``AGL_NETWORK_FS=1`` (or ``0``) overrides the guess from the mount table, for network
    filesystems it does not know.
    """
    forced = os.environ.get("AGL_NETWORK_FS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    fstype = _mount_fstype(path, mounts) or ""
    return fstype in _NETWORK_FS or fstype.startswith(_NETWORK_FUSE)


def resolve_mode(mode: WatchMode, path: Path) -> Literal["inotify", "poll"]:
    """``AGL_WATCH`` overrides ``mode``; ``auto`` polls on network filesystems only."""
    chosen = os.environ.get("AGL_WATCH", mode)
    if chosen == "poll":
        return "poll"
    if chosen == "inotify":
        return "inotify"
    return "poll" if is_network_fs(path) else "inotify"


class ChangeFeed:
    """Wake-ups for changes under one directory; usable as ``async with``.

    The watcher starts before :meth:`__aenter__` returns, so a change made after
    that is never missed. :meth:`next` returns at the latest after ``tick``
    seconds so callers can check their deadline.
    """

    def __init__(self, directory: Path, mode: Literal["inotify", "poll"], tick: float = 0.25) -> None:
        self._directory = directory
        self._mode = mode
        self._tick = tick
        self._stop = asyncio.Event()
        self._gen: AsyncGenerator[set[tuple[Any, str]], None] | None = None
        self._task: asyncio.Future[set[tuple[Any, str]]] | None = None

    async def __aenter__(self) -> ChangeFeed:
        await self._start()
        task = self._task
        err = task.exception() if task is not None and task.done() and not task.cancelled() else None
        if isinstance(err, RuntimeError) and self._mode == "inotify":  # no inotify instance left
            _warn_polling(self._directory, err)
            await self._close_generator()
            self._mode = "poll"
            await self._start()
        return self

    async def _start(self) -> None:
        import watchfiles  # imported lazily: only waiters need it

        self._stop = asyncio.Event()
        self._gen = watchfiles.awatch(
            self._directory,
            stop_event=self._stop,
            # watchfiles' Rust side polls its event buffer every ``step`` ms and yields once a
            # step passes with no new event: step=1 wakes a waiter ~3.6 ms after a completion
            # (6.5 ms with step=2; benchmarks/compare.py, "wait wake-up"), for about a
            # thousand cheap wake-ups a second while someone waits.
            step=1,
            debounce=50,
            rust_timeout=max(int(self._tick * 1000), 1),
            yield_on_timeout=True,
            force_polling=self._mode == "poll",
            poll_delay_ms=POLL_DELAY_MS,
            recursive=False,
            watch_filter=None,
        )
        self._task = asyncio.ensure_future(self._gen.__anext__())
        # Let the generator run up to its first wait: the watcher exists from then on (or its
        # creation failed: the task holds the error).
        for _ in range(3):
            await asyncio.sleep(0)

    async def next(self, timeout: float | None = None) -> bool:
        """Wait one tick, until a change, or at most ``timeout`` seconds; True if something changed.

        A wait cut short by ``timeout`` leaves the watcher running: the next call picks up
        where it stopped, so no change is missed. A watcher that failed because its directory
        is gone (the store removed or moved away) makes every call wait one tick and say True:
        the caller's next look finds out what happened (a follower: the store is gone).
        """
        assert self._gen is not None
        assert self._task is not None
        try:
            if timeout is None:
                changes = await asyncio.shield(self._task)
            else:
                changes = await asyncio.wait_for(asyncio.shield(self._task), max(timeout, 0.0))
        except (StopAsyncIteration, TimeoutError):
            return False
        except OSError:  # after TimeoutError, which is one too
            await asyncio.sleep(self._tick if timeout is None else min(max(timeout, 0.0), self._tick))
            return True
        self._task = asyncio.ensure_future(self._gen.__anext__())
        return bool(changes)

    async def __aexit__(self, *exc: object) -> None:
        await self._close_generator()

    async def _close_generator(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await self._task
            except (StopAsyncIteration, asyncio.CancelledError, RuntimeError, OSError):
                # RuntimeError: the watcher could not be made; OSError: its directory is gone
                # (said by next(); an error here would hide the one the caller is raising).
                pass
        if self._gen is not None:
            await self._gen.aclose()


_warned: set[Path] = set()


def _warn_polling(directory: Path, err: BaseException) -> None:
    """Say once per directory and process that its feeds poll for want of inotify instances."""
    if directory not in _warned:
        _warned.add(directory)
        log.warning(
            "cannot watch %s with inotify (%s): polling it every %d ms instead "
            "(raise fs.inotify.max_user_instances to have more)",
            directory,
            err,
            POLL_DELAY_MS,
        )
