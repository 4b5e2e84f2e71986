"""Consistency check and repair of a store (``FileStore.check``, ``agl check [--fix]``).

Each finding names a path and what is wrong. Repairs finish what a crashed process left
half done, remove what no reader uses, and take out what cannot be read: an unreadable
newest revision (the rollout is then read at the revision before it), a span line that does
not parse, the torn tail of a finished attempt's span file, a file where a directory belongs
(or the reverse) among a rollout's attempts, names in ``span-seq/`` that are no counter (the
counter is then remade from the stored spans). What is taken out is never deleted: it goes to
``quarantine/`` with a note (:mod:`store_fs._disk.quarantine`). Resources are checked by
:mod:`store_fs._disk.check_resources` (reported, never repaired), worker logs by
:mod:`store_fs._disk.check_workers`. Repairs run under the maintenance lock
(:mod:`store_fs._disk.maintenance`).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Literal

from store_fs._disk import fsio, log_segments
from store_fs._disk.change_feed import EVENT_LOGS
from store_fs._disk.check_findings import Problem, cut_lines
from store_fs._disk.check_resources import resource_problems
from store_fs._disk.check_workers import worker_problems
from store_fs._disk.claims import Engine
from store_fs._disk.index_snapshot import SNAPSHOT_NAME
from store_fs._disk.maintenance import maintenance_lock
from store_fs._disk.quarantine import Quarantine
from store_fs._disk.queue_tokens import ClaimToken
from store_fs._disk.removal import recover, still_running, trashed_rollouts, unfinished_runs
from store_fs._disk.rollout_history import RolloutRecord
from store_fs._disk.rollout_index import INDEX_LOGS, PRUNED, Entry, IndexView, RolloutIndex, entry_of
from store_fs._disk.server_clock import server_age
from store_fs._disk.span_log import BadLine
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES
from store_fs._disk.worker_logs import WORKER_LOGS
from store_fs.errors import CorruptRecordError
from store_fs.models import Attempt

__all__ = ["Problem", "check_store"]

TEMP_FILE_AGE = 3600.0
#: Default of ``check_store(grace=...)``: the reaper's default claim grace.
IN_FLIGHT_GRACE = 30.0


def _temp_files(root: Path, fix: bool) -> list[Problem]:
    out: list[Problem] = []
    now = time.time()
    for directory, dirs, files in os.walk(root):
        # Temporary directories too: a span counter is built in one (store_fs/_disk/span_log.py),
        # and an index a rebuild set aside is deleted from ``.rollouts-<hex>.old`` (a repair
        # killed meanwhile left it for good: found by an adversarial pass).
        for name in [*files, *dirs]:
            if not (name.startswith(".") and name.endswith((".tmp", ".old"))):
                continue
            path = Path(directory) / name
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < TEMP_FILE_AGE:
                continue  # probably being written right now
            if fix:
                if name in dirs:
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            out.append(Problem("temp-file", str(path), f"left by a crashed writer {age:.0f}s ago", fix))
    return out


def _rollouts(
    engine: Engine,
    quarantine: Quarantine | None,
    heads: dict[str, Entry | None],
    pruned: set[str],
    grace: float,
    live: dict[str, Attempt],
) -> list[Problem]:
    """Problems of each rollout; fills ``heads`` with each one's index entry (None: unreadable),
    and ``live`` with the live latest attempt of each preparing or running one. ``pruned``:
    rollouts the index has a tombstone for (removed by ``agl prune``); ``grace``: see
    :func:`check_store`."""
    out = _misshapen_rollout_dirs(engine, quarantine)
    pending = {(t.rollout_id, t.sequence_id) for t in engine.queue.list_pending()}
    unqueued: list[RolloutRecord] = []
    for rollout_id in engine.records.all_ids():
        if not os.path.lexists(engine.ctx.layout.rollout_dir(rollout_id)):
            continue  # a directory not where its name puts it, reported above (or moved away)
        if rollout_id in pruned and not engine.records.exists(rollout_id):
            out.append(_pruned_leftover(engine, rollout_id, quarantine))
            continue
        heads[rollout_id] = None
        found = _readable_head(engine, rollout_id, quarantine, out, grace)
        if found is None:
            if not os.path.lexists(engine.ctx.layout.rollout_dir(rollout_id)):
                del heads[rollout_id]  # moved to quarantine: gone, so the index is fixed in this pass too
            continue
        heads[rollout_id] = entry_of(*found)
        latest = found[1].latest()
        if found[1].status in _RUNNING and latest is not None and latest.status in LIVE_ATTEMPT_STATUSES:
            live[rollout_id] = latest
        out.extend(_rollout_problems(engine, found[1].model_copy(deep=True), pending, quarantine, unqueued))
    return out + _not_queued(engine, unqueued, quarantine is not None)


def _not_queued(engine: Engine, suspects: list[RolloutRecord], fix: bool) -> list[Problem]:
    """Queued rollouts whose pending token was missing from the listing made before the walk:
    those still without one in a listing made now. (A rollout enqueued during the walk has its
    token by then: it is no damage, and re-queueing it one by one listed the queue each time.)"""
    if not suspects:
        return []
    pending = {(t.rollout_id, t.sequence_id) for t in engine.queue.list_pending()}
    claimed = {t.rollout_id for t in engine.queue.list_claimed()}
    out: list[Problem] = []
    for suspect in suspects:
        try:
            found = engine.records.head(suspect.rollout_id, cached_ok=False)
        except CorruptRecordError:
            continue  # reported as corrupt-record
        if found is None:
            continue
        record = found[1]
        if record.status not in ("queuing", "requeuing") or record.rollout_id in claimed:
            continue
        if (record.rollout_id, len(record.attempts) + 1) in pending:
            continue
        if fix:
            engine.ensure_pending(record.model_copy(deep=True))
        mirror = str(engine.ctx.layout.mirror_file(record.rollout_id))
        out.append(Problem("not-queued", mirror, f"{record.status} but no pending token", fix))
    return out


def _misshapen_rollout_dirs(engine: Engine, quarantine: Quarantine | None) -> list[Problem]:
    """Names under ``rollouts/`` that are not directories where a fan-out or a rollout directory
    belongs. Listings of rollouts pass over them, so nothing else would report the damage,
    while the rollout's readers and writers fail on it. ``fix`` moves them to quarantine."""
    out: list[Problem] = []
    layout = engine.ctx.layout
    for bucket in _non_directories(layout.rollouts, out, quarantine):
        for entry in _non_directories(Path(bucket.path), out, quarantine):
            if entry.path != layout.rollout_dir_str(entry.name):
                out.append(_misplaced(Path(entry.path), quarantine))
    return out


