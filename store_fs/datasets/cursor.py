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
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from store_fs._disk import codec, fsio
from store_fs._disk.index_cursor import IndexPosition, read_finished_at
from store_fs.errors import CorruptRecordError

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["Cursor"]

log = logging.getLogger(__name__)

_FORMAT = "agl-cursor"
# Version 2: the reader follows late-spans announcements (store_fs/_disk/index_cursor.py). A
# build before them would resume a version-2 cursor and skip those silently, so it is made to
# refuse it; version 1 cursors are read as they are.
_VERSION = 2
_READ_VERSIONS = (1, 2)


class Cursor:
    """Where a reader is in a store's stream of finished rollouts."""

    def __init__(
        self, position: IndexPosition | None = None, retry: list[tuple[str, int]] | None = None
    ) -> None:
        self._position = position if position is not None else IndexPosition()
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
        return cls(IndexPosition.at_end(store.layout.rollout_index))

    def copy(self) -> Cursor:
        """A cursor at the same place, moving on its own."""
        return Cursor(IndexPosition(dict(self._position.files)), self.retry)

    def rewind(self, to: Cursor) -> None:
        """Go back (or forward) to where ``to`` is."""
        self._position = IndexPosition(dict(to._position.files))
        self.retry = list(to.retry)

    def finished(self, store: FileStore) -> list[str]:
        """Ids of the rollouts that finished since the last call, and move past them."""
        return [rollout_id for rollout_id, _rev in self.finished_at(store)]

    def finished_at(self, store: FileStore) -> list[tuple[str, int]]:
        """:meth:`finished`, each id with the revision of the record that was read finished: a
        reader of the rollout reads at least that one (on NFS a listing of its history may come
        from a cache that does not show it yet)."""
        if not store.layout.rollout_index_marker.exists():
            log.warning(
                "the rollout index of %s is incomplete (a store from an older build?): rollouts "
                "without index lines are not seen until `agl check --fix` rebuilds it",
                store.root,
            )
        return read_finished_at(store.layout, self._position, store._records)

    # -- saving ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        retry = {"retry": [[rollout_id, rev] for rollout_id, rev in self.retry]} if self.retry else {}
        return {"format": _FORMAT, "version": _VERSION, **self._position.to_json(), **retry}

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
        return cls(IndexPosition.from_json(data), [(item[0], item[1]) for item in retry])

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
            return cls.from_json(codec.loads(data))
        except codec.DecodeError as err:
            raise CorruptRecordError(str(path), f"not JSON: {err}") from None
        except ValueError as err:  # JSON, but not a cursor
            raise CorruptRecordError(str(path), str(err)) from None
