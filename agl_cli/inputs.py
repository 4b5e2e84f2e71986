"""Reading JSON from an argument, a file (@path) or standard input."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from store_fs import json_input

from .exit_codes import CliError


def parse_json(text: str | bytes, where: str) -> Any:
    try:
        return json_input.loads_exact(text)
    except json_input.DecodeError as err:
        raise CliError(f"malformed JSON in {where}: {err}") from None


def read_value(arg: str, where: str = "argument") -> Any:
    """A JSON value from ``arg``, or from the file it names with a leading ``@``."""
    if arg.startswith("@"):
        path = Path(arg[1:])
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CliError(f"cannot read {path}: {err.strerror}") from None
        return parse_json(data, str(path))
    return parse_json(arg, where)


def read_lines(source: str = "-") -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-empty JSONL line of stdin (``-``) or ``@file``."""
    if source == "-":
        stream = sys.stdin.buffer
        name = "stdin"
    else:
        path = Path(source[1:] if source.startswith("@") else source)
        try:
            stream = path.open("rb")
        except OSError as err:
            raise CliError(f"cannot read {path}: {err.strerror}") from None
        name = str(path)
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, parse_json(line, f"{name} line {number}")


def read_object(arg: str | None, what: str) -> dict[str, Any] | None:
    if arg is None:
        return None
    value = read_value(arg, what)
    if not isinstance(value, dict):
        raise CliError(f"{what} must be a JSON object")
    return value