def _misplaced(path: Path, quarantine: Quarantine | None) -> Problem:
    """A directory in a fan-out directory that is not its name's (``rollouts/zz/stray``):
    readers look for a rollout only where its id puts it, so it is nobody's, and a repair that
    took its name for a rollout's reached for another path (ENOENT, every run). ``fix`` moves
    it to quarantine."""
    detail = "is not where its name puts a rollout: no reader finds it"
    if quarantine is None:
        return Problem("misplaced-directory", str(path), detail)
    where = quarantine.quarantine_file(path, "a directory where no rollout of its name belongs")
    return Problem("misplaced-directory", str(path), f"{detail}; moved to {where}", True)


def _non_directories(
    directory: Path, out: list[Problem], quarantine: Quarantine | None
) -> list[os.DirEntry[str]]:
    """The sub-directories of ``directory``; every other visible name is judged by :func:`_misshapen`
    (reported, and with ``quarantine`` moved there)."""
    subdirs: list[os.DirEntry[str]] = []
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return subdirs
    for entry in entries:
        if fsio.is_dir_entry(entry):
            subdirs.append(entry)
        else:
            out += _misshapen(Path(entry.path), quarantine, directory=True)
    return subdirs


def _misshapen_logs(engine: Engine, quarantine: Quarantine | None) -> list[Problem]:
    """Names of per-process logs (rollout index, change feed, worker logs) and of the index's
    snapshot that are no regular file: every reader leaves them out, so only this reports them.
    ``fix`` moves them to quarantine."""
    layout = engine.ctx.layout
    places = [(layout.rollout_index, INDEX_LOGS), (layout.events, EVENT_LOGS)]
    places += [(Path(w.path), WORKER_LOGS) for w in fsio.iter_dirs(layout.workers)]
    # The index's snapshot too: readers pass over one they cannot read, compaction cannot
    # rename a new one over a directory.
    out = _misshapen(layout.rollout_index / SNAPSHOT_NAME, quarantine, directory=False)
    for directory, kind in places:
        for name in log_segments.scan(directory, kind).not_files:
            out += _misshapen(directory / name, quarantine, directory=False)
    return out


