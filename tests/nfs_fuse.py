"""A FUSE filesystem that behaves like one NFS client of a shared server, for tests.

    python tests/nfs_fuse.py BACKING MOUNTPOINT [--attr-timeout S] [--entry-timeout S]
        [--negative-timeout S] [--latency-ms MS] [--stats FILE] [--stats-interval S]
        [--direct-io] [--no-readdir-cache] [--trace FILE]

Every operation is passed through to the directory BACKING (the "server"). Mount the
same BACKING twice, from two processes on two mount points, and you have two "hosts":
each mount has its own kernel caches, so each sees the other's changes only as late as
an NFS client would. Rename, link, exclusive create, mkdir and unlink are executed by the
backing filesystem, so they stay atomic across the two mounts, as on an NFS server.

Cache semantics (each mount; timeouts in seconds, 0 disables that cache):

* ``--attr-timeout`` (NFS ``acregmin``/``acdirmin``): ``stat``/``fstat`` results, file
  sizes and directory mtimes are served from the kernel for that long.
* ``--entry-timeout``: a name that was found keeps resolving to the same file for that
  long, even after the other host renamed or removed it (NFS dentry revalidation).
* ``--negative-timeout`` (NFS ``lookupcache=all``): a name that was not found stays
  "not found" for that long, even after the other host created it. Creating the name
  through this mount (``O_EXCL`` create, ``link``, rename onto it) always asks the
  backing directory, as the kernel revalidates before an exclusive create.
* Directory listings are cached by this mount (the daemon keeps them, as libfuse's
  high-level API cannot hand ``cache_readdir`` to the kernel) for ``--attr-timeout``;
  after that the directory is revalidated (a ``getattr`` round trip) and re-listed only
  if its mtime, ctime, size or link count changed (NFS readdir cache, revalidated with
  the directory's attributes after ``acdirmin``). A directory changed less than 0.1 s
  before it was listed is always re-listed then (mtime ticks are coarse). A namespace
  operation through this mount (create, link, rename, unlink, mkdir, ...), successful
  or not, drops this mount's listings of the directories it touched, as an NFS reply
  carries the directory's new attributes; so does a lookup of a name in the directory
  that reaches the backing directory (not one answered from the kernel's caches).
  ``--no-readdir-cache`` lists afresh every time.
* File data (close-to-open, as NFS ``cto``): no ``kernel_cache``/``auto_cache``, so the
  page cache of a file is dropped at every ``open``, and the file's cached attributes are
  invalidated then too (``fuse_invalidate_path``), so ``open`` + ``fstat`` + ``read``
  sees the size and bytes the backing file has at that moment. A file descriptor kept
  open may keep serving pages cached before the other host wrote (as on NFS).
  ``--direct-io`` bypasses the page cache for every read and write instead (stronger
  than NFS: even a long-lived descriptor reads fresh bytes).
* Writes go through to the backing file at once (``write(2)`` returns after the
  server has the bytes), which is *stronger* than NFS, where data written without
  ``close``/``fsync`` may stay in the writer's page cache for up to ~30 s.
* ``O_APPEND`` is emulated by the kernel from its cached file size and the bytes are
  written at that offset (the backing file is not opened with ``O_APPEND``), as an NFS
  client does: two hosts appending to one file overwrite each other's lines.
* ``renameat2`` flags (``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``) fail with ``EINVAL``,
  as on the Linux NFS client.
* Unlinking or renaming over a file that is open through this mount renames it to
  ``.fuse_hiddenNNN`` first (libfuse's default, like NFS "silly rename"): between the
  two renames the name does not exist.
* inotify on a mount sees only changes made through that mount, never the other
  host's (true of FUSE, as of NFS). ``flock``/``fcntl`` locks are not forwarded, so
  they do not exclude the other mount (like NFS mounted ``local_lock``).

Injected latency (``--latency-ms``) is slept in the handler of every request the kernel
sends (lookup, getattr, readdir, open, create, read, write, rename, link, unlink, mkdir,
fsync, ...; not release, flush, access), concurrently across requests: like an NFS
round trip per RPC.

``--trace FILE`` appends one line per counted request, ``<time> <kind> <path> [<second path>]``
(a rename's or link's new name): what a piece of work asks the server, in order
(``benchmarks/bench_nfs.py --trace DIR``).

Counters of requests that reached the filesystem, by kind, are available two ways:

* ``MOUNTPOINT/.nfs_fuse_stats``: a virtual file (not listed, not counted) whose content
  is the JSON counters at the moment it is read: read it before and after a piece of
  work and subtract.
* ``--stats FILE``: the same JSON written (atomically) every ``--stats-interval``
  seconds (default 1) while something changed, at once on ``SIGUSR1``, and at unmount.

Counter names: ``lookup`` (a path resolved or revalidated: the high-level libfuse API
does not tell a kernel LOOKUP from a GETATTR of a path, so both count here),
``getattr`` (``fstat`` of an open file), ``readdir``, ``opendir``, ``open``, ``create``,
``read``, ``write``, ``rename``, ``link``, ``unlink``, ``fsync``, ``mkdir``, ``rmdir``,
``symlink``, ``readlink``, ``truncate``, ``utimens``, ``chmod``, ``statfs``, ``flush``,
``release``. A create, mkdir, link, symlink or mknod counts once: the getattr libfuse's
high-level API then makes to fill the reply with the new name's attributes is part of that
request (an NFS reply carries the attributes) and is neither counted nor delayed.

``utimensat`` with ``UTIME_NOW`` sets the current time. The pass-through mechanism, the
counters and the virtual file are shared with ``tests/crash_fuse.py`` (``tests/fuse_base.py``).

Stop it with SIGTERM or SIGINT (it unmounts), or ``fusermount3 -u MOUNTPOINT``.
Needs ``/dev/fuse``, the Debian package ``fuse3`` (libfuse3 and ``fusermount3``) and
the PyPI package ``mfusepy``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from typing import Any

import mfusepy
from fuse_base import PassthroughFS, Stats, serve

STATS_NAME = "/.nfs_fuse_stats"

mfusepy._libfuse.fuse_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
mfusepy._libfuse.fuse_invalidate_path.restype = ctypes.c_int

COUNTERS = (
    "lookup",
    "getattr",
    "readdir",
    "opendir",
    "open",
    "create",
    "read",
    "write",
    "rename",
    "link",
    "unlink",
    "fsync",
    "mkdir",
    "rmdir",
    "symlink",
    "readlink",
    "truncate",
    "utimens",
    "chmod",
    "statfs",
    "flush",
    "release",
)
# Requests that would be a round trip to an NFS server: these sleep --latency-ms.
_NO_LATENCY = frozenset({"flush", "release", "opendir"})


def _dir_signature(st: os.stat_result) -> tuple[int, ...]:
    # mtime alone misses two changes within one tick of the kernel's coarse clock; a
    # directory changed less than 0.1 s ago is never trusted (the listing is re-read).
    if time.time_ns() - st.st_mtime_ns < 100_000_000:
        return (-1,)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)


def _invalidate(path: str) -> None:
    """Drop this mount's cached attributes (and pages) of ``path``: close-to-open."""
    ctx = mfusepy._libfuse.fuse_get_context()
    if not ctx:
        return
    fuse_ptr = ctypes.c_void_p(ctx.contents.fuse)
    # -ENOENT when the kernel holds no node for the path: nothing to invalidate.
    mfusepy._libfuse.fuse_invalidate_path(fuse_ptr, path.encode("utf-8", "surrogateescape"))


