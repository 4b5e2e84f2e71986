"""Filesystem primitives every other module builds on.

Guarantees (see docs/format.md for the reasons):

* :func:`publish` and :func:`create_exclusive` make a file appear whole or not
  at all: the bytes go to a dot-prefixed temporary file in the same directory
  first. Readers ignore dot-files.
* :func:`create_exclusive` is a compare-and-swap on a name: ``link(2)`` of the
  complete temporary file, which fails if the name exists. Atomic on local
  filesystems and on NFS.
* :func:`move` is ``rename(2)`` with ``ENOENT`` reported as ``False``: of several
  processes moving one file, exactly one gets ``True``.
* With ``durable=True`` data is fsynced before it is published and the
  directory is fsynced after, so the change survives power loss.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeAlias

from store_fs._disk import group_sync

StrPath: TypeAlias = "str | os.PathLike[str]"

__all__ = [
    "SpecialFileError",
    "Staged",
    "append",
    "broken_name",
    "create_empty",
    "create_exclusive",
    "current_pid",
    "fsync_dir",
    "host_tag",
    "is_dir_entry",
    "iter_dirs",
    "list_names",
    "log_tag",
    "make_dirs",
    "move",
    "open_making_dirs",
    "open_to_read",
    "publish",
    "publish_link",
    "publish_symlink",
    "read_bytes",
    "sync_data",
    "syncs_deferred",
    "writer_tag",
]


def _sanitise(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40] or "host"


_HOST = _sanitise(socket.gethostname())


# The process id, kept up to date across fork(): callers ask for it dozens of times per
# rollout (per-process caches, per-writer file names), and each os.getpid() is a syscall.
_PID = os.getpid()
_TAG = f"{_HOST}-{_PID}"
# Logs that compaction removes once their writer is gone are named after this process
# *instance*: pids are reused, and ext4 hands a freed inode straight back, so "<host>-<pid>"
# and the inode number together could name two different files over a long run.
_INSTANCE = secrets.token_hex(3)


def _after_fork_in_child() -> None:
    global _PID, _TAG, _INSTANCE
    _PID = os.getpid()
    _TAG = f"{_HOST}-{_PID}"
    _INSTANCE = secrets.token_hex(3)


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_pid() -> int:
    """This process's id (``os.getpid()`` without a system call; right after ``fork`` too)."""
    return _PID


def host_tag() -> str:
    """This machine's name, made safe for a file name (the ``<host>`` of :func:`writer_tag`)."""
    return _HOST


def writer_tag() -> str:
    """``<host>-<pid>``: names this process in per-writer file names (recomputed after fork)."""
    return _TAG


def log_tag() -> str:
    """``<host>-<pid>.<6 hex>``: names this process in the logs compaction may remove (index,
    change feed, worker logs), unique to this process even when its pid is used again."""
    return f"{_TAG}.{_INSTANCE}"


# Temporary names: <host>-<pid> plus a per-process counter (next() on a count is atomic
# under the GIL), instead of a getrandom(2) per file. The counter starts at a random value
# so a leftover of a crashed process that had our pid is unlikely to be met, and a name
# that exists anyway is skipped (exclusive create).
_tmp_serial = itertools.count(secrets.randbits(40))


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_TAG}-{next(_tmp_serial):x}.tmp")


def _fresh_tmp(path: Path, make: Callable[[Path], None]) -> Path:
    """Run ``make(tmp)`` on the first free temporary name for ``path``; that name."""
    while True:
        tmp = _tmp_path(path)
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue  # a leftover of a dead process: take the next name


def fsync_dir(directory: StrPath) -> None:
    """Return once ``directory``'s entries as they are now are on disk (threads of this
    process syncing the same directory at once share one ``fsync``: group commit).
    A directory named by an enclosing :func:`syncs_deferred` is synced when that block ends."""
    if not _deferred(directory, True):
        group_sync.DIRECTORIES.sync(directory)


def sync_data(path: StrPath) -> None:
    """Return once the data appended to the file ``path`` so far is on disk (shared like
    :func:`fsync_dir`; deferred like it)."""
    if not _deferred(path, False):
        group_sync.FILES.sync(path)


class _Deferral(threading.local):
    trees: tuple[str, ...] = ()  # what the block defers: these paths and everything under them
    asked: dict[str, bool] | None = None  # asked inside it: path -> is a directory (None: no block)