def _readable_head(
    engine: Engine, rollout_id: str, quarantine: Quarantine | None, out: list[Problem], grace: float
) -> tuple[int, RolloutRecord] | None:
    """The newest readable revision. With a quarantine, an unreadable newest revision is moved
    into it (while an earlier one exists), so the rollout reads at the revision before it.
    A directory without any revision changed less than ``grace`` seconds ago is an enqueue
    that may be writing its first revision right now: passed over, not reported."""
    while True:
        try:
            found = engine.records.head(rollout_id, cached_ok=False)
        except CorruptRecordError as err:
            if quarantine is None or not _has_earlier_revision(Path(err.path)):
                # Without an earlier revision to fall back on, taking it out would make the
                # rollout vanish: it is left for a person to repair.
                out.append(Problem("corrupt-record", err.path, err.reason))
                return None
            where = quarantine.quarantine_file(Path(err.path), f"unreadable revision: {err.reason}")
            out.append(Problem("corrupt-record", err.path, f"{err.reason}; moved to {where}", True))
            engine.records.republish_mirror(rollout_id)  # rollout.json was the moved file
            continue
        if found is None:
            if not os.path.lexists(engine.ctx.layout.rollout_dir(rollout_id)):
                return None  # moved away meanwhile (a prune's one rename): no damage
            if _enqueue_in_flight(engine, rollout_id, grace):
                return None
            # rollout.json comes after revision 1: seen now, the revision may have come since
            # the read above (an enqueue finishing meanwhile), and is read again.
            if engine.records.head(rollout_id, cached_ok=False) is not None:
                continue
            if quarantine is not None and engine.records.restore_from_mirror(rollout_id):
                detail = "no history revision; revision 1 restored from rollout.json"
                out.append(Problem("no-record", str(engine.ctx.layout.rollout_dir(rollout_id)), detail, True))
                continue
            out.append(_no_record(engine, rollout_id, quarantine))
            return None
        return found


def _enqueue_in_flight(engine: Engine, rollout_id: str, grace: float) -> bool:
    """Whether a rollout directory without a revision may be an enqueue writing its first one:
    no ``rollout.json`` (written after revision 1) and the directory or its ``history/``
    changed less than ``grace`` seconds ago, by the file server's clock. (Taking such a
    directory away took a rollout whose enqueue then returned.)"""
    rollout_dir = engine.ctx.layout.rollout_dir(rollout_id)
    if grace <= 0 or os.path.lexists(engine.ctx.layout.mirror_file(rollout_id)):
        return False
    stamps = []
    for directory in (rollout_dir, rollout_dir / "history"):
        try:
            stamps.append(os.stat(directory).st_mtime)
        except OSError:
            continue
    return bool(stamps) and server_age(engine.ctx, max(stamps)) < grace


def _no_record(engine: Engine, rollout_id: str, quarantine: Quarantine | None) -> Problem:
    """A rollout directory without any revision: an enqueue that never finished (killed, or a
    power cut that kept the directories but not the first revision). Nothing of it was ever
    returned to anyone, so ``fix`` moves it to quarantine. (An enqueue running right now
    would fail loudly rather than lose anything: run ``check --fix`` on a quiet store.)
    When ``rollout.json`` still holds the record (``history/`` removed by hand), ``fix``
    restores the record from it instead (:func:`_readable_head`)."""
    directory = engine.ctx.layout.rollout_dir(rollout_id)
    detail = "no readable history revision"
    if quarantine is None:
        if engine.records.mirror_record(rollout_id) is not None:
            detail += " (rollout.json holds its record: --fix restores it from there)"
        return Problem("no-record", str(directory), detail)
    where = quarantine.quarantine_file(directory, "an enqueue that never finished: no revision")
    return Problem("no-record", str(directory), f"{detail}; moved to {where}", True)


def _pruned_leftover(engine: Engine, rollout_id: str, quarantine: Quarantine | None) -> Problem:
    """A directory without a record under the name of a pruned rollout: a late write (a span
    or heartbeat of an attempt that was no longer live) made it after the prune."""
    directory = engine.ctx.layout.rollout_dir(rollout_id)
    detail = "files written after the rollout was pruned (no record)"
    if quarantine is None:
        return Problem("pruned-leftover", str(directory), detail)
    where = quarantine.quarantine_file(directory, "written after the rollout was pruned")
    return Problem("pruned-leftover", str(directory), f"{detail}; moved to {where}", True)