class NfsLikeFS(PassthroughFS):
    """Pass-through to ``backing``; see the module docstring for the cache semantics."""

    control_name = STATS_NAME

    def __init__(self, backing: str, stats: Stats, args: argparse.Namespace) -> None:
        super().__init__(backing, stats)
        self.latency = args.latency_ms / 1000.0
        self.args = args
        # The readdir cache of this "host": path -> (listing, fetched at, directory signature).
        self.dir_ttl = args.attr_timeout if args.readdir_cache else 0.0
        self.dir_cache: dict[str, tuple[list[Any], float, tuple[int, ...]]] = {}
        self.dir_lock = threading.Lock()

    # -- hooks -------------------------------------------------------------------------
    def _op(self, name: str, path: str | None = None, other: str = "") -> None:
        super()._op(name, path, other)
        if self.latency and name not in _NO_LATENCY:
            time.sleep(self.latency)

    def configure(self, config: Any) -> None:
        super().configure(config)
        a = self.args
        config.attr_timeout = a.attr_timeout
        config.entry_timeout = a.entry_timeout
        config.negative_timeout = a.negative_timeout
        config.kernel_cache = 0  # the page cache is dropped at every open (close-to-open)
        config.auto_cache = 0
        config.direct_io = 1 if a.direct_io else 0
        config.hard_remove = 0  # hide open files on unlink, like NFS silly rename
        config.nullpath_ok = 0

    def _opened(self, path: str, fi: Any) -> None:
        if self.args.direct_io:
            fi.direct_io = 1

    def _changed(self, *paths: str) -> None:
        """A change made through this mount: its own cached listings of the parents go."""
        if self.dir_ttl > 0:
            with self.dir_lock:
                for path in paths:
                    self.dir_cache.pop(os.path.dirname(path) or "/", None)

    # -- requests with NFS caching ---------------------------------------------------------
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        if path == self.control_name or fh is not None or path is None:
            return super().getattr(path, fh)
        try:
            return super().getattr(path, fh)
        finally:
            self._revalidate_parent(path)

    def open(self, path: str, fi: Any) -> int:
        super().open(path, fi)
        if path != self.control_name:
            _invalidate(path)
        return 0

    def readdir(self, path: str, fh: int) -> list[Any]:
        full = self._full(path)
        now = time.monotonic()
        if self.dir_ttl > 0:
            with self.dir_lock:
                cached = self.dir_cache.get(path)
            if cached is not None:
                kept, fetched, kept_signature = cached
                if now - fetched < self.dir_ttl:
                    return kept  # served from this host's cache: no round trip
                self._op("getattr", path)  # revalidate: has the directory changed?
                if _dir_signature(os.stat(full)) == kept_signature:
                    with self.dir_lock:
                        self.dir_cache[path] = (kept, now, kept_signature)
                    return kept
        self._op("readdir", path)
        signature = _dir_signature(os.stat(full))
        listing = self.list_dir(path)
        if self.dir_ttl > 0:
            with self.dir_lock:
                self.dir_cache[path] = (listing, now, signature)
        return listing

    def _revalidate_parent(self, path: str) -> None:
        """A lookup reply carries the directory's attributes (NFSv3 LOOKUP): a cached listing
        of the parent that they show to be out of date is dropped."""
        if self.dir_ttl <= 0:
            return
        parent = os.path.dirname(path) or "/"
        with self.dir_lock:
            cached = self.dir_cache.get(parent)
        if cached is None:
            return
        try:
            fresh = _dir_signature(os.stat(self._full(parent)))
        except OSError:
            fresh = (-2,)
        if fresh != cached[2]:
            with self.dir_lock:
                if self.dir_cache.get(parent) is cached:
                    del self.dir_cache[parent]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--attr-timeout", type=float, default=1.0)
    parser.add_argument("--entry-timeout", type=float, default=1.0)
    parser.add_argument("--negative-timeout", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stats", default=None, help="write JSON counters here")
    parser.add_argument("--stats-interval", type=float, default=1.0)
    parser.add_argument("--direct-io", action="store_true", help="no page cache at all")
    parser.add_argument(
        "--no-readdir-cache", dest="readdir_cache", action="store_false", help="list afresh at every opendir"
    )
    parser.add_argument("--debug", action="store_true", help="libfuse debug output")
    parser.add_argument(
        "--trace", default=None, help="append '<time> <request> <path> [<second path>]' per counted request"
    )
    args = parser.parse_args(argv)

    if not os.path.isdir(args.backing):
        parser.error(f"backing directory {args.backing} does not exist")
    options = {
        "attr_timeout": args.attr_timeout,
        "entry_timeout": args.entry_timeout,
        "negative_timeout": args.negative_timeout,
        "latency_ms": args.latency_ms,
        "direct_io": args.direct_io,
        "readdir_cache": args.readdir_cache,
    }
    meta = {"mountpoint": os.path.abspath(args.mountpoint), "backing": os.path.abspath(args.backing)}
    stats = Stats(COUNTERS, {**meta, **options})
    fs = NfsLikeFS(args.backing, stats, args)
    if args.trace:
        fs.trace = open(args.trace, "a", buffering=1)  # noqa: SIM115  (open while mounted)
    serve(
        fs,
        args.mountpoint,
        tag="nfs_fuse",
        stats_path=args.stats,
        stats_interval=args.stats_interval,
        debug=args.debug,
        source=args.backing,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
