"""Tables for people: aligned columns, dates, relative ages, durations, coloured statuses.

Only used on a terminal (``agl_cli.output.Output`` decides); machine output never goes
through here. Colour is on only when the caller says so (a terminal, and no ``NO_COLOR``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from store_fs.display_text import visible

Kind = Literal["text", "json", "time", "age", "duration", "status"]

_COLORS = {
    "succeeded": "32",  # green
    "idle": "32",
    "failed": "31",  # red
    "timeout": "31",
    "unresponsive": "31",
    "cancelled": "35",  # magenta
    "running": "36",  # cyan
    "preparing": "36",
    "busy": "36",
    "queuing": "33",  # yellow
    "requeuing": "33",
}


@dataclass(frozen=True)
class Column:
    """One column: a record's ``key`` shown as ``kind``, at most ``width`` characters.

    ``duration`` columns show ``end`` (a key; now when it is empty) minus ``key``.
    """

    title: str
    key: str
    width: int = 20
    kind: Kind = "text"
    end: str | None = None


def date(epoch: float) -> str:
    """Local date and time, to the second; the number itself when no calendar date has it
    (a span timed 1e20 is stored as given, and a table must still show it)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    except (OverflowError, OSError, ValueError):
        return f"{epoch:g}"


def duration(seconds: float) -> str:
    """A span of time for people: 0.42s, 12.3s, 3m04s, 2h05m, 3d04h."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def age(epoch: float, now: float) -> str:
    """How long ago ``epoch`` was, as kubectl shows ages: 12s, 3m10s, 45m, 5h20m, 3d."""
    whole = int(max(now - epoch, 0.0))
    if whole < 120:
        text = f"{whole}s"
    elif whole < 600:
        text = f"{whole // 60}m{whole % 60:02d}s"
    elif whole < 3600:
        text = f"{whole // 60}m"
    elif whole < 8 * 3600:
        text = f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    elif whole < 2 * 86400:
        text = f"{whole // 3600}h"
    else:
        text = f"{whole // 86400}d"
    return text + " ago"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any, column: Column, row: dict[str, Any], now: float) -> str:
    if column.kind == "duration":
        start = _number(value)
        end = _number(row.get(column.end or "")) if column.end else None
        return "-" if start is None else duration((end if end is not None else now) - start)
    if value is None:
        return "-"
    epoch = _number(value)
    if column.kind == "time" and epoch is not None:
        return date(epoch)
    if column.kind == "age" and epoch is not None:
        return age(epoch, now)
    # Stored text may hold terminal escape sequences (an agent's worker id, an error message):
    # shown as codes, never sent to the terminal as they are.
    if column.kind == "json" or not isinstance(value, (str, int, float)):
        return visible(orjson.dumps(value).decode())
    return visible(" ".join(str(value).split()))


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _lookup(row: dict[str, Any], key: str) -> Any:
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@dataclass
class Table:
    """Renders rows (dicts, as the JSON output has them) under ``columns``.

    ``fixed``: every column is exactly its maximum width, so rows printed later (``--watch``)
    line up with the header printed first; otherwise columns shrink to their content.
    ``max_width``: the last column is cut so a line fits the terminal.
    """

    columns: Sequence[Column]
    color: bool = False
    fixed: bool = False
    max_width: int | None = None

    def _cells(self, row: dict[str, Any], now: float) -> list[str]:
        return [_fit(_text(_lookup(row, c.key), c, row, now), c.width) for c in self.columns]

    def _widths(self, cells: list[list[str]]) -> list[int]:
        if self.fixed:
            widths = [max(c.width, len(c.title)) for c in self.columns]
        else:
            widths = [
                max([len(c.title)] + [len(line[i]) for line in cells]) for i, c in enumerate(self.columns)
            ]
        if self.max_width is not None and widths:
            used = sum(widths[:-1]) + 2 * (len(widths) - 1)
            widths[-1] = max(min(widths[-1], self.max_width - used), len(self.columns[-1].title), 8)
        return widths

    def _paint(self, text: str, column: Column, padded: str) -> str:
        code = _COLORS.get(text) if self.color and column.kind == "status" else None
        return padded if code is None else f"\x1b[{code}m{text}\x1b[0m{padded[len(text) :]}"

    def _line(self, cells: list[str], widths: list[int]) -> str:
        parts = []
        for cell, width, column in zip(cells, widths, self.columns, strict=True):
            text = _fit(cell, width)
            parts.append(self._paint(text, column, text.ljust(width)))
        return "  ".join(parts).rstrip()

    def header(self, widths: list[int] | None = None) -> str:
        widths = widths or self._widths([])
        title = "  ".join(c.title.ljust(w) for c, w in zip(self.columns, widths, strict=True)).rstrip()
        return f"\x1b[1m{title}\x1b[0m" if self.color else title

    def render(self, rows: Iterable[dict[str, Any]], *, header: bool = True) -> list[str]:
        """The lines of the table (the header first, unless ``header`` is false)."""
        now = time.time()
        cells = [self._cells(row, now) for row in rows]
        widths = self._widths(cells)
        lines = [self.header(widths)] if header else []
        return lines + [self._line(line, widths) for line in cells]


# -- the columns of each kind of record ----------------------------------------------------
ROLLOUT_COLUMNS = [
    Column("ROLLOUT_ID", "rollout_id", 15),
    Column("STATUS", "status", 10, "status"),
    Column("MODE", "mode", 5),
    Column("STARTED", "start_time", 19, "time"),
    Column("AGE", "start_time", 10, "age"),
    Column("DURATION", "start_time", 8, "duration", end="end_time"),
    Column("INPUT", "input", 60, "json"),
]
ATTEMPT_COLUMNS = [
    Column("SEQ", "sequence_id", 4),
    Column("ATTEMPT_ID", "attempt_id", 11),
    Column("STATUS", "status", 12, "status"),
    Column("WORKER", "worker_id", 16),
    Column("STARTED", "start_time", 19, "time"),
    Column("DURATION", "start_time", 8, "duration", end="end_time"),
    Column("HEARTBEAT", "last_heartbeat_time", 10, "age"),
]
SPAN_COLUMNS = [
    Column("SEQ", "sequence_id", 6),
    Column("ATTEMPT_ID", "attempt_id", 11),
    Column("NAME", "name", 40),
    Column("SPAN_ID", "span_id", 16),
    Column("STARTED", "start_time", 19, "time"),
    Column("DURATION", "start_time", 8, "duration", end="end_time"),
]
WORKER_COLUMNS = [
    Column("WORKER_ID", "worker_id", 20),
    Column("STATUS", "status", 8, "status"),
    Column("ROLLOUT", "current_rollout_id", 15),
    Column("ATTEMPT", "current_attempt_id", 11),
    Column("HEARTBEAT", "last_heartbeat_time", 10, "age"),
]
RESOURCE_COLUMNS = [
    Column("RESOURCES_ID", "resources_id", 20),
    Column("VERSION", "version", 7),
    Column("UPDATED", "update_time", 19, "time"),
    Column("AGE", "update_time", 10, "age"),
    Column("RESOURCES", "resources", 60, "json"),
]
EVENT_COLUMNS = [
    Column("TIME", "time", 19, "time"),
    Column("ROLLOUT_ID", "rollout_id", 15),
    Column("PREVIOUS", "previous", 10, "status"),
    Column("STATUS", "status", 10, "status"),
    Column("WRITER", "writer", 24),
]
