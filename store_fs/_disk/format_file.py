"""``FORMAT.json``: what makes a directory a store, its format version, and its durability.

The file is written when the store is made and replaced (whole, by rename) only when
someone changes the store's durability, under the maintenance lock. Stores made before
the setting existed have no ``durability`` key and read as ``"process"``; builds that do
not know the key ignore it, so the key needs no new format version.

The durability a process uses is the stronger of the store's setting and what the
process asked for (:func:`effective_durability`): a store declared durable stays durable
whichever program opens it (a runner, ``agl store``, a shell command), and a process may
ask for ``fsync`` on a store that does not require it.

A store made by this build also has a ``store_id`` (random), which ``agl store`` shows its
clients so that one never writes into another store by mistake; a store made before has
none (:attr:`StoreFormat.store_id` is None: its servers name no store, and their clients
check nothing; its directory's inode would not do, as two hosts see one NFS directory under
two device numbers). Older builds ignore the key.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, get_args

from store_fs._disk import codec, fsio
from store_fs._disk.context import Durability
from store_fs._disk.layout import FORMAT_VERSION, Layout
from store_fs._disk.maintenance import maintenance_lock
from store_fs.errors import CorruptRecordError, FormatVersionError, StoreNotFoundError

__all__ = [
    "DURABILITIES",
    "StoreFormat",
    "check_durability",
    "effective_durability",
    "format_body",
    "read_format",
    "require_store",
    "set_durability",
]

DURABILITIES: Final[tuple[Durability, ...]] = get_args(Durability)
# How long a change of the setting waits for the maintenance lock (a compaction or repair).
LOCK_WAIT_SECONDS: Final = 10.0


@dataclass(frozen=True)
class StoreFormat:
    """What ``FORMAT.json`` says."""

    version: int
    durability: Durability  # "process" when the file names none (stores made before the setting)
    store_id: str | None  # None for a store made before the key


def format_body(durability: Durability, *, created_by: str) -> bytes:
    """The bytes of a new store's ``FORMAT.json``, of this build's format, set to ``durability``."""
    return codec.dumps_record(
        {
            "format": "agl-store",
            "version": FORMAT_VERSION,
            "durability": durability,
            "created_by": created_by,
            "store_id": "st-" + uuid.uuid4().hex,
        }
    )


def _read_body(layout: Layout) -> dict[str, Any]:
    path = layout.format_file
    try:
        data = fsio.read_bytes(path)
    except IsADirectoryError:
        raise CorruptRecordError(str(path), "a directory, not the store's format file") from None
    except fsio.SpecialFileError as err:
        raise CorruptRecordError(str(path), f"{err.what}, not the store's format file") from None
    if data is None:
        raise StoreNotFoundError(str(layout.root))
    try:
        body = codec.loads(data)
    except ValueError:
        raise CorruptRecordError(str(path), "not JSON (torn or damaged)") from None
    if not isinstance(body, dict):
        raise CorruptRecordError(str(path), "no format version in it")
    return body


def read_format(layout: Layout) -> StoreFormat:
    """The store's format. :class:`StoreNotFoundError` without a ``FORMAT.json``,
    :class:`FormatVersionError` for another format version, :class:`CorruptRecordError` for a
    file that does not say (not JSON, no version, an unknown durability)."""
    body = _read_body(layout)
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptRecordError(str(layout.format_file), "no format version in it")
    if version != FORMAT_VERSION:
        raise FormatVersionError(str(layout.root), version, FORMAT_VERSION)
    try:
        durability = check_durability(body.get("durability", "process"))
    except ValueError as err:
        raise CorruptRecordError(str(layout.format_file), str(err)) from None
    store_id = body.get("store_id")
    if not (
        isinstance(store_id, str)
        and store_id.isascii()
        and store_id.isprintable()
        and 0 < len(store_id) <= 100
    ):
        store_id = None
    return StoreFormat(version, durability, store_id)


def require_store(layout: Layout, store_id: str | None = None) -> None:
    """Raise :class:`StoreNotFoundError` unless ``layout.root`` still holds a store (its
    ``FORMAT.json``, which is only ever replaced by rename, so never missing while the store
    is there), and with ``store_id``, that store (another put at its path has another id). A
    follower (``agl data --follow``, ``agl events --follow``) looks at every tick: a store
    removed, moved away or replaced meanwhile reads as an empty one, or another, otherwise."""
    root = str(layout.root)
    try:
        os.stat(layout.format_file)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreNotFoundError.rebuild(
            f"no store at {root} any more (removed or moved away while it was read)", {"root": root}
        ) from None
    if store_id is not None and read_format(layout).store_id != store_id:
        raise StoreNotFoundError.rebuild(
            f"the store at {root} was replaced while it was read (it was {store_id})", {"root": root}
        )


def check_durability(value: object) -> Durability:
    """``value`` if it names a durability; ValueError (naming it) otherwise."""
    if value not in DURABILITIES:
        raise ValueError(f"durability must be 'process' or 'fsync', not {value!r}")
    return value


def effective_durability(asked: Durability | None, store: Durability) -> Durability:
    """What a process that asked for ``asked`` (None: nothing) uses on a store set to ``store``."""
    return "fsync" if "fsync" in (asked, store) else "process"


def set_durability(root: Path, durability: Durability) -> Durability:
    """Set the store's durability; the setting it had. Processes that have the store open keep
    theirs until they open it again.

    Takes the maintenance lock, waiting up to ``LOCK_WAIT_SECONDS`` for a repair or another
    change to end (then :class:`~store_fs.errors.MaintenanceBusyError`). Going to ``fsync``
    first flushes everything written so far (``sync(2)``), so what the store held before is
    as durable as what comes after. The new file is fsynced and published by rename, so a
    crash or power cut leaves the old setting or the new one, never a torn file.
    """
    layout = Layout(root)
    if read_format(layout).durability == durability:
        return durability  # nothing to change: no need to wait for a repair's lock
    with maintenance_lock(layout, timeout=LOCK_WAIT_SECONDS):
        before = read_format(layout).durability
        if before != durability:
            if durability == "fsync":
                os.sync()
            body = _read_body(layout)  # every other key as it was, unknown ones included
            body["durability"] = durability
            fsio.publish(layout.format_file, codec.dumps_record(body), durable=True)
        return before
