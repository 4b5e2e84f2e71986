"""Where a command's output file goes, given the name a user typed (``agl data -o``, ``agl report -o``).

A file is published whole: written to a temporary file beside it (:func:`create_temp_beside`) and
renamed over the name at the end, so a reader never sees half a file and an interrupted write
leaves the old file as it was. What the name is decides (:func:`output_place`):

* a regular file, or a name that does not exist yet: published whole there;
* a symbolic link to a regular file or to a name that does not exist yet: published whole at the
  path the link names (the temporary file goes beside that one); the link stays as it was;
* anything else that exists and is not a directory (a FIFO, a character device such as
  ``/dev/null``, a terminal), or a link through ``/proc`` to a process's open file (as
  ``/dev/stdout`` and ``/dev/fd/N`` are): a *stream*, written straight into (opened for
  appending, as the shell's ``>>`` does: nothing is truncated or renamed; opening a FIFO waits
  for its reader, as the shell's redirection does). Renaming over it would replace a FIFO its
  reader waits on, or (run as root) a device node, with a regular file;
* a directory, or a loop of symbolic links: refused (:class:`OutputTargetError`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from store_fs._disk import fsio
from store_fs._disk.layout import Layout
from store_fs.errors import AglError, UnstorableValueError

__all__ = [
    "OutputPlace",
    "OutputTargetError",
    "create_temp_beside",
    "discard_temp",
    "output_place",
    "publish_temp",
    "remove_unpublished",
]

_LINK_HOPS = 40  # as the kernel's limit on links followed in one lookup
_NAME_BYTES = 255  # a file name's limit on Linux filesystems


class OutputTargetError(UnstorableValueError):
    """An output name that cannot be written to as asked (a directory, a loop of symbolic links;
    Parquet into a FIFO or a device). A bad-input error (exit 4)."""

    def __init__(self, path: str, reason: str) -> None:
        AglError.__init__(self, f"cannot write to {path}: {reason}")
        self.what = f"output {path}"
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class OutputPlace:
    """Where output for a name goes: ``file``, published whole at ``path``; ``stream``, written
    straight into ``path`` (``what`` says what it is)."""

    kind: Literal["file", "stream"]
    path: Path
    what: str = "a regular file"


_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _special(mode: int) -> str:
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file")


def _through_proc(path: Path) -> bool:
    """Whether following the links of ``path`` passes a link in ``/proc`` (a process's open file,
    as ``/dev/stdout`` is: its target is no name to publish at)."""
    for _ in range(_LINK_HOPS):
        if not path.is_symlink():
            return False
        if os.path.realpath(path.parent).startswith("/proc/"):
            return True
        path = path.parent / os.readlink(path)
    return False


def store_owner(path: Path) -> Path | None:
    """The store whose own file or directory ``path`` (a link followed) would be, if any:
    ``FORMAT.json`` or a name under one of its top-level names (``rollouts/``, ``index/``...).
    A page, rows, a cursor or an archive written there replaced or corrupted what the store
    keeps (``-o STORE/FORMAT.json``; ``--cursor STORE/resources/versions/9.json`` hid every
    published resource)."""
    target = Path(os.path.realpath(path))
    for root in target.parents:
        layout = Layout(root)
        if layout.format_file.is_file():
            top = target.relative_to(root).parts[0]
            owned = {layout.format_file.name, *(d.relative_to(root).parts[0] for d in layout.directories())}
            return root if top in owned else None
    return None


def output_place(path: Path) -> OutputPlace:
    """Where output for the name ``path`` goes (see the module's doc). A name a store keeps
    its own data under is refused (:func:`store_owner`)."""
    owner = store_owner(path)
    if owner is not None:
        raise OutputTargetError(str(path), f"it belongs to the store at {owner} (write beside it)")
    try:
        mode: int | None = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        if path.is_symlink():  # a loop (ELOOP), or a link through something not a directory
            raise OutputTargetError(str(path), f"its symbolic links lead nowhere ({err.strerror})") from None
        raise
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputTargetError(str(path), "it is a directory")
    if mode is not None and not stat.S_ISREG(mode):
        return OutputPlace("stream", path, f"it is {_special(mode)}")
    if not path.is_symlink():
        return OutputPlace("file", path)
    if mode is not None and _through_proc(path):
        return OutputPlace("stream", path, "it is a link to a process's open file (in /proc)")
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        raise OutputTargetError(str(path), f"it is a link to {target}, whose directory does not exist")
    return OutputPlace("file", target)


def create_temp_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file to write ``path`` under before it is published, open for writing:
    ``.<name>.<host>-<pid>.<random>.tmp``, created exclusively and never through a symbolic
    link (a name planted in a shared directory is not written through), the name shortened
    when it would pass a file name's limit (a valid 250-byte output name must not fail).

    When ``path`` is a regular file already, the temporary file gets its permissions, and its
    owner and group where this process may give them (else they stay this process's): the
    rename that publishes it must not turn a file made private (0600) into one the umask's
    0644 lets everyone read. A new name gets 0644 less the umask. While it is written it stays
    writable by its owner (a writer may reopen it by name: pyarrow does), and
    :func:`publish_temp` gives it the old file's exact mode as it replaces it (a read-only
    0444 output is replaced, as a rename may, rather than refused)."""
    try:
        old: os.stat_result | None = os.stat(path)
    except OSError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        old = None
    # Created with no more permission than the old file has (the umask may take more), so
    # nobody can open it for reading before its mode is set.
    mode = (stat.S_IMODE(old.st_mode) & 0o777) | 0o600 if old is not None else 0o644
    while True:
        suffix = f".{fsio.writer_tag()}.{secrets.token_hex(4)}.tmp".encode()
        name = os.fsencode(path.name)[: _NAME_BYTES - len(suffix) - 1]
        temp = path.with_name(os.fsdecode(b"." + name + suffix))
        _unpublished.add(temp)  # before it exists: an interruption after the open finds it
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            _unpublished.discard(temp)  # another process's
            continue
        if old is not None:
            try:
                _take_permissions(fd, old)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    discard_temp(temp)
                raise
        return fd, temp


def _take_permissions(fd: int, old: os.stat_result) -> None:
    """Give the open file ``fd`` the owner, group and mode of ``old``. The owner first: a change
    of owner clears the set-user-id and set-group-id bits, which the mode then sets again. A
    change this process may not make (``EPERM``: another user's file, a group it is not in) is
    left out: the file is then this process's, as a new one would be."""
    here = os.fstat(fd)
    if (here.st_uid, here.st_gid) != (old.st_uid, old.st_gid):
        for uid, gid in ((old.st_uid, old.st_gid), (-1, old.st_gid)):  # the group alone, if not both
            try:
                os.fchown(fd, uid, gid)
                break
            except PermissionError:
                continue
    # Its own file: allowed (Linux drops a set-group-id bit of a group the process is not in,
    # without an error). Writable by its owner until publish_temp sets the exact mode.
    os.fchmod(fd, stat.S_IMODE(old.st_mode) | 0o600)


def publish_temp(temp: Path, path: Path) -> None:
    """Rename ``temp`` (made by :func:`create_temp_beside`) over ``path``, with the exact mode
    of the regular file ``path`` was (it was kept writable by its owner while written)."""
    try:
        old = os.stat(path)
    except OSError:
        old = None
    if old is not None and stat.S_ISREG(old.st_mode):
        os.chmod(temp, stat.S_IMODE(old.st_mode))
    os.replace(temp, path)
    _unpublished.discard(temp)


def discard_temp(temp: Path) -> None:
    """Remove ``temp`` (made by :func:`create_temp_beside`), which will not be published."""
    temp.unlink(missing_ok=True)
    _unpublished.discard(temp)


def remove_unpublished() -> None:
    """Remove every temporary file this process made and neither published nor discarded. For
    the end of a command: an interruption (Ctrl-C, SIGTERM) can land between the making of a
    temporary file and the ``try`` that would remove it, or inside its publication."""
    for temp in list(_unpublished):
        discard_temp(temp)


# The temporary files made and not yet published or discarded (a set: the GIL keeps its
# single operations whole across threads).
_unpublished: set[Path] = set()
