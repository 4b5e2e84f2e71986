"""``agl check`` of ``resources/`` (:mod:`store_fs._disk.resource_versions`): bodies, versions
and publications.

Each file is read the way readers read it, so what makes ``agl enqueue``, ``resources list`` or
``report`` fail is reported here first, naming the file. Bodies are also hashed: a body is named
by the sha256 of its bytes, so one cut short or changed is found even where it still parses.

Nothing here is repaired. A body, a version or a publication holds what no other file holds
(a version names its body only by digest; a publication is the only record of the order in
which versions became the latest), so there is nothing to rebuild a lost or damaged one from,
and moving it away would change what readers get without a word. Each is reported, for a person
to restore from a copy (``git checkout``, an archive) or move aside. Temporary files a crashed
writer left are removed by the store-wide pass of :mod:`store_fs._disk.check`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from store_fs._disk import fsio
from store_fs._disk.check_findings import Problem
from store_fs._disk.context import Context
from store_fs._disk.ids import check_name_id
from store_fs._disk.resource_versions import ResourceStore
from store_fs._disk.server_clock import server_age
from store_fs.errors import CorruptRecordError, InvalidIdError

__all__ = ["resource_problems"]

_BODY = re.compile(r"([0-9a-f]{64})\.json")
#: A resources id directory with no version younger than this is an add in flight: not reported.
EMPTY_ID_AGE = 30.0
_NUMBERED = re.compile(r"[0-9]+\.json")  # what readers take for a version or a publication


def resource_problems(ctx: Context) -> list[Problem]:
    """Every body, version and publication under ``resources/`` that readers cannot use."""
    store = ResourceStore(ctx)
    layout = ctx.layout
    out = [
        p for fan in _sorted_names(layout.resource_objects) for p in _bodies(layout.resource_objects / fan)
    ]
    for name in _sorted_names(layout.resource_ids):
        out += _versions(store, ctx, layout.resource_ids / name)
    out += [p for name in _numbered(layout.resource_versions) for p in _publication(store, ctx, name)]
    return out


def _sorted_names(directory: Path) -> list[str]:
    return sorted(fsio.list_names(directory))


def _numbered(directory: Path) -> list[str]:
    return [name for name in _sorted_names(directory) if _NUMBERED.fullmatch(name)]


def _bodies(fan: Path) -> list[Problem]:
    """Bodies in one ``objects/<2 hex>/`` whose bytes do not hash to their name."""
    out: list[Problem] = []
    for name in _sorted_names(fan):
        named = _BODY.fullmatch(name)
        if named is None or not name.startswith(fan.name):
            continue  # not a body's name: no reader asks for it
        path = fan / name
        try:
            data = fsio.read_bytes(path)
        except OSError as err:
            out.append(Problem("corrupt-resource-object", str(path), f"cannot be read: {err.strerror}"))
            continue
        if data is None:
            continue  # removed since the listing
        if hashlib.sha256(data).hexdigest() != named.group(1):
            detail = f"its {len(data)} bytes do not hash to its name (cut short or changed)"
            out.append(Problem("corrupt-resource-object", str(path), detail))
    return out


def _older_than(ctx: Context, path: Path, seconds: float) -> bool:
    try:
        return server_age(ctx, path.stat().st_mtime) >= seconds
    except OSError:
        return False


def _versions(store: ResourceStore, ctx: Context, directory: Path) -> list[Problem]:
    """The versions in ``by-id/<id>/`` that cannot be read with their body."""
    if not directory.is_dir():
        return []  # readers list only directories
    try:
        check_name_id("resources", directory.name)
    except InvalidIdError as err:
        return [Problem("corrupt-resource-version", str(directory), str(err))]
    out: list[Problem] = []
    numbered = _numbered(directory)
    if not numbered and _older_than(ctx, directory, EMPTY_ID_AGE):
        detail = (
            "no version: an add that never finished (listings and counts leave it out; it may be removed)"
        )
        out.append(Problem("empty-resources-id", str(directory), detail))
    for name in numbered:
        path = directory / name
        try:
            update = store.read_version(path)
        except CorruptRecordError as err:
            # A body that cannot be read is named: the version is fine, its body is not.
            why = err.reason if err.path == str(path) else f"its body {err.path}: {err.reason}"
            out.append(Problem("corrupt-resource-version", str(path), why))
            continue
        except OSError as err:
            out.append(Problem("corrupt-resource-version", str(path), f"cannot be read: {err.strerror}"))
            continue
        if update is not None and (update.resources_id, update.version) != (directory.name, int(name[:-5])):
            detail = f"holds version {update.version} of {update.resources_id}, not the one its path names"
            out.append(Problem("corrupt-resource-version", str(path), detail))
    return out


def _publication(store: ResourceStore, ctx: Context, name: str) -> list[Problem]:
    """``versions/<name>`` when it cannot be read or publishes a version that is not there
    (the newest one decides what ``get_latest_resources`` returns)."""
    path = ctx.layout.resource_versions / name
    try:
        pointer = store.read_pointer(path)
    except CorruptRecordError as err:
        return [Problem("corrupt-resource-pointer", str(path), err.reason)]
    except OSError as err:
        return [Problem("corrupt-resource-pointer", str(path), f"cannot be read: {err.strerror}")]
    if pointer is None:
        return []
    # Checked now, not against the versions listed before: a version is written before it is
    # published, so one published since that listing is there.
    version = ctx.layout.resource_id_dir(pointer[0]) / f"{pointer[1]:06d}.json"
    if version.is_file():
        return []
    return [Problem("corrupt-resource-pointer", str(path), f"publishes {version}, which is not there")]
