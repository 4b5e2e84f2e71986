"""Rendering: JSON (one document) or JSONL (streams) when piped or with --json; tables on a terminal.

Data goes to stdout, messages to stderr. Field names are upstream's, so jq filters written
against upstream JSON work on agl's output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


def to_data(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    return obj


def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def info(message: str) -> None:
    """A message for people, on stderr."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Output:
    """Where one invocation's data goes, and in which form (``--json`` forces machine form)."""

    force_json: bool = False

    @property
    def machine(self) -> bool:
        """JSON/JSONL rather than tables: with --json, or when stdout is not a terminal."""
        return self.force_json or not sys.stdout.isatty()

    def emit_json(self, obj: Any) -> None:
        """One JSON document (pretty on a terminal)."""
        option = orjson.OPT_APPEND_NEWLINE | (0 if self.machine else orjson.OPT_INDENT_2)
        _write(orjson.dumps(to_data(obj), option=option))

    def emit_line(self, obj: Any) -> None:
        """One JSONL record."""
        _write(orjson.dumps(to_data(obj), option=orjson.OPT_APPEND_NEWLINE))

    def emit_table(self, rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, int]]) -> None:
        """A fixed-width table for people; columns are (key, max width)."""
        rows = list(rows)
        widths = [max([len(key)] + [len(_cell(r.get(key), w)) for r in rows]) for key, w in columns]
        lines = ["  ".join(k.upper().ljust(w) for (k, _), w in zip(columns, widths, strict=True))]
        for row in rows:
            cells = [_cell(row.get(k), mw).ljust(w) for (k, mw), w in zip(columns, widths, strict=True)]
            lines.append("  ".join(cells).rstrip())
        _write(("\n".join(lines) + "\n").encode())

    def emit_records(self, items: Sequence[Any], columns: Sequence[tuple[str, int]]) -> None:
        """A list: JSONL when piped, a table on a terminal."""
        if self.machine:
            for item in items:
                self.emit_line(item)
        else:
            self.emit_table((to_data(i) for i in items), columns)
