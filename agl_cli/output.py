"""Rendering: JSON (one document) or JSONL (streams) when piped or with --json; tables on a terminal.

Data goes to stdout, messages to stderr. Field names are upstream's, so jq filters written
against upstream JSON work on agl's output.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from .state import settings


def machine_output() -> bool:
    return settings.json or not sys.stdout.isatty()


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


def emit_json(obj: Any) -> None:
    """One JSON document (pretty on a terminal)."""
    option = orjson.OPT_APPEND_NEWLINE | (0 if machine_output() else orjson.OPT_INDENT_2)
    _write(orjson.dumps(to_data(obj), option=option))


def emit_line(obj: Any) -> None:
    """One JSONL record."""
    _write(orjson.dumps(to_data(obj), option=orjson.OPT_APPEND_NEWLINE))


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def emit_table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, int]]) -> None:
    """A fixed-width table for people; columns are (key, max width)."""
    rows = list(rows)
    widths = [max([len(key)] + [len(_cell(r.get(key), w)) for r in rows]) for key, w in columns]
    lines = ["  ".join(k.upper().ljust(w) for (k, _), w in zip(columns, widths, strict=True))]
    for row in rows:
        cells = [_cell(row.get(k), mw).ljust(w) for (k, mw), w in zip(columns, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    _write(("\n".join(lines) + "\n").encode())


def emit_records(items: Sequence[Any], columns: Sequence[tuple[str, int]]) -> None:
    """A list: JSONL when piped, a table on a terminal."""
    if machine_output():
        for item in items:
            emit_line(item)
    else:
        emit_table((to_data(i) for i in items), columns)


def info(message: str) -> None:
    """A message for people, on stderr."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
