"""The pass-through FUSE mechanism shared by the test filesystems (``nfs_fuse``, ``crash_fuse``).

:class:`PassthroughFS` forwards every request to the same path under a backing directory
(``mfusepy``, libfuse 3's high-level API, ``raw_fi``: the backing file descriptor is kept in
``fi.fh``). It counts the requests that reach it (:class:`Stats`) and serves one virtual
file at the root, :attr:`PassthroughFS.control_name`: not listed, not counted; reading it
gives :meth:`PassthroughFS.snapshot` as it is at ``open`` (JSON), and, where a subclass
accepts commands, every ``write`` to it is one command (:meth:`PassthroughFS.command`),
executed before the ``write`` returns.

Subclasses add their semantics through small hooks: :meth:`PassthroughFS._op` (called
first by every counted request), :meth:`PassthroughFS._changed` (after a namespace change,
successful or not), :meth:`PassthroughFS._opened` (after a file is opened or created),
:meth:`PassthroughFS.configure` (libfuse's ``fuse_config``), or override whole requests.

Behaviour common to every subclass:

* ``renameat2`` flags (``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``) fail with ``EINVAL``
  (Python has no ``renameat2``; the Linux NFS client answers the same).
* ``utimensat`` with ``UTIME_NOW`` sets the current time and ``UTIME_OMIT`` leaves that
  time as it is (mfusepy hands both markers on as if they were nanosecond counts, which
  set a time near the epoch: :class:`PassthroughFUSE` decodes them).
* ``O_APPEND`` is the kernel's business: it writes at its cached size (the backing file
  is not opened with ``O_APPEND``).

Needs ``/dev/fuse``, libfuse 3 (Debian ``fuse3``) and the PyPI package ``mfusepy``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

import mfusepy

__all__ = ["PassthroughFS", "PassthroughFUSE", "Stats", "serve", "stat_dict"]

# Linux's markers in ``timespec.tv_nsec`` for utimensat(2).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

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


def stat_dict(st: os.stat_result) -> dict[str, Any]:
    """``st`` as mfusepy's ``getattr`` answer (nanosecond times under the plain names: ``use_ns``)."""
    out = {k: getattr(st, k) for k in _STAT_KEYS}
    out["st_atime"] = out.pop("st_atime_ns")
    out["st_mtime"] = out.pop("st_mtime_ns")
    out["st_ctime"] = out.pop("st_ctime_ns")
    return out


def fd_of(fh: Any) -> int:
    """The backing descriptor of a request's handle (``raw_fi``: a ``fuse_file_info``)."""
    return int(fh.fh if hasattr(fh, "fh") else fh)


class Stats:
    """Counters of requests by kind, and the JSON document that reports them."""

    def __init__(self, counters: Iterable[str], meta: dict[str, Any]) -> None:
        self.counts = dict.fromkeys(counters, 0)
        self.lock = threading.Lock()
        self.version = 0
        self.meta = {"pid": os.getpid(), **meta}
        self.started = time.time()

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1
            self.version += 1

    def body(self) -> dict[str, Any]:
        with self.lock:
            counts = dict(self.counts)
        body = {**self.meta, "time": time.time(), "uptime": time.time() - self.started, "ops": counts}
        body["total"] = sum(counts.values())
        return body

    def snapshot(self) -> bytes:
        return (json.dumps(self.body(), sort_keys=True) + "\n").encode()

    def write(self, path: str, data: bytes | None = None) -> None:
        """Write ``data`` (default: :meth:`snapshot`) to ``path`` atomically."""
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(self.snapshot() if data is None else data)
        os.replace(tmp, path)


def _timespec_ns(ts: Any, now: int) -> int | None:
    """One ``timespec`` of utimensat(2) in nanoseconds: ``now`` for UTIME_NOW, None for UTIME_OMIT."""
    if ts.tv_nsec == UTIME_NOW:
        return now
    if ts.tv_nsec == UTIME_OMIT:
        return None
    return int(ts.tv_sec) * 1_000_000_000 + int(ts.tv_nsec)


