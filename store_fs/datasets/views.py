"""The data views of a store: ``triplets``, ``messages`` and ``rollouts``, one rollout at a time.

Every view reads a rollout as upstream's algorithms do: its record, and the spans of its latest
attempt (``query_spans(rollout_id, "latest")``), from which come its final reward (the last
reward span) and how it ended (:func:`~store_fs.datasets.rollout_filter.ending_of`). Each row
starts with the rollout's ``rollout_id``, ``attempt_id`` (the latest attempt), ``resources_id``,
``mode``, ``final_reward`` and ``ended``; then, per view:

* ``triplets``: one row per LLM call, with ``step`` (0, 1, ... within the rollout) and the
  ``prompt``, ``response``, ``reward`` and ``metadata`` that upstream's ``TracerTraceToTriplet``
  gives (:mod:`~store_fs.datasets.triplet_builder`), from the spans read as plain rows rather
  than span objects (:mod:`~store_fs.datasets._span_rows`: the same spans, two thirds of the cost);
* ``messages``: one row per rollout, with ``conversations``: upstream's ``TraceToMessages``
  output, one ``{"messages", "tools"}`` per LLM call (:mod:`~store_fs.datasets.message_builder`);
* ``rollouts``: one row per rollout, ``agl export``'s document (the rollout, every attempt and
  every span) plus ``final_reward`` and ``ended``.

Rollouts are read one after the other and nothing is kept, so memory stays flat however big
the store. A rollout whose spans the adapters cannot read (upstream's would raise) gives no rows
and is counted in :attr:`ViewCounts.skipped`. A rollout whose finished latest attempt has damaged
span files (what ``agl check`` reports: a line that does not parse or validate, bytes after the
last newline, a name that is no file or directory) gives no rows either, and is counted in
:attr:`ViewCounts.damaged`: read as the store reads it, it would lose the damaged spans, and a
lost reward span makes an earlier reward final without a word. A rollout removed while it is
read (``agl prune``) gives no rows.

:class:`TrainingData` is the trainer's entry point: the same views and filters, over everything
now (:meth:`~TrainingData.rows`), or with a :class:`~store_fs.datasets.cursor.Cursor`, what
finished since the last read (:meth:`~TrainingData.read_new`) and, as they finish,
(:meth:`~TrainingData.follow`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from store_fs._disk import fsio
from store_fs._disk.layout import revision_name
from store_fs._disk.record_peek import newest_revision
from store_fs._disk.span_log import BadLine
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES
from store_fs.datasets._row_rewards import final_reward
from store_fs.datasets._span_rows import TORN_TAIL, SpanRow, read_span_rows
from store_fs.datasets.cursor import Cursor
from store_fs.datasets.message_builder import MessagesError, build_messages
from store_fs.datasets.redaction import Redactor
from store_fs.datasets.rollout_filter import RolloutFilter, ending_of
from store_fs.datasets.triplet_builder import TripletError, triplets_of_rows
from store_fs.errors import CorruptRecordError
from store_fs.models import Span
from store_fs.rewards import find_final_reward

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["VIEWS", "TrainingData", "View", "ViewCounts", "attempt_span_damage", "rollout_rows", "view_rows"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# How long a finished attempt's torn tail is given to complete (a late span being written).
_SETTLE_SECONDS = 0.05

View = Literal["triplets", "messages", "rollouts"]
VIEWS: tuple[View, ...] = get_args(View)


@dataclass
class ViewCounts:
    """What a read produced: rollouts that gave rows, rows, and rollouts skipped (id, why)."""

    rollouts: int = 0
    rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: Rollouts left out because their finished latest attempt's span files are damaged (id, why).
    damaged: list[tuple[str, str]] = field(default_factory=list)
    #: Rollouts whose record at the revision asked for could not be read yet, though the rollout
    #: is there (a network filesystem's cache still hiding a revision another host made).
    lagging: list[str] = field(default_factory=list)
    #: (rollout id, why) of the damage already logged: a reader that tries a damaged rollout
    #: again at every read (:meth:`TrainingData.for_each_new`) logs it once, not at every tick.
    logged: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def forget(self, rollout_id: str) -> None:
        """Drop ``rollout_id`` from :attr:`damaged` and :attr:`lagging` (it is read again: what
        that read finds is what counts). The damage logged stays logged."""
        self.damaged = [(rid, why) for rid, why in self.damaged if rid != rollout_id]
        self.lagging = [rid for rid in self.lagging if rid != rollout_id]


class _DamagedSpans(Exception):
    """The finished latest attempt's span files are damaged (the message says where)."""


