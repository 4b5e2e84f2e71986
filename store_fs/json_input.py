"""JSON that comes from outside the store: request bodies, command arguments and files.

The store's own files are read by :mod:`store_fs._disk.codec`; they only ever hold what orjson
wrote. Text from people and other programs may hold what orjson cannot read exactly.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["DecodeError", "loads_exact"]

DecodeError = orjson.JSONDecodeError

# Twenty digits in a row, or a minus and nineteen: the only ways a JSON text can hold an
# integer orjson does not read as one (2**64 or more, below -2**63: -9223372036854775809 to
# -9999999999999999999 have nineteen digits).
_WIDE_DIGITS = re.compile(rb"[0-9]{20}|-[0-9]{19}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_exact(data: bytes | str) -> Any:
    """Parse JSON keeping every number's value; raises :data:`DecodeError` on bad input.

    orjson reads an integer of 2**64 or more, or below -2**63, as the nearest float, without a
    word, so ``{"id": 18446744073709551616}`` would be stored as ``1.8446744073709552e+19``. A
    text that may hold such an integer (twenty digits in a row, or a minus and nineteen; rare:
    the check is one scan) is
    parsed again by the standard library, which keeps it an integer, so that storing it
    fails by name (``UnstorableValueError``) instead of storing another number.
    """
    value = orjson.loads(data)
    raw = data.encode() if isinstance(data, str) else data
    if _WIDE_DIGITS.search(raw) is None:
        return value
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # orjson read it: only its nesting limit is higher
        text = raw.decode(errors="replace")
        raise DecodeError(f"cannot read the numbers of this JSON exactly: {err}", text, 0) from None