_deferral = _Deferral()


def _deferred(path: StrPath, directory: bool) -> bool:
    if _deferral.asked is None:
        return False
    key = os.fspath(path)
    if not any(os.path.join(key, "").startswith(tree) for tree in _deferral.trees):
        return False
    _deferral.asked[key] = directory
    return True


@contextmanager
def syncs_deferred(*trees: StrPath) -> Iterator[None]:
    """Sync each path under ``trees`` (a directory or file and everything under it) that this
    thread asks to sync inside the block (:func:`fsync_dir`, :func:`sync_data`, and so every
    ``durable=True`` helper here) once, when the block ends, instead of every time: a batch
    that creates N entries in one directory (``queue/pending/``) then syncs it once.

    A file's own content is still synced before the rename or link that publishes it (that
    ``fsync`` is not deferred), so no name the disk keeps can show a file it does not hold.
    But until the block ends a power cut may keep any part of what the block did under
    ``trees``, while other processes already see it and act on it, and what they make
    durable must not depend on it. So defer only syncs whose loss ``agl check --fix``
    repairs and nothing builds on: a queue token (a claimer syncs the queue directories
    itself), an index line (a cache). Blocks do not nest.
    """
    if _deferral.asked is not None:
        raise RuntimeError("syncs_deferred blocks do not nest")
    _deferral.trees = tuple(os.path.join(os.fspath(p), "") for p in trees)  # each ends in a separator
    asked: dict[str, bool] = {}
    _deferral.asked = asked
    try:
        yield
    except BaseException:
        _deferral.trees, _deferral.asked = (), None
        for path, directory in asked.items():  # what the block did is synced all the same,
            with suppress(Exception):  # but the block's own error is the one to report
                (group_sync.DIRECTORIES if directory else group_sync.FILES).sync(path)
        raise
    _deferral.trees, _deferral.asked = (), None
    failed: Exception | None = None
    for path, directory in asked.items():  # every one is tried, the first failure raised
        try:
            (group_sync.DIRECTORIES if directory else group_sync.FILES).sync(path)
        except Exception as err:
            failed = failed or err
    if failed is not None:
        raise failed


FileIdentity: TypeAlias = tuple[int, int]
"""A file's inode and size: a file written again under the same name (a rollout removed and
re-created under its id) differs, even when its inode number is recycled, unless both match.
(Not the modification time: a network filesystem may set it only when the writer closes it.)"""


def identity(st: os.stat_result) -> FileIdentity:
    return st.st_ino, st.st_size


def identity_of(path: str) -> FileIdentity | None:
    """:func:`identity` of ``path``; None if it cannot be looked at (no such file, or damage
    such as a link loop, which the caller's fresh read then names)."""
    try:
        return identity(os.stat(path))
    except OSError:
        return None


