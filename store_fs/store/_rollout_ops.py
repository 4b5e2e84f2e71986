"""Reading and changing rollouts: ``query_rollouts`` (index-backed), get, update, cancel."""

from __future__ import annotations

import itertools
import logging
import sys
import warnings
from collections.abc import Collection, Sequence
from typing import Any

from store_fs import damaged_reads
from store_fs._disk import codec
from store_fs._disk.ids import ROLLOUT_ID_RE
from store_fs._disk.rollout_history import RolloutRecord
from store_fs._disk.rollout_index import Entry
from store_fs._disk.rollout_index import ordered as index_order
from store_fs._disk.status_rules import TERMINAL_ROLLOUT_STATUSES
from store_fs._filtering import build_filter, check_page_args, matches, paginate, sort_items
from store_fs.errors import CorruptRecordError
from store_fs.models import (
    UNSET,
    AttemptedRollout,
    FilterLogic,
    PaginatedResult,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    SortOrder,
    TaskInput,
    Unset,
)
from store_fs.store._base import StoreCore

# Kept under the name the single-module store logged as, so logging configuration
# and log lines stay as they were.
log = logging.getLogger("store_fs.store")


class RolloutMethods(StoreCore):
    """Queries over rollouts, read from the rollout index when it is complete, and updates."""

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        # With a complete rollout index (store_fs/_disk/rollout_index.py) the candidates come from the
        # index and only the records of the page are read (see _query_indexed for what ``total`` means
        # then); without one, every record.
        self._healthcheck()
        if status is not None:
            warnings.warn("'status' is deprecated; use 'status_in'", DeprecationWarning, stacklevel=2)
            status_in = status if status_in is None else status_in
        if rollout_ids is not None:
            warnings.warn(
                "'rollout_ids' is deprecated; use 'rollout_id_in'", DeprecationWarning, stacklevel=2
            )
            rollout_id_in = rollout_ids if rollout_id_in is None else rollout_id_in
        # Materialised once: the filter, the index and the direct read each go through them.
        status_in = None if status_in is None else list(status_in)
        rollout_id_in = None if rollout_id_in is None else list(rollout_id_in)
        check_page_args(limit, offset)
        filters = build_filter(
            filter_logic,
            status=("within", list(status_in)) if status_in is not None else None,
            rollout_id=("within", list(rollout_id_in)) if rollout_id_in is not None else None,
            rollout_id__c=("contains", rollout_id_contains) if rollout_id_contains is not None else None,
        )
        if rollout_id_in is not None and filter_logic == "and" and rollout_id_contains is None:
            # Read just the named rollouts instead of the whole tree.
            # A removed rollout (agl prune) reads as None: RecordStore checks a cached head still exists.
            # Filter values, not ids to write: one that cannot name a rollout ('', '..') matches
            # none, as on the index's path, whatever filter_logic says.
            ids = [
                r for r in dict.fromkeys(rollout_id_in) if isinstance(r, str) and ROLLOUT_ID_RE.fullmatch(r)
            ]
            found = [self._records.get(r) for r in ids]
            records = [r for r in found if r is not None]
        else:
            picked = self._index.select(
                status_in=status_in,
                rollout_id_in=rollout_id_in,
                rollout_id_contains=rollout_id_contains,
                logic=filter_logic,
            )
            if picked is not None:
                return self._query_indexed(picked, filters, sort_by, sort_order, limit, offset)
            records = list(self._records.iter_records())  # no complete index: read the tree
        selected = [r for r in records if matches(r, filters)]
        return self._page(selected, sort_by, sort_order, limit, offset)

    def _page(
        self,
        records: list[RolloutRecord],
        sort_by: str | None,
        sort_order: SortOrder,
        limit: int,
        offset: int,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        """Matching ``records`` sorted (oldest first, then by ``sort_by``) and paged."""
        records.sort(key=lambda r: (r.start_time, r.rollout_id))
        ordered = sort_items(records, sort_by, sort_order, Rollout)
        page = paginate(ordered, limit, offset)
        return PaginatedResult(
            items=[self._public(r) for r in page], limit=limit, offset=offset, total=len(ordered)
        )

    def _query_indexed(
        self,
        picked: list[Entry],
        filters: dict[str, Any],
        sort_by: str | None,
        sort_order: SortOrder,
        limit: int,
        offset: int,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        """``query_rollouts`` over the candidates the index picked.

        Every returned rollout is re-checked on its record, so a stale index entry can
        leave a rollout out (late) but never return one that does not match. In the
        index's orders (none, ``start_time``, ``rollout_id``) only the page is read:
        the ``offset`` rollouts before it are skipped by their index entries, and
        ``total`` is the index's count less the candidates found stale while reading.
        Other orders need every candidate's record.
        """
        if sort_by not in (None, "start_time", "rollout_id"):
            records = [r for r in map(self._verified, picked, itertools.repeat(filters)) if r is not None]
            return self._page(records, sort_by, sort_order, limit, offset)
        sort_items([], sort_by, sort_order)  # the same argument check as the full scan
        need = None if limit == -1 else offset + limit + 8  # a few spare for stale entries
        page: list[RolloutRecord] = []
        stale = 0
        skip = min(offset, sys.maxsize)  # islice's bound; no store holds more
        for entry in itertools.islice(index_order(picked, sort_by, sort_order == "desc", need), skip, None):
            if len(page) == limit:
                break
            record = self._verified(entry, filters)
            if record is None:
                stale += 1
            else:
                page.append(record)
        return PaginatedResult(
            items=[self._public(r) for r in page], limit=limit, offset=offset, total=len(picked) - stale
        )

    def _verified(self, entry: Entry, filters: dict[str, Any]) -> RolloutRecord | None:
        """The record of an index candidate if it really matches ``filters``, else None."""
        try:
            # The revision the index names, by name: on NFS a cached listing may not show it yet
            # (the record would read a revision behind, and the warning below cry wolf).
            found = self._records.head_at_least(entry.rollout_id, entry.rev)
        except CorruptRecordError as err:
            damaged_reads.passed_over(err)  # like the full scan: skipped here, reported by check
            return None
        if found is None:
            return None
        rev, record = found
        # On a network filesystem a record read a revision behind its index line is this host's
        # caches lagging (a negative lookup kept for seconds), not a store restored from a copy.
        if rev < entry.rev and not self._warned_index_ahead and not self._ctx.shared_fs:
            self._warned_index_ahead = True
            log.warning(
                "the rollout index is ahead of %s (revision %d, index %d): if `agl check` agrees, "
                "records were restored from an older copy and `agl check --fix` rebuilds the index",
                entry.rollout_id,
                rev,
                entry.rev,
            )
        # The cached head is shared: only read it (``_public`` builds new objects).
        return record if matches(record, filters) else None

    def rollout_ids(self, *, status_in: Collection[str] | None = None) -> list[str]:
        """Ids of the rollouts (those in ``status_in``), oldest first: from the rollout index
        when it is complete, without reading a record (as late as the index; callers check the
        records they then read), else from the records. For data views, ``agl export`` and
        ``agl prune``.

        A rollout whose record is damaged is listed either way (after the others when the
        records are read), so that its reader meets the damage and says so: ``agl export
        --all`` must not make a backup that only looks complete."""
        statuses = None if status_in is None else sorted(status_in)
        picked = self._index.select(
            status_in=statuses, rollout_id_in=None, rollout_id_contains=None, logic="and"
        )
        if picked is not None:
            return [e.rollout_id for e in index_order(picked, None, False, None)]
        found: list[tuple[float, str]] = []
        damaged: list[str] = []
        for rollout_id in self._records.all_ids():
            try:
                record = self._records.get(rollout_id)
            except CorruptRecordError:
                damaged.append(rollout_id)
                continue
            if record is not None and (statuses is None or record.status in statuses):
                found.append((record.start_time, rollout_id))
        return [rollout_id for _, rollout_id in sorted(found)] + sorted(damaged)

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | AttemptedRollout | None:
        self._healthcheck()
        # A rollout another process removed (agl prune) reads as None: RecordStore checks that a
        # cached head still exists.
        if not self._known_rollout(rollout_id):
            return None
        record = self._records.get(rollout_id)
        return None if record is None else self._public(record)

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput | Unset = UNSET,
        mode: RolloutMode | Unset | None = UNSET,
        resources_id: str | Unset | None = UNSET,
        status: RolloutStatus | Unset = UNSET,
        config: RolloutConfig | Unset = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> Rollout:
        self._healthcheck()
        self._record(rollout_id)
        fields: dict[str, Any] = {
            k: v
            for k, v in {
                "input": input,
                "mode": mode,
                "resources_id": resources_id,
                "status": status,
                "config": config,
                "metadata": metadata,
            }.items()
            if not isinstance(v, Unset)
        }
        validated = Rollout.model_validate(
            {"rollout_id": rollout_id, "input": None, "start_time": 0.0, **fields}
        )
        codec.check_storable(
            "the rollout's input, config or metadata",
            [getattr(validated, key) for key in ("input", "config", "metadata") if key in fields],
        )
        now = self._clock.time()

        def apply(record: RolloutRecord) -> RolloutRecord | None:
            if not fields:
                return None
            for key in fields:
                setattr(record, key, getattr(validated, key))
            if "status" in fields and record.status in TERMINAL_ROLLOUT_STATUSES:
                record.end_time = now
            return record

        record = self._records.update(rollout_id, apply)
        if "status" in fields:
            if record.status == "cancelled":
                self._engine.expire_live(record, "cancelled")
            self._engine.ensure_pending(record)
        return record.plain()

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        return await self.update_rollout(rollout_id, status="cancelled")