class PassthroughFUSE(mfusepy.FUSE):  # type: ignore[misc]  # mfusepy is untyped
    """mfusepy's FUSE, passing ``renameat2`` flags on and decoding ``UTIME_NOW``/``UTIME_OMIT``."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops the renameat2 flags, which would turn RENAME_NOREPLACE into a
        # plain (replacing) rename; pass them on so they can be refused.
        return self.operations.rename(  # type: ignore[no-any-return]
            old.decode(self.encoding, self.errors), new.decode(self.encoding, self.errors), flags
        )

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times: tuple[int | None, int | None] | None = None
        if buf:
            now = time.time_ns()
            times = (_timespec_ns(buf.contents.actime, now), _timespec_ns(buf.contents.modtime, now))
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.utimens(decoded, times)  # type: ignore[no-any-return]


class PassthroughFS(mfusepy.Operations):  # type: ignore[misc]  # mfusepy is untyped
    """Every request forwarded to ``backing``; hooks for the subclasses (module docstring)."""

    use_ns = True
    control_name = "/.fuse_control"
    control_writable = False

    def __init__(self, backing: str, stats: Stats) -> None:
        self.root = os.path.realpath(backing)
        self.stats = stats
        # Open handles of the virtual control file: handle -> the snapshot it reads.
        self.snapshots: dict[int, bytes] = {}
        self.snap_serial = 0
        self.snap_lock = threading.Lock()
        # After create, mkdir, link, symlink and mknod, libfuse's high-level API asks getattr
        # for the new name's attributes to fill its reply: part of the same request (an NFS
        # reply carries them too), so not a request of its own. Per libfuse worker thread, by
        # thread id: libfuse's threads are foreign to Python, whose thread state (and so any
        # threading.local) ctypes creates afresh for every callback.
        self._filling: dict[int, str] = {}
        # One line per counted request, with its path, when tracing (nfs_fuse.py --trace).
        self.trace: TextIO | None = None
        self.trace_lock = threading.Lock()

    # -- hooks -------------------------------------------------------------------------
    def _op(self, name: str, path: str | None = None, other: str = "") -> None:
        """Called first by every counted request (``path``, and ``other`` for a rename's or
        link's second name, only go to the trace)."""
        self._filling.pop(threading.get_ident(), None)  # a new request: no reply being filled
        self.stats.add(name)
        if self.trace is not None:
            line = f"{time.time():.6f} {name} {path or '-'}{' ' + other if other else ''}\n"
            with self.trace_lock:
                self.trace.write(line)

    def _changed(self, *paths: str) -> None:
        """After a namespace operation on ``paths`` (successful or not)."""

    def _opened(self, path: str, fi: Any) -> None:
        """After ``path`` was opened (or created) as ``fi``."""

    def configure(self, config: Any) -> None:
        """Fill libfuse's ``fuse_config`` (subclasses extend)."""
        config.use_ino = 1  # st_ino of the backing files: hard links are recognisable (samefile)
        config.readdir_ino = 1
        config.kernel_cache = 0
        config.auto_cache = 0
        config.direct_io = 0
        config.hard_remove = 0
        config.nullpath_ok = 0

    def snapshot(self) -> bytes:
        """What reading the control file gives."""
        return self.stats.snapshot()

    def command(self, data: bytes) -> None:
        """One ``write`` to the control file (only if :attr:`control_writable`)."""
        raise mfusepy.FuseOSError(errno.EACCES)

    # -- mechanism -----------------------------------------------------------------------
    def _full(self, path: str) -> str:
        return self.root + path

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is not None:
            self.configure(config)

    # -- attributes ----------------------------------------------------------------------
    def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
        if path == self.control_name:
            now = time.time_ns()
            mode = 0o644 if self.control_writable else 0o444
            return {
                "st_mode": stat.S_IFREG | mode,
                "st_nlink": 1,
                "st_size": 1 << 20,
                "st_atime": now,
                "st_mtime": now,
                "st_ctime": now,
            }
        if path is not None and self._filling.get(threading.get_ident()) == path:
            del self._filling[threading.get_ident()]  # the reply of the request that made ``path``
        elif fh is not None:
            self._op("getattr", path)
        else:
            self._op("lookup", path)
        if fh is not None:
            return stat_dict(os.fstat(fd_of(fh)))
        return stat_dict(os.lstat(self._full(str(path))))

    def _reply_needs_attributes(self, path: str) -> None:
        """``path`` was just made: libfuse's next getattr of it belongs to this request."""
        self._filling[threading.get_ident()] = path

    def chmod(self, path: str, mode: int) -> int:
        self._op("chmod", path)
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._op("chmod", path)
        os.lchown(self._full(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> int:
        """``times`` as :class:`PassthroughFUSE` decodes them: None is now; a None time is left as is."""
        self._op("utimens", path)
        full = self._full(path)
        if times is None:
            os.utime(full, follow_symlinks=False)
            return 0
        atime, mtime = times
        if atime is None or mtime is None:
            st = os.lstat(full)
            atime = st.st_atime_ns if atime is None else atime
            mtime = st.st_mtime_ns if mtime is None else mtime
        os.utime(full, ns=(atime, mtime), follow_symlinks=False)
        return 0

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        if path == self.control_name:
            return 0  # opening the control file for writing may truncate it: nothing to do
        self._op("truncate", path)
        if fh is not None:
            os.ftruncate(fd_of(fh), length)
        else:
            os.truncate(self._full(str(path)), length)
        return 0

    def access(self, path: str, amode: int) -> int:
        if path != self.control_name and not os.access(self._full(path), amode):
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        self._op("statfs", path)
        st = os.statvfs(self._full(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files")
        out = {k: getattr(st, k) for k in keys}
        out.update(f_flag=st.f_flag, f_frsize=st.f_frsize, f_namemax=st.f_namemax)
        return out

    # -- namespace -----------------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        self._op("mkdir", path)
        try:
            os.mkdir(self._full(path), mode)
        finally:
            self._changed(path)
        self._reply_needs_attributes(path)
        return 0

    def rmdir(self, path: str) -> int:
        self._op("rmdir", path)
        try:
            os.rmdir(self._full(path))
        finally:
            self._changed(path)
        return 0

    def unlink(self, path: str) -> int:
        self._op("unlink", path)
        try:
            os.unlink(self._full(path))
        finally:
            self._changed(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._op("rename", old, new)
        if flags:
            raise mfusepy.FuseOSError(errno.EINVAL)  # no renameat2 in Python (and none on NFS)
        try:
            os.rename(self._full(old), self._full(new))
        finally:
            self._changed(old, new)
        return 0

    def link(self, target: str, source: str) -> int:
        self._op("link", source, target)  # as rename: the existing name, then the new one
        try:
            os.link(self._full(source), self._full(target))
        finally:
            self._changed(target)
        self._reply_needs_attributes(target)
        return 0

    def symlink(self, target: str, source: str) -> int:
        self._op("symlink", target, source)
        try:
            os.symlink(source, self._full(target))
        finally:
            self._changed(target)
        self._reply_needs_attributes(target)
        return 0

    def readlink(self, path: str) -> str:
        self._op("readlink", path)
        return os.readlink(self._full(path))

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._op("create", path)
        try:
            os.mknod(self._full(path), mode, dev)
        finally:
            self._changed(path)
        self._reply_needs_attributes(path)
        return 0

    # -- directories ---------------------------------------------------------------------
    def opendir(self, path: str) -> int:
        self._op("opendir", path)
        if not os.path.isdir(self._full(path)):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return 0

    def list_dir(self, path: str) -> list[Any]:
        """The backing directory's entries as ``readdir`` answers them (``.`` and ``..`` first)."""
        listing: list[Any] = [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
        with os.scandir(self._full(path)) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                listing.append((entry.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        return listing

    def readdir(self, path: str, fh: int) -> list[Any]:
        self._op("readdir", path)
        return self.list_dir(path)

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._op("fsync", path)
        fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    # -- files ---------------------------------------------------------------------------
    @staticmethod
    def backing_flags(flags: int) -> int:
        """``open(2)`` flags for the backing file: O_APPEND is the kernel's business (it writes
        at its cached size); O_CREAT/O_EXCL/O_TRUNC were applied by create() or arrive through
        truncate."""
        return flags & ~(os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY)

    def open(self, path: str, fi: Any) -> int:
        if path == self.control_name:
            if fi.flags & os.O_ACCMODE != os.O_RDONLY and not self.control_writable:
                raise mfusepy.FuseOSError(errno.EACCES)
            # Each open reads one snapshot, whatever size its reader asks for at a time.
            with self.snap_lock:
                self.snap_serial += 1
                fi.fh = self.snap_serial
                self.snapshots[fi.fh] = self.snapshot() if fi.flags & os.O_ACCMODE != os.O_WRONLY else b""
            fi.direct_io = 1
            return 0
        self._op("open", path)
        flags = self.backing_flags(fi.flags)
        if fi.flags & os.O_TRUNC:
            flags |= os.O_TRUNC
        fi.fh = os.open(self._full(path), flags)
        fi.keep_cache = 0
        self._opened(path, fi)
        return 0

    def create(self, path: str, mode: int, fi: Any) -> int:
        self._op("create", path)
        flags = self.backing_flags(fi.flags) | os.O_CREAT | (fi.flags & (os.O_EXCL | os.O_TRUNC))
        try:
            fi.fh = os.open(self._full(path), flags, mode)
        finally:
            self._changed(path)
        fi.keep_cache = 0
        self._opened(path, fi)
        self._reply_needs_attributes(path)
        return 0

    def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
        if path == self.control_name:
            return self.snapshots.get(fi.fh, b"")[offset : offset + size]
        self._op("read", path)
        return os.pread(fi.fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        if path == self.control_name:
            self.command(data)
            return len(data)
        self._op("write", path)
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path: str | None, fi: Any) -> int:
        if path != self.control_name:
            self._op("flush", path)
        return 0

    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        if path == self.control_name:
            return 0
        self._op("fsync", path)
        if datasync:
            os.fdatasync(fi.fh)
        else:
            os.fsync(fi.fh)
        return 0

    def release(self, path: str | None, fi: Any) -> int:
        if path == self.control_name:
            with self.snap_lock:
                self.snapshots.pop(fi.fh, None)
            return 0
        self._op("release", path)
        os.close(fi.fh)
        return 0


def _stats_thread(stats: Stats, path: str | None, interval: float, stop: threading.Event, tag: str) -> None:
    written = -1
    while not stop.is_set():
        got = signal.sigtimedwait({signal.SIGUSR1}, interval)
        if path and (got is not None or stats.version != written):
            written = stats.version
            try:
                stats.write(path)
            except OSError as err:
                print(f"{tag}: cannot write stats to {path}: {err}", file=sys.stderr)


def serve(
    fs: PassthroughFS,
    mountpoint: str,
    *,
    tag: str,
    stats_path: str | None = None,
    stats_interval: float = 1.0,
    debug: bool = False,
    source: str | None = None,
) -> None:
    """Mount ``fs`` on ``mountpoint`` and serve it (multithreaded) until unmounted or signalled.

    The counters go to ``stats_path`` (atomically) every ``stats_interval`` seconds while
    something changed, at once on ``SIGUSR1``, and at unmount. ``tag`` names the filesystem
    type (``fuse.<tag>`` in /proc/mounts); ``source`` (default: the backing directory) is
    shown as ``<tag>:<absolute source>`` in the mount table.
    """
    # SIGUSR1 is taken by the stats thread with sigtimedwait: block it everywhere else
    # (libfuse's threads inherit this mask) so it never kills the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    stop = threading.Event()
    thread = threading.Thread(
        target=_stats_thread, args=(fs.stats, stats_path, stats_interval, stop, tag), daemon=True
    )
    thread.start()
    try:
        PassthroughFUSE(
            fs,
            mountpoint,
            raw_fi=True,
            foreground=True,
            nothreads=False,
            debug=debug,
            fsname=f"{tag}:{os.path.abspath(source or fs.root)}",
            subtype=tag,
        )
    finally:
        stop.set()
        if stats_path:
            fs.stats.write(stats_path)
