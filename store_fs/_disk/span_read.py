"""Reading span files: decoding their lines, and a per-process cache of what was decoded.

A span file has one writer, which only ever appends whole lines
(:mod:`store_fs._disk.span_log`). So once a reader has decoded a file's first ``n``
bytes, those bytes never need decoding again while the file is the same file
(device and inode) and at least ``n`` bytes long: :class:`SpanReadCache` keeps
the decoded lines of files read more than once, recently, and decodes only what
was appended since. Decoding 1,000 LLM-call spans (2.8 MB) takes ~15 ms, most of
it turning JSON into objects and the collector's pass over them afterwards;
re-reading them from the cache takes an ``open``, an ``fstat`` and a copy of
each span's field dict.

Only a prefix of good lines is cached: a line that does not parse or does not
validate, and everything after it, is decoded again on every read, so a reader
of a file caught in an odd state (NUL bytes on NFS, a line completed later by
a writer that reused a dead one's pid) sees what a fresh reader would.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from store_fs._disk import codec, fsio
from store_fs._disk.span_decode import decode_span
from store_fs.models import Span

__all__ = ["BLANK", "UNPARSED", "Line", "SpanReadCache", "collector_paused", "read_lines", "read_span_bytes"]

log = logging.getLogger(__name__)

# One complete line of a span file, decoded: (dedup key, span or None, problem, byte offset).
# The key is the line's raw ``span_id`` (readers keep the first copy of each), or one of
# the markers below for lines that are not JSON objects.
Line = tuple[object, Span | None, str, int]
UNPARSED: Final = object()  # not JSON, or not an object: logged and reported
BLANK: Final = object()  # only NUL / blank bytes (a preallocated tail): reported, not logged


def _dedup_key(span_id: object) -> object:
    # A span_id that is not a string fails validation anyway; one that cannot be hashed
    # (a list, an object) is its own key instead of crashing the set lookup.
    try:
        hash(span_id)
    except TypeError:
        return object()
    return span_id


class _CollectorPause:
    """Process-wide bookkeeping of :func:`collector_paused` (threads decode at once)."""

    lock = threading.Lock()
    holders = 0
    was_enabled = False


def _reset_pause_in_child() -> None:
    # A forked child has only the forking thread, which holds no pause: threads that were
    # decoding in the parent will never resume the collector here, nor release the lock.
    if _CollectorPause.holders and _CollectorPause.was_enabled:
        gc.enable()
    _CollectorPause.lock = threading.Lock()
    _CollectorPause.holders = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pause_in_child)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while a block allocates many containers.

    Decoding 1,000 spans makes ~30,000 dicts, lists and models, which triggered
    dozens of young collections per ``query_spans`` and, every few calls, a full
    one that walks the whole heap: ~9 ms per call on average (``gc.callbacks``,
    BENCHMARKS.md). Span objects form no reference cycles, so nothing is left for
    the collector to find; it runs as usual once the block ends (one young
    collection, ~3 ms, is what remains). The collector is one switch for the whole
    process, so threads pausing at once share it: the first one in notes whether it
    was on, the last one out restores that.
    """
    with _CollectorPause.lock:
        if _CollectorPause.holders == 0:
            _CollectorPause.was_enabled = gc.isenabled()
            gc.disable()
        _CollectorPause.holders += 1
    try:
        yield
    finally:
        with _CollectorPause.lock:
            _CollectorPause.holders -= 1
            if _CollectorPause.holders == 0 and _CollectorPause.was_enabled:
                gc.enable()


def _decode_lines(data: bytes) -> list[Line]:
    """Decode the complete lines of a span file's content ``data``, in order.

    The bytes after the last newline are a write in progress and are left out.
    """
    with collector_paused():
        return _decode_all(data)


def _decode_all(data: bytes) -> list[Line]:
    out: list[Line] = []
    view = memoryview(data)
    find = data.find
    loads = codec.loads
    pos, end = 0, data.rfind(b"\n") + 1
    while pos < end:
        newline = find(b"\n", pos)
        line = view[pos:newline]  # a view: no copy of the line's bytes
        offset = pos
        pos = newline + 1
        if not line:
            continue
        try:
            obj = loads(line)
        except ValueError as err:
            if bytes(line).strip(b"\x00 \t\r"):
                out.append((UNPARSED, None, str(err).splitlines()[0], offset))
            else:
                out.append((BLANK, None, "NUL or blank bytes", offset))
            continue
        if type(obj) is not dict:
            out.append((UNPARSED, None, "not a JSON object", offset))
            continue
        span_id = obj.get("span_id")
        key = span_id if type(span_id) is str else _dedup_key(span_id)
        try:
            out.append((key, decode_span(obj), "", offset))
        except ValidationError as err:
            out.append((key, None, _invalid_reason(err), offset))
    return out


