"""Progress on stderr for long commands, only on a terminal.

A bar (``[#####     ] 120/400 exported  3.1s``) when the total is known, a counter and the
time taken otherwise. Nothing is drawn for the first ``DELAY`` seconds (quick commands never
flicker) nor when stderr is not a terminal or ``--quiet`` is on, so pipes and logs see
nothing. Hand-written rather than rich's: a few lines, no import cost at start-up.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType

DELAY = 0.3
REDRAW = 0.1
BAR = 30


def _on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """``with Progress("exported", total) as bar: ... bar.advance()``.

    ``ticking``: a background thread redraws the elapsed time, for one long call that cannot
    report its own progress (``agl check``).
    """

    def __init__(self, label: str, total: int | None = None, *, quiet: bool = False, ticking: bool = False):
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = _on_terminal() and not quiet
        self._start = time.monotonic()
        self._drawn_at = 0.0
        self._shown = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled and ticking:
            self._thread = threading.Thread(target=self._tick, name="agl-progress", daemon=True)
            self._thread.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _tick(self) -> None:
        while not self._stop.wait(REDRAW):
            self._draw(force=True)

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        if self.total:
            filled = BAR * min(self.done, self.total) // self.total
            return f"[{'#' * filled:<{BAR}}] {self.done}/{self.total} {self.label}  {elapsed:.1f}s"
        count = f"{self.done} " if self.done else ""
        return f"{count}{self.label}  {elapsed:.1f}s"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._start < DELAY or (not force and now - self._drawn_at < REDRAW):
            return
        with self._lock:
            self._drawn_at = now
            self._shown = True
            sys.stderr.write("\r\x1b[K" + self.line())
            sys.stderr.flush()

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.enabled:
            self._draw()

    def close(self) -> None:
        """Stop and erase the bar (the command's own message follows on a clean line)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown:
            with self._lock:
                sys.stderr.write("\r\x1b[K")
                sys.stderr.flush()
