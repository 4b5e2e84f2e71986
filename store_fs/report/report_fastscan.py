"""Reading every rollout of a store into report rows straight from its files: the report's hot path.

Through the public API each rollout costs a listing read, a ``query_spans`` (which reads the
record again and builds a span object per line) and, for a retried one, a ``query_attempts``:
about a millisecond cold, a minute and a half for 100,000 rollouts. Here a rollout costs a
listing of its ``history/``, a read of the newest revision as plain JSON, and per attempt a
listing of its directory and a read of each span file, whose lines are judged and counted
without span objects (:mod:`store_fs.report._span_digest`). The rows are the ones
:func:`~store_fs.report.report_scan.scan_rollout` makes: a record not in the store's own shape,
or with a live or unresponsive attempt (whose heartbeat files the API consults), is read through
the API instead (:mod:`store_fs.report._record_rows`); ``tests/test_report_fastscan.py`` compares
both ways on stores with retries, corrupt lines and several writers. A rollout that ended minutes
ago and has no newer revision than when an earlier report read it costs only the listing: its row
was kept (:mod:`store_fs.report._row_cache`).

Work is split by the store's fan-out directories (``rollouts/<2 hex>/``), so a worker process
lists its own share and nothing but the rows travels back. The span lines that are not good
spans, and records that cannot be read, come back too: they are the span and record part of the
report's data health section (:mod:`store_fs.report.report_health`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from store_fs._disk import codec, fsio
from store_fs._disk.ids import ROLLOUT_ID_RE
from store_fs._disk.layout import Layout, revision_name
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES
from store_fs.errors import CorruptRecordError
from store_fs.report._record_rows import row_of_record
from store_fs.report._row_cache import BucketCache
from store_fs.report._span_digest import BadSpanLine, DigestOfFiles, digest_attempts
from store_fs.report.report_scan import RolloutRow, scan_rollout

__all__ = ["FastScan", "buckets", "scan_buckets", "scan_buckets_in_worker"]

log = logging.getLogger(__name__)


@dataclass
class FastScan:
    """Rows of the rollouts read, and what could not be read well."""

    rows: list[RolloutRow] = field(default_factory=list)
    bad_spans: list[BadSpanLine] = field(default_factory=list)
    #: (path, reason) of records whose newest revision does not parse or validate.
    corrupt_records: list[tuple[str, str]] = field(default_factory=list)
    #: How many rollouts were read through the public API (not in the store's own shape).
    through_api: int = 0

    def __repr__(self) -> str:
        # Short on purpose: asyncio.run (Python 3.11) formats the repr of its main task's
        # result when it ends, and a generated repr would spell out every row.
        return f"FastScan({len(self.rows)} rows, {len(self.bad_spans)} bad span lines)"

    def extend(self, other: FastScan) -> None:
        self.rows.extend(other.rows)
        self.bad_spans.extend(other.bad_spans)
        self.corrupt_records.extend(other.corrupt_records)
        self.through_api += other.through_api


def buckets(layout: Layout) -> list[str]:
    """Names of the fan-out directories under ``rollouts/`` (sorted)."""
    try:
        with os.scandir(layout.rollouts_str) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except FileNotFoundError:
        return []


def _newest_rev(history: str) -> int:
    """The newest revision's number (0: no revision, no record)."""
    try:
        names = os.listdir(history)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return max((int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()), default=0)


def _revision(history: str, rev: int) -> dict[str, Any] | bool:
    """Revision ``rev``'s parsed JSON object; False if it is gone or does not parse as an object
    (the API path decides what that is)."""
    try:
        data = fsio.read_bytes(f"{history}/{revision_name(rev)}")
    except OSError:
        return False  # a directory or a FIFO in its place, say: the API path names the damage
    if data is None:
        return False  # removed meanwhile (a prune): the API path knows what to do
    try:
        body = codec.loads(data)
    except ValueError:
        return False  # unreadable: the API path reports it as the store does
    return body if type(body) is dict else False


def _digest_into(row: RolloutRow, digest: DigestOfFiles) -> None:
    row.reward = digest.reward
    row.spans = digest.spans
    row.llm_calls = digest.llm_calls
    row.input_tokens = digest.input_tokens
    row.output_tokens = digest.output_tokens