def _unfinished_removals(
    engine: Engine, index: RolloutIndex | None, fix: bool, grace: float
) -> list[Problem]:
    """Removal runs (``agl prune``) a crash left in ``trash/``; ``fix`` finishes them. Without
    ``fix``, a run whose prune may still be running is no damage (``fix`` holds the
    maintenance lock, so no prune runs then; ``grace`` 0 says nothing runs)."""
    runs = unfinished_runs(engine.ctx)
    if not fix and grace > 0:
        runs = [run for run in runs if not still_running(engine.ctx, run, grace)]
    if not runs or index is None:
        return []
    if fix:
        recover(engine.ctx, index, engine.queue)
    detail = "a prune was interrupted: its rollouts are out of the store, their removal unfinished"
    return [Problem("unfinished-prune", str(run), detail, fix) for run in runs]


def _has_earlier_revision(revision: Path) -> bool:
    """Whether a readable-looking revision below ``revision`` exists (not only the one just
    below: a damaged name may sit several numbers above the newest good revision)."""
    stem = revision.stem
    if not stem.isdigit():
        return False
    below = (n[:-5] for n in fsio.list_names(revision.parent) if n.endswith(".json"))
    earlier = (n for n in below if n.isdigit() and int(n) < int(stem))
    return any((revision.parent / f"{n}.json").is_file() for n in earlier)


def _rollout_problems(
    engine: Engine,
    record: RolloutRecord,
    pending: set[tuple[str, int]],
    quarantine: Quarantine | None,
    unqueued: list[RolloutRecord],
) -> list[Problem]:
    """What is wrong around one readable rollout: its mirror, its span files; a queued one
    without a pending token in ``pending`` is added to ``unqueued`` (:func:`_not_queued`)."""
    fix = quarantine is not None
    out: list[Problem] = []
    rollout_id = record.rollout_id
    mirror = str(engine.ctx.layout.mirror_file(rollout_id))
    # A directory or a FIFO named rollout.json cannot be compared, nor replaced by a rename:
    # moved aside first, then made anew as a missing mirror is.
    shape = _misshapen(Path(mirror), quarantine, directory=False)
    out += shape
    if all(p.fixed for p in shape) and not engine.records.mirror_matches(rollout_id):
        if fix:
            engine.records.republish_mirror(rollout_id)
        out.append(Problem("stale-mirror", mirror, "does not link to the newest history revision", fix))
    queued = record.status in ("queuing", "requeuing")
    if queued and (rollout_id, len(record.attempts) + 1) not in pending:
        unqueued.append(record)
    return out + _attempt_files(engine, record, quarantine) + _span_counter(engine, rollout_id, quarantine)


def _attempt_files(engine: Engine, record: RolloutRecord, quarantine: Quarantine | None) -> list[Problem]:
    """What is wrong with the files of each attempt: their kind, then (where every one is of
    the right kind, so it can be read) their lines."""
    out = _misshapen(engine.ctx.layout.attempts_dir(record.rollout_id), quarantine, directory=True)
    if out and not out[0].fixed:
        return out  # no attempt's files can be read through it
    for attempt in record.attempts:
        attempt_dir = engine.attempt_dir(attempt)
        shape = _misshapen(attempt_dir, quarantine, directory=True)
        for name in sorted(fsio.list_names(attempt_dir)):
            if name.startswith(("spans.", "heartbeat.")):
                shape += _misshapen(attempt_dir / name, quarantine, directory=False)
        out += shape
        if all(p.fixed for p in shape):
            out += _span_file_problems(engine, attempt, quarantine)
    return out


