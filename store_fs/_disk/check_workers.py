"""``agl check`` of ``workers/`` (:mod:`store_fs._disk.worker_logs`): the lines readers skip.

With ``fix`` each such line is cut out into quarantine, the log republished without it, where
nobody appends any more: a segment (written whole by compaction), a log whose writer is gone
(judged as compaction judges it, :func:`store_fs._disk.log_segments.writer_gone`), or a record of
an older build (moved whole). A live writer's log is only reported: replacing it under the
writer would lose the lines it appends next. Cutting a line that no reader can use leaves what
every reader folds unchanged.
"""

from __future__ import annotations

from pathlib import Path

from store_fs._disk import fsio, log_segments
from store_fs._disk.check_findings import Problem, cut_lines
from store_fs._disk.context import Context
from store_fs._disk.log_compaction import DEFAULT_IDLE_SECONDS
from store_fs._disk.quarantine import Quarantine
from store_fs._disk.server_clock import server_now
from store_fs._disk.span_log import BadLine
from store_fs._disk.worker_logs import WORKER_LOGS, WorkerStore

__all__ = ["worker_problems"]

_WHY = "a worker log line that cannot be read"


def worker_problems(ctx: Context, workers: WorkerStore, quarantine: Quarantine | None) -> list[Problem]:
    """Each unreadable line of each worker's logs; with a quarantine, cut out where safe."""
    out: list[Problem] = []
    now = server_now(ctx)
    for entry in sorted(fsio.iter_dirs(ctx.layout.workers), key=lambda e: e.name):
        bad = workers.bad_lines(Path(entry.path))
        for path in sorted({b.path for b in bad}):
            lines = [b for b in bad if b.path == path]
            fixed = quarantine is not None and _settled(path, now)
            if fixed:
                assert quarantine is not None
                _take_out(path, lines, quarantine)
            out += [
                Problem("corrupt-worker-log", str(b.path), f"byte {b.offset}: {b.reason}", fixed)
                for b in lines
            ]
    return out


def _settled(path: Path, now: float) -> bool:
    """Whether nobody appends to ``path`` any more."""
    name = path.name
    if not WORKER_LOGS.matches(name) or WORKER_LOGS.is_segment(name):
        return True  # an older build's record, or a segment: both written whole, once
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False  # compacted meanwhile: the next check looks at its segment
    return log_segments.writer_gone(
        WORKER_LOGS.writer(name), mtime, now=now, idle_seconds=DEFAULT_IDLE_SECONDS
    )


def _take_out(path: Path, lines: list[BadLine], quarantine: Quarantine) -> None:
    if WORKER_LOGS.matches(path.name):
        cut_lines(path, [b.offset for b in lines], quarantine, _WHY)
    else:
        quarantine.quarantine_file(path, "an older build's worker record that cannot be read")
