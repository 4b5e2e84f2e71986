"""Versioned, content-addressed resource snapshots.

* ``resources/objects/<2 hex>/<sha256>.json``: the JSON of a ``NamedResources`` body, its
  names and keys in the caller's order (the runner gives an agent the *first* prompt
  template or LLM, as upstream does; objects written before kept sorted keys). Immutable;
  the same body is stored once.
* ``resources/by-id/<resources_id>/<version>.json``: one file per version of a
  snapshot id (``update_resources`` on an existing id adds the next version).
  Versions are allocated by exclusive create: two writers never get one number.
* ``resources/versions/<n>.json``: the global publication order. The highest
  ``n`` names the latest snapshot (upstream's ``get_latest_resources``).
"""

from __future__ import annotations

import hashlib
import re
import threading
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from store_fs._disk import codec, fsio
from store_fs._disk.context import Context
from store_fs._disk.ids import check_name_id, new_resources_id
from store_fs._disk.layout import revision_name
from store_fs.errors import CorruptRecordError, InvalidIdError, UnstorableValueError
from store_fs.models import NamedResources, ResourcesUpdate

__all__ = ["ResourceStore"]


@cache
def _named() -> TypeAdapter[NamedResources]:
    # Built on first use: building it takes ~15 ms, at the start of every agl command otherwise.
    return TypeAdapter(NamedResources)


_DIGEST = re.compile(r"[0-9a-f]{64}")


# Digits in the names of publications (``versions/00000009.json``, as ``revision_name``) and of
# an id's versions (``by-id/<id>/000002.json``).
_PUBLICATION_DIGITS = 8
_VERSION_DIGITS = 6


def _num(name: str, digits: int) -> int | None:
    """The number a file name holds: only the store's own names (``00000009.json``). A stray
    ``9.json`` counted as publication 9, whose file (``00000009.json``) is not there: the
    latest resources then read as none published."""
    stem = name[:-5] if name.endswith(".json") else ""
    if not (stem.isascii() and stem.isdigit()):
        return None
    number = int(stem)
    return number if f"{number:0{digits}d}" == stem else None  # past 10**digits: more digits


def _highest(directory: Path, digits: int = _VERSION_DIGITS) -> int:
    numbers = (_num(name, digits) for name in fsio.list_names(directory))
    return max((n for n in numbers if n is not None), default=0)


class _Cursor:
    def __init__(self) -> None:
        self.global_version = -1
        self.lock = threading.Lock()


