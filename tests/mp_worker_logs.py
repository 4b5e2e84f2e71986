"""Child-process body for the multi-process test of tests/test_worker_logs.py ("spawn")."""

from __future__ import annotations

from pathlib import Path

from store_fs import SystemClock
from store_fs._disk import worker_logs as workers
from store_fs._disk.context import Context
from store_fs._disk.layout import Layout
from store_fs.models import Attempt


def churn_worker(root: str, worker_id: str, count: int) -> None:
    """Alternate busy / idle syncs and heartbeats of one worker, compacting often."""
    workers.COMPACT_BYTES = 2048  # type: ignore[misc]  # compact often: readers race the renames
    store = workers.WorkerStore(Context(layout=Layout(Path(root)), clock=SystemClock()))
    for n in range(count):
        attempt = Attempt(
            rollout_id=f"ro-{n:012x}",
            attempt_id=f"at-{n:08x}",
            sequence_id=1,
            start_time=0.0,
            worker_id=worker_id,
            status="running" if n % 2 == 0 else "succeeded",
        )
        store.sync(attempt, dequeue=n % 2 == 0)
        store.heartbeat(worker_id, {"n": n})