def _invalid_reason(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "line"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"does not validate as a Span: {where}: {first['msg']}{more}"


def _not_a_file(err: OSError, path: Path) -> str | None:
    """Why a span file's name cannot be read as a file, or None for any other error."""
    what = fsio.broken_name(err, path)
    return None if what is None else f"{what}, not a span file"


def read_span_bytes(path: Path) -> tuple[bytes, str | None]:
    """The bytes of one span file (none if it does not exist); or none, and why, when the name is
    no file (a directory, a link loop): a problem of that one name, which its readers report and
    pass over (``agl check --fix`` moves it aside), not a reason to fail every read of the rollout."""
    try:
        return fsio.read_bytes(path) or b"", None
    except OSError as err:
        reason = _not_a_file(err, path)
        if reason is None:
            raise
        return b"", reason


def read_lines(path: Path) -> list[Line]:
    """The decoded complete lines of one span file (none if it does not exist; one unparsed line
    at byte 0 saying why if the name is no file)."""
    data, reason = read_span_bytes(path)
    return _decode_lines(data) if reason is None else [(UNPARSED, None, reason, 0)]


class _Decoded:
    """The decoded good prefix of one span file (device, inode): its lines up to byte ``consumed``."""

    __slots__ = ("consumed", "ident", "lines")

    def __init__(self, ident: tuple[int, int]) -> None:
        self.ident = ident
        self.consumed = 0
        self.lines: list[Line] = []  # replaced, never changed in place: callers iterate it unlocked


# How many files read once are remembered, to recognise their second read.
_SEEN_ONCE_MAX: Final = 4096


class SpanReadCache:
    """Decoded span files of one process, least recently read dropped past ``budget`` bytes.

    A file is kept from its second read on. A reader that reads each file once (a
    trainer reading every finished rollout) would only pay for keeping them: the
    memory, and the collector walking the kept objects on every full collection.
    ``budget`` counts span-file bytes; the objects decoded from them take about
    three times as much memory. A budget of 0 turns the cache off. Thread-safe:
    threads reading one file at once decode its new bytes once.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._files: OrderedDict[Path, _Decoded] = OrderedDict()
        self._seen_once: OrderedDict[Path, tuple[int, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of span files whose decoded lines are kept now."""
        return self._held

    def lines(self, path: Path) -> list[Line]:
        """What :func:`read_lines` returns for ``path``; the list must not be changed."""
        return self.read(path)[0]

    def read(self, path: Path) -> tuple[list[Line], bool]:
        """``lines(path)``, and whether their spans are kept (so shared with later readers).

        Spans that are not kept belong to the caller alone, who need not copy them.
        """
        if self.budget <= 0:
            return read_lines(path), False
        try:
            return self._read_cached(path)
        except OSError as err:
            reason = _not_a_file(err, path)
            if reason is None:
                raise
            return [(UNPARSED, None, reason, 0)], False

    def _read_cached(self, path: Path) -> tuple[list[Line], bool]:
        try:
            # fstat of the opened file, not stat(path): opening makes an NFS client check the
            # file's size with the server (close-to-open), a stat may answer from a cache
            # up to a minute old. And the bytes read below are then this very file's.
            fd, st = fsio.open_to_read(path)
        except FileNotFoundError:
            return [], False
        try:
            ident = (st.st_dev, st.st_ino)
            with self._lock:
                admitted = path in self._files or self._seen_once.pop(path, None) == ident
                if not admitted:
                    self._seen_once[path] = ident
                    if len(self._seen_once) > _SEEN_ONCE_MAX:
                        self._seen_once.popitem(last=False)
            if not admitted:
                return _decode_lines(_read_from(fd, 0)), False
            with self._lock:
                entry = self._take(path, ident, st.st_size)
                tail: list[Line] = []
                if st.st_size > entry.consumed:
                    tail = self._extend(fd, entry)
                if 0 < entry.consumed <= self.budget:
                    self._files[path] = entry
                    self._held += entry.consumed
                    while self._held > self.budget:
                        _, dropped = self._files.popitem(last=False)
                        self._held -= dropped.consumed
                return (entry.lines + tail if tail else entry.lines), True
        finally:
            os.close(fd)

    def _take(self, path: Path, ident: tuple[int, int], size: int) -> _Decoded:
        entry = self._files.pop(path, None)
        if entry is None:
            return _Decoded(ident)
        self._held -= entry.consumed
        if entry.ident != ident or size < entry.consumed:
            return _Decoded(ident)  # replaced, or cut short: not the file we decoded
        return entry

    @staticmethod
    def _extend(fd: int, entry: _Decoded) -> list[Line]:
        """Decode what follows ``entry.consumed``: keep the good lines in ``entry``, return the rest."""
        data = _read_from(fd, entry.consumed)
        base = entry.consumed
        decoded = [(key, span, reason, base + at) for key, span, reason, at in _decode_lines(data)]
        good = next((i for i, line in enumerate(decoded) if line[1] is None), len(decoded))
        if good:
            entry.lines = entry.lines + decoded[:good]
        if good < len(decoded):
            entry.consumed = decoded[good][3]
            return decoded[good:]
        entry.consumed = base + data.rfind(b"\n") + 1
        return []


def _read_from(fd: int, offset: int) -> bytes:
    """Everything in the open file ``fd`` from ``offset`` to its end."""
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
