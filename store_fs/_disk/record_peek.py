"""The newest revision of a rollout record as plain JSON, read without any cache; and how any
reader reads one revision file.

:class:`~store_fs._disk.rollout_history.RecordStore` keeps every record it reads (a process reads
the same rollouts again and again) and validates it into models. A bulk reader that reads each
rollout once (the data views, ``store_fs/datasets``) needs neither: :func:`newest_revision` lists
``history/`` once, reads the highest revision and parses its JSON, nothing kept. Revisions are
immutable and the highest is the truth (docs/format.md), so this reads what ``RecordStore`` would,
and fails where it fails: a newest revision that cannot be read is damage to report, never a
reason to show the rollout as it was one revision earlier.
"""

from __future__ import annotations

import os
from typing import Any

from store_fs._disk import codec, fsio
from store_fs._disk.layout import Layout, revision_name
from store_fs.errors import CorruptRecordError

__all__ = ["newest_revision", "read_identified_revision_file", "read_revision_file"]

# Listings that name a revision gone by the time it is read (``agl prune`` moving the rollout
# away) before the rollout counts as absent.
_RELISTS = 3


def read_revision_file(path: str) -> bytes | None:
    """The bytes of a revision file; None if no such name exists.

    A name that exists yet is no readable file is damage (a revision is only ever a regular
    file, docs/format.md): a directory, a symbolic link loop or one pointing nowhere raises
    :class:`CorruptRecordError` naming it, so that ``agl check`` reports it and ``--fix`` can
    move it aside, instead of every reader failing with an error about the filesystem.
    """
    found = read_identified_revision_file(path)
    return None if found is None else found[0]


def read_identified_revision_file(path: str) -> tuple[bytes, fsio.FileIdentity] | None:
    """:func:`read_revision_file`, with the file's :func:`~store_fs._disk.fsio.identity`."""
    try:
        data, st = fsio.read_regular(path)  # one fstat: open()'s own would be a second NFS request
    except OSError as err:
        what = fsio.broken_name(err, path)
        if what is not None:
            raise CorruptRecordError(path, f"{what}, not a revision file") from None
        if isinstance(err, (FileNotFoundError, NotADirectoryError)):
            return None
        raise
    return data, fsio.identity(st)


def newest_revision(
    layout: Layout, rollout_id: str, *, at_least: int = 0
) -> tuple[int, dict[str, Any]] | None:
    """(revision number, parsed JSON object) of the rollout's newest revision; None if the rollout
    does not exist. A newest revision that is not a JSON object raises
    :class:`CorruptRecordError` (``agl check --fix`` moves it aside).

    ``at_least``: a revision the caller knows exists (an index line named it). It and those
    after it are looked up by name: on NFS a listing may come from the client's cache, made
    before they were, while a name never looked up is asked of the file server."""
    history = f"{layout.rollout_dir_str(rollout_id)}/history"
    for _ in range(_RELISTS):
        rev = _newest_name(history, at_least)
        if rev is None:
            return None
        path = f"{history}/{revision_name(rev)}"
        data = read_revision_file(path)
        if data is not None:
            return rev, _json_object(path, data)
        # removed meanwhile: look again
    return None


def _newest_name(history: str, at_least: int) -> int | None:
    """The highest revision number listed in ``history`` (or ``at_least`` and those found after
    it by name); None when there is none."""
    try:
        names = os.listdir(history)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise CorruptRecordError(history, "not a directory") from None
    revs = [int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()]
    if not revs:
        return None
    rev = max(*revs, at_least)
    if at_least:
        while os.path.exists(f"{history}/{revision_name(rev + 1)}"):
            rev += 1
    return rev


def _json_object(path: str, data: bytes) -> dict[str, Any]:
    try:
        body = codec.loads(data)
    except codec.DecodeError as err:
        raise CorruptRecordError(path, f"not JSON: {err}") from None
    if not isinstance(body, dict):
        raise CorruptRecordError(path, "not a JSON object")
    return body