def _misshapen(path: Path, quarantine: Quarantine | None, *, directory: bool) -> list[Problem]:
    """``path`` when it is not a directory (``directory``) or not a regular file: readers and
    writers fail on it ("Not a directory", "Is a directory"). ``fix`` moves it to quarantine,
    which keeps what it holds; the path is then absent, which readers take as empty and
    writers make anew."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if fsio.broken_name(err, path) is None:
            if isinstance(err, (FileNotFoundError, NotADirectoryError)):
                return []
            raise
        mode = 0  # a symbolic link loop or to nothing: neither a directory nor a file
    if stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode):
        return []
    wanted = "a directory" if directory else "a file"
    detail = f"is not {wanted}: the rollout's readers and writers fail on it"
    if quarantine is None:
        return [Problem("wrong-file-type", str(path), detail)]
    where = quarantine.quarantine_file(path, f"should have been {wanted}")
    return [Problem("wrong-file-type", str(path), f"{detail}; moved to {where}", True)]


def _span_counter(engine: Engine, rollout_id: str, quarantine: Quarantine | None) -> list[Problem]:
    """A ``span-seq/`` that is not a directory, or holds names but no counter (a name that is a
    number): every span write would look for a counter for about 70 s, then fail. ``fix`` moves
    what is there to quarantine and remakes the counter at the highest ``sequence_id`` stored
    for the rollout, as an allocation after a power cut raises it (none stored: ``span-seq/`` is
    left empty, and the next allocation makes the counter). Numbers handed out but not stored
    yet are not known: run ``--fix`` on a quiet store."""
    directory = engine.ctx.layout.span_seq_dir(rollout_id)
    out = _misshapen(directory, quarantine, directory=True)
    if not out:
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        if not names or any(name.isdigit() for name in names):
            return []
        detail = f"holds no counter (a file named by a number), only {', '.join(names[:3])}"
        if quarantine is None:
            return [Problem("no-span-counter", str(directory), detail)]
        for name in names:
            quarantine.quarantine_file(directory / name, "in span-seq/ but not a span counter")
        out = [Problem("no-span-counter", str(directory), f"{detail}; moved to {quarantine.directory}", True)]
    if out[0].fixed:
        high = engine.spans.highest_stored(rollout_id)
        if high:
            engine.spans.bump(rollout_id, high, durable=engine.ctx.durable)
    return out


def _span_file_problems(engine: Engine, attempt: Attempt, quarantine: Quarantine | None) -> list[Problem]:
    """Unparseable lines and torn tails of one attempt's span files. Only a finished attempt's
    files are repaired (nobody appends to them any more): bad bytes go to quarantine."""
    attempt_dir = engine.attempt_dir(attempt)
    bad: list[BadLine] = []
    engine.spans.read([attempt_dir], bad, cached=False)  # the bytes on disk now, not what we decoded before
    finished = attempt.status not in LIVE_ATTEMPT_STATUSES
    repair = quarantine if finished else None
    out: list[Problem] = []
    for path in sorted({b.path for b in bad}):
        lines = [b for b in bad if b.path == path]
        if repair is not None:
            cut_lines(path, [b.offset for b in lines], repair, "a span line that does not parse")
        out.extend(
            Problem("corrupt-span", str(b.path), f"byte {b.offset}: {b.reason}", repair is not None)
            for b in lines
        )
    if finished:
        out.extend(_torn_tails(attempt_dir, quarantine))
    return out


def _torn_tails(attempt_dir: Path, quarantine: Quarantine | None) -> list[Problem]:
    out: list[Problem] = []
    for name in fsio.list_names(attempt_dir):
        if not name.startswith("spans."):
            continue
        path = attempt_dir / name
        data = fsio.read_bytes(path) or b""
        end = data.rfind(b"\n") + 1
        if end < len(data):
            if quarantine is not None:
                quarantine.quarantine_bytes(path, data[end:], end, "bytes after the last newline")
                os.truncate(path, end)
            out.append(
                Problem(
                    "torn-tail",
                    str(path),
                    f"{len(data) - end} bytes after the last newline",
                    quarantine is not None,
                )
            )
    return out


def _tokens(engine: Engine, fix: bool, removing: set[str], grace: float) -> list[Problem]:
    """``removing``: rollouts an unfinished prune holds; their pending tokens go with its recovery.
    A pending token without a rollout, younger than ``grace`` seconds, is an enqueue in flight
    (the token is written first): passed over, as the reaper does. So are decisions and claim
    tokens changed less than ``grace`` seconds ago: a completion or a dequeue in flight (a
    plain check on a busy store reported them, exit 7, though nothing was wrong)."""
    out: list[Problem] = []
    for entry in engine.queue.list_journal():
        if _in_flight(engine, entry.path, grace):
            continue
        if fix:
            engine.apply(entry)
        out.append(Problem("unapplied-decision", str(entry.path), f"{entry.kind} {entry.outcome}", fix))
    for token in engine.queue.list_claimed():
        if not _in_flight(engine, engine.queue.claimed_path(token), grace):
            out.extend(_orphan_claim(engine, token, fix))
    for pending in engine.queue.list_pending():
        if pending.rollout_id not in removing and not engine.records.exists(pending.rollout_id):
            age = engine.queue.pending_age(pending)
            if age is None or (grace > 0 and age < grace):
                continue  # gone, or an enqueue in flight
            if fix:
                engine.queue.discard_pending(pending)
            out.append(
                Problem("orphan-pending", str(engine.queue.pending_path(pending)), "no such rollout", fix)
            )
    return out


_RUNNING = ("preparing", "running")


def _untracked_attempts(engine: Engine, live: dict[str, Attempt], fix: bool) -> list[Problem]:
    """A preparing or running rollout whose latest attempt is live but holds no claim token and
    no decision in flight: the reaper only judges tokens, so nothing would ever end it (its
    timeout included). Left when a repair moved the newest revision (the attempt's commit,
    which took the token) to quarantine; ``--fix`` gives the attempt its claim token back, and
    the reaper then judges it by its heartbeats and timeouts (found by an adversarial pass).

    ``live``: each such rollout's live latest attempt, as :func:`_rollouts` read it. A dequeue
    or a completion in flight is not taken for one: the tokens are listed after the records
    were read, and again, with a suspect's record read again, before it is reported."""

    def tracked() -> set[tuple[str, str]]:
        claims = {(t.rollout_id, t.attempt_id) for t in engine.queue.list_claimed()}
        return claims | {(e.token.rollout_id, e.token.attempt_id) for e in engine.queue.list_journal()}

    def live_latest(rid: str) -> Attempt | None:
        try:
            found = engine.records.head(rid, cached_ok=False)
        except CorruptRecordError:
            return None  # reported as such
        latest = found[1].latest() if found else None
        return latest if latest is not None and latest.status in LIVE_ATTEMPT_STATUSES else None

    if not live:
        return []
    before = tracked()
    suspects = [(rid, a) for rid, a in live.items() if (rid, a.attempt_id) not in before]
    if not suspects:
        return []
    after = tracked()
    out: list[Problem] = []
    for rid, attempt in suspects:
        now = live_latest(rid)
        if (rid, attempt.attempt_id) in after or now is None or now.attempt_id != attempt.attempt_id:
            continue
        if fix:
            engine.queue.create_claimed(ClaimToken(rid, attempt.sequence_id, attempt.attempt_id))
        out.append(
            Problem(
                "untracked-attempt",
                str(engine.attempt_dir(attempt)),
                f"attempt {attempt.attempt_id} is {attempt.status} with no claim token: nothing would end it",
                fix,
            )
        )
    return out


