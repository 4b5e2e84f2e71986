"""``quarantine/``: what a repair took out of the store, kept with a note of what and why.

A repair never deletes damaged data. :func:`quarantine_file` moves a whole file (a corrupt
record revision) and :func:`quarantine_bytes` keeps bytes cut out of a file (a torn or
unparseable log line); both write ``<name>.note.json`` beside what they keep::

    quarantine/20261206T071502Z-<host>-<pid>/rollouts/ab/ro-ab12.../history/00000004.json
    quarantine/20261206T071502Z-<host>-<pid>/rollouts/ab/ro-ab12.../history/00000004.json.note.json

The directory mirrors the store's paths, so ``git diff`` and ``ls -R`` show what moved where,
and putting a file back is a ``mv``. Nothing in the store reads ``quarantine/``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from store_fs._disk import codec, fsio
from store_fs._disk.layout import Layout

__all__ = ["Quarantine"]


class Quarantine:
    """One repair's quarantine directory, made on first use."""

    def __init__(self, layout: Layout, writer: str, *, durable: bool = False) -> None:
        self._layout = layout
        #: The store's durability is "fsync": what is moved here is made durable here (a move
        #: a power cut half forgot lost the file from both places).
        self.durable = durable
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.directory = layout.root / "quarantine" / f"{stamp}-{writer}"

    def _target(self, path: Path) -> Path:
        target = self.directory / path.relative_to(self._layout.root)
        fsio.make_dirs(target.parent, durable=self.durable, sync_leaf=False)
        return target

    def _note(self, target: Path, original: Path, why: str, **extra: object) -> None:
        note = {
            "path": str(original.relative_to(self._layout.root)),
            "why": why,
            "time": time.time(),
            **extra,
        }
        fsio.publish(
            target.with_name(target.name + ".note.json"), codec.dumps_record(note), durable=self.durable
        )

    def quarantine_file(self, path: Path, why: str) -> Path:
        """Move ``path`` out of the store into quarantine; returns where it went."""
        target = self._target(path)
        os.replace(path, target)
        if self.durable:
            fsio.fsync_dir(target.parent)
            fsio.fsync_dir(path.parent)
        self._note(target, path, why)
        return target

    def quarantine_bytes(self, path: Path, data: bytes, offset: int, why: str) -> Path:
        """Keep ``data`` (cut from ``path`` at byte ``offset``) in quarantine; returns where."""
        target = self._target(path)
        target = target.with_name(f"{target.name}.{offset}")
        fsio.publish(target, data, durable=self.durable)
        self._note(target, path, why, offset=offset, length=len(data))
        return target
