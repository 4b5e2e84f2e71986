"""A reader's place in a store: which finished rollouts it has already read.

A :class:`Cursor` is a position in the store's rollout index logs (per log file, its inode and the
bytes read; :mod:`store_fs._disk.index_cursor`). :meth:`Cursor.finished` returns the rollouts that
finished since the last call and moves the cursor past them, reading only the bytes the logs gained
meanwhile, never the whole store. Saved with :meth:`Cursor.save` (a small JSON file, published
whole) and loaded with :meth:`Cursor.load`, it lets a restarted trainer go on where it stopped::

    cursor = Cursor.load("runs/exp1-cursor.json", missing="start")
    for rollout_id in cursor.finished(store):
        ...
    cursor.save("runs/exp1-cursor.json")

Each finishing is reported once (a rollout retried after it failed is reported again when it
finishes again), and a rollout given spans after it finished (a reward from a grader) is
reported again: a reader takes a rollout's newest rows as the ones that count. A metadata
update is not reported. A cursor saved after rows were consumed gives at-least-once delivery
across a crash: rows read after the last save come again. Cursors are saved as version 2 (a
build before late spans were announced refuses them); version 1 cursors load.

A cursor belongs to one store: its positions name that store's log files by inode, and in
another store (or a copy of this one, whose files have other inodes) they would read as logs
rebuilt, and the reader would go on from the end, skipping the whole backlog for good. So a
cursor holds the identity of the store it was first used with (:class:`StoreIdentity`: the
``store_id`` of ``FORMAT.json`` and the inode of its ``rollouts/`` directory), and using it with
another raises :class:`~store_fs.errors.CursorMismatchError`. A cursor saved without one (by an
older build, or never used yet) is adopted by the store it is first used with, unless its
positions name index logs this store has never had (none of them a log or covered by a
segment of it): a cursor of another store, or of this one before its index was rebuilt.
A follower whose store was replaced at its path (another ``store_id`` there now) stops with
:class:`~store_fs.errors.StoreNotFoundError`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from store_fs._disk import codec, fsio, log_segments
from store_fs._disk.format_file import read_format, require_store
from store_fs._disk.index_cursor import IndexPosition, read_finished_at
from store_fs._disk.rollout_index import INDEX_LOGS
from store_fs.errors import CorruptRecordError, CursorMismatchError, StoreNotFoundError

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["Cursor", "StoreIdentity"]

log = logging.getLogger(__name__)

_FORMAT = "agl-cursor"
# Version 2: the reader follows late-spans announcements (store_fs/_disk/index_cursor.py). A
# build before them would resume a version-2 cursor and skip those silently, so it is made to
# refuse it; version 1 cursors are read as they are.
_VERSION = 2
_READ_VERSIONS = (1, 2)


@dataclass(frozen=True)
class StoreIdentity:
    """Which store a cursor reads: ``FORMAT.json``'s ``store_id`` (None for a store made before
    stores had ids) and the inode of its ``rollouts/`` directory, made once with the store. The
    id alone would not tell a copy of a store (same ``FORMAT.json``, files of other inodes) from
    the store; the inode alone could be reused by a store made after another was removed. Not
    the store directory's own inode: every file system's root has the same one, and a store is
    often a volume's root (copied with rsync, it kept it). Inode numbers are the file server's,
    the same on every NFS client (the device number is not, so it is left out). A store moved
    within its file system keeps both."""

    store_id: str | None
    inode: int

    @classmethod
    def of(cls, store: FileStore) -> StoreIdentity:
        """The identity of the store at ``store``'s path now (``FORMAT.json`` read again: one
        put there since has another id); :class:`~store_fs.errors.StoreNotFoundError` when it is
        gone (removed or moved away)."""
        require_store(store.layout)
        try:
            store_id = read_format(store.layout).store_id
            inode = os.stat(store.layout.rollouts).st_ino
        except (FileNotFoundError, NotADirectoryError):
            require_store(store.layout)  # gone since: raises
            raise
        return cls(store_id, inode)

    def describe(self) -> str:
        return f"{self.store_id or 'a store without an id'}, rollouts/ inode {self.inode}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.store_id, "inode": self.inode}

    @classmethod
    def from_json(cls, data: Any) -> StoreIdentity:
        if (
            not isinstance(data, dict)
            or not (data.get("id") is None or isinstance(data.get("id"), str))
            or type(data.get("inode")) is not int
            or data["inode"] < 0
        ):
            raise ValueError(f"bad cursor 'store': {data!r}")
        return cls(data["id"], data["inode"])


class Cursor:
    """Where a reader is in a store's stream of finished rollouts."""

    def __init__(
        self,
        position: IndexPosition | None = None,
        retry: list[tuple[str, int]] | None = None,
        store: StoreIdentity | None = None,
    ) -> None:
        self._position = position if position is not None else IndexPosition()
        #: The store this cursor reads (None until it is first used: adopted then).
        self.store: StoreIdentity | None = store
        #: The file the cursor was loaded from, named by the error of a foreign cursor.
        self.path: str | None = None
        # The warning about a store without a complete index, given once: a follower reads
        # four times a second.
        self._warned_incomplete = False
        #: Rollouts read but left out (their spans damaged), each with the revision to read at
        #: least: a data reader tries them again at its next read, before anything new, until
        #: they read whole (after ``agl check --fix``). Saved with the cursor.
        self.retry: list[tuple[str, int]] = list(retry or [])

    @classmethod
    def start(cls) -> Cursor:
        """Before everything: the first :meth:`finished` returns every rollout finished so far."""
        return cls()

    @classmethod
    def now(cls, store: FileStore) -> Cursor:
        """After everything written so far: only rollouts that finish from now on are returned."""
        return cls(IndexPosition.at_end(store.layout.rollout_index), store=StoreIdentity.of(store))

    def copy(self) -> Cursor:
        """A cursor at the same place, moving on its own."""
        twin = Cursor(IndexPosition(dict(self._position.files)), self.retry, self.store)
        twin.path = self.path
        return twin

    def rewind(self, to: Cursor) -> None:
        """Go back (or forward) to where ``to`` is."""
        self._position = IndexPosition(dict(to._position.files))
        self.retry = list(to.retry)
        self.store = to.store

    def check_store(self, store: FileStore) -> None:
        """Adopt ``store`` if the cursor belongs to none yet; raise
        :class:`~store_fs.errors.CursorMismatchError` if it belongs to another."""
        found = StoreIdentity.of(store)
        if self.store is None:
            self._check_positions(store)
            self.store = found
        elif self.store != found:
            if self.path is None:  # this run's own cursor: the store was replaced under it
                root = str(store.root)
                raise StoreNotFoundError.rebuild(
                    f"the store at {root} was replaced while it was read ({found.describe()} there "
                    f"now, was {self.store.describe()})",
                    {"root": root},
                )
            raise CursorMismatchError(self.path, self.store.describe(), f"{store.root} ({found.describe()})")

    def _check_positions(self, store: FileStore) -> None:
        """Before adopting ``store``: a cursor whose positions name only index logs this store
        has never had (neither a log of it nor one a segment of it covers) was saved for another."""
        # By name and inode: one process writing two stores names its logs alike in both.
        named = {(name, ino) for name, (ino, _offset) in self._position.files.items()}
        if not named:
            return
        listing = log_segments.scan(store.layout.rollout_index, INDEX_LOGS)
        known = {(name, log.ino) for name, log in listing.files.items()} | set(listing.covered)
        if named & known:
            return
        raise CursorMismatchError(
            self.path or "given",
            "one whose index logs this store has none of: another, or this one before a rebuild",
            str(store.root),
        )

    def finished(self, store: FileStore) -> list[str]:
        """Ids of the rollouts that finished since the last call, and move past them."""
        return [rollout_id for rollout_id, _rev in self.finished_at(store)]

    def finished_at(self, store: FileStore) -> list[tuple[str, int]]:
        """:meth:`finished`, each id with the revision of the record that was read finished: a
        reader of the rollout reads at least that one (on NFS a listing of its history may come
        from a cache that does not show it yet). A cursor of another store raises
        :class:`~store_fs.errors.CursorMismatchError` (see the module's docstring)."""
        self.check_store(store)  # and the store still there: a follower must not wait on a ghost
        if not store.layout.rollout_index_marker.exists() and not self._warned_incomplete:
            self._warned_incomplete = True
            log.warning(
                "the rollout index of %s is incomplete (a store from an older build?): rollouts "
                "without index lines are not seen until `agl check --fix` rebuilds it",
                store.root,
            )
        return read_finished_at(store.layout, self._position, store._records)

    # -- saving ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        retry = {"retry": [[rollout_id, rev] for rollout_id, rev in self.retry]} if self.retry else {}
        # "store" is optional, so the version stays 2: a build before it ignores the key (and
        # checks nothing, as before), and a cursor without it is adopted at its first use.
        store = {"store": self.store.to_json()} if self.store is not None else {}
        return {"format": _FORMAT, "version": _VERSION, **store, **self._position.to_json(), **retry}

    @classmethod
    def from_json(cls, data: Any) -> Cursor:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not an agl cursor (expected {'format': 'agl-cursor', 'version': 2, ...})")
        if data.get("version") not in _READ_VERSIONS:
            raise ValueError(f"an agl cursor of version {data.get('version')!r}, newer than this build reads")
        retry = data.get("retry", [])  # optional: builds before it ignore it
        if not isinstance(retry, list) or not all(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and type(item[1]) is int
            and item[1] >= 0
            for item in retry
        ):
            raise ValueError(f"bad cursor 'retry' list: {retry!r}")
        store = StoreIdentity.from_json(data["store"]) if data.get("store") is not None else None
        return cls(IndexPosition.from_json(data), [(item[0], item[1]) for item in retry], store)

    def save(self, path: str | Path) -> None:
        """Write the cursor to ``path``, whole (temporary file, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fsio.publish(target, codec.dumps_record(self.to_json()))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        missing: Literal["start", "now", "error"] = "error",
        store: FileStore | None = None,
    ) -> Cursor:
        """The cursor saved at ``path``. A missing file gives a cursor at the ``start``, at the
        store's end (``now``, which needs ``store``), or raises ``FileNotFoundError``."""
        data = fsio.read_bytes(Path(path))
        if data is None:
            if missing == "start":
                return cls.start()
            if missing == "now":
                if store is None:
                    raise ValueError("missing='now' needs the store")
                return cls.now(store)
            raise FileNotFoundError(str(path))
        try:
            cursor = cls.from_json(codec.loads(data))
        except codec.DecodeError as err:
            raise CorruptRecordError(str(path), f"not JSON: {err}") from None
        except ValueError as err:  # JSON, but not a cursor
            raise CorruptRecordError(str(path), str(err)) from None
        cursor.path = str(path)
        return cursor