async def _document(store: FileStore, rollout_id: str) -> dict[str, Any] | None:
    from store_fs.exporting import rollout_document

    return await rollout_document(store, rollout_id)


@dataclass(frozen=True)
class _Brief:
    """What the views need of a rollout record (read as plain JSON, not as models)."""

    rollout_id: str
    status: str
    resources_id: str | None
    mode: str | None
    end_time: float | None
    attempt_id: str | None  # of the latest attempt
    attempt_seq: int
    attempt_status: str | None

    @classmethod
    def of(cls, rollout_id: str, body: dict[str, Any]) -> _Brief | None:
        attempts = body.get("attempts")
        latest = attempts[-1] if isinstance(attempts, list) and attempts else None
        if latest is not None and not (
            isinstance(latest, dict)
            and isinstance(latest.get("attempt_id"), str)
            and type(latest.get("sequence_id")) is int
        ):
            return None
        status, end = body.get("status"), body.get("end_time")
        if body.get("rollout_id") != rollout_id or not isinstance(status, str):
            return None
        return cls(
            rollout_id,
            status,
            body.get("resources_id"),
            body.get("mode"),
            float(end) if isinstance(end, int | float) else None,
            None if latest is None else latest["attempt_id"],
            0 if latest is None else latest["sequence_id"],
            None if latest is None else latest.get("status"),
        )


def _record(store: FileStore, rollout_id: str, at_least: int = 0) -> _Brief | None:
    """The rollout's newest record (revision ``at_least`` or later), read without keeping it in
    the process's caches: a view reads every rollout once, and caching them would grow with the
    store."""
    if not store._known_rollout(rollout_id):  # raises InvalidIdError for an id unsafe in a path
        return None
    found = newest_revision(store.layout, rollout_id, at_least=at_least)  # raises for an unreadable one
    if found is None:
        return None
    record = _Brief.of(rollout_id, found[1])
    if record is None:
        # Left out quietly, a rollout would be missing from training data with nothing said.
        path = store.layout.history_dir(rollout_id) / revision_name(found[0])
        raise CorruptRecordError(str(path), "not a rollout record (agl check --fix moves it aside)")
    return record


def _record_or_lagging(
    store: FileStore, rollout_id: str, at_least: int, counts: ViewCounts | None
) -> _Brief | None:
    """:func:`_record`; a rollout that is there but not readable at ``at_least`` yet is noted
    in ``counts.lagging`` (a reader following the index tries it again)."""
    record = _record(store, rollout_id, at_least)
    if record is None and at_least and counts is not None and store.layout.history_dir(rollout_id).is_dir():
        counts.lagging.append(rollout_id)
    return record


def _attempt_dir(store: FileStore, record: _Brief) -> Path | None:
    if record.attempt_id is None:
        return None
    return store.layout.attempt_dir(record.rollout_id, record.attempt_seq, record.attempt_id)


def _span_reader(store: FileStore, attempt_dir: Path) -> Callable[[list[str]], list[Span]]:
    """A read of ``attempt_dir``'s spans that adds the problems it finds to its argument."""

    def read(bad: list[str]) -> list[Span]:
        lines: list[BadLine] = []
        spans = store._spans.read([attempt_dir], lines)
        bad += [f"{line.path} at byte {line.offset}: {line.reason}" for line in lines]
        bad += _torn_tails(store, attempt_dir)
        return spans

    return read


def _spans(store: FileStore, record: _Brief) -> list[Span]:
    """The latest attempt's spans in ``query_spans`` order (sequence id, ties in storage order);
    raises :class:`_DamagedSpans` for a finished attempt's damaged files."""
    attempt_dir = _attempt_dir(store, record)
    if attempt_dir is None:
        return []
    spans = _read_settled(store, record.attempt_status, attempt_dir, _span_reader(store, attempt_dir))
    spans.sort(key=_sequence_id)
    return spans


