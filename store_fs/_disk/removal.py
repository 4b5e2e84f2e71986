"""``trash/``: taking finished rollouts out of a store for good (``agl prune``), crash-safely.

A removal *run* owns one directory (``<run>`` is ``<UTC time>-<host>-<pid>``)::

    trash/<run>/run.json                  {"archive": path or null, "archived", "started", "by"}
    trash/<run>/rollouts/<2 hex>/<id>/    a removed rollout's directory, moved whole
    trash/.<run>.deleting/                the same run, being deleted (nothing in it is read)

Per rollout, **one rename is the decision**: ``rollouts/<2 hex>/<id>`` becomes
``trash/<run>/rollouts/<2 hex>/<id>``. Before it the rollout is in the store, after it the
rollout is not (its record cannot be read, listed or changed: every path under its old name is
gone at once). Then, in order, each step idempotent:

1. *verify*: the newest revision, read in the trash, must still be finished with no live
   attempt. A retry or a revived attempt that raced the rename moves the directory back (the
   rollout was unreadable for that instant, never half removed).
2. *tombstone*: a ``pruned`` line in this process's rollout index log, one revision past the
   record's (:data:`store_fs._disk.rollout_index.PRUNED`), so listings and counts drop it, and
   a ``pruned`` line in the change feed (``events/``) for people and followers.
3. its pending tokens (stale hints, since it was finished) are removed.

When every rollout of the run is moved, the archive, if one was asked for, is written as a tar
of ``trash/<run>/`` (paths as in the store: ``tar -xf ARCHIVE -C STORE`` puts them back) to a
temporary file beside it and linked into place (never over an existing file: a file already there
that is not this run's makes the run stop with :class:`~store_fs.errors.ConflictError`, its
rollouts waiting in the trash), and ``run.json`` is republished with ``"archived": true``: only
that says the archive at the path is this run's. Then ``trash/<run>/`` is renamed to
``trash/.<run>.deleting/`` and deleted. The rename is the point of no return: a delete stopped
part-way leaves rollouts with some revisions gone (directory order, newest first on ext4), whose
older revisions must never be read again as if the rollout had changed while being removed.

A process killed at any point leaves a run directory behind. :func:`recover` (run by the next
``agl prune`` and by ``agl check --fix``, under the maintenance lock) finishes it: a
``.deleting`` one is only deleted; in another, every rollout still in it is verified,
tombstoned (unless its tombstone is already there) and archived, and the directory deleted. A
rollout whose tombstone is already in the index is never put back (an older build deleted runs
without the rename). A run whose ``run.json`` cannot be read (torn by a power cut, missing) does
not say whether an archive was asked for: its rollouts are verified and tombstoned, and the run's
directory goes to ``quarantine/`` instead of being deleted. Until then, a rollout in the trash is
already gone from records and listings; only counts taken from the index (``statistics``) still
include one whose tombstone was not written, and ``agl check`` reports the run as
``unfinished-prune``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store_fs._disk import codec, fsio
from store_fs._disk.context import Context
from store_fs._disk.layout import revision_name
from store_fs._disk.log_segments import writer_gone
from store_fs._disk.quarantine import Quarantine
from store_fs._disk.queue_tokens import Queue
from store_fs._disk.rollout_index import PRUNED, Entry, RolloutIndex, tombstone
from store_fs._disk.server_clock import server_now
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES, TERMINAL_ROLLOUT_STATUSES
from store_fs.errors import ConflictError

__all__ = [
    "RemovalRun",
    "TrashedRollout",
    "in_flight_rollouts",
    "read_head",
    "recover",
    "trashed_rollouts",
    "unfinished_runs",
]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: The suffix a run's directory takes, with a leading ".", when its delete starts: recovery only
#: finishes the delete. A hidden name, so that builds that knew no such name pass it over
#: rather than recover it as a run.
DELETING = ".deleting"


@dataclass(frozen=True)
class TrashedRollout:
    """A rollout directory's newest readable revision: what removing it needs to know."""

    rollout_id: str
    rev: int
    status: str
    start_time: float
    live_attempt: bool

    @property
    def removable(self) -> bool:
        # A cancelled rollout's attempts keep their last status, but their tokens were taken:
        # nobody works on them any more. Any other finished rollout with a live attempt (one
        # revived by a late span) is still being worked on.
        if self.status == "cancelled":
            return True
        return self.status in TERMINAL_ROLLOUT_STATUSES and not self.live_attempt


