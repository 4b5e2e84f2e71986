"""Span logs, span sequence numbers and attempt heartbeats.

* Spans of an attempt live in ``attempts/<seq>-<attempt_id>/spans.<writer>.jsonl``:
  one file per writing process, so no two processes ever append to one file
  (``O_APPEND`` is not atomic over NFS). Each ``add_span`` call is one
  ``write(2)``, so a span is in the kernel when the call returns and survives a
  ``kill -9`` of the writer. Readers merge the files, ignore a trailing line
  without a newline (a write in progress), and log, never hide, a complete line
  that does not parse or does not validate. Reading is the hot path of
  ``query_spans``: files are decoded by :mod:`store_fs._disk.span_read`, which keeps
  what it decoded and reads only what was appended since.
* The span sequence counter of a rollout is one empty file in ``span-seq/`` whose
  *name* is the last number issued. Allocating ``k`` numbers renames ``n`` to
  ``n+k``; exactly one of several racing processes wins each rename. The first
  allocation makes the counter (``_publish_counter``).
* ``attempts/<...>/heartbeat.<writer>`` holds ``<counter> <wall time>``,
  rewritten in place by its one writer on span writes (at most every 0.25 s;
  not for the first span, whose revision marking the attempt running is its
  heartbeat) and by explicit heartbeats. Observers judge liveness by watching the
  counter move (see :mod:`store_fs._disk.reaper`).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from math import isfinite
from pathlib import Path

from store_fs._disk import codec, fsio
from store_fs._disk.context import Context
from store_fs._disk.server_clock import server_offset
from store_fs._disk.span_decode import copy_span
from store_fs._disk.span_read import BLANK, UNPARSED, SpanReadCache, collector_paused, read_span_bytes
from store_fs.errors import CorruptRecordError, RolloutNotFoundError, UnstorableValueError
from store_fs.models import Span

__all__ = ["Heartbeat", "SpanLog", "read_span_file"]

log = logging.getLogger(__name__)

HEARTBEAT_MIN_INTERVAL = 0.25
# Looks for a counter another process made, before giving up: ~70 s in all (``_pause_after_losing``).
_COUNTER_WAITS = 76
_MAX_OPEN_FILES = 64


@dataclass(frozen=True)
class Heartbeat:
    """One writer's heartbeat file: its counter, the wall time the writer wrote (its own clock:
    for people and ``last_heartbeat_time``), and that time on the file server's clock (the
    writer's :func:`~store_fs._disk.server_clock.server_offset` added; files written before
    offsets were recorded count as offset 0), which readers on any host can compare."""

    counter: int
    time: float
    server_time: float


def _parse_heartbeat(data: bytes) -> Heartbeat:
    """``<counter> <wall time> [<server offset>]`` (the offset is absent in older files)."""
    try:
        fields = data.split()
        counter, wall = int(fields[0]), float(fields[1])
        offset = float(fields[2]) if len(fields) > 2 else 0.0
    except (ValueError, IndexError):
        # Caught mid-rewrite: report it as movement, which errs towards "alive".
        return Heartbeat(-1, 0.0, 0.0)
    return Heartbeat(counter, wall, wall + offset)


@dataclass
class BadLine:
    path: Path
    offset: int
    reason: str


def read_span_file(path: Path, bad: list[BadLine] | None = None) -> Iterator[dict[str, object]]:
    """Complete, parseable lines of one span file, in order.

    The bytes after the last newline are a write in progress and are skipped
    silently; a complete line that does not parse is logged (and appended to
    ``bad`` when given) and skipped.
    """
    data, reason = read_span_bytes(path)
    if reason is not None:
        log.warning("skipping %s: %s", path, reason)
        if bad is not None:
            bad.append(BadLine(path, 0, reason))
    if not data:
        return
    end = data.rfind(b"\n")
    offset = 0
    for line in data[: end + 1].split(b"\n")[:-1]:
        if line.strip(b"\x00 \t\r"):
            try:
                obj = codec.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                yield obj
            except ValueError as err:
                reason = str(err).splitlines()[0]
                log.warning("skipping corrupt span line in %s at byte %d: %s", path, offset, reason)
                if bad is not None:
                    bad.append(BadLine(path, offset, reason))
        elif bad is not None and line:
            bad.append(BadLine(path, offset, "NUL or blank bytes"))
        offset += len(line) + 1


class _WriterState:
    def __init__(self) -> None:
        self.fds: OrderedDict[Path, int] = OrderedDict()
        self.known_ids: OrderedDict[Path, set[str]] = OrderedDict()
        self.counters: dict[str, int] = {}
        self.spanless: set[str] = set()  # rollouts whose first attempt this process created
        self.unmade: set[Path] = set()  # directories of attempts this process created, not made yet
        self.heartbeats: dict[Path, tuple[int, float]] = {}
        self.torn: set[Path] = set()  # logs whose last append failed (maybe midway)
        self.lock = threading.Lock()


def _span_line(span: Span) -> bytes:
    """The span's log line; :class:`UnstorableValueError` if an attribute or a time holds NaN or
    an infinity.

    JSON has no form for them and orjson writes ``null``; an attribute may not be null, so the
    line would be stored and then refused by every reader: the span (a reward, maybe) lost
    without a word. A time may be null, so it would be read back as "no time", another value
    than the caller's.
    """
    times = [("start_time", span.start_time), ("end_time", span.end_time)]
    times += [(f"event {i} timestamp", event.timestamp) for i, event in enumerate(span.events)]
    for what, value in times:
        if value is not None and not isfinite(value):
            raise UnstorableValueError(f"span {span.span_id}'s {what}", codec.NON_FINITE)
    line = span.model_dump(mode="json")
    maps = [("", line["attributes"]), ("resource ", line["resource"]["attributes"])]
    maps += [(f"event {i} ", event["attributes"]) for i, event in enumerate(line["events"])]
    maps += [(f"link {i} ", link["attributes"] or {}) for i, link in enumerate(line["links"])]
    for where, attributes in maps:
        for key, value in attributes.items():
            reason = codec.unstorable_reason(value)
            if reason is not None:
                raise UnstorableValueError(f"span {span.span_id}'s {where}attribute {key!r}", reason)
    try:
        return codec.dumps_line(line)
    except UnstorableValueError as err:
        # Name the span and the attribute (a lone surrogate in an LLM's text, say), not "dict".
        for where, attributes in maps:
            for key, value in attributes.items():
                try:
                    codec.dumps_line(value)
                except UnstorableValueError as bad:
                    raise UnstorableValueError(
                        f"span {span.span_id}'s {where}attribute {key!r}", bad.reason
                    ) from None
        raise UnstorableValueError(f"span {span.span_id}", err.reason) from None


class SpanLog:
    def __init__(self, ctx: Context, *, cache_bytes: int = 0) -> None:
        self._ctx = ctx
        self._layout = ctx.layout
        self._cache_bytes = cache_bytes

    def _state(self) -> _WriterState:
        state: _WriterState = self._ctx.local("span-writer", _WriterState)
        return state

    # -- sequence numbers ----------------------------------------------------------
    def _counter(self, rollout_id: str) -> int | None:
        """The counter's value; None when the rollout has no counter yet."""
        directory = self._layout.span_seq_dir(rollout_id)
        numbers = sorted(int(n) for n in fsio.list_names(directory) if n.isdigit())
        if not numbers:
            return None
        for stale in numbers[:-1]:  # left by a creator that raced; the highest one is the counter
            try:
                os.unlink(directory / str(stale))
            except FileNotFoundError:
                pass
        return numbers[-1]

    def _publish_counter(self, rollout_id: str, value: int, *, durable: bool = False) -> bool:
        """Create the rollout's counter at ``value``, unless it has one. True if this call did.

        The counter appears whole or not at all: ``span-seq/`` is built under a temporary name
        holding the counter file and renamed into place, and renaming a directory onto one that
        is not empty fails, so exactly one of several racing creators succeeds (an empty
        ``span-seq/``, left by a crashed build that made it at enqueue, is replaced). Rollouts
        get their counter from their first allocation, not at enqueue: two requests fewer per
        rollout on an NFS server (benchmarks/bench_nfs.py).
        """
        directory = self._layout.span_seq_dir(rollout_id)
        staging = directory.with_name(f".span-seq.{self._ctx.writer}.{secrets.token_hex(4)}.tmp")
        try:
            staging.mkdir()
        except FileNotFoundError:
            raise RolloutNotFoundError(rollout_id) from None
        try:
            fsio.create_empty(staging / str(value), durable=durable)  # syncs ``staging``
            os.rename(staging, directory)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False  # another process's counter is in place
            if err.errno == errno.ENOENT:
                raise RolloutNotFoundError(rollout_id) from None  # removed meanwhile
            raise
        if durable:
            fsio.fsync_dir(directory.parent)
        return True

    def allocate(self, rollout_id: str, count: int = 1) -> int:
        """Reserve ``count`` consecutive sequence numbers; returns the first.

        Raises :class:`RolloutNotFoundError` when the rollout's directory is gone (it never
        existed or was removed); a rollout without a counter yet gets one (``_publish_counter``).
        """
        # The counter this process renamed last is usually still the counter: one rename, no
        # listing (on NFS a listing is a READDIR round trip, and may be served stale anyway).
        state = self._state()
        last = state.counters.get(rollout_id)
        # A rollout whose first attempt this process created (``new_attempt``) holds no span
        # anywhere, and usually no counter yet: the first try makes one without listing
        # ``span-seq/`` for it (one lookup fewer), which fails if one exists.
        first = last is None and rollout_id in state.spanless
        if last is None and not first:
            # A bump is not synced by itself (see ``bump``): after a power cut the counter may
            # be below a stored span's number. This process has not used this counter before,
            # so it may be the first since a cut (whatever its own durability setting): it
            # raises the counter to the stored spans first, and only then hands out numbers.
            # Usually one listing that finds no ``attempts/`` yet.
            self._raise_to_stored(rollout_id)
            last = state.counters.get(rollout_id)
        lost = 0
        while True:
            if last is not None and self._rename_counter(
                rollout_id, last, last + count, durable=self._ctx.durable
            ):
                self._remember(rollout_id, last + count)
                return last + 1
            last = None if first else self._counter(rollout_id)
            if last is None:
                # No counter yet, so no number was handed out: none is stored (a counter raised
                # to stored spans above would exist). This allocation becomes the counter.
                if self._publish_counter(rollout_id, count, durable=self._ctx.durable):
                    self._remember(rollout_id, count)
                    return 1
                if not first:
                    lost = self._pause_after_losing(rollout_id, lost)
            first = False

    def _pause_after_losing(self, rollout_id: str, lost: int) -> int:
        """Another process's counter landed first, yet this host lists none: on NFS a host may
        see it only once its caches expire (a minute at most), so wait, longer each time, before
        looking again. A ``span-seq/`` that never shows a counter (only files not named by a
        number) is reported instead of waited on forever. Returns the new count of losses."""
        if lost >= _COUNTER_WAITS:
            where = str(self._layout.span_seq_dir(rollout_id))
            raise CorruptRecordError(where, "holds no span counter (a file named by a number)")
        time.sleep(min(1.0, 0.005 * 2**lost))
        return lost + 1

    def _rename_counter(self, rollout_id: str, last: int, new: int, *, durable: bool) -> bool:
        directory = self._layout.span_seq_dir(rollout_id)
        try:
            return fsio.move(directory / str(last), directory / str(new), durable=durable)
        except FileNotFoundError:  # span-seq/ is gone: the rollout was removed (or re-made)
            if not self._layout.history_dir(rollout_id).is_dir():
                raise RolloutNotFoundError(rollout_id) from None
            return False

    def _raise_to_stored(self, rollout_id: str) -> None:
        """Make the counter at least the highest ``sequence_id`` stored for the rollout (the
        rename synced when this store is durable)."""
        high = self.highest_stored(rollout_id)
        if high:
            self.bump(rollout_id, high, durable=self._ctx.durable)

    def highest_stored(self, rollout_id: str) -> int:
        """The highest ``sequence_id`` in the rollout's span files (0 if none): the least value
        its counter may hold."""
        attempts = self._layout.attempts_dir(rollout_id)
        high = 0
        for name in fsio.list_names(attempts):
            for obj in self._iter_attempt_lines(attempts / name):
                seq = obj.get("sequence_id")
                if type(seq) is int and seq > high:
                    high = seq
        return high

    def bump(self, rollout_id: str, at_least: int, *, durable: bool = False) -> None:
        """Make sure the counter is at least ``at_least`` (explicit numbers push it up, never down).

        The rename is synced only when ``durable`` asks: a bump comes with the span that carries
        the number, and that span's line is what is synced. After a power cut, the first
        allocation of each process raises a counter that fell behind its stored spans
        (``allocate``), so a number already stored is never handed out, at one sync a span
        instead of two."""
        # The counter only grows, so a value this process saw is a lower bound of the truth.
        seen = self._state().counters.get(rollout_id, 0)
        if seen >= at_least:
            return
        # Try the name last seen (a new rollout's counter, ``0``, if none) before listing the
        # directory: whichever file is renamed to ``at_least``, the highest name (the counter)
        # is then at least that, and ``seen < at_least`` means no name goes down.
        directory = self._layout.span_seq_dir(rollout_id)
        try:
            if fsio.move(directory / str(seen), directory / str(at_least), durable=durable):
                self._remember(rollout_id, at_least)
                return
        except FileNotFoundError:
            pass  # no span-seq/ yet: the loop publishes the counter
        lost = 0
        while True:
            last = self._counter(rollout_id)
            if last is None:
                if self._publish_counter(rollout_id, at_least, durable=durable):
                    self._remember(rollout_id, at_least)
                    return
                lost = self._pause_after_losing(rollout_id, lost)
                continue
            if last >= at_least or self._rename_counter(rollout_id, last, at_least, durable=durable):
                self._remember(rollout_id, max(last, at_least))
                return

    def _remember(self, rollout_id: str, value: int) -> None:
        counters = self._state().counters
        if len(counters) > 4096:
            counters.clear()
        counters[rollout_id] = max(counters.get(rollout_id, 0), value)

    # -- writing -------------------------------------------------------------------
    def _fd(self, state: _WriterState, path: Path) -> int:
        fd = state.fds.get(path)
        if fd is not None:
            state.fds.move_to_end(path)
            return fd
        attempt_dir = path.parent
        if attempt_dir in state.unmade:
            state.unmade.discard(attempt_dir)
            if not self._ctx.durable:
                # This process's new attempt: its directory is most likely missing, and so is
                # ``attempts/`` for a first attempt. Made top down, they cost one request to an
                # NFS server fewer than an open that fails first (fsync mode makes them durably).
                try:
                    attempt_dir.parent.mkdir(exist_ok=True)
                    attempt_dir.mkdir(exist_ok=True)
                except FileNotFoundError:
                    pass  # the rollout's directory is gone: the open below decides, as always
        fd = fsio.open_making_dirs(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, durable=self._ctx.durable)
        state.fds[path] = fd
        while len(state.fds) > _MAX_OPEN_FILES:
            _, old = state.fds.popitem(last=False)
            os.close(old)
        return fd

    def _forget_if_replaced(self, state: _WriterState, path: Path) -> None:
        """Close the descriptor held for ``path`` if the file at that name is another one (or
        none): appended to, the replaced copy would take the line out of every reader's sight
        while the call reported it stored (found by an adversarial pass). Costs an ``fstat``
        and a ``stat``; only late spans pay it."""
        fd = state.fds.get(path)
        if fd is None:
            return
        held = os.fstat(fd)
        try:
            named = os.stat(path)
        except FileNotFoundError:
            named = None
        if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            del state.fds[path]
            os.close(fd)

    def _known(self, state: _WriterState, attempt_dir: Path) -> set[str]:
        known = state.known_ids.get(attempt_dir)
        if known is None:
            known = {str(obj.get("span_id")) for obj in self._iter_attempt_lines(attempt_dir)}
            state.known_ids[attempt_dir] = known
            while len(state.known_ids) > _MAX_OPEN_FILES:
                state.known_ids.popitem(last=False)
        else:
            state.known_ids.move_to_end(attempt_dir)
        return known

    def new_attempt(self, attempt_dir: Path, rollout_id: str, sequence_id: int) -> None:
        """Note that this process just created the attempt: it holds no spans anywhere yet.

        Its first ``append`` then skips listing and reading the attempt's span files. When it
        is the rollout's first attempt, no span of the rollout can be stored anywhere (every
        span belongs to an attempt), so this process's first allocation of sequence numbers
        skips raising the counter to the stored spans (``allocate``).
        """
        state = self._state()
        with state.lock:
            state.known_ids[attempt_dir] = set()
            while len(state.known_ids) > _MAX_OPEN_FILES:
                state.known_ids.popitem(last=False)
            if sequence_id == 1:
                if len(state.spanless) > 4096:
                    state.spanless.clear()
                state.spanless.add(rollout_id)
            if len(state.unmade) > 4096:
                state.unmade.clear()
            state.unmade.add(attempt_dir)

    def append(
        self, attempt_dir: Path, spans: Sequence[Span], *, settled: bool = False
    ) -> tuple[list[Span], Path | None]:
        """Write the spans whose ``span_id`` this attempt does not hold yet, in one write.

        Returns the spans written and the file they went to (None if nothing was new).
        Duplicates are detected against everything this process has seen for the
        attempt; a duplicate written concurrently by another process is hidden by
        readers, which keep the first copy. ``settled``: the attempt is finished, so ``agl
        check --fix`` may have republished its files (a bad line cut out): a file this process
        holds open is first checked to still be the one at its name.
        """
        state = self._state()
        path = attempt_dir / f"spans.{self._ctx.writer}.jsonl"
        with state.lock:
            if settled:
                self._forget_if_replaced(state, path)
            known = self._known(state, attempt_dir)
            fresh: list[Span] = []
            chunks: list[bytes] = []
            batch: set[str] = set()
            for span in spans:
                if span.span_id in known or span.span_id in batch:
                    log.error(
                        "Duplicated span added: %s/%s/%s", span.rollout_id, span.attempt_id, span.span_id
                    )
                    continue
                batch.add(span.span_id)
                fresh.append(span)
                chunks.append(_span_line(span))
            if not chunks:
                return [], None
            self._write(state, path, b"".join(chunks))
            # Only now: a span whose write failed is not "held", so a retry stores it.
            known.update(batch)
        return fresh, path

    def _write(self, state: _WriterState, path: Path, data: bytes) -> None:
        """Append ``data``; after a failed append, first end the line it may have left torn
        (a retry's line would otherwise be glued to the fragment, and both be unreadable)."""
        if path in state.torn:
            data = b"\n" + data  # a blank line when nothing was written: readers skip it
        try:
            fsio.append(self._fd(state, path), data)
        except OSError:
            state.torn.add(path)
            raise
        state.torn.discard(path)

    def flush(self, attempt_dir: Path) -> None:
        """Push this process's span writes for the attempt to the file server.

        Called before an attempt is reported finished: on a network filesystem the writes to a
        file kept open may wait in this client's cache (until close or fsync), and a reader on
        another host that sees the attempt finished must also see all its spans. Free on a local
        filesystem, whose page cache every process shares.
        """
        if not self._ctx.shared_fs or self._ctx.durable:  # durable writes are synced already
            return
        state = self._state()
        with state.lock:
            fd = state.fds.get(attempt_dir / f"spans.{self._ctx.writer}.jsonl")
            if fd is not None:
                os.fdatasync(fd)

    def sync(self, path: Path) -> None:
        """Block until ``path`` is on stable storage (shared with concurrent callers)."""
        fsio.sync_data(path)

    def heartbeat(self, attempt_dir: Path, *, force: bool = False) -> None:
        """Bump this process's heartbeat counter for the attempt (throttled unless ``force``)."""
        state = self._state()
        path = attempt_dir / f"heartbeat.{self._ctx.writer}"
        now = self._ctx.clock.monotonic()
        with state.lock:
            counter, last = state.heartbeats.get(path, (0, -1e18))
            if not force and now - last < HEARTBEAT_MIN_INTERVAL:
                return
            counter += 1
            state.heartbeats[path] = (counter, now)
            offset = server_offset(self._ctx)
            data = f"{counter:020d} {self._ctx.clock.time():020.6f} {offset:+.6f}\n".encode()
            fd = fsio.open_making_dirs(path, os.O_WRONLY | os.O_CREAT)
            try:
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)

    def heartbeat_recorded(self, attempt_dir: Path) -> None:
        """A heartbeat was just stored elsewhere (a revision stamping ``last_heartbeat_time``):
        the next throttled :meth:`heartbeat` for the attempt waits the interval from now."""
        state = self._state()
        path = attempt_dir / f"heartbeat.{self._ctx.writer}"
        with state.lock:
            counter, _last = state.heartbeats.get(path, (0, -1e18))
            state.heartbeats[path] = (counter, self._ctx.clock.monotonic())

    def close(self) -> None:
        state = self._state()
        with state.lock:
            for fd in state.fds.values():
                os.close(fd)
            state.fds.clear()

    # -- reading -------------------------------------------------------------------
    def _span_files(self, attempt_dir: Path) -> list[Path]:
        names = sorted(
            n for n in fsio.list_names(attempt_dir) if n.startswith("spans.") and n.endswith(".jsonl")
        )
        return [attempt_dir / n for n in names]

    def _iter_attempt_lines(
        self, attempt_dir: Path, bad: list[BadLine] | None = None
    ) -> Iterator[dict[str, object]]:
        for path in self._span_files(attempt_dir):
            yield from read_span_file(path, bad)

    def read(
        self, attempt_dirs: Iterable[Path], bad: list[BadLine] | None = None, *, cached: bool = True
    ) -> list[Span]:
        """Spans of the given attempts, first copy of each ``span_id`` per attempt, file order.

        Lines this process decoded before come from its :class:`SpanReadCache`
        (``cached=False`` decodes every file afresh). Each span returned is the
        caller's to change, except its nested values (status, context, events,
        lists in attributes...), which are shared with the cache: replace those
        rather than change them in place. Complete lines that do not parse, are
        not JSON objects, or whose first copy of a ``span_id`` does not validate
        are logged and appended to ``bad``; bytes after the last newline (a write
        in progress) are skipped silently.
        """
        cache: SpanReadCache = (
            self._ctx.local("span-read-cache", lambda: SpanReadCache(self._cache_bytes))
            if cached
            else SpanReadCache(0)
        )
        with collector_paused():  # copies are many small containers, none in a cycle
            return self._read(cache, attempt_dirs, bad)

    def _read(
        self, cache: SpanReadCache, attempt_dirs: Iterable[Path], bad: list[BadLine] | None
    ) -> list[Span]:
        out: list[Span] = []
        for attempt_dir in attempt_dirs:
            seen: set[object] = set()
            for path in self._span_files(attempt_dir):
                lines, shared = cache.read(path)
                for key, span, reason, offset in lines:
                    if span is None:
                        if key is UNPARSED:
                            log.warning(
                                "skipping corrupt span line in %s at byte %d: %s", path, offset, reason
                            )
                        elif key is not BLANK:
                            if key in seen:
                                continue
                            seen.add(key)
                            log.warning("skipping invalid span in %s at byte %d: %s", path, offset, reason)
                        if bad is not None:
                            bad.append(BadLine(path, offset, reason))
                    elif key not in seen:
                        seen.add(key)
                        out.append(copy_span(span) if shared else span)
        return out

    def count(self, attempt_dir: Path) -> int:
        return sum(1 for _ in self._iter_attempt_lines(attempt_dir))

    def heartbeats(self, attempt_dir: Path) -> list[Heartbeat]:
        out: list[Heartbeat] = []
        for name in fsio.list_names(attempt_dir):
            if not name.startswith("heartbeat."):
                continue
            out.append(_parse_heartbeat(fsio.read_bytes(attempt_dir / name) or b""))
        return out
