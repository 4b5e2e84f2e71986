"""A FUSE filesystem that can lose power: what was not made durable is gone after the cut.

    python tests/crash_fuse.py BACKING MOUNTPOINT --state DIR [--seed N]
        [--persist-fraction P] [--keep-data-fraction P] [--attr-timeout S] [--stats FILE]

Every request is passed through to the directory BACKING (``tests/fuse_base.py``), so
the mount behaves as a local filesystem while the power is on. Alongside, the process
keeps the *durable image*: the state a disk would show after losing power now. The
difference between what the mount shows and that image is the volatile layer (the page
cache and the unwritten journal of a real machine). A power cut (below) throws the
volatile layer away and leaves BACKING holding the durable image only; a fresh mount of
BACKING (a "reboot") then shows just that.

What is durable (the POSIX guarantees of fsync(2), nothing a particular filesystem adds):

* File data: the content a file had at its last ``fsync`` or ``fdatasync`` (of any
  descriptor of it) is durable. Bytes written or truncated since are volatile. A file
  created since the mount and never synced has no durable bytes (it comes back empty,
  if its name comes back at all). ``close`` syncs nothing.
* Names: a directory's entries as they were at its last ``fsync`` of the directory
  itself are durable. Creating, linking, unlinking or renaming a name, ``mkdir`` and
  ``rmdir`` change only the volatile layer until the directory holding that name is
  fsynced; a rename between two directories needs both (each directory's side is made
  durable by its own fsync). ``fsync`` of a file does not make its name durable, nor
  does ``fsync`` of a directory make its parent's entry for it durable (the Linux
  fsync(2) manual says so of a file's entry: its directory must be fsynced too). A new
  directory's own entries are durable once it is fsynced, but reachable only once its
  parent is. (ext4, with one journal, also commits every earlier namespace operation at
  any fsync; that is not assumed here, and is what ``--persist-fraction 1`` gives.)
* No order between data and names: a name can survive while its file's unsynced data
  does not (a renamed-into-place file that was never fsynced comes back empty or with
  its old bytes), and data can be durable in a file whose name is not. ext4's
  ``data=ordered``/``auto_da_alloc`` heuristics (data flushed before a replacing
  rename) are deliberately not modelled.
* Everything BACKING holds when the filesystem is mounted counts as durable (the state
  after the last reboot).
* Not modelled: attributes (mode, owner, times: a surviving file has the attributes
  its inode has at the cut, or defaults if it was gone), ``O_DIRECT``, ``sync_file_range``.

What the cut does on top of that, since a real machine may have written back more
than it promised before the power went:

* Each namespace operation not yet made durable (create, link, unlink, rename, mkdir,
  rmdir, symlink) is persisted with probability ``--persist-fraction`` (default 0.5),
  as a whole (a rename moves its name atomically, even between directories). The
  chosen ones are applied in a random order that keeps the order of operations on
  the same name: any subset, not only a prefix, so a later rename can survive while an
  earlier one is lost (reordering, as with writeback of different directory blocks).
* A file with unsynced bytes keeps, with probability ``--keep-data-fraction`` (default
  0.5), a random prefix of them (from the lowest unsynced offset on: writeback that
  stopped part way, e.g. a torn last line of an append-only log).

All random choices come from ``--seed``, so a cut is reproducible from its seed and the
sequence of requests.

Control file ``MOUNTPOINT/.crash_fuse`` (not listed, not counted): reading it gives JSON
(request counters as in ``tests/nfs_fuse.py``; the volatile layer: ``pending_ops`` and
``dirty_files`` counted, ``volatile`` listing the operations and files; ``last_cut``:
what the last cut threw away and let through); each ``write`` to it is a command, done
before the write returns:

* ``sync``: make everything durable (sync(2)).
* ``cut`` or ``cut SEED``: the power cut (random choices from ``--seed``, or SEED). The
  volatile layer is dropped as described, BACKING's content is replaced by the durable
  image (the lost state is moved to ``--state``/``lost-<pid>``), and from then on every
  request fails with ``EIO`` (a machine without power) until the filesystem is unmounted
  (``fusermount3 -u``); mount BACKING again to "reboot".

The bookkeeping lives in ``--state`` (outside BACKING, one mount at a time):
``data/<object>`` holds the durable bytes of files written since the mount, and a cut
moves what it threw away to ``lost-<pid>/``. Files are identified by their inode
in BACKING (``use_ino``), remapped at each create so a reused inode number is a new file.
Unlinking a file that is open removes its name at once (``hard_remove``), as on a local
filesystem. ``renameat2`` flags fail with ``EINVAL``. ``fsync`` requests are not passed on
to BACKING's disk: durability is modelled here, not asked of the real disk.

Needs ``/dev/fuse``, libfuse 3 (Debian ``fuse3``) and the PyPI package ``mfusepy``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mfusepy
from fuse_base import PassthroughFS, Stats, serve

CONTROL_NAME = "/.crash_fuse"
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
    "fsyncdir",
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
_CHUNK = 1 << 20

# One change of a directory entry: (directory object, name, object now named, None if removed).
Effect = tuple[int, str, int | None]


@dataclass
class PendingOp:
    """A namespace operation whose effects are not all durable yet."""

    seq: int
    kind: str
    what: str  # the request, for reports: "rename /a -> /b"
    effects: list[Effect]


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        chunk = os.pread(src_fd, min(_CHUNK, end - offset), offset)
        if not chunk:
            break
        os.pwrite(dst_fd, chunk, offset)
        offset += len(chunk)


@contextlib.contextmanager
def _reading(fd: int) -> Iterator[int]:
    """A descriptor reading the file ``fd`` is open on (which may be write-only, or unlinked)."""
    reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        yield reader
    finally:
        os.close(reader)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


class DurableModel:
    """The durable image of one mount, updated as requests change the volatile state.

    Objects (files, directories, symlinks) get ids of their own: a backing inode number
    may be reused after its file is gone, an object id never is. Not thread-safe: the
    filesystem calls it under one lock.
    """

    def __init__(self, root: str, state: Path) -> None:
        self.root = root
        self.data_dir = state / "data"
        shutil.rmtree(self.data_dir, ignore_errors=True)  # a previous mount's: not ours
        self.data_dir.mkdir(parents=True)
        self.next_obj = 0
        self.obj_of_ino: dict[int, int] = {}
        self.kind: dict[int, str] = {}
        self.symlink_target: dict[int, str] = {}
        self.created: set[int] = set()  # files created since the mount: no durable bytes unless synced
        self.shadowed: set[int] = set()  # files whose durable bytes are in data_dir
        self.dirty: dict[int, int] = {}  # file -> lowest offset written or truncated since its sync
        self.opened_as: dict[int, str] = {}  # file -> the path it was last opened by (reports)
        self.durable_dirs: dict[int, dict[str, int]] = {}
        self.pending: list[PendingOp] = []
        self.seq = 0
        self.root_obj = self._scan_existing()

    # -- objects ---------------------------------------------------------------------
    def _fresh(self, st: os.stat_result) -> int:
        self.next_obj += 1
        obj = self.next_obj
        self.obj_of_ino[st.st_ino] = obj
        self.kind[obj] = _kind(st.st_mode)
        return obj

    def _scan_existing(self) -> int:
        """Everything in the backing directory at mount time is durable."""
        root_obj = self._fresh(os.lstat(self.root))
        for directory, dirs, files in os.walk(self.root):
            dir_obj = self.obj_of(directory)
            entries: dict[str, int] = {}
            for name in dirs + files:
                path = os.path.join(directory, name)
                st = os.lstat(path)
                obj = self.obj_of_ino.get(st.st_ino) or self._fresh(st)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink_target[obj] = os.readlink(path)
                entries[name] = obj
            self.durable_dirs[dir_obj] = entries
        return root_obj

    def obj_of(self, full: str) -> int:
        st = os.lstat(full)
        obj = self.obj_of_ino.get(st.st_ino)
        return obj if obj is not None else self._fresh(st)

    def created_obj(self, full: str) -> int:
        """A new object at ``full`` (just created: its inode number may be a reused one)."""
        st = os.lstat(full)
        obj = self._fresh(st)
        if stat.S_ISREG(st.st_mode):
            self.created.add(obj)
        elif stat.S_ISLNK(st.st_mode):
            self.symlink_target[obj] = os.readlink(full)
        return obj

    def parent_and_name(self, full: str) -> tuple[int, str]:
        return self.obj_of(os.path.dirname(full)), os.path.basename(full)

    # -- file data -------------------------------------------------------------------
    def shadow_path(self, obj: int) -> str:
        return str(self.data_dir / str(obj))

    def before_modify(self, obj: int, fd: int) -> None:
        """Keep the durable bytes of a file that existed at mount before they change."""
        if obj in self.created or obj in self.shadowed:
            return
        out = os.open(self.shadow_path(obj), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with _reading(fd) as reader:
                _copy_range(reader, out, 0, os.fstat(fd).st_size)
        finally:
            os.close(out)
        self.shadowed.add(obj)

    def before_destroy(self, full: str) -> None:
        """``full`` is about to lose its name: keep its durable bytes if that is its last name."""
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return
        obj = self.obj_of(full)
        if obj not in self.created and obj not in self.shadowed:
            fd = os.open(full, os.O_RDONLY)
            try:
                self.before_modify(obj, fd)
            finally:
                os.close(fd)

    def changed(self, obj: int, offset: int) -> None:
        self.dirty[obj] = min(offset, self.dirty.get(obj, offset))

    def sync_file(self, obj: int, fd: int) -> None:
        start = self.dirty.pop(obj, None)
        if start is None:
            return
        size = os.fstat(fd).st_size
        out = os.open(self.shadow_path(obj), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with _reading(fd) as reader:
                _copy_range(reader, out, start, size)
            os.ftruncate(out, size)
        finally:
            os.close(out)
        self.shadowed.add(obj)

    # -- names -------------------------------------------------------------------------
    def record(self, kind: str, what: str, effects: list[Effect]) -> None:
        self.seq += 1
        self.pending.append(PendingOp(self.seq, kind, what, effects))

    def volatile(self, limit: int = 200) -> dict[str, list[str]]:
        """What a cut now would throw away (at most ``limit`` of each), for reports."""
        return {
            "ops": [f"{op.seq} {op.kind} {op.what}" for op in self.pending[:limit]],
            "files": sorted(self.opened_as.get(obj, f"object {obj}") for obj in self.dirty)[:limit],
        }

    def sync_dir(self, full: str) -> None:
        """``fsync`` of the directory ``full``: its entries now are durable."""
        dir_obj = self.obj_of(full)
        entries = {}
        for name in os.listdir(full):
            with contextlib.suppress(FileNotFoundError):
                entries[name] = self.obj_of(os.path.join(full, name))
        self.durable_dirs[dir_obj] = entries
        kept = []
        for op in self.pending:
            op.effects = [e for e in op.effects if e[0] != dir_obj]
            if op.effects:
                kept.append(op)
        self.pending = kept

    def live_paths(self) -> dict[int, str]:
        """Object -> one of its current paths in the backing directory."""
        out = {self.root_obj: self.root}
        for directory, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    obj = self.obj_of_ino.get(os.lstat(path).st_ino)
                    if obj is not None:
                        out.setdefault(obj, path)
        return out

    def sync_all(self) -> None:
        """sync(2): the whole current state becomes durable."""
        live = self.live_paths()
        for obj in list(self.dirty):
            path = live.get(obj)
            if path is None or self.kind.get(obj) != "file":
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                self.sync_file(obj, fd)
            finally:
                os.close(fd)
        for obj, path in live.items():
            if self.kind.get(obj) == "dir":
                self.sync_dir(path)
        self.pending.clear()


def _ordered_sample(ops: list[PendingOp], rng: random.Random) -> list[PendingOp]:
    """``ops`` in a random order that keeps the order of operations touching one name."""
    remaining = [(op, {(d, n) for d, n, _ in op.effects}) for op in ops]
    out: list[PendingOp] = []
    while remaining:
        taken: set[tuple[int, str]] = set()
        ready = []
        for index, (_, keys) in enumerate(remaining):
            if not keys & taken:  # no earlier remaining operation touches these names
                ready.append(index)
            taken |= keys
        out.append(remaining.pop(rng.choice(ready))[0])
    return out


class PowerCut:
    """Builds the durable image of a :class:`DurableModel` with the cut's random write-back."""

    def __init__(self, model: DurableModel, rng: random.Random, persist: float, keep_data: float) -> None:
        self.model = model
        self.rng = rng
        self.persist = persist
        self.keep_data = keep_data
        self.live = model.live_paths()
        self.placed: dict[int, str] = {}
        self.summary: dict[str, Any] = {
            "pending_ops": len(model.pending),
            "volatile": model.volatile(),
            "persisted_ops": [],
            "dirty_files": len(model.dirty),
            "kept_unsynced_bytes": 0,
            "dropped_unsynced_bytes": 0,
        }

    def directories(self) -> dict[int, dict[str, int]]:
        dirs = {d: dict(entries) for d, entries in self.model.durable_dirs.items()}
        chosen = [op for op in self.model.pending if self.rng.random() < self.persist]
        for op in _ordered_sample(chosen, self.rng):
            self.summary["persisted_ops"].append(f"{op.seq}:{op.kind}")
            for dir_obj, name, obj in op.effects:
                entries = dirs.setdefault(dir_obj, {})
                if obj is None:
                    entries.pop(name, None)
                else:
                    entries[name] = obj
        return dirs

    def _live_bytes(self, obj: int) -> bytes | None:
        path = self.live.get(obj)
        if path is None:
            return None
        with open(path, "rb") as f:
            return f.read()

    def file_bytes(self, obj: int) -> bytes:
        model = self.model
        if obj in model.shadowed:
            data = Path(model.shadow_path(obj)).read_bytes()
        elif obj in model.created:
            data = b""
        else:
            data = self._live_bytes(obj) or b""  # untouched since the mount
        start = model.dirty.get(obj)
        if start is None:
            return data
        current = self._live_bytes(obj)
        if current is None or len(current) <= start:
            return data
        unsynced = len(current) - start
        if self.rng.random() < self.keep_data:
            upto = start + self.rng.randint(0, unsynced)
            data = current[:upto] + data[upto:]
            self.summary["kept_unsynced_bytes"] += upto - start
            unsynced -= upto - start
        self.summary["dropped_unsynced_bytes"] += unsynced
        return data

    def build(self, dirs: dict[int, dict[str, int]], obj: int, dest: str, seen: set[int]) -> None:
        """Write directory ``obj``'s durable entries under ``dest`` (hard links kept)."""
        seen.add(obj)
        for name, child in sorted(dirs.get(obj, {}).items()):
            path = os.path.join(dest, name)
            kind = self.model.kind.get(child, "file")
            if kind == "dir":
                if child in seen:
                    continue  # a directory cannot have two names: keep the first
                os.mkdir(path, 0o755)
                self.build(dirs, child, path, seen)
            elif kind == "symlink":
                os.symlink(self.model.symlink_target.get(child, ""), path)
            elif child in self.placed:
                os.link(self.placed[child], path)
            else:
                with open(path, "wb") as f:
                    f.write(self.file_bytes(child))
                live = self.live.get(child)
                if live is not None:
                    os.chmod(path, stat.S_IMODE(os.lstat(live).st_mode))
                self.placed[child] = path


