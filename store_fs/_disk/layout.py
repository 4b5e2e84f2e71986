"""Where everything lives inside a store directory (docs/format.md describes each file).

Only this module turns ids into paths, and it is only ever given ids that
:mod:`store_fs._disk.ids` has validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Final

__all__ = ["FORMAT_VERSION", "Layout", "revision_name"]

FORMAT_VERSION: Final = 1


def revision_name(number: int) -> str:
    """The file name of revision (or resources version) ``number`` in ``history/`` or
    ``versions/``: eight digits, zero-padded, so that names sort in number order."""
    return f"{number:08d}.json"


@dataclass(frozen=True)
class Layout:
    root: Path

    # -- top level -----------------------------------------------------------------
    @cached_property
    def format_file(self) -> Path:
        return self.root / "FORMAT.json"

    @cached_property
    def pending(self) -> Path:
        return self.root / "queue" / "pending"

    @cached_property
    def claimed(self) -> Path:
        return self.root / "queue" / "claimed"

    @cached_property
    def done(self) -> Path:
        return self.root / "queue" / "done"

    @cached_property
    def expired(self) -> Path:
        return self.root / "queue" / "expired"

    @cached_property
    def rollouts(self) -> Path:
        return self.root / "rollouts"

    @cached_property
    def events(self) -> Path:
        return self.root / "events"

    @cached_property
    def workers(self) -> Path:
        return self.root / "workers"

    @cached_property
    def resource_objects(self) -> Path:
        return self.root / "resources" / "objects"

    @cached_property
    def resource_versions(self) -> Path:
        return self.root / "resources" / "versions"

    @cached_property
    def resource_ids(self) -> Path:
        return self.root / "resources" / "by-id"

    @cached_property
    def locks(self) -> Path:
        return self.root / "locks"

    @cached_property
    def trash(self) -> Path:
        # Removal runs of `agl prune` (store_fs/_disk/removal.py); absent in most stores.
        return self.root / "trash"

    @cached_property
    def report_cache(self) -> Path:
        # Rows kept by `agl report` (store_fs/report/_row_cache.py); a repair deletes them.
        return self.root / "cache" / "report-rows"

    @cached_property
    def rollout_index(self) -> Path:
        return self.root / "index" / "rollouts"

    @cached_property
    def rollout_index_marker(self) -> Path:
        # Its presence says the logs cover every rollout (see store_fs/_disk/rollout_index.py).
        return self.rollout_index / "complete.json"

    def directories(self) -> list[Path]:
        """Every directory a new store starts with."""
        return [
            self.pending,
            self.claimed,
            self.done,
            self.expired,
            self.rollouts,
            self.events,
            self.workers,
            self.resource_objects,
            self.resource_versions,
            self.resource_ids,
            self.rollout_index,
            self.locks,
        ]

    # -- rollouts ------------------------------------------------------------------
    def rollout_dir(self, rollout_id: str) -> Path:
        # ro-<hex>: fan out on the first two hex digits so no directory grows huge.
        return Path(self.rollout_dir_str(rollout_id))

    def rollout_dir_str(self, rollout_id: str) -> str:
        """``rollout_dir`` as a string: for hot paths, where building ``Path`` objects shows."""
        return f"{self.rollouts_str}/{rollout_id[3:5]}/{rollout_id}"

    @cached_property
    def rollouts_str(self) -> str:
        return str(self.rollouts)

    def history_dir(self, rollout_id: str) -> Path:
        return self.rollout_dir(rollout_id) / "history"

    def mirror_file(self, rollout_id: str) -> Path:
        return self.rollout_dir(rollout_id) / "rollout.json"

    def span_seq_dir(self, rollout_id: str) -> Path:
        return self.rollout_dir(rollout_id) / "span-seq"

    def attempt_dir(self, rollout_id: str, sequence_id: int, attempt_id: str) -> Path:
        return self.rollout_dir(rollout_id) / "attempts" / f"{sequence_id:04d}-{attempt_id}"

    def attempts_dir(self, rollout_id: str) -> Path:
        return self.rollout_dir(rollout_id) / "attempts"

    # -- resources and workers -----------------------------------------------------
    def resource_object(self, digest: str) -> Path:
        return self.resource_objects / digest[:2] / f"{digest}.json"

    def resource_id_dir(self, resources_id: str) -> Path:
        return self.resource_ids / resources_id

    def worker_dir(self, worker_id: str) -> Path:
        return self.workers / worker_id