def _in_flight(engine: Engine, path: Path, grace: float) -> bool:
    """Whether ``path`` changed less than ``grace`` seconds ago by the file server's clock (its
    ctime too: a claim is a rename of the queue token, which keeps the enqueue's mtime), or is
    gone already (its writer finished)."""
    if grace <= 0:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return True
    return server_age(engine.ctx, max(st.st_mtime, st.st_ctime)) < grace


def _orphan_claim(engine: Engine, token: ClaimToken, fix: bool) -> list[Problem]:
    """A claim token whose attempt is no longer live (or was never recorded)."""
    try:
        record = engine.records.get(token.rollout_id)
    except CorruptRecordError:
        return []  # reported as a corrupt record; its tokens wait until it is repaired
    attempt = record.find(token.attempt_id) if record else None
    if attempt is not None and attempt.status in LIVE_ATTEMPT_STATUSES:
        return []
    path = str(engine.queue.claimed_path(token))
    if attempt is None:
        return [Problem("orphan-claim", path, "no attempt recorded; the reaper expires it")]
    # Decided through the record; the token is left over.
    if fix:
        engine.queue.drop_claimed(ClaimToken(token.rollout_id, token.sequence_id, token.attempt_id))
    return [Problem("orphan-claim", path, f"attempt is {attempt.status}", fix)]


def _fresh_head(engine: Engine, rid: str) -> Entry | Literal[False] | None:
    """The entry of ``rid``'s newest record read now, None if there is none, False if it is
    corrupt (reported as corrupt-record)."""
    try:
        found = engine.records.head(rid, cached_ok=False)
    except CorruptRecordError:
        return False
    return entry_of(*found) if found else None


