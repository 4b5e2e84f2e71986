"""Workers (runners as upstream sees them): query, get, heartbeat with stats."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from store_fs._filtering import build_filter, check_page_args, matches, paginate, sort_items
from store_fs.models import UNSET, FilterLogic, PaginatedResult, SortOrder, Unset, Worker, WorkerStatus
from store_fs.store._base import StoreCore


class WorkerMethods(StoreCore):
    """Reading workers and recording heartbeats, kept by :class:`~store_fs._disk.worker_logs.WorkerStore`."""

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        self._healthcheck()
        check_page_args(limit, offset)
        filters = build_filter(
            filter_logic,
            status=("within", list(status_in)) if status_in is not None else None,
            worker_id=("contains", worker_id_contains),
        )
        selected = [w for w in self._workers.all() if matches(w, filters)]
        ordered = sort_items(selected, sort_by, sort_order, Worker)
        return PaginatedResult(
            items=paginate(ordered, limit, offset), limit=limit, offset=offset, total=len(ordered)
        )

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        return self._workers.get(worker_id)

    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] | Unset = UNSET) -> Worker:
        # heartbeat_stats=None is a TypeError (only UNSET leaves the stats alone).
        if heartbeat_stats is None:
            raise TypeError("heartbeat_stats must be a dict when given, not None")
        stats = None if isinstance(heartbeat_stats, Unset) else dict(heartbeat_stats)
        return self._workers.heartbeat(worker_id, stats)
