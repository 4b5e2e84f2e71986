"""What the parts of ``agl check`` share: a finding (:class:`Problem`), and cutting lines that
cannot be read out of a log into quarantine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store_fs._disk import fsio
from store_fs._disk.quarantine import Quarantine

__all__ = ["Problem", "cut_lines"]


@dataclass(frozen=True)
class Problem:
    """One finding. ``fixed`` tells whether ``fix=True`` repaired it."""

    kind: str
    path: str
    detail: str
    fixed: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}" + (" (fixed)" if self.fixed else "")


def cut_lines(path: Path, offsets: list[int], quarantine: Quarantine, why: str) -> None:
    """Republish ``path`` without the lines starting at ``offsets``; each goes to quarantine
    with ``why``. Only for files nobody appends to any more: an appender holding the old file
    open would write its next lines to the replaced copy."""
    data = fsio.read_bytes(path) or b""
    kept: list[bytes] = []
    start = 0
    for offset in sorted(offsets):
        end = data.find(b"\n", offset) + 1 or len(data)
        kept.append(data[start:offset])
        quarantine.quarantine_bytes(path, data[offset:end], offset, why)
        start = end
    kept.append(data[start:])
    fsio.publish(path, b"".join(kept))
