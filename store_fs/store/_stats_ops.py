"""Capabilities and statistics of a :class:`~store_fs.store.FileStore`."""

from __future__ import annotations

from store_fs._disk import fsio
from store_fs.models import LightningStoreCapabilities, LightningStoreStatistics
from store_fs.store._base import StoreCore


class StatsMethods(StoreCore):
    """``capabilities`` and ``statistics``: what the store is and how much it holds."""

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        return {"thread_safe": True, "async_safe": True, "zero_copy": True, "otlp_traces": False}

    async def statistics(self) -> LightningStoreStatistics:
        # Rollouts and attempts come from the rollout index (as late as the index, see
        # store_fs/_disk/rollout_index.py); spans are counted in the span files of rollouts that have
        # attempts. Without a complete index, every record is read.
        counts = self._index.counts()
        if counts is not None:
            rollouts, attempts, attempted = counts
            spans = sum(self._count_spans(rollout_id) for rollout_id in attempted)
        else:
            rollouts = attempts = spans = 0
            for record in self._records.iter_records():
                rollouts += 1
                attempts += len(record.attempts)
                spans += sum(self._spans.count(self._engine.attempt_dir(a)) for a in record.attempts)
        return {
            "name": type(self).__name__,
            "total_rollouts": rollouts,
            "total_attempts": attempts,
            "total_spans": spans,
            "total_resources": self._resources.count(),
            "total_workers": self._workers.count(),
            "uptime": self._clock.monotonic() - self._started,
        }

    def _count_spans(self, rollout_id: str) -> int:
        attempts = self.layout.attempts_dir(rollout_id)
        return sum(self._spans.count(attempts / entry.name) for entry in fsio.iter_dirs(attempts))
