"""The only place where records become bytes and bytes become records.

Records meant to be read and diffed by people (rollout history, resources,
workers) are pretty-printed JSON with a final newline: with sorted keys, except
rollout revisions, which keep the order of the model's fields and of the
caller's own dicts (``input``, ``metadata``), as upstream's store hands them
back. Logs (spans, events) are one compact JSON object per line.
"""

from __future__ import annotations

from math import isfinite
from typing import Any

import orjson

from store_fs.errors import UnstorableValueError

__all__ = [
    "NON_FINITE",
    "DecodeError",
    "all_finite",
    "check_storable",
    "dumps_line",
    "dumps_record",
    "loads",
    "unstorable_reason",
]

DecodeError = orjson.JSONDecodeError

# Why a value holding NaN or an infinity is refused (orjson would write ``null``).
NON_FINITE = "NaN and infinities have no JSON form"

_IN_ORDER = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
_RECORD = _IN_ORDER | orjson.OPT_SORT_KEYS


def _default(obj: Any) -> Any:
    # pydantic models and anything else JSON-able by pydantic's rules.
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# orjson writes 254 levels of nesting at most. Answers and exports put a stored document inside
# envelopes of their own (a page's items, an export's attempts and their spans): a document using
# every level was stored, then every answer holding it failed (a dequeue had claimed its rollout).
# So what is newly stored (a caller's value: check_storable; a log line) leaves this many levels
# free. A record is re-encoded at every revision and may hold a value stored before the limit
# (by an older build): it is only held to orjson's own.
_ENVELOPE_LEVELS = 16
MAX_STORED_DEPTH = 254 - _ENVELOPE_LEVELS
_TOO_DEEP = f"nested deeper than {MAX_STORED_DEPTH} levels (JSON answers holding it could not be written)"
_ORJSON_DEPTH = "nested deeper than the 254 levels JSON is written with"


def _refuse(what: str, err: orjson.JSONEncodeError, too_deep: str = _TOO_DEEP) -> UnstorableValueError:
    message = str(err) or type(err).__name__
    return UnstorableValueError(what, too_deep if "Recursion limit" in message else message)


def _enveloped(obj: Any) -> list[Any]:
    for _ in range(_ENVELOPE_LEVELS - 1):
        obj = [obj]
    return [obj]


def _dumps(obj: Any, option: int, what: str) -> bytes:
    try:
        return orjson.dumps(obj, default=_default, option=option)
    except orjson.JSONEncodeError as err:
        raise _refuse(what, err, _ORJSON_DEPTH) from None


def _dumps_line(obj: Any, what: str) -> bytes:
    # Encoded inside the envelope levels and cut out of them: the depth check costs no second
    # encoding on the span path.
    try:
        data = orjson.dumps(_enveloped(obj), default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as err:
        raise _refuse(what, err) from None
    return data[_ENVELOPE_LEVELS:-_ENVELOPE_LEVELS] + b"\n"


def dumps_record(obj: Any, *, sort_keys: bool = True) -> bytes:
    """Pretty JSON with a final newline, keys sorted unless ``sort_keys`` is false (then in the
    order of the model's fields and of each dict); :class:`UnstorableValueError` if JSON cannot
    hold it."""
    return _dumps(obj, _RECORD if sort_keys else _IN_ORDER, type(obj).__name__)


def dumps_line(obj: Any) -> bytes:
    """One compact JSON line ending in a newline (no newline may occur inside); raises like
    :func:`dumps_record`."""
    return _dumps_line(obj, type(obj).__name__)


def check_storable(what: str, value: Any) -> None:
    """Raise :class:`UnstorableValueError` naming ``what`` unless ``value`` can be written as JSON
    and read back the same.

    For callers that must refuse a value before their first write rather than half-way: pydantic
    accepts what orjson cannot write (an integer of 2**64 or more given as a digit string, JSON
    nested deeper than :data:`MAX_STORED_DEPTH` levels, which leaves room under orjson's 254
    for the answers holding it, while it reads 1,024). And orjson writes NaN and the
    infinities as ``null``, which would store another value than the caller's without a word.
    """
    _dumps_line(value, what)  # first: it also refuses nesting too deep for the walk below
    reason = unstorable_reason(value)
    if reason is not None:
        raise UnstorableValueError(what, reason)


_SCALARS = (str, int, bool, type(None))
_STR_KEYS = {str}


def all_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (JSON-like data, models included)."""
    kind = type(value)
    if kind is float:
        return isfinite(value)
    if kind in _SCALARS:  # most values: answered before the slower checks below
        return True
    if isinstance(value, float):
        return isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(all_finite(v) for v in value)
    dump = getattr(value, "model_dump", None)
    return all_finite(dump()) if dump is not None else True


def unstorable_reason(value: Any) -> str | None:
    """Why JSON would give back another ``value`` than this one (JSON-like data, models
    included), or None: NaN or an infinity (written as ``null``), or a dict whose keys become
    the same text (``{1: "a", "1": "b"}``: JSON keys are strings, and reading keeps the last)."""
    kind = type(value)
    if kind is float:
        return None if isfinite(value) else NON_FINITE
    if kind in _SCALARS:  # most values: answered before the slower checks below
        return None
    if isinstance(value, float):
        return None if isfinite(value) else NON_FINITE
    if isinstance(value, dict):
        reason = None if set(map(type, value)) <= _STR_KEYS else _clashing_keys(value)
        return reason or next((r for v in value.values() if (r := unstorable_reason(v)) is not None), None)
    if isinstance(value, (list, tuple, set, frozenset)):
        return next((r for v in value if (r := unstorable_reason(v)) is not None), None)
    dump = getattr(value, "model_dump", None)
    return unstorable_reason(dump()) if dump is not None else None


def _clashing_keys(value: dict[Any, Any]) -> str | None:
    """Two keys of ``value`` that are written as the same JSON key, if any (orjson writes
    ``1``, ``True``, ``None`` and ``1.0`` as ``"1"``, ``"true"``, ``"null"`` and ``"1.0"``)."""
    seen: dict[str, Any] = {}
    for key in value:
        if isinstance(key, str):
            text = key
        else:
            try:
                (text,) = orjson.loads(orjson.dumps({key: None}, option=orjson.OPT_NON_STR_KEYS))
            except orjson.JSONEncodeError:
                return None  # a key JSON has no form for: the encoding refuses it by name
        if text in seen:
            return f"its keys {seen[text]!r} and {key!r} would both be written as {text!r}, keeping one"
        seen[text] = key
    return None


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :data:`DecodeError` (a ``ValueError``) on bad input."""
    return orjson.loads(data)