def _attempt_dirs(rollout_dir: str, attempts: Sequence[tuple[int, str, str]]) -> list[tuple[str, bool]]:
    """(directory, finished) of each (sequence id, attempt id, status)."""
    return [
        (f"{rollout_dir}/attempts/{seq:04d}-{aid}", status not in LIVE_ATTEMPT_STATUSES)
        for seq, aid, status in attempts
    ]


def _scan_one(rollout_dir: str, rollout_id: str, out: FastScan, kept: BucketCache | None) -> bool:
    """Read one rollout into ``out`` (its kept row when it holds); False when it must be read
    through the API instead."""
    history = f"{rollout_dir}/history"
    rev = _newest_rev(history)
    if rev == 0:
        return True  # no record: not a rollout (a pruned rollout's late leftovers, say)
    hit = kept.get(rollout_id, rev) if kept is not None else None
    if hit is not None:
        out.rows.append(hit[0])
        out.bad_spans.extend(hit[1])
        return True
    record = _revision(history, rev)
    found = row_of_record(record, rollout_id) if isinstance(record, dict) else None
    if found is None:
        return False
    row, attempts = found
    bad: list[BadSpanLine] = []
    if attempts:  # a rollout never dequeued shows no spans, as the API path does
        dirs = _attempt_dirs(rollout_dir, [(a.sequence_id, a.attempt_id, a.status) for a in attempts])
        digest = digest_attempts(dirs)
        _digest_into(row, digest)
        bad = digest.bad
        out.bad_spans.extend(bad)
    out.rows.append(row)
    # A row made while a span log could not be read lacks its spans: kept, it would stay so
    # after the file is readable again (a transient EACCES or EIO made permanent).
    if kept is not None and all(b.kind is None for b in bad):
        kept.put(rollout_id, rev, row, bad)
    return True


async def _through_api(root: str, rollout_ids: Sequence[str], out: FastScan) -> None:
    """The rollouts the fast path left, through a ``FileStore`` of their own."""
    from store_fs.store import FileStore

    store = FileStore(Path(root), create=False)
    layout = store.layout
    try:
        for rollout_id in rollout_ids:
            try:
                rollout = await store.get_rollout_by_id(rollout_id)
            except CorruptRecordError as err:
                log.warning("%s", err)  # as a listing does: skipped, and reported
                out.corrupt_records.append((err.path, err.reason))
                continue
            if rollout is None:
                continue
            row = await scan_rollout(store, rollout)
            out.rows.append(row)
            out.through_api += 1
            rollout_dir = layout.rollout_dir_str(rollout_id)
            attempts = [(a.sequence_id, a.attempt_id, a.status) for a in row.attempts]
            out.bad_spans.extend(digest_attempts(_attempt_dirs(rollout_dir, attempts)).bad)
    finally:
        store.close()


async def scan_buckets(root: str, names: Sequence[str], *, cache: bool = True) -> FastScan:
    """Rows of every rollout under ``rollouts/<name>/`` for each of ``names``, in no set order.
    ``cache``: use and update the rows kept by earlier reports (:mod:`._row_cache`)."""
    layout = Layout(Path(root))
    out = FastScan()
    leftover: list[str] = []
    match = ROLLOUT_ID_RE.fullmatch
    for name in names:
        directory = f"{layout.rollouts_str}/{name}"
        try:
            rollout_ids = [n for n in os.listdir(directory) if match(n)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        kept = BucketCache(root, name) if cache else None
        for rollout_id in rollout_ids:
            if not _scan_one(f"{directory}/{rollout_id}", rollout_id, out, kept):
                leftover.append(rollout_id)
        if kept is not None:
            kept.save()
    if leftover:
        await _through_api(root, leftover, out)
    return out


def scan_buckets_in_worker(root: str, names: Sequence[str], cache: bool = True) -> FastScan:
    """:func:`scan_buckets` in a worker process of a pool (a top-level function: picklable)."""
    return asyncio.run(scan_buckets(root, names, cache=cache))