def _index_disagreements(
    engine: Engine, index: RolloutIndex, heads: dict[str, Entry | None], view: IndexView, removing: set[str]
) -> tuple[IndexView, dict[str, tuple[Entry, str]], dict[str, str]]:
    """(the index re-read, {rollout: (its entry, why)} for entries behind their record,
    {rollout: why} for entries that appending cannot fix). ``removing``: rollouts an unfinished
    prune holds in ``trash/`` (gone; their tombstones come with the prune's recovery)."""
    suspects = {rid for rid, head in heads.items() if head is not None and view.entries.get(rid) != head}
    listed = {rid for rid, entry in view.entries.items() if entry.status != PRUNED}
    suspects |= listed - heads.keys() - removing
    if not suspects:
        return view, {}, {}
    # Re-read the suspects' records, then the index: a writer between its revision and its
    # line, or a rollout created after the first pass, is not damage.
    fresh: dict[str, Entry | None] = {}
    for rid in suspects:
        found = _fresh_head(engine, rid)
        if found is not False:
            fresh[rid] = found
    view = index.load()
    behind: dict[str, tuple[Entry, str]] = {}
    wrong: dict[str, str] = {}
    for rid, record in fresh.items():
        entry = view.entries.get(rid)
        if entry is not None and entry.status != PRUNED and (record is None or entry.rev > record.rev):
            # Ahead of the record read before the index: a writer may have made a revision and
            # its line in between (a busy store, not one restored from an older copy). Read again.
            again = _fresh_head(engine, rid)
            if again is False:
                continue
            record = again
        disagreement = _disagreement(rid, entry, record)
        if disagreement is None:
            continue
        repaired_by, why = disagreement
        if repaired_by is None:
            wrong[rid] = why
        else:
            behind[rid] = (repaired_by, why)
    if behind:
        # A writer appends its line right after its revision: one more look at the index
        # (new bytes only) tells such a moment from a line that never came.
        view.refresh(engine.ctx.layout.rollout_index, from_snapshot=False)
        behind = {
            rid: found
            for rid, found in behind.items()
            if (entry := view.entries.get(rid)) is None or entry.rev < found[0].rev
        }
    return view, behind, wrong


def _disagreement(rid: str, entry: Entry | None, record: Entry | None) -> tuple[Entry | None, str] | None:
    """None when the index ``entry`` agrees with the ``record``; else (the record, why) when
    appending the record's entry repairs it, (None, why) when only a rebuild does."""
    pruned = entry is not None and entry.status == PRUNED
    if entry == record or (record is None and pruned):
        return None  # agrees; or removed by agl prune, and its tombstone says so
    if record is None:
        return None, f"{rid}: in the index but there is no such rollout"
    if pruned:
        return None, f"{rid}: pruned in the index, but its record is there (restored from an archive?)"
    if entry is None:
        return record, f"{rid}: not in the index (record revision {record.rev}, {record.status})"
    if entry.rev < record.rev:
        return record, (
            f"{rid}: index at revision {entry.rev} ({entry.status}), "
            f"record at revision {record.rev} ({record.status})"
        )
    return None, (
        f"{rid}: index at revision {entry.rev} ({entry.status}) but the record is revision "
        f"{record.rev} ({record.status}); restored from an older copy?"
    )


