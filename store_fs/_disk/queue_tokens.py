"""Queue tokens: small files whose name says what they stand for, moved by ``rename(2)``.

* ``queue/pending/<enqueue_us>-<rollout_id>-<seq>.json``: attempt ``seq`` of a
  rollout waits for a runner. Names sort in FIFO order.
* ``queue/claimed/<rollout_id>.<seq>.<attempt_id>.json``: a live attempt. Whoever
  moves this token out of ``claimed/`` decides the attempt's fate, exactly once.
* ``queue/done/<rollout_id>.<seq>.<attempt_id>.<status>.json`` and
  ``queue/expired/<...>.<reason>.json``: a decision taken and not yet fully
  applied to the rollout record. The mover applies it and removes the token; if
  it dies first, any reaper re-applies it (applying is idempotent).

Pending tokens are hints, not authority: the rollout record's compare-and-swap
decides which claimer creates attempt ``seq``, so a duplicate or stale pending
token costs one wasted rename, never a double execution.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from store_fs._disk import codec, fsio
from store_fs._disk.context import Context
from store_fs._disk.format_file import require_store
from store_fs._disk.server_clock import server_age

__all__ = ["ClaimToken", "JournalEntry", "PendingToken", "Queue"]

JournalKind = Literal["done", "expired"]


@dataclass(frozen=True)
class PendingToken:
    name: str
    rollout_id: str
    sequence_id: int

    @classmethod
    def parse(cls, name: str) -> PendingToken | None:
        stem, dot, ext = name.rpartition(".")
        parts = stem.split("-")
        # <us>-ro-<hex>-<seq>
        if ext != "json" or not dot or len(parts) != 4 or not parts[0].isdigit() or not parts[3].isdigit():
            return None
        return cls(name, f"{parts[1]}-{parts[2]}", int(parts[3]))


@dataclass(frozen=True)
class ClaimToken:
    rollout_id: str
    sequence_id: int
    attempt_id: str

    @property
    def name(self) -> str:
        return f"{self.rollout_id}.{self.sequence_id}.{self.attempt_id}.json"

    @classmethod
    def parse(cls, name: str) -> ClaimToken | None:
        parts = name.split(".")
        if len(parts) != 4 or parts[3] != "json" or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True)
class JournalEntry:
    kind: JournalKind
    token: ClaimToken
    outcome: str
    path: Path

    @classmethod
    def parse(cls, kind: JournalKind, path: Path) -> JournalEntry | None:
        parts = path.name.split(".")
        if len(parts) != 5 or parts[4] != "json" or not parts[1].isdigit():
            return None
        return cls(kind, ClaimToken(parts[0], int(parts[1]), parts[2]), parts[3], path)


class _Stamp:
    """Strictly increasing microsecond stamps within a process (FIFO for same-instant enqueues)."""

    def __init__(self) -> None:
        self.last = 0
        self.lock = threading.Lock()


# Tokens this process discarded that it remembers, for :meth:`Queue.discarded_here` (most are
# never asked about: a token is only asked about when a cached listing still held it; each new
# listing forgets them all).
_DISCARDED_KEPT = 10_000


class Queue:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._layout = ctx.layout
        # Claiming probes tokens other runners may have taken: string paths keep a lost
        # race at one failed rename, without building Path objects.
        self._pending_str = str(ctx.layout.pending)
        self._claimed_str = str(ctx.layout.claimed)

    def _stamp(self) -> int:
        stamp: _Stamp = self._ctx.local("queue-stamp", _Stamp)
        with stamp.lock:
            stamp.last = max(stamp.last + 1, int(self._ctx.clock.time() * 1_000_000))
            return stamp.last

    # -- pending -------------------------------------------------------------------
    def publish_pending(self, rollout_id: str, sequence_id: int) -> PendingToken:
        """Publish the token for attempt ``sequence_id``: an empty file, as its name says all.

        Empty, so ``O_EXCL`` creates it whole: two requests to an NFS server where a temporary
        file written and renamed into place was five (older builds wrote a JSON body, which
        nothing reads). A name that exists already is the same token.
        """
        name = f"{self._stamp():016d}-{rollout_id}-{sequence_id}.json"
        fsio.create_empty(self._layout.pending / name, durable=self._ctx.durable)
        return PendingToken(name, rollout_id, sequence_id)

    def list_pending(self) -> list[PendingToken]:
        """Pending tokens, oldest first. :class:`~store_fs.errors.StoreNotFoundError` when
        the store itself is gone (removed or moved away while open): an empty queue otherwise,
        and a runner polling it (``agl dequeue --wait``) would wait for ever."""
        try:
            names = os.listdir(self._layout.pending)
        except (FileNotFoundError, NotADirectoryError):
            require_store(self._layout)  # else only ``pending/`` is missing: ``agl check`` says so
            names = []
        tokens = (PendingToken.parse(n) for n in sorted(names) if not n.startswith("."))
        return [t for t in tokens if t is not None]

    def pending_path(self, token: PendingToken) -> Path:
        return self._layout.pending / token.name

    def discard_pending(self, token: PendingToken) -> bool:
        try:
            os.unlink(self.pending_path(token))
        except FileNotFoundError:
            return False
        discarded: set[PendingToken] = self._ctx.local("pending-discarded", set)
        if len(discarded) >= _DISCARDED_KEPT:
            discarded.clear()
        discarded.add(token)
        return True

    def forget_discarded(self) -> None:
        """A new listing of ``pending/`` holds none of the tokens discarded before it."""
        discarded: set[PendingToken] = self._ctx.local("pending-discarded", set)
        discarded.clear()

    def discarded_here(self, token: PendingToken) -> bool:
        """Whether this process removed ``token`` (:meth:`discard_pending`; asked once): a claim
        of it that fails then lost no race to another runner."""
        discarded: set[PendingToken] = self._ctx.local("pending-discarded", set)
        try:
            discarded.remove(token)
        except KeyError:
            return False
        return True

    def pending_age(self, token: PendingToken) -> float | None:
        try:
            return server_age(self._ctx, os.stat(self.pending_path(token)).st_ctime)
        except FileNotFoundError:
            return None

    def claim(self, token: PendingToken, attempt_id: str) -> ClaimToken | None:
        """Move a pending token into ``claimed/``; None if another process took it first."""
        claim = ClaimToken(token.rollout_id, token.sequence_id, attempt_id)
        src, dst = f"{self._pending_str}/{token.name}", f"{self._claimed_str}/{claim.name}"
        return claim if fsio.move(src, dst, durable=self._ctx.durable) else None

    def unclaim(self, claim: ClaimToken, token: PendingToken) -> None:
        """Put ``claim``, taken from ``token``, back in ``pending/`` under its old name (and place)."""
        fsio.move(self.claimed_path(claim), self.pending_path(token), durable=self._ctx.durable)

    # -- claimed -------------------------------------------------------------------
    def claimed_path(self, token: ClaimToken) -> Path:
        return self._layout.claimed / token.name

    def create_claimed(self, token: ClaimToken) -> None:
        body = codec.dumps_record(
            {"rollout_id": token.rollout_id, "sequence_id": token.sequence_id, "attempt_id": token.attempt_id}
        )
        fsio.create_exclusive(self.claimed_path(token), body, durable=self._ctx.durable)

    def drop_claimed(self, token: ClaimToken) -> None:
        try:
            os.unlink(self.claimed_path(token))
        except FileNotFoundError:
            pass

    def is_claimed(self, token: ClaimToken) -> bool:
        return self.claimed_path(token).exists()

    def list_claimed(self) -> list[ClaimToken]:
        tokens = (ClaimToken.parse(n) for n in fsio.list_names(self._layout.claimed))
        return [t for t in tokens if t is not None]

    def claimed_age(self, token: ClaimToken) -> float | None:
        """Seconds since the token entered ``claimed/``, by its ctime on the file server's clock
        (None if gone)."""
        try:
            return server_age(self._ctx, os.stat(self.claimed_path(token)).st_ctime)
        except FileNotFoundError:
            return None

    # -- decisions -----------------------------------------------------------------
    def settle(self, token: ClaimToken, kind: JournalKind, outcome: str) -> JournalEntry | None:
        """Take the attempt's fate into ``done/`` or ``expired/``: the one decision point.

        None when the token was already gone (committed, reaped or cancelled by someone else).
        """
        directory = self._layout.done if kind == "done" else self._layout.expired
        target = directory / f"{token.rollout_id}.{token.sequence_id}.{token.attempt_id}.{outcome}.json"
        if fsio.move(self.claimed_path(token), target, durable=self._ctx.durable):
            return JournalEntry(kind, token, outcome, target)
        return None

    def list_journal(self) -> list[JournalEntry]:
        entries: list[JournalEntry] = []
        for kind, directory in (("done", self._layout.done), ("expired", self._layout.expired)):
            for name in fsio.list_names(directory):
                entry = JournalEntry.parse(kind, directory / name)  # type: ignore[arg-type]
                if entry is not None:
                    entries.append(entry)
        return entries

    def journal_age(self, entry: JournalEntry) -> float | None:
        try:
            return server_age(self._ctx, os.stat(entry.path).st_ctime)
        except FileNotFoundError:
            return None

    def close_journal(self, entry: JournalEntry) -> None:
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
