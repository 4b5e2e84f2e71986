"""Writing the report file, once or every time the store changes.

The file is replaced whole (a temporary file in the same directory, then a rename), so a
browser reloading it never sees half a page; a FIFO, a device or ``/dev/stdout`` is written
into instead, and a symbolic link is published at its target (:mod:`store_fs.output_targets`).
The output location is tried before the store is read, so a path that cannot be written fails
at once.

``watch_report`` regenerates on changes: it sleeps on watchfiles events of the store's
``events/`` directory (one line per rollout status change) and ``resources/versions/`` (new
resource versions), polling on network filesystems as ``wait_for_rollouts`` does
(``AGL_WATCH`` overrides), and waits at least ``interval`` seconds, and at least as long as
the last generation took, between two reports so a big store is not read back to back.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from store_fs.errors import AglError
from store_fs.output_targets import (
    OutputPlace,
    OutputTargetError,
    create_temp_beside,
    discard_temp,
    output_place,
    publish_temp,
)
from store_fs.report.report_data import ReportData, ReportOptions, gather
from store_fs.report.report_page import render_page

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["ReportOutputError", "ReportResult", "build_report", "watch_report", "write_report"]


class ReportOutputError(AglError):
    """The report file cannot be written where asked."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write the report to {path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ReportResult:
    """What one written report holds: where, how big, how many rollouts, how long it took."""

    path: str
    bytes: int
    rollouts: int
    problems: int | None
    seconds: float


def build_report(store: FileStore, options: ReportOptions | None = None) -> tuple[str, ReportData]:
    """The report page (HTML text) and the data it was made from."""
    data = asyncio.run(gather(store, options))
    return render_page(data), data


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _place(target: Path) -> OutputPlace:
    try:
        return output_place(target)
    except OutputTargetError as err:
        raise ReportOutputError(str(target), err.reason) from None
    except OSError as err:
        raise ReportOutputError(str(target), _reason(err)) from None


def _open_temp(target: Path, place: OutputPlace) -> Path | None:
    """The temporary file a page published whole goes to, made now (None for a stream)."""
    if place.kind == "stream":
        if not os.access(place.path, os.W_OK):
            raise ReportOutputError(str(target), "permission denied")
        return None
    try:
        fd, temp = create_temp_beside(place.path)
    except OSError as err:
        raise ReportOutputError(str(target), _reason(err)) from None
    os.close(fd)
    return temp


def write_report(store: FileStore, output: str | Path, options: ReportOptions | None = None) -> ReportResult:
    """Gather, render and write the report to ``output`` (replaced whole; a stream is written
    into: :mod:`store_fs.output_targets`).

    Raises :class:`ReportOutputError` when ``output`` cannot be written (checked first), and
    the store's errors (an unknown requested rollout: ``RolloutNotFoundError``).
    """
    started = time.perf_counter()
    target = Path(output)
    place = _place(target)
    temp = _open_temp(target, place)
    try:
        page, data = build_report(store, options)  # the store's errors pass through as they are
        _publish(target, place, temp, page)
    finally:
        if temp is not None:
            discard_temp(temp)
    problems = None if data.problems is None else len(data.problems)
    seconds = time.perf_counter() - started
    return ReportResult(str(target), len(page.encode()), len(data.rollouts), problems, seconds)


def _publish(target: Path, place: OutputPlace, temp: Path | None, page: str) -> None:
    """The page into the temporary file, then the file renamed over the place's path; or
    into the stream."""
    try:
        if temp is None:
            with open(place.path, "a", encoding="utf-8") as stream:
                stream.write(page)
            return
        temp.write_text(page, encoding="utf-8")
        publish_temp(temp, place.path)
    except OSError as err:
        raise ReportOutputError(str(target), _reason(err)) from None


def _watched(store: FileStore) -> list[Path]:
    # Status changes (the change feed), resources, and the rollout index, where a late span
    # (a grader's reward after the rollout finished) is announced: it changes no status.
    return [store.layout.events, store.layout.resource_versions, store.layout.rollout_index]


def watch_report(
    store: FileStore,
    output: str | Path,
    options: ReportOptions | None = None,
    *,
    on_written: Callable[[ReportResult], None] | None = None,
    interval: float = 2.0,
    stop: threading.Event | None = None,
) -> None:
    """Write the report now and again after every change of the store, until ``stop`` is set
    (or KeyboardInterrupt). ``on_written`` is told about each report written. An output that is
    a stream (a FIFO, ``/dev/stdout``) is refused (:class:`ReportOutputError`): pages written
    into it would follow each other. A store removed, moved away or replaced meanwhile ends it
    with :class:`~store_fs.errors.StoreNotFoundError`, as it ends the followers: the page then
    written showed an empty store, and a store put in its place was never watched."""
    import watchfiles

    from store_fs._disk.watch import POLL_DELAY_MS, resolve_mode

    place = _place(Path(output))
    if place.kind == "stream":
        why = f"{place.what}: each new page would follow the last in it, not replace it (watch a file)"
        raise ReportOutputError(str(output), why)
    stop = stop or threading.Event()
    mode = resolve_mode("auto", store.root)
    for directory in _watched(store):
        directory.mkdir(parents=True, exist_ok=True)
    pause = 0.0
    written = False
    # One watcher for the whole run: changes made while a report is being written are kept
    # and wake the next round. The first report is written once the watcher runs (its first
    # yield), so a change made right after it is not missed.
    for changes in watchfiles.watch(
        *_watched(store),
        stop_event=stop,
        rust_timeout=500,
        yield_on_timeout=True,
        force_polling=mode == "poll",
        poll_delay_ms=POLL_DELAY_MS,
        recursive=False,
        watch_filter=None,
    ):
        if stop.is_set():
            return
        store.check_still_here()  # each round, at least every half second
        if not written or (changes and not stop.wait(pause)):  # let a burst of changes settle first
            pause = _write_and_tell(store, output, options, on_written, interval)
            written = True


def _write_and_tell(
    store: FileStore,
    output: str | Path,
    options: ReportOptions | None,
    on_written: Callable[[ReportResult], None] | None,
    interval: float,
) -> float:
    """Write one report; the pause before the next: ``interval``, or longer if writing took longer."""
    result = write_report(store, output, options)
    if on_written is not None:
        on_written(result)
    return max(interval, result.seconds)
