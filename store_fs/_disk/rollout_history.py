"""Rollout records: a rollout and all its attempts, changed only by compare-and-swap.

Each rollout directory holds ``history/00000001.json``, ``00000002.json``...: every
change of the rollout or of one of its attempts is a new revision, created with
an exclusive ``link(2)``. Creating revision ``n+1`` succeeds for exactly one
writer, so concurrent writers (runners, the reaper, the CLI) never lose each
other's updates and no lock is taken; the loser re-reads and re-applies its
change. The newest revision is the truth. ``rollout.json`` is a hard link to it for
people and ``jq``; each writer re-links it until it is the newest revision, so it
converges as soon as writers stop.

Observers run after each successful revision, in the writing process: first
``on_revision`` (the rollout index: as soon as possible after the revision, so a
crash leaves the smallest window), then, after the mirror, ``on_change`` (events).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from store_fs import damaged_reads
from store_fs._disk import codec, fsio
from store_fs._disk.context import Context
from store_fs._disk.layout import revision_name
from store_fs._disk.record_peek import read_identified_revision_file
from store_fs.errors import CorruptRecordError, RolloutNotFoundError
from store_fs.models import Attempt, AttemptedRollout, Rollout

__all__ = ["RecordStore", "RolloutRecord"]

log = logging.getLogger(__name__)


class RolloutRecord(Rollout):
    """A rollout plus its attempts in sequence order (the on-disk record).

    ``server_offsets`` maps an attempt id to the file-server clock offset of the process that
    started it (:mod:`store_fs._disk.server_clock`), so a reaper on another host can read the
    attempt's ``start_time`` on the server's clock. Records written before it existed have
    none; their start times are taken on the reader's clock. It is not part of upstream's
    ``Rollout``/``Attempt`` JSON.
    """

    attempts: list[Attempt] = []
    server_offsets: dict[str, float] = {}

    def started_on_server(self, attempt: Attempt, default_offset: float) -> float:
        """The attempt's ``start_time`` on the file server's clock."""
        return attempt.start_time + self.server_offsets.get(attempt.attempt_id, default_offset)

    def latest(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def find(self, attempt_id: str) -> Attempt | None:
        for attempt in self.attempts:
            if attempt.attempt_id == attempt_id:
                return attempt
        return None

    def public(self) -> Rollout | AttemptedRollout:
        """Upstream's view: an ``AttemptedRollout`` once an attempt exists, else a ``Rollout``."""
        data = self.model_dump(exclude={"attempts", "server_offsets"})
        if self.attempts:
            # A dump, not the Attempt itself: this record may be a cached one other readers share.
            return AttemptedRollout.model_validate({**data, "attempt": self.attempts[-1].model_dump()})
        return Rollout.model_validate(data)

    def plain(self) -> Rollout:
        return Rollout.model_validate(self.model_dump(exclude={"attempts", "server_offsets"}))


#: How long a write waits for a rollout whose directory went away under it to come back (a
#: prune puts back a rollout it finds revived within milliseconds).
MOVED_OUT_SECONDS = 0.5

# Revisions are read-only: rollout.json is the newest, and writing "through" it
# (an editor saving in place, ``echo > rollout.json``) must fail rather than rewrite history.
REVISION_MODE = 0o444


class _Head:
    """A rollout's newest revision known to this process: its number, bytes and file identity.

    The record is decoded when first asked for and then shared by readers, who must
    not change it. A private copy is decoded from the bytes again: that is several
    times cheaper than ``model_copy(deep=True)``, which walks the models in Python.
    """

    __slots__ = ("_record", "data", "ident", "rev")

    def __init__(
        self, rev: int, data: bytes, ident: fsio.FileIdentity | None, record: RolloutRecord | None = None
    ) -> None:
        self.rev = rev
        self.data = data
        self.ident = ident
        self._record = record

    def shared(self, path: str | Path) -> RolloutRecord:
        if self._record is None:
            self._record = _parse(path, self.data)
        return self._record

    def private(self, path: str | Path) -> RolloutRecord:
        return _parse(path, self.data)


def _parse(path: str | Path, data: bytes) -> RolloutRecord:
    try:
        return RolloutRecord.model_validate(codec.loads(data))
    except (codec.DecodeError, ValidationError) as err:
        raise CorruptRecordError(str(path), str(err).splitlines()[0]) from None


class _Cache:
    def __init__(self) -> None:
        self.heads: dict[str, _Head] = {}


Mutation = Callable[[RolloutRecord], RolloutRecord | None]
Observer = Callable[[RolloutRecord | None, RolloutRecord], None]
RevisionObserver = Callable[[int, RolloutRecord], None]


class _MovedOut(Exception):
    """A revision could not be written because the rollout's directory is gone (not written)."""


class RecordStore:
    """Reads and compare-and-swaps rollout records."""

    def __init__(
        self, ctx: Context, on_change: Observer, on_revision: RevisionObserver | None = None
    ) -> None:
        self._ctx = ctx
        self._layout = ctx.layout
        self._on_change = on_change
        self._on_revision = on_revision

    def _cache(self) -> _Cache:
        cache: _Cache = self._ctx.local("records", _Cache)
        return cache

    # -- reading -------------------------------------------------------------------
    def _head_rev(self, rollout_id: str) -> int:
        """The newest revision listed; 0 when there is none (no such rollout, or not yet)."""
        hist = self._layout.history_dir(rollout_id)
        try:
            names = os.listdir(hist)
        except FileNotFoundError:
            return 0
        except NotADirectoryError:
            # A file where the history directory (or one above it) belongs is damage, not an
            # absent rollout: reading on as "no such rollout" would let `agl export --all`
            # leave it out and exit 0.
            raise CorruptRecordError(str(hist), "not a directory") from None
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise CorruptRecordError(str(hist), "a symbolic link loop") from None
        revs = [n for n in names if n.endswith(".json") and not n.startswith(".")]
        return max((int(n[:-5]) for n in revs if n[:-5].isdigit()), default=0)

    def _newest(self, rollout_id: str, *, cached_ok: bool = True, just_read: bool = False) -> _Head | None:
        """The newest revision, or None if the rollout does not exist.

        Revisions are immutable, so a cached one stays right until a newer revision
        appears (one ``stat`` tells) or the rollout is removed (``agl prune`` moves its
        directory away: a second ``stat``, of the cached revision itself, which also tells a
        rollout re-created under its id since, by the file's identity: its revision of that
        number is another file, whose record a write must not be built on). A caller that
        ``just_read`` the head and only writes after it (``update``) skips both: its
        compare-and-swap fails if a newer revision exists. ``cached_ok=False`` re-reads the
        file (``check``).
        """
        cache = self._cache()
        cached = cache.heads.get(rollout_id) if cached_ok else None
        if cached is not None and just_read:
            return cached
        if cached is not None and not os.path.exists(self._rev_str(rollout_id, cached.rev + 1)):
            now = fsio.identity_of(self._rev_str(rollout_id, cached.rev))
            if now is not None and (
                now == cached.ident or (cached.ident is None and now[1] == len(cached.data))
            ):
                cached.ident = now  # a head this process wrote learns its inode at its first check
                return cached
            del cache.heads[rollout_id]  # removed: read afresh (it may also have been re-created)
        hist = self._layout.history_dir(rollout_id)
        while True:
            rev = self._head_rev(rollout_id)
            if rev == 0:
                return None
            # A listing may be older than a lookup by name (an NFS client caches directory
            # contents): a revision this process failed to create is known to exist by name.
            while os.path.exists(self._rev_str(rollout_id, rev + 1)):
                rev += 1
            found = self._read_newest_readable(hist, rev)
            if found is None:
                if not hist.is_dir():
                    return None  # removed (``agl prune``) between listing and reading
                time.sleep(0.01)  # every listed revision unreadable: caches catching up
                continue
            rev, path, data, ident = found
            head = _Head(rev, data, ident, _parse(path, data))
            cache.heads[rollout_id] = head
            return head

    @staticmethod
    def _read_newest_readable(hist: Path, rev: int) -> tuple[int, Path, bytes, fsio.FileIdentity] | None:
        """Revision ``rev``'s bytes, or else of the newest one below it that can be read.

        On NFS a listing can name a revision that this host's lookups still answer "not found"
        for (a cached negative lookup, kept for up to the mount's cache timeout, from before
        the revision was made). Listing and reading again would spin until the cache expires
        (one waiter looped ~700 times, benchmarks/bench_nfs.py --trace); the revision below
        is what this host's caches still show, and the next look after they expire reads on.
        """
        for candidate in range(rev, 0, -1):
            path = hist / revision_name(candidate)
            found = read_identified_revision_file(str(path))  # raises for a name that is no file
            if found is not None:
                return candidate, path, *found
        return None

    def _rev_str(self, rollout_id: str, rev: int) -> str:
        # A string, not a Path: every cached read and every write stats the next revision.
        return f"{self._layout.rollout_dir_str(rollout_id)}/history/{revision_name(rev)}"

    def _path(self, rollout_id: str, rev: int) -> Path:
        return self._layout.history_dir(rollout_id) / revision_name(rev)

    def head(self, rollout_id: str, *, cached_ok: bool = True) -> tuple[int, RolloutRecord] | None:
        """The newest revision number and record, or None if the rollout does not exist.

        The record is shared with this process's other readers: do not change it
        (``get`` gives a private copy).
        """
        found = self._newest(rollout_id, cached_ok=cached_ok)
        # The path only names the file in an error: a string, as every cached read passes here.
        return None if found is None else (found.rev, found.shared(self._rev_str(rollout_id, found.rev)))

    def head_at_least(
        self, rollout_id: str, rev: int, *, newer: bool = True
    ) -> tuple[int, RolloutRecord] | None:
        """Like :meth:`head`, for a caller that knows revision ``rev`` exists (an index line
        named it): the revisions from ``rev`` on are looked up by name. ``newer=False`` reads
        revision ``rev`` itself unless this process knows a newer one, without asking for
        ``rev + 1`` (one round trip on NFS): for a waiter, the revision that finished the
        rollout is the answer.

        On NFS a listing, and a lookup of a name this host found missing before, may be
        answered from the client's caches for seconds; a name this host never looked up is
        asked of the server. A waiter told by the index that a rollout finished thus reads
        the finished revision at once, instead of re-reading a stale view until the caches
        expire.
        """
        cached = self._cache().heads.get(rollout_id)
        if cached is not None and cached.rev >= rev:
            return self.head(rollout_id)
        newest = rev
        while newer and os.path.exists(self._rev_str(rollout_id, newest + 1)):
            newest += 1
        path = self._path(rollout_id, newest)
        found = read_identified_revision_file(str(path))
        if found is None:  # removed meanwhile, or the line was wrong: look the usual way
            return self.head(rollout_id, cached_ok=False)
        data, ident = found
        head = _Head(newest, data, ident, _parse(path, data))
        self._cache().heads[rollout_id] = head
        return newest, head.shared(path)

    def get(self, rollout_id: str, *, cached_ok: bool = True) -> RolloutRecord | None:
        """The newest record, as a private copy the caller may change; None if it does not exist."""
        found = self._newest(rollout_id, cached_ok=cached_ok)
        return None if found is None else found.private(self._rev_str(rollout_id, found.rev))

    def require(self, rollout_id: str) -> RolloutRecord:
        record = self.get(rollout_id)
        if record is None:
            raise RolloutNotFoundError(rollout_id)
        return record

    def exists(self, rollout_id: str) -> bool:
        return os.path.exists(self._rev_str(rollout_id, 1))

    def seen(self, rollout_id: str) -> bool:
        """:meth:`exists`, answered without a lookup when this process holds the rollout's record.

        Only for callers whose next step fails cleanly if the rollout was removed meanwhile
        (allocating span numbers renames the counter in the rollout's directory).
        """
        return rollout_id in self._cache().heads or self.exists(rollout_id)

    def all_ids(self) -> Iterator[str]:
        """Ids of every rollout directory, in no particular order."""
        for bucket in fsio.iter_dirs(self._layout.rollouts):
            for entry in fsio.iter_dirs(Path(bucket.path)):
                yield entry.name

    def iter_records(self) -> Iterator[RolloutRecord]:
        """Every readable record; corrupt ones are logged and skipped (``check`` reports them)."""
        for rollout_id in self.all_ids():
            try:
                record = self.get(rollout_id)
            except CorruptRecordError as err:
                damaged_reads.passed_over(err)
                continue
            if record is not None:
                yield record

    # -- writing -------------------------------------------------------------------
    def create(self, record: RolloutRecord) -> bool:
        """Create the rollout's directory and first revision. False if it already existed."""
        rid = record.rollout_id
        hist = self._layout.history_dir(rid)
        durable = self._ctx.durable
        # Parent first: mkdir(parents=True) on ``history`` would try it, fail, and climb (a
        # wasted round trip per rollout on NFS).
        # The rollout directory is synced once, after history/ is made in it, not also when made.
        fsio.make_dirs(hist.parent, durable=durable, sync_leaf=False)
        hist.mkdir(exist_ok=True)
        if durable:
            fsio.fsync_dir(hist.parent)  # the name history/
        # The span sequence counter (span-seq/) is made by the first allocation (SpanLog).
        if not self._try_write(rid, 1, record):
            return False
        self._notify(None, record)
        return True

    def update(self, rollout_id: str, mutate: Mutation, *, just_read: bool = False) -> RolloutRecord:
        """Apply ``mutate`` to the newest record and store the result as the next revision.

        ``mutate`` receives a private copy; returning None means "no change". It may be
        called several times when other writers race, so it must be a pure function of
        its argument. ``just_read``: the caller read the rollout's head a moment ago
        (:meth:`head_at_least`), so the first try starts from it without asking whether it
        is still the newest (the compare-and-swap tells, and the retry asks).
        Raises :class:`RolloutNotFoundError`, or whatever ``mutate`` raises.

        ``agl prune`` moves a rollout it removes out in one rename, then puts back one that a
        retry revived meanwhile (:mod:`store_fs._disk.removal`): a write that finds the
        rollout's directory gone after reading it looks again for up to
        :data:`MOVED_OUT_SECONDS` before it says the rollout is not found.
        """
        gone_since: float | None = None
        while True:
            found = self._newest(rollout_id, just_read=just_read)
            just_read = False
            if found is None:
                if gone_since is not None and time.monotonic() - gone_since < MOVED_OUT_SECONDS:
                    time.sleep(0.01)
                    continue
                raise RolloutNotFoundError(rollout_id)
            rev, path = found.rev, self._path(rollout_id, found.rev)
            current = found.shared(path)
            updated = mutate(found.private(path))
            if updated is None:
                return found.private(path)
            try:
                wrote = self._try_write(rollout_id, rev + 1, updated)
            except _MovedOut:  # its directory moved away since the read
                now = time.monotonic()
                gone_since = gone_since if gone_since is not None else now
                if now - gone_since >= MOVED_OUT_SECONDS:
                    raise RolloutNotFoundError(rollout_id) from None
                self._cache().heads.pop(rollout_id, None)
                time.sleep(0.01)
                continue
            if wrote:
                self._notify(current, updated)
                return updated
            log.debug("lost the race for %s revision %d; retrying", rollout_id, rev + 1)

    def _try_write(self, rollout_id: str, rev: int, record: RolloutRecord) -> bool:
        """Create revision ``rev`` holding ``record`` unless it exists; True if this call did."""
        # In field order, not sorted: a caller's input and metadata come back in their own order.
        data = codec.dumps_record(record, sort_keys=False)
        try:
            staged = fsio.Staged(
                self._path(rollout_id, rev), data, durable=self._ctx.durable, mode=REVISION_MODE
            )
        except FileNotFoundError:
            raise _MovedOut from None
        try:
            try:
                created = staged.link()
            except FileNotFoundError:
                if not staged.linked:
                    raise _MovedOut from None
                created = True  # the revision is written; only the directory's sync met the move
            if not created:
                return False
            # ``record`` goes to the caller, who may change it: the cache decodes its own.
            # Its identity is learnt at the first check (a stat now would be one more request).
            self._cache().heads[rollout_id] = _Head(rev, data, None)
            if self._on_revision is not None:
                self._on_revision(rev, record)
            self._publish_mirror(rollout_id, rev, staged)
            return True
        finally:
            staged.discard()

    def _notify(self, old: RolloutRecord | None, new: RolloutRecord) -> None:
        try:
            self._on_change(old, new)
        except OSError as err:
            # After the revision landed: raising would report a change that happened as failed.
            log.warning("change of %s not logged: %s", new.rollout_id, err)

    def _publish_mirror(self, rollout_id: str, rev: int, staged: fsio.Staged | None = None) -> None:
        """Make ``rollout.json`` revision ``rev``, or a newer one that appeared meanwhile.

        The mirror is a hard link to the revision file, replaced by rename: ``cat``, ``jq``
        and editors read the current record through it, and it costs no data write
        (rewriting a copy over the old one made ext4 flush the data on every revision:
        about 15% of a runner's CPU per rollout, benchmarks/compare.py "loop") and no
        inode (a symlink cost one per revision, and freed the one it replaced). The writer
        of ``rev`` passes its ``staged`` file: renaming its temporary name, already a link to
        the revision, onto ``rollout.json`` is one request where linking a second temporary
        name, renaming it and removing the first were five (NFS round trips,
        benchmarks/bench_nfs.py).
        """
        mirror = self._layout.mirror_file(rollout_id)
        hist = self._layout.history_dir(rollout_id)
        while True:
            try:
                if staged is not None:
                    # Not synced: the revision in history/ is the record; a power cut may leave
                    # rollout.json a revision behind, for the next writer or `check --fix`.
                    staged.rename_onto(mirror, sync=False)
                    staged = None
                else:
                    self._link_mirror(mirror, hist, rev)
            except OSError as err:
                # The revision is already the truth; a stale mirror only waits for the next
                # writer or `agl check --fix`.
                log.warning("rollout.json of %s not updated to revision %d: %s", rollout_id, rev, err)
                return
            # A newer revision published its mirror before ours landed: point at that instead.
            if not os.path.exists(self._rev_str(rollout_id, rev + 1)):
                return
            found = self.head(rollout_id)
            if found is None:
                return
            rev = found[0]

    def _link_mirror(self, mirror: Path, hist: Path, rev: int) -> None:
        try:
            fsio.publish_link(mirror, hist / revision_name(rev), durable=self._ctx.durable)
        except PermissionError:
            # fs.protected_hardlinks: only its owner may hard-link a read-only file, so a
            # revision another user wrote gets a symlink (readers cannot tell the difference).
            fsio.publish_symlink(mirror, f"history/{revision_name(rev)}", durable=self._ctx.durable)

    def mirror_matches(self, rollout_id: str) -> bool:
        """Whether ``rollout.json`` is the newest revision (used by ``check``).

        Older builds made it a symlink to the revision, or a copy; a symlink to the
        newest revision still matches, and so does a copy of its bytes.
        """
        found = self.head(rollout_id)
        if found is None:
            return False
        mirror, newest = self._layout.mirror_file(rollout_id), self._path(rollout_id, found[0])
        try:
            if os.path.samefile(mirror, newest):
                return True
        except OSError:  # missing, or a dangling symlink
            return False
        # A copy with the same bytes is as good: cp -r, rsync without -H and git turn hard
        # links into copies.
        return fsio.read_bytes(mirror) == fsio.read_bytes(newest)

    def republish_mirror(self, rollout_id: str) -> None:
        found = self.head(rollout_id)
        if found is not None:
            self._publish_mirror(rollout_id, found[0])

    def mirror_record(self, rollout_id: str) -> bytes | None:
        """The bytes of ``rollout.json`` when it holds this rollout's record, else None."""
        mirror = self._layout.mirror_file(rollout_id)
        try:
            data = fsio.read_bytes(mirror)
            return data if data and _parse(mirror, data).rollout_id == rollout_id else None
        except (OSError, CorruptRecordError):  # a directory, a link loop; not a record
            return None

    def restore_from_mirror(self, rollout_id: str) -> bool:
        """Make revision 1 of a rollout without any revision from its ``rollout.json``, when that
        holds this rollout's record (``agl check --fix``: a ``history/`` removed by hand). True
        if this call made it. The older revisions are gone; the record is what it was."""
        data = self.mirror_record(rollout_id)
        if data is None:
            return False
        fsio.make_dirs(self._layout.history_dir(rollout_id), durable=self._ctx.durable)
        made = fsio.create_exclusive(
            self._path(rollout_id, 1), data, durable=self._ctx.durable, mode=REVISION_MODE
        )
        self._cache().heads.pop(rollout_id, None)
        if made:
            self.republish_mirror(rollout_id)
        return made