class CrashFS(PassthroughFS):
    """Pass-through with a durable image and power cuts; see the module docstring."""

    control_name = CONTROL_NAME
    control_writable = True

    def __init__(self, backing: str, stats: Stats, args: argparse.Namespace) -> None:
        super().__init__(backing, stats)
        self.args = args
        self.state = Path(args.state)
        self.mutex = threading.RLock()
        self.frozen = False
        self.cuts = 0
        self.last_cut: dict[str, Any] | None = None
        self.model = DurableModel(self.root, self.state)
        self.handles: dict[int, int] = {}  # backing descriptor -> object

    # -- hooks -----------------------------------------------------------------------
    def _op(self, name: str, path: str | None = None, other: str = "") -> None:
        if self.frozen:
            raise mfusepy.FuseOSError(errno.EIO)
        super()._op(name, path, other)

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[DurableModel]:
        with self.mutex:
            if self.frozen:
                raise mfusepy.FuseOSError(errno.EIO)
            yield self.model

    def configure(self, config: Any) -> None:
        super().configure(config)
        # One mount over a private directory: the kernel's caches can only be right.
        config.attr_timeout = self.args.attr_timeout
        config.entry_timeout = self.args.attr_timeout
        config.negative_timeout = 0
        config.hard_remove = 1  # an unlinked open file has no name left, as on a local disk

    def snapshot(self) -> bytes:
        with self.mutex:
            body = self.stats.body()
            body.update(
                pending_ops=len(self.model.pending),
                dirty_files=len(self.model.dirty),
                volatile=self.model.volatile(),
                frozen=self.frozen,
                cuts=self.cuts,
                last_cut=self.last_cut,
            )
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    def command(self, data: bytes) -> None:
        words = data.decode(errors="replace").split()
        if words == ["sync"]:
            with self._mutation() as model:
                model.sync_all()
        elif words[:1] == ["cut"] and len(words) <= 2:
            self.power_cut(int(words[1]) if len(words) == 2 else self.args.seed)
        else:
            raise mfusepy.FuseOSError(errno.EINVAL)

    def power_cut(self, seed: int) -> None:
        """Drop the volatile layer: BACKING keeps the durable image only; then refuse everything."""
        with self._mutation() as model:
            self.frozen = True
            self.cuts += 1
            cut = PowerCut(
                model, random.Random(seed), self.args.persist_fraction, self.args.keep_data_fraction
            )
            image = self.state / f"image-{os.getpid()}"
            lost = self.state / f"lost-{os.getpid()}"
            image.mkdir()
            lost.mkdir()
            cut.build(cut.directories(), model.root_obj, str(image), set())
            for name in os.listdir(self.root):
                os.rename(os.path.join(self.root, name), lost / name)
            for name in os.listdir(image):
                os.rename(image / name, os.path.join(self.root, name))
            image.rmdir()
            cut.summary["seed"] = seed
            self.last_cut = cut.summary

    # -- namespace -----------------------------------------------------------------------
    def mkdir(self, path: str, mode: int) -> int:
        with self._mutation() as model:
            full = self._full(path)
            parent, name = model.parent_and_name(full)
            super().mkdir(path, mode)
            model.record("mkdir", path, [(parent, name, model.created_obj(full))])
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutation() as model:
            parent, name = model.parent_and_name(self._full(path))
            super().rmdir(path)
            model.record("rmdir", path, [(parent, name, None)])
        return 0

    def unlink(self, path: str) -> int:
        with self._mutation() as model:
            full = self._full(path)
            parent, name = model.parent_and_name(full)
            model.before_destroy(full)
            super().unlink(path)
            model.record("unlink", path, [(parent, name, None)])
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        with self._mutation() as model:
            old_full, new_full = self._full(old), self._full(new)
            obj = model.obj_of(old_full)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(new_full).st_ino == os.lstat(old_full).st_ino:
                    return super().rename(old, new, flags)  # two names of one file: a no-op
            old_parent, old_name = model.parent_and_name(old_full)
            new_parent, new_name = model.parent_and_name(new_full)
            if not flags:
                model.before_destroy(new_full)
            super().rename(old, new, flags)
            model.record(
                "rename", f"{old} -> {new}", [(old_parent, old_name, None), (new_parent, new_name, obj)]
            )
        return 0

    def link(self, target: str, source: str) -> int:
        with self._mutation() as model:
            obj = model.obj_of(self._full(source))
            parent, name = model.parent_and_name(self._full(target))
            super().link(target, source)
            model.record("link", f"{target} = {source}", [(parent, name, obj)])
        return 0

    def symlink(self, target: str, source: str) -> int:
        with self._mutation() as model:
            full = self._full(target)
            parent, name = model.parent_and_name(full)
            super().symlink(target, source)
            model.record("symlink", target, [(parent, name, model.created_obj(full))])
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self._mutation() as model:
            full = self._full(path)
            parent, name = model.parent_and_name(full)
            super().mknod(path, mode, dev)
            model.record("create", path, [(parent, name, model.created_obj(full))])
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mutation() as model:
            self._op("fsyncdir", path)
            model.sync_dir(self._full(path))  # no fsync of the backing disk: durability is modelled
        return 0

    # -- files ---------------------------------------------------------------------------
    @staticmethod
    def _preserve(model: DurableModel, full: str) -> int:
        """Keep the durable bytes of the file at ``full`` before it changes; its object."""
        obj = model.obj_of(full)
        fd = os.open(full, os.O_RDONLY)
        try:
            model.before_modify(obj, fd)
        finally:
            os.close(fd)
        return obj

    def create(self, path: str, mode: int, fi: Any) -> int:
        with self._mutation() as model:
            full = self._full(path)
            parent, name = model.parent_and_name(full)
            existed = os.path.lexists(full)
            if existed and fi.flags & os.O_TRUNC and not fi.flags & os.O_EXCL:
                self._preserve(model, full)  # its bytes are about to go
            super().create(path, mode, fi)
            if existed:
                obj = model.obj_of(full)
                if fi.flags & os.O_TRUNC:
                    model.changed(obj, 0)
            else:
                obj = model.created_obj(full)
                model.record("create", path, [(parent, name, obj)])
            self.handles[fi.fh] = obj
            model.opened_as[obj] = path
        return 0

    def open(self, path: str, fi: Any) -> int:
        if path == self.control_name:
            return super().open(path, fi)
        with self._mutation() as model:
            full = self._full(path)
            obj = model.obj_of(full)
            if fi.flags & os.O_TRUNC:
                self._preserve(model, full)
                model.changed(obj, 0)
            super().open(path, fi)
            self.handles[fi.fh] = obj
            model.opened_as[obj] = path
        return 0

    def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
        if path == self.control_name:
            return super().write(path, data, offset, fi)
        with self._mutation() as model:
            obj = self.handles[fi.fh]
            model.before_modify(obj, fi.fh)
            written = super().write(path, data, offset, fi)
            model.changed(obj, offset)
        return written

    def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
        if path == self.control_name:
            return 0
        with self._mutation() as model:
            if fh is not None:
                fd = int(fh.fh if hasattr(fh, "fh") else fh)
                obj = self.handles[fd]
                model.before_modify(obj, fd)
            else:
                full = self._full(str(path))
                obj = self._preserve(model, full)
            super().truncate(path, length, fh)
            model.changed(obj, length)
        return 0

    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        if path == self.control_name:
            return 0
        with self._mutation() as model:
            self._op("fsync", path)
            model.sync_file(self.handles[fi.fh], fi.fh)  # no fsync of the backing disk
        return 0

    def release(self, path: str | None, fi: Any) -> int:
        if path == self.control_name:
            return super().release(path, fi)
        with self.mutex:
            self.handles.pop(fi.fh, None)
            self.stats.add("release")
            os.close(fi.fh)  # also after the cut: the descriptor is ours to close
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self._mutation():
            return super().chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._mutation():
            return super().chown(path, uid, gid)

    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> int:
        with self._mutation():
            return super().utimens(path, times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--state", required=True, help="bookkeeping directory, outside BACKING")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cut's random choices")
    parser.add_argument("--persist-fraction", type=float, default=0.5)
    parser.add_argument("--keep-data-fraction", type=float, default=0.5)
    parser.add_argument("--attr-timeout", type=float, default=1.0)
    parser.add_argument("--stats", default=None, help="write JSON counters here")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.backing):
        parser.error(f"backing directory {args.backing} does not exist")
    meta = {"mountpoint": os.path.abspath(args.mountpoint), "backing": os.path.abspath(args.backing)}
    stats = Stats(COUNTERS, {**meta, "seed": args.seed})
    fs = CrashFS(args.backing, stats, args)
    serve(fs, args.mountpoint, tag="crash_fuse", stats_path=args.stats, debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