def attempt_span_damage(
    store: FileStore, rollout_id: str, attempt_seq: int, attempt_id: str, attempt_status: str
) -> str | None:
    """What is damaged in the span files of a finished attempt (the first problem, and how many
    more), as the data views find it; None when they read whole or the attempt is still live
    (bytes after its last newline are a write in progress). For ``agl export``, which reads
    spans leniently (``query_spans`` passes over a bad line) and must not look complete."""
    attempt_dir = store.layout.attempt_dir(rollout_id, attempt_seq, attempt_id)
    try:
        # Rows, not span objects: the export has just built those, and a second build of every
        # span made `agl export --all` two to three times slower (found in review).
        _read_settled(store, attempt_status, attempt_dir, lambda bad: read_span_rows(store, attempt_dir, bad))
    except _DamagedSpans as err:
        return str(err)
    return None


def _span_rows(store: FileStore, record: _Brief) -> list[SpanRow]:
    """:func:`_spans` as plain rows (what triplets need), without building span objects."""
    attempt_dir = _attempt_dir(store, record)
    if attempt_dir is None:
        return []
    return _read_settled(
        store, record.attempt_status, attempt_dir, lambda bad: read_span_rows(store, attempt_dir, bad)
    )


def _read_settled(
    store: FileStore, attempt_status: str | None, attempt_dir: Path, read: Callable[[list[str]], _T]
) -> _T:
    """``read(bad)``, raising :class:`_DamagedSpans` if the problems it found mean damage. A
    finished attempt still takes late spans (docs/behaviour.md §5.3), and one being appended
    shows bytes after the last newline for as long as its write takes: a read that finds no
    other problem is made again once, ``_SETTLE_SECONDS`` later, and only that one counts."""
    bad: list[str] = []
    value = read(bad)
    if bad and attempt_status not in LIVE_ATTEMPT_STATUSES and all(b.endswith(TORN_TAIL) for b in bad):
        time.sleep(_SETTLE_SECONDS)
        bad = []
        value = read(bad)
    _raise_if_damaged(attempt_status, attempt_dir, bad)
    return value


def _raise_if_damaged(attempt_status: str | None, attempt_dir: Path, bad: list[str]) -> None:
    """Raise :class:`_DamagedSpans` when the attempt is finished (its writers are done: bytes
    after a last newline that stay there are a writer killed mid-line, see :func:`_read_settled`)
    and its files are damaged, or its directory's name is no directory (read as empty)."""
    if attempt_status in LIVE_ATTEMPT_STATUSES:
        return
    # Links followed, as the span readers and ``agl check`` follow them (a directory moved to
    # another disk and linked back is the attempt's directory).
    with contextlib.suppress(FileNotFoundError):  # no span or heartbeat yet: no directory
        if not stat.S_ISDIR(os.stat(attempt_dir).st_mode):
            bad = [f"{attempt_dir}: not a directory", *bad]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise _DamagedSpans(f"{bad[0]}{more}")


def _torn_tails(store: FileStore, attempt_dir: Path) -> list[str]:
    """The span files of ``attempt_dir`` whose last byte is no newline (the rows reader sees
    these itself)."""
    return [f"{path}: {TORN_TAIL}" for path in store._spans._span_files(attempt_dir) if _torn(path)]


