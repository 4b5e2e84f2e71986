"""Consistency check and repair of a store (``FileStore.check``, ``agl check [--fix]``).

Each finding names a path and what is wrong. Repairs only ever finish what a
crashed process left half done or remove what no reader uses; a corrupt
complete record is reported, never rewritten or deleted.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import fsio
from .engine import Engine
from .errors import CorruptRecordError
from .queue import ClaimToken
from .span_log import BadLine
from .transitions import LIVE_ATTEMPT_STATUSES

__all__ = ["Problem", "check_store"]

TEMP_FILE_AGE = 3600.0


@dataclass(frozen=True)
class Problem:
    """One finding. ``fixed`` tells whether ``fix=True`` repaired it."""

    kind: str
    path: str
    detail: str
    fixed: bool = False

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}" + (" (fixed)" if self.fixed else "")


def _temp_files(root: Path, fix: bool) -> list[Problem]:
    out: list[Problem] = []
    now = time.time()
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = Path(directory) / name
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < TEMP_FILE_AGE:
                continue  # probably being written right now
            if fix:
                path.unlink(missing_ok=True)
            out.append(Problem("temp-file", str(path), f"left by a crashed writer {age:.0f}s ago", fix))
    return out


def _rollouts(engine: Engine, fix: bool) -> list[Problem]:
    out: list[Problem] = []
    pending = {(t.rollout_id, t.sequence_id) for t in engine.queue.list_pending()}
    for rollout_id in engine.records.all_ids():
        try:
            record = engine.records.get(rollout_id, cached_ok=False)
        except CorruptRecordError as err:
            out.append(Problem("corrupt-record", err.path, err.reason))  # type: ignore[attr-defined]
            continue
        mirror = str(engine.ctx.layout.mirror_file(rollout_id))
        if record is None:
            out.append(
                Problem("no-record", str(engine.ctx.layout.rollout_dir(rollout_id)), "no history revision")
            )
            continue
        if not engine.records.mirror_matches(rollout_id):
            if fix:
                engine.records.republish_mirror(rollout_id)
            out.append(Problem("stale-mirror", mirror, "differs from the newest history revision", fix))
        if (
            record.status in ("queuing", "requeuing")
            and (rollout_id, len(record.attempts) + 1) not in pending
        ):
            claimed = any(t.rollout_id == rollout_id for t in engine.queue.list_claimed())
            if not claimed:
                if fix:
                    engine.ensure_pending(record)
                out.append(Problem("not-queued", mirror, f"{record.status} but no pending token", fix))
        bad: list[BadLine] = []
        dirs = [engine.attempt_dir(a) for a in record.attempts]
        engine.spans.read(dirs, bad)
        out.extend(Problem("corrupt-span", str(b.path), f"byte {b.offset}: {b.reason}") for b in bad)
        for attempt in record.attempts:
            if attempt.status not in LIVE_ATTEMPT_STATUSES:
                out.extend(_torn_tails(engine.attempt_dir(attempt), fix))
    return out


def _torn_tails(attempt_dir: Path, fix: bool) -> list[Problem]:
    out: list[Problem] = []
    for name in fsio.list_names(attempt_dir):
        if not name.startswith("spans."):
            continue
        path = attempt_dir / name
        data = fsio.read_bytes(path) or b""
        end = data.rfind(b"\n") + 1
        if end < len(data):
            if fix:
                os.truncate(path, end)
            out.append(
                Problem("torn-tail", str(path), f"{len(data) - end} bytes after the last newline", fix)
            )
    return out


def _tokens(engine: Engine, fix: bool) -> list[Problem]:
    out: list[Problem] = []
    for entry in engine.queue.list_journal():
        if fix:
            engine.apply(entry)
        out.append(Problem("unapplied-decision", str(entry.path), f"{entry.kind} {entry.outcome}", fix))
    for token in engine.queue.list_claimed():
        record = engine.records.get(token.rollout_id)
        attempt = record.find(token.attempt_id) if record else None
        if attempt is not None and attempt.status in LIVE_ATTEMPT_STATUSES:
            continue
        path = engine.queue.claimed_path(token)
        if attempt is not None:  # decided through the record; the token is left over
            if fix:
                engine.queue.drop_claimed(ClaimToken(token.rollout_id, token.sequence_id, token.attempt_id))
            out.append(Problem("orphan-claim", str(path), f"attempt is {attempt.status}", fix))
        else:
            out.append(Problem("orphan-claim", str(path), "no attempt recorded; the reaper expires it"))
    for pending in engine.queue.list_pending():
        if not engine.records.exists(pending.rollout_id):
            if fix:
                engine.queue.discard_pending(pending)
            out.append(
                Problem("orphan-pending", str(engine.queue.pending_path(pending)), "no such rollout", fix)
            )
    return out


def check_store(engine: Engine, *, fix: bool = False) -> list[Problem]:
    """Every problem found in the store; with ``fix``, repaired where that is safe."""
    root = engine.ctx.layout.root
    return _tokens(engine, fix) + _rollouts(engine, fix) + _temp_files(root, fix)
