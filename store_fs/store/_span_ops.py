"""Spans: rollout-wide sequence ids, storing spans (each a heartbeat), and ``query_spans``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from store_fs._disk.ids import check_attempt_id
from store_fs._disk.queue_tokens import ClaimToken
from store_fs._disk.rollout_history import RolloutRecord
from store_fs._disk.status_rules import (
    FINAL_ATTEMPT_STATUSES,
    TERMINAL_ROLLOUT_STATUSES,
    mark_running,
    superseded,
)
from store_fs._filtering import build_filter, check_page_args, has_conditions, matches, paginate, sort_items
from store_fs.errors import AttemptNotFoundError, ConflictError, RolloutNotFoundError, UnstorableValueError
from store_fs.models import Attempt, FilterLogic, PaginatedResult, SortOrder, Span
from store_fs.store._base import StoreCore

# Sequence numbers are signed 64-bit integers in JSON and upstream's clients, and the counter
# hands out one more than the highest stored.
MAX_SEQUENCE_ID = 2**63 - 2


class SpanMethods(StoreCore):
    """Allocating sequence ids, appending spans to the attempt's per-process log, reading them."""

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        # The sequence is rollout-wide: ``attempt_id`` is not used.
        if not self._known_rollout(rollout_id) or not self._records.seen(rollout_id):
            raise RolloutNotFoundError(rollout_id)
        return self._spans.allocate(rollout_id)

    async def get_many_span_sequence_ids(
        self, rollout_attempt_ids: Sequence[tuple[str, str]]
    ) -> Sequence[int]:
        counts: dict[str, int] = {}
        for rollout_id, _ in rollout_attempt_ids:
            counts[rollout_id] = counts.get(rollout_id, 0) + 1
        firsts: dict[str, int] = {}
        for rollout_id, count in counts.items():
            if not self._known_rollout(rollout_id) or not self._records.seen(rollout_id):
                raise RolloutNotFoundError(rollout_id)
            firsts[rollout_id] = self._spans.allocate(rollout_id, count)
        out: list[int] = []
        for rollout_id, _ in rollout_attempt_ids:
            out.append(firsts[rollout_id])
            firsts[rollout_id] += 1
        return out

    def _store_group(
        self, rollout_id: str, attempt_id: str, spans: Sequence[Span]
    ) -> tuple[list[Span], Path | None]:
        return self._write_group(*self._group_target(rollout_id, attempt_id, spans), spans)

    def _group_target(
        self, rollout_id: str, attempt_id: str, spans: Sequence[Span]
    ) -> tuple[RolloutRecord, Attempt]:
        """The record and attempt spans of one attempt go to, after every check that refuses
        them (writing nothing)."""
        if not self._known_rollout(rollout_id):
            raise RolloutNotFoundError(rollout_id)
        found = self._records.head(rollout_id)  # shared, read only: updates go through ``update``
        if found is None:
            raise RolloutNotFoundError(rollout_id)
        record = found[1]
        check_attempt_id(attempt_id)
        attempt = record.find(attempt_id)
        if attempt is None:
            raise AttemptNotFoundError(rollout_id, attempt_id)
        if superseded(record, attempt):
            raise ConflictError(
                f"attempt {attempt_id} of rollout {rollout_id} was found {attempt.status} and the rollout "
                "retried: its spans are no longer taken",
                rollout_id=rollout_id,
            )
        # Upstream syncs the counter before validating; here a span refused for its ids or its
        # sequence number leaves the counter alone. (One refused later, for a value JSON cannot
        # hold, may have pushed it up: numbers are then skipped, never handed out twice.)
        top = max(s.sequence_id for s in spans)
        if top > MAX_SEQUENCE_ID:
            raise UnstorableValueError(
                "span sequence_id", f"{top} is above {MAX_SEQUENCE_ID}, the counter's last number"
            )
        return record, attempt

    def _write_group(
        self, record: RolloutRecord, attempt: Attempt, spans: Sequence[Span]
    ) -> tuple[list[Span], Path | None]:
        rollout_id = record.rollout_id
        self._spans.bump(rollout_id, max(s.sequence_id for s in spans))
        attempt_dir = self._engine.attempt_dir(attempt)
        written, path = self._spans.append(
            attempt_dir, spans, settled=attempt.status in FINAL_ATTEMPT_STATUSES
        )
        if written:
            stamped = False
            try:
                stamped = self._promote(record, attempt)
            finally:
                # A revision that stamped the heartbeat time is the heartbeat: writing the
                # file too would cost three more requests to an NFS server per attempt
                # (benchmarks/bench_nfs.py). The next file write waits out the interval as usual.
                if stamped:
                    self._spans.heartbeat_recorded(attempt_dir)
                else:
                    self._spans.heartbeat(attempt_dir)
            latest = record.latest()
            is_latest = latest is not None and latest.attempt_id == attempt.attempt_id
            # Only the latest attempt's spans make a finished rollout's rows (an older attempt's
            # late span changes none).
            if is_latest and (
                attempt.status in FINAL_ATTEMPT_STATUSES or record.status in TERMINAL_ROLLOUT_STATUSES
            ):
                self._announce_late_spans(rollout_id)
        return written, path

    def _announce_late_spans(self, rollout_id: str) -> None:
        """Spans stored after their rollout finished (a reward given later by a grader) change
        the rows built from it: a line in the rollout index, written after the spans, tells a
        reader following the index (:class:`store_fs.datasets.Cursor`) to read it again."""
        found = self._records.head(rollout_id, cached_ok=False)
        if found is not None and found[1].status in TERMINAL_ROLLOUT_STATUSES:
            self._index.announce_late_spans(*found)

    def _promote(self, record: RolloutRecord, attempt: Attempt) -> bool:
        """The span-as-heartbeat rule, skipped when it would change nothing. Returns whether a
        revision was written, which stamps the attempt's ``last_heartbeat_time``.

        Live attempts report heartbeats from the heartbeat files (and the record's stamp,
        whichever is newer); a finished attempt's record is stamped instead (rare, and
        throttled like heartbeats).
        """
        now = self._clock.time()
        latest = record.latest()
        is_latest = latest is not None and latest.attempt_id == attempt.attempt_id
        revive = (
            attempt.status == "preparing"
            or (attempt.status == "unresponsive" and is_latest)
            or (is_latest and record.status in ("preparing", "requeuing"))
        )
        stamp = (
            attempt.status in FINAL_ATTEMPT_STATUSES and now - (attempt.last_heartbeat_time or 0.0) >= 0.25
        )
        if not revive and not stamp:
            return False

        before: list[tuple[str, str]] = []  # (attempt status, rollout status) the update saw
        wrote: list[bool] = []

        def promote(rec: RolloutRecord) -> RolloutRecord | None:
            before.clear()
            wrote.clear()
            current = rec.find(attempt.attempt_id)
            if current is None:
                return None
            before.append((current.status, rec.status))
            if mark_running(rec, current, now) or current.status in FINAL_ATTEMPT_STATUSES:
                current.last_heartbeat_time = now
                wrote.append(True)
                return rec
            return None

        updated = self._records.update(record.rollout_id, promote)
        if before and before[0][0] == "unresponsive":
            self._rewatch(updated, attempt.attempt_id, requeued=before[0][1] == "requeuing")
        return bool(wrote)

    def _rewatch(self, record: RolloutRecord, attempt_id: str, *, requeued: bool) -> None:
        """A span revived an attempt the reaper had expired: it is live again, so it needs its
        claim token back (reapers watch only claimed attempts), and a retry queued for the
        rollout meanwhile is stale now that the rollout runs again."""
        revived = record.find(attempt_id)
        if revived is None or revived.status != "running":
            return
        token = ClaimToken(record.rollout_id, revived.sequence_id, revived.attempt_id)
        if not self._queue.is_claimed(token):
            self._queue.create_claimed(token)
        if requeued and record.status == "running":
            retry = len(record.attempts) + 1
            for pending in self._queue.list_pending():
                if pending.rollout_id == record.rollout_id and pending.sequence_id == retry:
                    self._queue.discard_pending(pending)

    async def _durable(self, paths: Sequence[Path | None]) -> None:
        if self._ctx.durable:
            for path in {p for p in paths if p is not None}:
                await asyncio.to_thread(self._spans.sync, path)

    async def add_span(self, span: Span) -> Span | None:
        # A duplicate span_id is logged as an error, as upstream does.
        written, path = self._store_group(span.rollout_id, span.attempt_id, [span])
        await self._durable([path])
        return span if written else None

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        # Spans are stored grouped by attempt, in first-seen order.
        groups: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        # Every group is checked before the first is written: a call refused for one attempt's
        # ids stores nothing (upstream keeps the groups before it; docs/deviations.md).
        for (rollout_id, attempt_id), group in groups.items():
            self._group_target(rollout_id, attempt_id, group)
        stored: list[Span] = []
        paths: list[Path | None] = []
        try:
            for (rollout_id, attempt_id), group in groups.items():
                # Looked up again: an earlier group's revision may be the rollout's newest now.
                written, path = self._store_group(rollout_id, attempt_id, group)
                stored.extend(written)
                paths.append(path)
        finally:
            await self._durable(paths)  # what was written is synced before any error is raised
        return stored

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        if sequence_id is None:
            sequence_id = await self.get_next_span_sequence_id(rollout_id, attempt_id)
        span = Span.from_opentelemetry(readable_span, rollout_id, attempt_id, sequence_id)
        return await self.add_span(span)

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: SortOrder = "asc",
    ) -> PaginatedResult[Span]:
        self._healthcheck()
        check_page_args(limit, offset)
        filters = build_filter(
            filter_logic,
            trace_id=("exact", trace_id),
            trace_id__c=("contains", trace_id_contains),
            span_id=("exact", span_id),
            span_id__c=("contains", span_id_contains),
            parent_id=("exact", parent_id),
            parent_id__c=("contains", parent_id_contains),
            name=("exact", name),
            name__c=("contains", name_contains),
        )
        if attempt_id is not None and attempt_id != "latest":
            check_attempt_id(attempt_id)
        found = self._records.head(rollout_id) if self._known_rollout(rollout_id) else None
        attempts = found[1].attempts if found else []
        if attempt_id == "latest":
            attempts = attempts[-1:]
        elif attempt_id is not None:
            attempts = [a for a in attempts if a.attempt_id == attempt_id]
        spans = self._spans.read(self._engine.attempt_dir(a) for a in attempts)
        selected = [s for s in spans if matches(s, filters)] if has_conditions(filters) else spans
        ordered = sort_items(selected, sort_by, sort_order, Span)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )
