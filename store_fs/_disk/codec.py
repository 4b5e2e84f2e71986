"""The only place where records become bytes and bytes become records.

Records meant to be read and diffed by people (rollout history, resources,
workers) are pretty-printed JSON with sorted keys and a final newline. Logs
(spans, events) are one compact JSON object per line.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DecodeError", "dumps_line", "dumps_record", "loads"]

DecodeError = orjson.JSONDecodeError

_RECORD = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_LINE = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def _default(obj: Any) -> Any:
    # pydantic models and anything else JSON-able by pydantic's rules.
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_record(obj: Any) -> bytes:
    """Pretty, key-sorted JSON with a final newline."""
    return orjson.dumps(obj, default=_default, option=_RECORD)


def dumps_line(obj: Any) -> bytes:
    """One compact JSON line ending in a newline (no newline may occur inside)."""
    return orjson.dumps(obj, default=_default, option=_LINE)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :data:`DecodeError` (a ``ValueError``) on bad input."""
    return orjson.loads(data)