def _write_tmp(path: Path, data: bytes, durable: bool, mode: int = 0o644) -> Path:
    while True:
        tmp = _tmp_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            continue  # a leftover of a dead process: take the next name
    try:
        append(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    return tmp


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def publish(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` atomically (last writer wins)."""
    tmp = _write_tmp(path, data, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def publish_link(path: Path, source: Path, *, durable: bool = False) -> None:
    """Make ``path`` one more name of the existing file ``source``, atomically (last writer wins).

    A hard link allocates no inode, and replacing one frees none (the old file keeps
    its other name), unlike a symlink or a copy.
    """
    tmp = _fresh_tmp(path, lambda tmp: os.link(source, tmp))
    try:
        os.replace(tmp, path)
    finally:
        # rename(2) does nothing when both names already link to one file, leaving the
        # temporary name in place; otherwise it is gone and this unlink finds nothing.
        _unlink_quiet(tmp)
    if durable:
        fsync_dir(path.parent)


def publish_symlink(path: Path, target: str, *, durable: bool = False) -> None:
    """Make ``path`` a symlink to ``target`` atomically (last writer wins)."""
    tmp = _fresh_tmp(path, lambda tmp: os.symlink(target, tmp))
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, *, durable: bool = False, mode: int = 0o644) -> bool:
    """Create ``path`` holding ``data`` unless it exists. True if this call created it.

    ``mode`` applies to the new file (``0o444`` for files nobody may change)."""
    staged = Staged(path, data, durable=durable, mode=mode)
    try:
        return staged.link()
    finally:
        staged.discard()


class Staged:
    """``data`` written whole under a temporary name next to ``path``, to be linked into place.

    :meth:`link` is :func:`create_exclusive`'s compare-and-swap; after it succeeds the
    temporary name can instead be renamed onto a second name (:meth:`rename_onto`), which
    makes that name one more link to the new file in one step. Always :meth:`discard` at
    the end (it does nothing once the temporary name was renamed away).
    """

    def __init__(self, path: Path, data: bytes, *, durable: bool = False, mode: int = 0o644) -> None:
        self.path = path
        self.durable = durable
        self.linked = False
        self._tmp: Path | None = _write_tmp(path, data, durable, mode)

    def link(self) -> bool:
        """``link(2)`` the file to ``path`` unless that exists; True if this call made it.
        :attr:`linked` tells, should the directory's sync after the link raise."""
        assert self._tmp is not None
        try:
            os.link(self._tmp, self.path)
            created = self.linked = True
        except FileExistsError:
            # A lost reply to a retransmitted LINK over NFS can report EEXIST for a
            # link that was made: the temporary file's link count tells the truth.
            created = os.stat(self._tmp).st_nlink == 2
        if created and self.durable:
            fsync_dir(self.path.parent)
        return created

    def rename_onto(self, other: Path, *, sync: bool = True) -> None:
        """Move the temporary name onto ``other`` (replacing it); on the same filesystem.
        ``sync=False``: not fsynced even when durable (a name that may come back stale)."""
        assert self._tmp is not None
        os.replace(self._tmp, other)
        self._tmp = None
        if self.durable and sync:
            fsync_dir(other.parent)

    def discard(self) -> None:
        if self._tmp is not None:
            _unlink_quiet(self._tmp)
            self._tmp = None


def create_empty(path: Path, *, durable: bool = False) -> bool:
    """Create the empty file ``path`` unless it exists (``O_EXCL``). True if this call did.

    An empty file is whole as soon as it exists, so no temporary name is needed: one
    round trip instead of :func:`create_exclusive`'s create, link and unlink. Not for
    files whose content matters over NFSv2, where ``O_EXCL`` was not atomic.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    if durable:
        fsync_dir(path.parent)
    return True


def move(src: StrPath, dst: StrPath, *, durable: bool = False) -> bool:
    """Rename ``src`` to ``dst``. False if ``src`` was gone (another process moved it first)."""
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        # Either src is gone (we lost the race) or dst's directory is missing.
        if not os.path.isdir(os.path.dirname(dst)):
            raise
        return False
    except OSError as err:
        # Ambiguous outcome (e.g. ESTALE): the unique target name tells whether it happened.
        if err.errno in (errno.ESTALE, errno.EIO) and os.path.exists(dst) and not os.path.exists(src):
            return True
        raise
    if durable:
        fsync_dir(os.path.dirname(dst))
        if os.path.dirname(src) != os.path.dirname(dst):
            fsync_dir(os.path.dirname(src))
    return True


def make_dirs(directory: Path, *, durable: bool = False, sync_leaf: bool = True) -> None:
    """``mkdir -p directory``; with ``durable``, each directory made is also made durable.

    A new directory's name lives in its parent, so the parent of every directory this call
    creates is fsynced (deepest last), and the new directory itself (unless ``sync_leaf`` is
    False: a caller that creates a name in it next and fsyncs it then): after a power cut
    the whole path is there, or the call did not return.
    """
    if not durable:
        directory.mkdir(parents=True, exist_ok=True)
        return
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            pass  # a racing creator made it: it made it durable too, or will before returning
        fsync_dir(made.parent)
    if missing and sync_leaf:
        fsync_dir(directory)


def open_making_dirs(path: Path, flags: int, mode: int = 0o644, *, durable: bool = False) -> int:
    """``os.open(path, flags, mode)``, creating missing parent directories if that fails.

    Opening first saves a ``mkdir`` per call on the hot path, where the directory
    is almost always there already. With ``durable`` and ``O_CREAT`` in ``flags``, a file
    this call creates has its name made durable (its directory fsynced; missing parents
    are made by :func:`make_dirs`), so that data later fsynced through the descriptor can
    be found after a power cut.
    """
    if durable and flags & os.O_CREAT:
        return _open_creating_durably(path, flags, mode)
    try:
        return os.open(path, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, mode)


def _open_creating_durably(path: Path, flags: int, mode: int) -> int:
    try:
        return os.open(path, flags & ~os.O_CREAT, mode)  # there already: nothing to make durable
    except FileNotFoundError:
        pass
    make_dirs(path.parent, durable=True, sync_leaf=False)  # fsynced below, with the new name
    fd = os.open(path, flags, mode)
    try:
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SpecialFileError(OSError):
    """A FIFO, a socket or a device (``what``) under a name where the store keeps a regular
    file: damage, named like a directory in a file's place (:func:`broken_name`)."""

    def __init__(self, path: StrPath, what: str) -> None:
        super().__init__(errno.EINVAL, f"{what}, not a regular file", os.fspath(path))
        self.what = what


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def open_to_read(path: StrPath) -> tuple[int, os.stat_result]:
    """A store file opened for reading, and its ``fstat``; the caller closes the descriptor.

    Only a regular file is read: a directory raises ``IsADirectoryError``, anything else
    :class:`SpecialFileError`, also through a symbolic link. A FIFO planted under the name would
    otherwise block the open until a writer came, and a link to ``/dev/zero`` give a read without
    end (``O_NONBLOCK`` lets the open return; on a regular file the flag changes nothing).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENXIO:  # what opening a Unix socket's name answers
            raise SpecialFileError(path, "a socket") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
            what = next((name for test, name in _SPECIAL_KINDS if test(st.st_mode)), "no regular file")
            raise SpecialFileError(path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: StrPath) -> tuple[bytes, os.stat_result]:
    """The content of the regular file ``path`` and its ``fstat`` (one open, one fstat, one
    read in the common case); :func:`open_to_read`'s errors, a missing file's included."""
    fd, st = open_to_read(path)
    try:
        data = os.read(fd, st.st_size + 1)
        if len(data) <= st.st_size:
            chunks = [data]  # grown since the fstat, or a short read: read on to the end
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data, st
    finally:
        os.close(fd)


def read_bytes(path: StrPath) -> bytes | None:
    """The file's content, or None if it does not exist (:func:`open_to_read`'s errors)."""
    try:
        return read_regular(path)[0]
    except (FileNotFoundError, NotADirectoryError):
        return None


def list_names(directory: Path) -> list[str]:
    """Names in ``directory`` not starting with '.', unsorted; [] if it does not exist."""
    try:
        return [name for name in os.listdir(directory) if not name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []


def iter_dirs(directory: Path) -> Iterator[os.DirEntry[str]]:
    """Visible sub-directories of ``directory`` (none if it does not exist). A symbolic link
    loop is no directory (``agl check`` reports it)."""
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if not entry.name.startswith(".") and is_dir_entry(entry):
                    yield entry
    except FileNotFoundError:
        return


def broken_name(err: OSError, path: StrPath) -> str | None:
    """What ``path`` is when opening or stat-ing it failed with ``err`` although the name is
    there: "a directory" (opened as a file), "a symbolic link loop" or "a symbolic link to
    nothing", or :class:`SpecialFileError`'s kind ("a FIFO"...). None when ``err`` says anything
    else (no such name, a permission, an I/O error)."""
    if isinstance(err, SpecialFileError):
        return err.what
    if err.errno == errno.EISDIR:
        return "a directory"
    if err.errno == errno.ELOOP:
        return "a symbolic link loop"
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE) and os.path.islink(path):
        return "a symbolic link to nothing"
    return None


def is_dir_entry(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()`` (d_type: no stat unless it is a symbolic link), False for a link loop."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP: a symbolic link loop
        return False


def append(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (one ``write(2)`` in the common case)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def append_own(fd: int, data: bytes) -> None:
    """:func:`append` to a log only this process appends to (under its lock). A write that fails
    part-way (a full disk writes what fits, then raises ENOSPC) takes back the bytes of its last,
    torn line, so that the process's next line does not join it into a corrupt line; whole lines
    it wrote stay (a reader may have read them already)."""
    done = 0
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
            done += written
    except OSError:
        torn = done - (data.rfind(b"\n", 0, done) + 1)
        if torn:
            with suppress(OSError):  # left as a torn tail, which readers wait on and check reports
                os.ftruncate(fd, os.fstat(fd).st_size - torn)
        raise