def _index(
    engine: Engine,
    index: RolloutIndex,
    heads: dict[str, Entry | None],
    quarantine: Quarantine | None,
    removing: set[str],
) -> list[Problem]:
    """The rollout index against the records read by :func:`_rollouts`.

    Entries behind their record are repaired by appending the record's entry from this
    process; entries ahead of it, of rollouts that do not exist, and corrupt lines by
    rebuilding the index from the records. A missing ``complete.json`` is one problem,
    not one per rollout.

    A rebuild keeps the tombstones of pruned rollouts, and then reads every record once
    more: a writer's line that went to a log the rebuild removed names a revision written
    before that removal, so the second pass finds it and indexes it again.
    """
    fix = quarantine is not None
    where = str(engine.ctx.layout.rollout_index)
    view, behind, wrong = _index_disagreements(engine, index, heads, index.load(), removing)
    complete = index.is_complete()
    rebuild = fix and bool(wrong or view.bad)
    if rebuild:
        assert quarantine is not None
        for bad in view.bad:  # the rebuild deletes the logs: keep what could not be read
            line = _line_at(bad.path, bad.offset)
            if line:
                why = "a rollout index line that does not parse"
                quarantine.quarantine_bytes(bad.path, line, bad.offset, why)
        tombstones = [e for e in view.entries.values() if e.status == PRUNED and e.rollout_id not in heads]
        index.remove()
        rebuilt = {e.rollout_id: e for e in (*tombstones, *(h for h in heads.values() if h is not None))}
        index.append(rebuilt.values())
        index.append(_written_meanwhile(engine, rebuilt))
    elif fix:
        index.append(entry for entry, _why in behind.values())
    if fix and (rebuild or not complete):
        index.mark_complete("rebuilt by agl check --fix")
    out = [
        Problem("corrupt-index-line", str(b.path), f"byte {b.offset}: {b.reason}", rebuild) for b in view.bad
    ]
    out += [Problem("index-ahead", where, why, rebuild) for why in wrong.values()]
    if not complete:
        detail = f"no {engine.ctx.layout.rollout_index_marker.name}: listings read every record"
        out.append(Problem("index-incomplete", where, f"{detail} ({len(behind)} rollouts not indexed)", fix))
    else:
        out += [Problem("stale-index", where, why, fix) for _entry, why in behind.values()]
    return out


def _written_meanwhile(engine: Engine, indexed: dict[str, Entry]) -> list[Entry]:
    """Entries of the records that differ from ``indexed``, read again now (uncached)."""
    late: list[Entry] = []
    for rid in engine.records.all_ids():
        try:
            found = engine.records.head(rid, cached_ok=False)
        except CorruptRecordError:
            continue  # reported as corrupt-record
        if found is not None and indexed.get(rid) != (entry := entry_of(*found)):
            late.append(entry)
    return late


def _line_at(path: Path, offset: int) -> bytes:
    """The line of ``path`` that starts at ``offset`` (without its newline; empty if gone)."""
    try:
        fd, _st = fsio.open_to_read(path)
        with open(fd, "rb") as f:
            f.seek(offset)
            return f.readline().rstrip(b"\n")
    except OSError:
        return b""


def check_store(
    engine: Engine, index: RolloutIndex | None = None, *, fix: bool = False, grace: float = IN_FLIGHT_GRACE
) -> list[Problem]:
    """Every problem found in the store; with ``fix``, repaired where that is safe, under the
    maintenance lock (:class:`~store_fs.errors.MaintenanceBusyError` if another repair runs).

    ``grace``: what an enqueue in flight leaves for a moment (a pending token without its
    rollout, a rollout directory without its first revision) is passed over while younger
    than this many seconds; 0 (after a crash, with nothing running) takes it too."""
    if not fix:
        return _check(engine, index, None, grace)
    with maintenance_lock(engine.ctx.layout):
        quarantine = Quarantine(engine.ctx.layout, engine.ctx.writer, durable=engine.ctx.durable)
        found = _check(engine, index, quarantine, grace)
        if any(p.fixed for p in found):
            # A repair changes span files without a new revision: rows kept by reports may
            # no longer hold (store_fs/report/_row_cache.py).
            shutil.rmtree(engine.ctx.layout.report_cache, ignore_errors=True)
        return found


def _check(
    engine: Engine, index: RolloutIndex | None, quarantine: Quarantine | None, grace: float
) -> list[Problem]:
    fix = quarantine is not None
    heads: dict[str, Entry | None] = {}
    # First: a finished removal leaves fewer rollouts, and no half-removed one, to look at.
    removing = set() if fix else trashed_rollouts(engine.ctx)
    out = _unfinished_removals(engine, index, fix, grace) + _misshapen_logs(engine, quarantine)
    pruned = set() if index is None else set(index.load().by_status.get(PRUNED, ()))
    live: dict[str, Attempt] = {}
    out += _tokens(engine, fix, removing, grace) + _rollouts(engine, quarantine, heads, pruned, grace, live)
    out += _untracked_attempts(engine, live, fix)
    if index is not None:
        out += _index(engine, index, heads, quarantine, removing)
    out += resource_problems(engine.ctx) + worker_problems(engine.ctx, engine.workers, quarantine)
    return out + _temp_files(engine.ctx.layout.root, fix)