def _torn(path: Path) -> bool:
    try:
        fd, _st = fsio.open_to_read(path)
        with open(fd, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            return size > 0 and os.pread(file.fileno(), 1, size - 1) != b"\n"
    except OSError:  # gone, or no file: the read reported it
        return False


def _removed(store: FileStore, record: _Brief) -> bool:
    """Whether the rollout is gone now (``agl prune`` renames a rollout's directory away in one
    step: spans read before this says no were all read before the rename)."""
    return not store.layout.history_dir(record.rollout_id).is_dir()


def _sequence_id(span: Span) -> int:
    return span.sequence_id


def _head(record: _Brief, final_reward: float | None, ending: str | None) -> dict[str, Any]:
    return {
        "rollout_id": record.rollout_id,
        "attempt_id": record.attempt_id,
        "resources_id": record.resources_id,
        "mode": record.mode,
        "final_reward": final_reward,
        "ended": ending,
    }


def _triplet_rows(store: FileStore, record: _Brief, flt: RolloutFilter) -> list[dict[str, Any]]:
    spans = _span_rows(store, record)
    if _removed(store, record):
        return []
    reward = final_reward(spans)
    ending = ending_of(record.status, record.attempt_status, reward)
    if not flt.admits_ending(ending):
        return []
    head = _head(record, reward, ending)
    return [{**head, "step": step, **triplet} for step, triplet in enumerate(triplets_of_rows(spans))]


async def _other_rows(
    store: FileStore, record: _Brief, view: View, flt: RolloutFilter
) -> list[dict[str, Any]]:
    spans = _spans(store, record)
    if _removed(store, record):
        return []
    reward = find_final_reward(spans)
    ending = ending_of(record.status, record.attempt_status, reward)
    if not flt.admits_ending(ending):
        return []
    if view == "messages":
        return [{**_head(record, reward, ending), "conversations": build_messages(spans)}]
    document = await _document(store, record.rollout_id)
    if document is None:
        return []
    return [{**document, "attempt_id": record.attempt_id, "final_reward": reward, "ended": ending}]


async def rollout_rows(
    store: FileStore,
    rollout_id: str,
    view: View,
    flt: RolloutFilter,
    *,
    redactor: Redactor | None = None,
    counts: ViewCounts | None = None,
    at_least: int = 0,
) -> list[dict[str, Any]]:
    """The rows one rollout gives in ``view`` ([] when the filter leaves it out), from its
    record at revision ``at_least`` or later."""
    record = _record_or_lagging(store, rollout_id, at_least, counts)
    if record is None or not flt.admits_record(record):
        return []
    try:
        if view == "triplets":
            rows = _triplet_rows(store, record, flt)
        else:
            rows = await _other_rows(store, record, view, flt)
    except (TripletError, MessagesError) as err:
        log.warning("%s: no %s: %s", rollout_id, view, err)
        if counts is not None:
            counts.skipped.append((rollout_id, str(err)))
        return []
    except _DamagedSpans as err:
        why = str(err)
        if counts is None or (rollout_id, why) not in counts.logged:
            log.error(
                "%s: left out, its spans are damaged: %s (agl check --fix moves them aside)", rollout_id, why
            )
        if counts is not None:
            counts.logged.add((rollout_id, why))
            counts.damaged.append((rollout_id, why))
        return []
    if redactor:
        rows = [redactor.row(row) for row in rows]
    if counts is not None and rows:  # rollouts that gave rows (--ended may leave one out here)
        counts.rollouts += 1
        counts.rows += len(rows)
    return rows


def candidate_ids(store: FileStore, flt: RolloutFilter) -> list[str]:
    """Rollouts worth reading for ``flt``, oldest first (each is checked again on its record)."""
    statuses = flt.statuses()
    if flt.rollout_id_in is not None:
        return sorted(flt.rollout_id_in)
    return store.rollout_ids(status_in=statuses)


async def view_rows(
    store: FileStore,
    view: View,
    flt: RolloutFilter | None = None,
    *,
    redact: Iterable[str] = (),
    counts: ViewCounts | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every row of ``view`` over the rollouts ``flt`` takes now, oldest rollout first."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
    flt = RolloutFilter() if flt is None else flt
    redactor = Redactor(redact)
    for rollout_id in candidate_ids(store, flt):
        for row in await rollout_rows(store, rollout_id, view, flt, redactor=redactor, counts=counts):
            yield row


class TrainingData:
    """A trainer's reader of one view of a store, with a filter, a redaction and a cursor.

    ``rows()`` streams everything the filter takes now. ``read_new()`` returns the rows of the
    rollouts that finished since the previous call (the first call: since ``cursor``, by default
    the beginning), and ``follow()`` yields them batch by batch as rollouts finish. Save
    :attr:`cursor` (``save_cursor``) to resume after a restart.
    """

    def __init__(
        self,
        store: FileStore,
        view: View = "triplets",
        filter: RolloutFilter | None = None,
        *,
        redact: Iterable[str] = (),
        cursor: Cursor | str | Path | None = None,
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
        self.store = store
        self.view: View = view
        self.filter = RolloutFilter() if filter is None else filter
        self._redact = list(redact)
        self._redactor = Redactor(self._redact)
        if isinstance(cursor, str | Path):
            cursor = Cursor.load(cursor, missing="start")
        self.cursor = cursor if cursor is not None else Cursor.start()
        self.counts = ViewCounts()

    def rows(self) -> AsyncIterator[dict[str, Any]]:
        """Every row the view and filter give now (the cursor is neither used nor moved)."""
        return view_rows(self.store, self.view, self.filter, redact=self._redact, counts=self.counts)

    async def read_new(self) -> list[dict[str, Any]]:
        """Rows of the rollouts that finished since the last read (see :meth:`for_each_new`)."""
        out: list[dict[str, Any]] = []
        await self.for_each_new(out.append)
        return out

    async def for_each_new(self, handle: Callable[[dict[str, Any]], object]) -> None:
        """Call ``handle`` on each row of the rollouts that finished (or changed after they
        finished, such as a reward given late: :class:`Cursor`) since the last read, as each
        rollout's rows are built (memory: one rollout's rows, however many finished), rollouts in
        the order the store's index logs name them (each process's log in the order its writes
        finished them; across processes, log by log).

        If this fails part-way (a row that cannot be built or handled), the cursor goes back to
        where it was before the call: the rows handled already come again on the next read
        (at least once, as after a crash), none is lost. A rollout left out because its spans
        are damaged (:attr:`ViewCounts.damaged`) stays in the cursor's ``retry`` list and is
        read again, first, at every read until it reads whole (after ``agl check --fix``).
        :attr:`counts` holds such a rollout once, by id, as the last read found it: it leaves
        ``damaged`` (and ``lagging``) once it reads whole, and its damage is logged once per
        reason, however many reads find it again.
        """
        before = self.cursor.copy()
        try:
            due: dict[str, int] = dict(self.cursor.retry)
            for rollout_id, rev in self.cursor.finished_at(self.store):
                due[rollout_id] = max(rev, due.get(rollout_id, 0))
            still_damaged: list[tuple[str, int]] = []
            for rollout_id, rev in due.items():
                self.counts.forget(rollout_id)  # this read says whether it is still left out
                damaged, lagging = len(self.counts.damaged), len(self.counts.lagging)
                rows = await rollout_rows(
                    self.store,
                    rollout_id,
                    self.view,
                    self.filter,
                    redactor=self._redactor,
                    counts=self.counts,
                    at_least=rev,
                )
                if len(self.counts.damaged) > damaged or len(self.counts.lagging) > lagging:
                    still_damaged.append((rollout_id, rev))
                for row in rows:
                    handle(row)
            self.cursor.retry = still_damaged
        except BaseException:
            self.cursor.rewind(before)
            raise

    async def follow(
        self, *, idle_timeout: float | None = None, tick: float = 0.25
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of new rows as rollouts finish (never an empty batch), until the caller stops,
        or ``idle_timeout`` seconds pass without one. Wakes on the store's change feed, and
        looks at least every ``tick`` seconds. The first batch holds every rollout finished
        since the cursor: over a big backlog, go through it with :meth:`for_each_new` first."""
        from store_fs._disk.watch import ChangeFeed, resolve_mode

        mode = resolve_mode("auto", self.store.root)
        self.store.layout.events.mkdir(parents=True, exist_ok=True)
        async with ChangeFeed(self.store.layout.events, mode, tick=tick) as feed:
            last = time.monotonic()
            while True:
                batch = await self.read_new()
                if batch:
                    last = time.monotonic()
                    yield batch
                elif idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    return
                await feed.next(tick)

    def save_cursor(self, path: str | Path) -> None:
        self.cursor.save(path)
