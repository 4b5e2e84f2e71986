"""Rendering: JSON (one document) or JSONL (streams) when piped or with --json; tables on a terminal.

Data goes to stdout, messages to stderr. Field names are upstream's, so jq filters written
against upstream JSON work on agl's output. Machine output never depends on the terminal,
the locale or the clock; people's output (``agl_cli.tables``) has dates, ages, durations,
and colour when stdout is a terminal and ``NO_COLOR`` is unset.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .tables import Column, Table


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


def _quiet() -> bool:
    """--quiet of the invocation running now (click keeps the current context)."""
    from typer._click.globals import get_current_context

    from .state import CliState

    ctx = get_current_context(silent=True)
    state = None if ctx is None else ctx.find_object(CliState)
    return state is not None and state.quiet


def info(message: str) -> None:
    """A message for people, on stderr (not with --quiet)."""
    if _quiet():
        return
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def problem(message: str) -> None:
    """A problem met on the way that does not stop the command, on stderr (even with --quiet):
    the command still ends with a non-zero exit code."""
    sys.stderr.write(f"agl: {message}\n")
    sys.stderr.flush()


def color_allowed(stream: Any) -> bool:
    """Colour only on a terminal, never with NO_COLOR (https://no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass(frozen=True)
class Output:
    """Where one invocation's data goes, and in which form (``--json`` forces machine form)."""

    force_json: bool = False

    @property
    def machine(self) -> bool:
        """JSON/JSONL rather than tables: with --json, or when stdout is not a terminal."""
        return self.force_json or not sys.stdout.isatty()

    def table(self, columns: Sequence[Column], *, fixed: bool = False) -> Table:
        """A table for this terminal (its width, colour unless NO_COLOR)."""
        width = shutil.get_terminal_size((120, 24)).columns
        return Table(columns, color=color_allowed(sys.stdout), fixed=fixed, max_width=width)

    def emit_json(self, obj: Any) -> None:
        """One JSON document (pretty on a terminal)."""
        option = orjson.OPT_APPEND_NEWLINE | (0 if self.machine else orjson.OPT_INDENT_2)
        _write(orjson.dumps(to_data(obj), option=option))

    def emit_line(self, obj: Any) -> None:
        """One JSONL record."""
        _write(orjson.dumps(to_data(obj), option=orjson.OPT_APPEND_NEWLINE))

    def emit_text(self, lines: Iterable[str]) -> None:
        """Lines for people, on stdout."""
        _write("".join(line + "\n" for line in lines).encode())

    def emit_table(self, rows: Iterable[dict[str, Any]], columns: Sequence[Column]) -> None:
        """An aligned table for people."""
        self.emit_text(self.table(columns).render(rows))

    def emit_records(self, items: Sequence[Any], columns: Sequence[Column]) -> None:
        """A list: JSONL when piped, a table on a terminal."""
        if self.machine:
            for item in items:
                self.emit_line(item)
        else:
            self.emit_table((to_data(i) for i in items), columns)