def read_head(rollout_dir: Path) -> TrashedRollout | None:
    """The newest readable revision under ``rollout_dir/history``; None if none can be read."""
    history = rollout_dir / "history"
    revs = sorted(int(n[:-5]) for n in fsio.list_names(history) if n.endswith(".json") and n[:-5].isdigit())
    for rev in reversed(revs):
        data = fsio.read_bytes(history / revision_name(rev))
        try:
            body = codec.loads(data) if data else None
        except codec.DecodeError:
            body = None
        if not isinstance(body, dict):
            continue
        status, start = body.get("status"), body.get("start_time")
        if not isinstance(status, str) or not isinstance(start, int | float):
            continue
        attempts = body.get("attempts") or []
        live = any(isinstance(a, dict) and a.get("status") in LIVE_ATTEMPT_STATUSES for a in attempts)
        return TrashedRollout(rollout_dir.name, rev, status, float(start), live)
    return None


def in_flight_rollouts(queue: Queue) -> set[str]:
    """Rollouts that own a claim or an unapplied decision token: never removed."""
    owners = {token.rollout_id for token in queue.list_claimed()}
    owners |= {entry.token.rollout_id for entry in queue.list_journal()}
    return owners


def unfinished_runs(ctx: Context) -> list[Path]:
    """Run directories left in ``trash/`` by removals that did not finish, ``.<run>.deleting``
    ones included (``agl check`` reports them, and ``--fix`` finishes their delete)."""
    return run_directories(ctx.layout.trash)


def run_directories(trash: Path) -> list[Path]:
    """Every removal run's directory in ``trash`` (``.<run>.deleting`` ones included)."""
    runs = [Path(entry.path) for entry in fsio.iter_dirs(trash)]
    return sorted(runs + _deleting_runs(trash))


def still_running(ctx: Context, run: Path, idle_seconds: float) -> bool:
    """Whether the prune that owns ``run`` may be running now, not killed: its process is alive
    on this host, or (another host's) the run changed less than ``idle_seconds`` ago by the file
    server's clock. A plain ``agl check`` during a prune reported its run as unfinished."""
    name = run.name.removeprefix(".").removesuffix(DELETING)
    _stamp, _, writer = name.partition("-")  # <UTC time>-<host>-<pid>
    if writer == ctx.writer:
        return False  # this process's own prune, which raised (a check runs after it, not beside)
    stamps = []
    for directory in (run, run / "rollouts", *(Path(b.path) for b in fsio.iter_dirs(run / "rollouts"))):
        try:
            stamps.append(os.stat(directory).st_mtime)
        except OSError:
            continue
    if not stamps:
        return False  # gone meanwhile: finished
    return not writer_gone(writer, max(stamps), now=server_now(ctx), idle_seconds=idle_seconds)


