"""A FUSE filesystem that behaves like one NFS client of a shared server, for tests.

    python tests/nfs_fuse.py BACKING MOUNTPOINT [--attr-timeout S] [--entry-timeout S]
        [--negative-timeout S] [--latency-ms MS] [--stats FILE] [--stats-interval S]
        [--direct-io] [--no-readdir-cache]

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
``release``.

Stop it with SIGTERM or SIGINT (it unmounts), or ``fusermount3 -u MOUNTPOINT``.
Needs ``/dev/fuse``, the Debian package ``fuse3`` (libfuse3 and ``fusermount3``) and
the PyPI package ``mfusepy``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import signal
import stat
import sys
import threading
import time
from typing import Any

import mfusepy

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

_STAT_KEYS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_blocks",
    "st_blksize",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
)


def _stat_dict(st: os.stat_result) -> dict[str, Any]:
    out = {k: getattr(st, k) for k in _STAT_KEYS}
    # mfusepy (use_ns) takes nanoseconds under the plain names.
    out["st_atime"] = out.pop("st_atime_ns")
    out["st_mtime"] = out.pop("st_mtime_ns")
    out["st_ctime"] = out.pop("st_ctime_ns")
    return out


def _dir_signature(st: os.stat_result) -> tuple[int, ...]:
    # mtime alone misses two changes within one tick of the kernel's coarse clock; a
    # directory changed less than 0.1 s ago is never trusted (the listing is re-read).
    if time.time_ns() - st.st_mtime_ns < 100_000_000:
        return (-1,)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)


class Stats:
    def __init__(self, mountpoint: str, backing: str, options: dict[str, Any]) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.lock = threading.Lock()
        self.version = 0
        self.meta = {"mountpoint": mountpoint, "backing": backing, "pid": os.getpid(), **options}
        self.started = time.time()

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1
            self.version += 1

    def snapshot(self) -> bytes:
        with self.lock:
            counts = dict(self.counts)
        body = {**self.meta, "time": time.time(), "uptime": time.time() - self.started, "ops": counts}
        body["total"] = sum(counts.values())
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    def write(self, path: str) -> None:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(self.snapshot())
        os.replace(tmp, path)


def _invalidate(path: str) -> None:
    """Drop this mount's cached attributes (and pages) of ``path``: close-to-open."""
    ctx = mfusepy._libfuse.fuse_get_context()
    if not ctx:
        return
    fuse_ptr = ctypes.c_void_p(ctx.contents.fuse)
    # -ENOENT when the kernel holds no node for the path: nothing to invalidate.
    mfusepy._libfuse.fuse_invalidate_path(fuse_ptr, path.encode("utf-8", "surrogateescape"))


