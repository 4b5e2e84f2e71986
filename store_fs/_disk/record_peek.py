"""The newest revision of a rollout record as plain JSON, read without any cache.

:class:`~store_fs._disk.rollout_history.RecordStore` keeps every record it reads (a process reads
the same rollouts again and again) and validates it into models. A bulk reader that reads each
rollout once (the data views, ``store_fs/datasets``) needs neither: :func:`newest_revision` lists
``history/`` once, reads the highest revision and parses its JSON, nothing kept. Revisions are
immutable and the highest is the truth (docs/format.md), so this reads what ``RecordStore`` would.
"""

from __future__ import annotations

import os
from typing import Any

from store_fs._disk import codec
from store_fs._disk.layout import Layout

__all__ = ["newest_revision"]


def newest_revision(layout: Layout, rollout_id: str) -> tuple[int, dict[str, Any]] | None:
    """(revision number, parsed JSON) of the rollout's newest readable revision; None if the
    rollout does not exist. A revision that does not parse as a JSON object is skipped for the
    one before it (``agl check`` reports it)."""
    history = f"{layout.rollout_dir_str(rollout_id)}/history"
    try:
        names = os.listdir(history)
    except (FileNotFoundError, NotADirectoryError):
        return None
    revs = sorted((int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()), reverse=True)
    for rev in revs:
        try:
            with open(f"{history}/{rev:08d}.json", "rb") as f:
                body = codec.loads(f.read())
        except FileNotFoundError:
            return newest_revision(layout, rollout_id)  # removed meanwhile: look again
        except codec.DecodeError:
            continue
        if isinstance(body, dict):
            return rev, body
    return None