def _deleting_runs(trash: Path) -> list[Path]:
    try:
        with os.scandir(trash) as it:
            return [
                Path(entry.path)
                for entry in it
                if entry.name.startswith(".")
                and entry.name.endswith(DELETING)
                and entry.is_dir(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []


def trashed_rollouts(ctx: Context) -> set[str]:
    """Ids of the rollouts that unfinished removal runs hold."""
    return {path.name for run in unfinished_runs(ctx) for path in _trashed_dirs(run)}


def _trashed_dirs(run: Path) -> Iterator[Path]:
    for bucket in fsio.iter_dirs(run / "rollouts"):
        for entry in fsio.iter_dirs(Path(bucket.path)):
            yield Path(entry.path)


_RESTORE_TRIES = 5


def _merge_into(source: Path, target: Path, quarantine: Quarantine) -> None:
    """Move what ``source`` holds into ``target``: names ``target`` lacks are moved over,
    directories both hold are merged, a span log both hold is kept beside the other
    (:func:`_beside`), a heartbeat file both hold is the newer one; anything else both hold
    goes to quarantine."""
    try:
        entries = list(os.scandir(source))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        there = target / entry.name
        if not os.path.lexists(there):
            try:
                os.rename(entry.path, there)
            except FileNotFoundError:
                pass  # gone meanwhile
        elif entry.is_dir(follow_symlinks=False) and there.is_dir() and not there.is_symlink():
            _merge_into(Path(entry.path), there, quarantine)
        elif _both_files(entry, there) and entry.name.startswith("spans.") and entry.name.endswith(".jsonl"):
            _beside(Path(entry.path), there)
        elif _both_files(entry, there) and entry.name.startswith("heartbeat."):
            if entry.stat().st_mtime > there.stat().st_mtime:
                os.replace(entry.path, there)
            else:
                os.unlink(entry.path)
        else:
            quarantine.quarantine_file(
                Path(entry.path), f"written under the name of {there} while it was being removed"
            )


def _both_files(entry: os.DirEntry[str], there: Path) -> bool:
    return entry.is_file(follow_symlinks=False) and there.is_file() and not there.is_symlink()


def _beside(late: Path, log: Path) -> None:
    """Move span log ``late`` next to ``log`` under a free name readers also read
    (``spans.*.jsonl``; they keep the first copy of a span id). A rename, so a writer still
    holding ``late`` open goes on appending where readers look."""
    for n in itertools.count(1):
        free = log.with_name(f"{log.name[: -len('.jsonl')]}.late-{n}.jsonl")
        if not os.path.lexists(free):
            os.rename(late, free)
            return


def _read_run_file(path: Path) -> tuple[dict[str, Any], str | None]:
    """``run.json``'s body, and None; or ``{}`` and why it cannot be used (missing, torn, not a
    regular file, not a run's fields). Errors that say nothing of the file (a permission, an
    I/O error) are raised."""
    try:
        data = fsio.read_bytes(path)
    except OSError as err:
        what = fsio.broken_name(err, path)
        if what is None:
            raise
        return {}, f"is {what}"
    if data is None:
        return {}, "is missing"
    try:
        body = codec.loads(data)
    except codec.DecodeError as err:
        return {}, f"does not parse ({err})"
    if (
        not isinstance(body, dict)
        or "archive" not in body
        or not (body["archive"] is None or isinstance(body["archive"], str))
        or not isinstance(body.get("archived", False), bool)
    ):
        return {}, "does not hold a removal run's fields"
    return body, None


def _holds_files(directory: Path) -> bool:
    """Whether anything but (nested) empty directories is under ``directory``."""
    for parent, dirs, files in os.walk(directory):
        if files or any(os.path.islink(os.path.join(parent, name)) for name in dirs):
            return True
    return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _archive_tmp(archive: Path, run_name: str) -> Path:
    return archive.with_name(f".{archive.name}.{run_name}.tmp")


def _remove_empty_dirs(directory: Path) -> None:
    """Remove ``directory`` if it holds only (nested) empty directories; else leave what is left."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _remove_empty_dirs(Path(entry.path))
    try:
        os.rmdir(directory)
    except OSError:
        pass  # written to meanwhile: the next try merges it


class RemovalRun:
    """One removal: rollouts are moved into its trash directory, then archived and deleted."""

    def __init__(self, ctx: Context, index: RolloutIndex, queue: Queue, directory: Path) -> None:
        self._ctx = ctx
        self._index = index
        self._queue = queue
        self.directory = directory
        self._body, self.unreadable = _read_run_file(directory / RUN_FILE)
        archive = self._body.get("archive")
        self.archive = Path(archive) if isinstance(archive, str) else None
        # Whether the file at ``archive`` is this run's: only run.json says so (the path may
        # hold another run's archive, or anyone's file). A run.json of an older build has no
        # key: it was written when the path's existence was the rule, so that rule stays.
        archived = self._body.get("archived")
        self.archived = (
            archived if isinstance(archived, bool) else bool(self.archive and self.archive.exists())
        )
        self._events_fd: int | None = None
        self._quarantined: Quarantine | None = None

    @classmethod
    def begin(cls, ctx: Context, index: RolloutIndex, queue: Queue, archive: Path | None) -> RemovalRun:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        directory = ctx.layout.trash / f"{stamp}-{ctx.writer}"
        body = {
            "archive": None if archive is None else str(archive.resolve()),
            "archived": False,
            "started": ctx.clock.time(),
            "by": ctx.writer,
        }
        # Encoded before anything is made: an archive path JSON cannot hold (a directory name
        # that is not UTF-8) left an empty run behind, which check took for an unfinished prune.
        encoded = codec.dumps_record(body)
        # Durable names all the way down: a rollout moved in, then a power cut that forgot the
        # run's directory, was in neither the store nor the trash (an adversarial pass).
        fsio.make_dirs(directory / "rollouts", durable=ctx.durable)
        fsio.publish(directory / RUN_FILE, encoded, durable=ctx.durable)
        return cls(ctx, index, queue, directory)

    # -- one rollout -----------------------------------------------------------------
    def _trash_path(self, rollout_id: str) -> Path:
        return self.directory / "rollouts" / rollout_id[3:5] / rollout_id

    def remove(self, rollout_id: str) -> TrashedRollout | None:
        """Take the rollout out of the store; None if it was gone or is no longer finished."""
        source = self._ctx.layout.rollout_dir(rollout_id)
        target = self._trash_path(rollout_id)
        fsio.make_dirs(target.parent, durable=self._ctx.durable, sync_leaf=False)  # move syncs it
        if not fsio.move(source, target, durable=self._ctx.durable):
            return None  # removed meanwhile
        return self._settle(target)

    def _settle(self, trashed: Path, known: dict[str, Entry] | None = None) -> TrashedRollout | None:
        """Steps 1-3 for a directory in this run's trash (again after a crash: idempotent;
        ``known`` is the index as read before, so a tombstone is not written twice)."""
        head = read_head(trashed)
        if head is None:
            # Damaged (or in a run an older build was deleting): never put back as it is.
            log.warning("%s: no readable revision in %s", trashed.name, trashed)
            return None
        if not head.removable and not _decided(head, known):
            self._restore(trashed)
            return None
        self._tombstone(head, known)
        for token in self._queue.list_pending():
            if token.rollout_id == head.rollout_id:
                self._queue.discard_pending(token)
        return head

    def _restore(self, trashed: Path) -> None:
        """Put a rollout that changed while it was being removed back under its name.

        A writer that had looked for the rollout just before it was moved (a span or heartbeat
        of an attempt that was live after all) may have made files under the old name
        meanwhile: they are merged into the rollout first (a file both hold goes to
        quarantine). Failing that, the rollout goes to quarantine: the run's directory is
        deleted when the run finishes, and the rollout must not go with it.
        """
        home = self._ctx.layout.rollout_dir(trashed.name)
        for _ in range(_RESTORE_TRIES):
            try:
                os.rename(trashed, home)  # onto nothing, or onto the empty directories a merge left
                log.info("%s changed while it was being removed; put back", trashed.name)
                return
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            _merge_into(home, trashed, self._quarantine())
            _remove_empty_dirs(home)
        where = self._quarantine().quarantine_file(
            trashed, f"changed while being removed, and {home} kept being written to: not put back"
        )
        log.error(
            "%s changed while it was being removed and could not be put back: moved to %s",
            trashed.name,
            where,
        )

    def _quarantine(self) -> Quarantine:
        if self._quarantined is None:
            self._quarantined = Quarantine(self._ctx.layout, self._ctx.writer, durable=self._ctx.durable)
        return self._quarantined

    def _tombstone(self, head: TrashedRollout, known: dict[str, Entry] | None) -> None:
        if _decided(head, known):
            return  # written before a crash
        self._index.append([tombstone(head.rollout_id, head.rev, head.start_time)])
        line = {
            "rollout_id": head.rollout_id,
            "status": PRUNED,
            "previous": head.status,
            "time": self._ctx.clock.time(),
        }
        if self._events_fd is None:
            path = self._ctx.layout.events / f"{self._ctx.log_writer}.jsonl"
            self._events_fd = fsio.open_making_dirs(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        fsio.append(self._events_fd, codec.dumps_line(line))

    # -- the whole run -----------------------------------------------------------------
    def settle_all(self) -> list[TrashedRollout]:
        """Steps 1-3 for every rollout in the trash (recovery of a run a crash interrupted)."""
        known = self._index.load().entries
        settled = (self._settle(trashed, known) for trashed in list(_trashed_dirs(self.directory)))
        return [head for head in settled if head is not None]

    def finish(self) -> Path | None:
        """Write the archive (if asked for and this run has not written it yet), then delete the
        run's directory; returns None. A run whose ``run.json`` cannot be read does not say
        whether an archive was asked for: its directory, if anything is left in it, is moved to
        quarantine instead, and where it went is returned.

        Raises :class:`~store_fs.errors.ConflictError` (nothing deleted) if a file that is not
        this run's archive is at the archive's path, and an ``OSError`` naming the way out if
        the archive cannot be written."""
        if self.unreadable is not None:
            if _holds_files(self.directory / "rollouts"):
                return self._keep()
        elif self.archive is not None:
            if not self.archived:
                self._write_archive(self.archive)
            # Left by a crash after run.json said "archived" (a hard link of the archive).
            _archive_tmp(self.archive, self.directory.name).unlink(missing_ok=True)
        self.close()
        self._delete()
        return None

    def _write_archive(self, archive: Path) -> None:
        tmp = _archive_tmp(archive, self.directory.name)
        # A crash between linking the archive into place and recording it leaves both names.
        if not _same_file(tmp, archive):
            try:
                write_archive(self.directory, archive, self.directory.name, durable=self._ctx.durable)
            except FileExistsError:
                raise ConflictError(
                    f"the removal {self.directory.name} cannot write its archive: {archive} exists "
                    "and is not its archive (an archive is never overwritten); move that file away, "
                    f"then run 'agl check --fix' (the removed rollouts wait in {self.directory})"
                ) from None
            except OSError as err:
                # Said with the way out: the run's rollouts wait in the trash until it is written.
                raise type(err)(
                    err.errno,
                    f"the removal {self.directory.name} cannot write its archive ({err.strerror}); "
                    "make its directory writable, then run 'agl check --fix'",
                    str(archive),
                ) from None
        self._body["archived"] = True
        fsio.publish(self.directory / RUN_FILE, codec.dumps_record(self._body), durable=self._ctx.durable)
        self.archived = True

    def _delete(self) -> None:
        """Delete the run's directory, first renamed so that a delete stopped part-way is only
        ever finished: a rollout whose newest revisions are gone must not be read again."""
        deleting = self.directory.with_name(f".{self.directory.name}{DELETING}")
        os.rename(self.directory, deleting)
        if self._ctx.durable:
            fsio.fsync_dir(deleting.parent)
        shutil.rmtree(deleting)

    def _keep(self) -> Path:
        """Move the run's directory to quarantine (its ``run.json`` is unusable): its rollouts
        are out of the store, and may be the only copy of what no archive holds."""
        self.close()
        why = (
            f"{RUN_FILE} {self.unreadable}: whether an archive of these removed rollouts was asked "
            "for is unknown, so they are kept here instead of being deleted"
        )
        where = self._quarantine().quarantine_file(self.directory, why)
        log.warning(
            "%s %s: its removed rollouts were moved to %s, not deleted (delete them once not needed)",
            self.directory / RUN_FILE,
            self.unreadable,
            where,
        )
        return where

    def close(self) -> None:
        if self._events_fd is not None:
            os.close(self._events_fd)
            self._events_fd = None


#: link(2) refused by a filesystem that has no hard links (FAT, some SMB mounts).
_NO_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK})


def write_archive(run: Path, archive: Path, run_name: str, *, durable: bool = False) -> None:
    """A tar of the run's rollouts (store-relative paths), published whole at ``archive``.

    Written to a temporary file beside it, which is then *linked* to ``archive``: an existing
    file is never replaced (``FileExistsError``), and the temporary name stays, so a caller
    killed before it recorded the archive finds both names on one file. Where the filesystem
    has no hard links, it is renamed into place instead (after a check that nothing is there).
    """
    tmp = _archive_tmp(archive, run_name)
    with tarfile.open(tmp, "w") as tar:
        source = run / "rollouts"
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(Path("rollouts") / path.relative_to(source)), recursive=False)
    if durable:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    try:
        os.link(tmp, archive)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        if os.path.lexists(archive):
            tmp.unlink(missing_ok=True)
            raise FileExistsError(errno.EEXIST, "an archive is never overwritten", str(archive)) from None
        os.rename(tmp, archive)
    if durable:
        fsio.fsync_dir(archive.parent)


def _decided(head: TrashedRollout, known: dict[str, Entry] | None) -> bool:
    """Whether ``known`` (the index) holds this rollout's tombstone: its removal was decided."""
    entry = None if known is None else known.get(head.rollout_id)
    return entry is not None and entry.status == PRUNED and entry.start_time == head.start_time


def recover(ctx: Context, index: RolloutIndex, queue: Queue) -> list[str]:
    """Finish every removal a crash interrupted (callers hold the maintenance lock).

    Returns one line per run finished. Raises as :meth:`RemovalRun.finish` does."""
    done = []
    for directory in unfinished_runs(ctx):
        if directory.name.startswith(".") and directory.name.endswith(DELETING):
            shutil.rmtree(directory)
            done.append(f"{directory.name[1 : -len(DELETING)]}: finished deleting")
            continue
        run = RemovalRun(ctx, index, queue, directory)
        try:
            settled = run.settle_all()
            kept = run.finish()
        finally:
            run.close()
        line = f"{directory.name}: finished ({len(settled)} rollouts removed)"
        if kept is not None:
            line += f"; {RUN_FILE} {run.unreadable}, so they were kept in {kept}"
        done.append(line)
    return done