class ResourceStore:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._layout = ctx.layout

    def _cursor(self) -> _Cursor:
        cursor: _Cursor = self._ctx.local("resources-cursor", _Cursor)
        return cursor

    def _load(self, path: Path) -> dict[str, Any] | None:
        data = fsio.read_bytes(path)
        if data is None:
            return None
        try:
            obj = codec.loads(data)
        except codec.DecodeError as err:
            raise CorruptRecordError(str(path), str(err)) from None
        if not isinstance(obj, dict):
            raise CorruptRecordError(str(path), "not a JSON object")
        return obj

    def _write_object(self, resources: NamedResources) -> str:
        # Before the JSON dump below, which would make NaN null and keys written alike one.
        reason = codec.unstorable_reason(resources)
        if reason is not None:
            raise UnstorableValueError("the resources", reason)
        try:
            data = _named().dump_python(resources, mode="json")
        except ValueError as err:  # pydantic's serializer: nesting deeper than it goes
            raise UnstorableValueError("the resources", str(err)) from None
        codec.check_storable("the resources", data)  # new input: leaves room for answers
        body = codec.dumps_record(data, sort_keys=False)
        digest = hashlib.sha256(body).hexdigest()
        path = self._layout.resource_object(digest)
        durable = self._ctx.durable
        # The fan-out directory's name made durable too: a body whose directory a power cut
        # forgot made the publication after it name a version whose body is missing (every
        # read of the latest resources failed; found by an adversarial pass).
        if not path.exists():
            fsio.make_dirs(path.parent, durable=durable, sync_leaf=False)
            fsio.create_exclusive(path, body, durable=durable)  # identical bytes if it exists
        elif durable:
            # Made by a writer that did not sync it (durability "process"): synced now, as it
            # is about to be named by a durable version.
            fsio.sync_data(path)
            fsio.fsync_dir(path.parent)
        return digest

    def _publish_latest(self, resources_id: str, version: int) -> None:
        cursor = self._cursor()
        body = codec.dumps_record({"resources_id": resources_id, "version": version})
        with cursor.lock:
            n = max(cursor.global_version, _highest(self._layout.resource_versions, _PUBLICATION_DIGITS)) + 1
            while not fsio.create_exclusive(
                self._layout.resource_versions / revision_name(n), body, durable=self._ctx.durable
            ):
                n += 1
            cursor.global_version = n

    def put(self, resources_id: str | None, resources: NamedResources) -> ResourcesUpdate:
        """Store a new snapshot (``resources_id=None``) or the next version of an existing id."""
        resources = _named().validate_python(resources)
        rid = check_name_id("resources", resources_id) if resources_id is not None else new_resources_id()
        digest = self._write_object(resources)
        directory = self._layout.resource_id_dir(rid)
        fsio.make_dirs(directory, durable=self._ctx.durable, sync_leaf=False)
        now = self._ctx.clock.time()
        while True:
            version = _highest(directory)
            latest_path = directory / f"{version:0{_VERSION_DIGITS}d}.json"
            latest = self._load(latest_path) if version else None
            created = latest.get("create_time") if latest is not None else now
            if isinstance(created, bool) or not isinstance(created, (int, float)):
                # Damaged (agl check reports it): a new version must not hide that it was.
                raise CorruptRecordError(str(latest_path), "no numeric create_time")
            record = {
                "resources_id": rid,
                "version": version + 1,
                "create_time": created,
                "update_time": now,
                "object": digest,
            }
            path = directory / f"{version + 1:0{_VERSION_DIGITS}d}.json"
            if fsio.create_exclusive(path, codec.dumps_record(record), durable=self._ctx.durable):
                break
        self._publish_latest(rid, version + 1)
        return ResourcesUpdate(
            resources_id=rid,
            version=version + 1,
            create_time=record["create_time"],
            update_time=now,
            resources=resources,
        )

    def _object_path(self, path: Path, record: dict[str, Any]) -> Path:
        """Where the body named by the version ``record`` (read from ``path``) is stored;
        :class:`CorruptRecordError` when it names none (a digest is 64 hex digits)."""
        digest = record.get("object")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise CorruptRecordError(str(path), f"'object' is not a sha256 digest: {digest!r}")
        return self._layout.resource_object(digest)

    def _materialise(self, path: Path, record: dict[str, Any]) -> ResourcesUpdate:
        body_path = self._object_path(path, record)
        body = self._load(body_path)
        if body is None:
            raise CorruptRecordError(str(path), f"its body {body_path} is missing")
        try:
            return ResourcesUpdate.model_validate({**record, "resources": body})
        except ValidationError as err:
            raise CorruptRecordError(str(path), str(err).splitlines()[0]) from None

    def read_version(self, path: Path) -> ResourcesUpdate | None:
        """The version stored at ``path`` (``by-id/<id>/<version>.json``) with its body, read
        as :meth:`get` reads the newest; None if the file is gone, :class:`CorruptRecordError`
        when it or its body cannot be read."""
        record = self._load(path)
        return None if record is None else self._materialise(path, record)

    def read_pointer(self, path: Path) -> tuple[str, int] | None:
        """``(resources_id, version)`` of the publication ``path`` (``versions/<n>.json``);
        None if the file is gone, :class:`CorruptRecordError` when it holds no such pair."""
        pointer = self._load(path)
        if pointer is None:
            return None
        rid, version = pointer.get("resources_id"), pointer.get("version")
        if not isinstance(rid, str) or type(version) is not int:
            raise CorruptRecordError(str(path), "needs a resources_id and an integer version")
        try:
            return check_name_id("resources", rid), version
        except InvalidIdError as err:
            raise CorruptRecordError(str(path), str(err)) from None

    def get(self, resources_id: str) -> ResourcesUpdate | None:
        rid = check_name_id("resources", resources_id)
        directory = self._layout.resource_id_dir(rid)
        version = _highest(directory)
        if not version:
            return None
        return self.read_version(directory / f"{version:0{_VERSION_DIGITS}d}.json")

    def latest(self) -> ResourcesUpdate | None:
        cursor = self._cursor()
        with cursor.lock:
            n = cursor.global_version
            if n < 0 or (self._layout.resource_versions / revision_name(n + 1)).exists():
                n = _highest(self._layout.resource_versions, _PUBLICATION_DIGITS)
            cursor.global_version = n
        if n <= 0:
            return None
        pointer = self.read_pointer(self._layout.resource_versions / revision_name(n))
        return None if pointer is None else self.get(pointer[0])

    def latest_id(self) -> str | None:
        latest = self.latest()
        return latest.resources_id if latest else None

    def all(self) -> list[ResourcesUpdate]:
        """Every snapshot id at its newest version, oldest snapshot first."""
        out = [self.get(entry.name) for entry in fsio.iter_dirs(self._layout.resource_ids)]
        return sorted((r for r in out if r is not None), key=lambda r: (r.create_time, r.resources_id))

    def count(self) -> int:
        """Resources ids with a version, as listings show them (a directory without one is an
        add that never finished: ``agl check`` reports it)."""
        return sum(1 for entry in fsio.iter_dirs(self._layout.resource_ids) if _highest(Path(entry.path)))