class NfsLikeFS(mfusepy.Operations):
    """Pass-through to ``backing``; see the module docstring for the cache semantics."""

    use_ns = True

    def __init__(self, backing: str, stats: Stats, args: argparse.Namespace) -> None:
        self.root = os.path.realpath(backing)
        self.stats = stats
        self.latency = args.latency_ms / 1000.0
        self.args = args
        # The readdir cache of this "host": path -> (listing, fetched at, directory signature).
        self.dir_ttl = args.attr_timeout if args.readdir_cache else 0.0
        self.dir_cache: dict[str, tuple[list[Any], float, tuple[int, ...]]] = {}
        self.dir_lock = threading.Lock()
        # Open handles of the virtual stats file: handle -> the snapshot it reads.
        self.snapshots: dict[int, bytes] = {}
        self.snap_serial = 0
        self.snap_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------
    def _op(self, name: str) -> None:
        self.stats.add(name)
        if self.latency and name not in _NO_LATENCY:
            time.sleep(self.latency)

    def _full(self, path: str) -> str:
        return self.root + path

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is None:
            return
        a = self.args
        config.attr_timeout = a.attr_timeout
        config.entry_timeout = a.entry_timeout
        config.negative_timeout = a.negative_timeout
        config.use_ino = 1  # st_ino of the backing files: hard links are recognisable (samefile)
        config.readdir_ino = 1
        config.kernel_cache = 0  # the page cache is dropped at every open (close-to-open)
        config.auto_cache = 0
        config.direct_io = 1 if a.direct_io else 0
        config.hard_remove = 0  # hide open files on unlink, like NFS silly rename
        config.nullpath_ok = 0

    # -- attributes ----------------------------------------------------------------
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        if path == STATS_NAME:
            now = time.time_ns()
            return {
                "st_mode": stat.S_IFREG | 0o444,
                "st_nlink": 1,
                "st_size": 1 << 20,
                "st_atime": now,
                "st_mtime": now,
                "st_ctime": now,
            }
        if fh is not None:
            self._op("getattr")
            return _stat_dict(os.fstat(fh.fh if hasattr(fh, "fh") else fh))
        self._op("lookup")
        try:
            return _stat_dict(os.lstat(self._full(path)))
        finally:
            self._revalidate_parent(path)

    def chmod(self, path: str, mode: int) -> int:
        self._op("chmod")
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._op("chmod")
        os.lchown(self._full(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self._op("utimens")
        if times is None:
            os.utime(self._full(path), follow_symlinks=False)
        else:
            os.utime(self._full(path), ns=times, follow_symlinks=False)
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._op("truncate")
        if fh is not None:
            os.ftruncate(fh.fh if hasattr(fh, "fh") else fh, length)
        else:
            os.truncate(self._full(path), length)
        return 0

    def access(self, path: str, amode: int) -> int:
        if path != STATS_NAME and not os.access(self._full(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        self._op("statfs")
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        out = {k: getattr(st, k) for k in keys}
        out.update(f_flag=st.f_flag, f_frsize=st.f_frsize, f_namemax=st.f_namemax)
        return out

    # -- namespace -----------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        self._op("mkdir")
        try:
            os.mkdir(self._full(path), mode)
        finally:
            self._changed(path)
        return 0

    def rmdir(self, path: str) -> int:
        self._op("rmdir")
        try:
            os.rmdir(self._full(path))
        finally:
            self._changed(path)
        return 0

    def unlink(self, path: str) -> int:
        self._op("unlink")
        try:
            os.unlink(self._full(path))
        finally:
            self._changed(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._op("rename")
        if flags:
            raise mfusepy.FuseOSError(errno.EINVAL)  # as the Linux NFS client answers
        try:
            os.rename(self._full(old), self._full(new))
        finally:
            self._changed(old, new)
        return 0

    def link(self, target: str, source: str) -> int:
        self._op("link")
        try:
            os.link(self._full(source), self._full(target))
        finally:
            self._changed(target)
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._op("symlink")
        try:
            os.symlink(source, self._full(target))
        finally:
            self._changed(target)
        return 0

    def readlink(self, path: str) -> str:
        self._op("readlink")
        return os.readlink(self._full(path))

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._op("create")
        try:
            os.mknod(self._full(path), mode, dev)
        finally:
            self._changed(path)
        return 0

    # -- directories ---------------------------------------------------------------
    def opendir(self, path: str) -> int:
        self._op("opendir")
        if not os.path.isdir(self._full(path)):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
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
                self._op("getattr")  # revalidate: has the directory changed?
                if _dir_signature(os.stat(full)) == kept_signature:
                    with self.dir_lock:
                        self.dir_cache[path] = (kept, now, kept_signature)
                    return kept
        self._op("readdir")
        signature = _dir_signature(os.stat(full))
        listing: list[Any] = [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
        with os.scandir(full) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                listing.append((entry.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
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

    def _changed(self, *paths: str) -> None:
        """A change made through this mount: its own cached listings of the parents go."""
        if self.dir_ttl > 0:
            with self.dir_lock:
                for path in paths:
                    self.dir_cache.pop(os.path.dirname(path) or "/", None)

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._op("fsync")
        fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    # -- files ---------------------------------------------------------------------
    @staticmethod
    def _backing_flags(flags: int) -> int:
        # O_APPEND is the kernel's business (it writes at its cached size, as NFS does);
        # O_CREAT/O_EXCL/O_TRUNC were applied by create() or arrive through truncate.
        return flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY)

    def open(self, path: str, fi: Any) -> int:
        if path == STATS_NAME:
            # Each open reads one snapshot, whatever size its reader asks for at a time.
            with self.snap_lock:
                self.snap_serial += 1
                fi.fh = self.snap_serial
                self.snapshots[fi.fh] = self.stats.snapshot()
            fi.direct_io = 1
            return 0
        self._op("open")
        flags = self._backing_flags(fi.flags)
        if fi.flags & os.O_TRUNC:
            flags |= os.O_TRUNC
        fi.fh = os.open(self._full(path), flags)
        fi.keep_cache = 0
        if self.args.direct_io:
            fi.direct_io = 1
        _invalidate(path)
        return 0

    def create(self, path: str, mode: int, fi: Any) -> int:
        self._op("create")
        flags = self._backing_flags(fi.flags) | os.O_CREAT | (fi.flags & (os.O_EXCL | os.O_TRUNC))
        try:
            fi.fh = os.open(self._full(path), flags, mode)
        finally:
            self._changed(path)
        fi.keep_cache = 0
        if self.args.direct_io:
            fi.direct_io = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        if path == STATS_NAME:
            return self.snapshots.get(fi.fh, b"")[offset : offset + size]
        self._op("read")
        return os.pread(fi.fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fi: Any) -> int:
        self._op("write")
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path: str, fi: Any) -> int:
        if path != STATS_NAME:
            self._op("flush")
        return 0

    def fsync(self, path: str, datasync: int, fi: Any) -> int:
        self._op("fsync")
        if datasync:
            os.fdatasync(fi.fh)
        else:
            os.fsync(fi.fh)
        return 0

    def release(self, path: str, fi: Any) -> int:
        if path == STATS_NAME:
            with self.snap_lock:
                self.snapshots.pop(fi.fh, None)
            return 0
        self._op("release")
        os.close(fi.fh)
        return 0


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE, passing ``renameat2`` flags on."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops the renameat2 flags, which would turn RENAME_NOREPLACE into a
        # plain (replacing) rename; pass them on so they can be refused.
        return self.operations.rename(  # type: ignore[no-any-return]
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )


def _stats_thread(stats: Stats, path: str | None, interval: float, stop: threading.Event) -> None:
    written = -1
    while not stop.is_set():
        got = signal.sigtimedwait({signal.SIGUSR1}, interval)
        if path and (got is not None or stats.version != written):
            written = stats.version
            try:
                stats.write(path)
            except OSError as err:
                print(f"nfs_fuse: cannot write stats to {path}: {err}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    stats = Stats(os.path.abspath(args.mountpoint), os.path.abspath(args.backing), options)
    # SIGUSR1 is taken by the stats thread with sigtimedwait: block it everywhere else
    # (libfuse's threads inherit this mask) so it never kills the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    stop = threading.Event()
    thread = threading.Thread(
        target=_stats_thread, args=(stats, args.stats, args.stats_interval, stop), daemon=True
    )
    thread.start()
    fs = NfsLikeFS(args.backing, stats, args)
    try:
        _FUSE(
            fs,
            args.mountpoint,
            raw_fi=True,
            foreground=True,
            nothreads=False,
            debug=args.debug,
            fsname=f"nfs_fuse:{os.path.abspath(args.backing)}",
            subtype="nfs_fuse",
        )
    finally:
        stop.set()
        if args.stats:
            stats.write(args.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
