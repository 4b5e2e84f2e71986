"""An attempt's spans as plain rows, read for the ``triplets`` view without building span objects.

The triplet builder needs six fields of a span: ``span_id``, ``parent_id``, ``name``,
``attributes``, ``start_time`` and ``end_time``. :func:`read_span_rows` gives them as a
:data:`SpanRow` tuple per span, exactly the spans ``query_spans(rollout_id, "latest")`` returns for
the attempt and in its order (sequence id, ties in storage order), with the values
``Span.model_validate`` would give them; it skips the span models themselves, which cost about
as much as parsing the JSON (the ``triplets`` export reads every span of a store once).

How each line is judged is the store's (:mod:`store_fs._disk.span_log`): files in name order,
the bytes after the last newline left out, the first copy of each ``span_id`` kept, a line that
does not parse or does not validate logged and skipped (a later copy of its ``span_id`` too).
A line in the *canonical* shape (what ``Span.model_dump`` writes: the model's keys in order, each
value of the exact type validation produces, see :mod:`store_fs._disk.span_decode`) validates
to itself, so its parsed values are used as they are; any other line goes through
:func:`~store_fs._disk.span_decode.decode_span` and its values are read off the span. When the
span models no longer have the layout the shape check was written for
(:data:`~store_fs._disk.span_decode.FAST_PATH` false), every line goes that way.
"""

from __future__ import annotations

import logging
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from store_fs._disk import codec
from store_fs._disk.span_decode import (
    CONTEXT_KEYS,
    CONTEXT_TYPES,
    FAST_PATH,
    N_SPAN_KEYS,
    RESOURCE_KEYS,
    SPAN_KEYS,
    SPAN_TYPES,
    STATUS_CODES,
    STATUS_KEYS,
    attributes_kept,
    decode_span,
)
from store_fs._disk.span_read import read_span_bytes

if TYPE_CHECKING:
    from store_fs.store import FileStore

__all__ = ["TORN_TAIL", "SpanRow", "read_span_rows", "row_of"]

# How a problem report of bytes after a file's last newline ends (a write in progress, or a
# writer killed in one).
TORN_TAIL = "bytes after the last newline"

log = logging.getLogger(__name__)

# (span_id, parent_id, name, attributes, start_time, end_time): what the triplet builder reads.
SpanRow = tuple[str, str | None, str, dict[str, Any], float | None, float | None]

_by_sequence = itemgetter(0)


def _context_ok(value: Any) -> bool:
    if value is None:
        return True
    if tuple(value) != CONTEXT_KEYS or tuple(map(type, value.values())) != CONTEXT_TYPES:
        return False
    state = value["trace_state"]
    return not state or set(map(type, state.values())) == {str}


def _nested_ok(obj: dict[str, Any]) -> bool:
    """Status, resource, context and parent of a line whose top-level types are canonical."""
    status = obj["status"]
    keys = tuple(status)
    code = status.get("status_code")
    if type(code) is not str or code not in STATUS_CODES:
        return False
    if keys != ("status_code",) and not (
        keys == STATUS_KEYS and (status["description"] is None or type(status["description"]) is str)
    ):
        return False
    resource = obj["resource"]
    if tuple(resource) != RESOURCE_KEYS or type(resource["schema_url"]) is not str:
        return False
    if type(resource["attributes"]) is not dict or not attributes_kept(resource["attributes"]):
        return False
    return _context_ok(obj["context"]) and _context_ok(obj["parent"])


def _canonical(obj: dict[str, Any]) -> bool:
    """Whether ``Span.model_validate(obj)`` would accept ``obj`` and keep its values as they are."""
    if not FAST_PATH:
        return False
    keys = tuple(obj)
    extras = len(keys) > N_SPAN_KEYS  # kept as they are (the tracer's span kind and scope)
    if (keys[:N_SPAN_KEYS] if extras else keys) != SPAN_KEYS:
        return False
    types = tuple(map(type, obj.values()))
    if (types[:N_SPAN_KEYS] if extras else types) not in SPAN_TYPES or obj["events"] or obj["links"]:
        return False
    return attributes_kept(obj["attributes"]) and _nested_ok(obj)


def row_of(obj: dict[str, Any]) -> tuple[int, SpanRow]:
    """(sequence id, row) of one parsed span line; raises pydantic's ``ValidationError`` exactly
    when the store would skip the line as invalid."""
    if _canonical(obj):
        return obj["sequence_id"], (
            obj["span_id"],
            obj["parent_id"],
            obj["name"],
            obj["attributes"],
            obj["start_time"],
            obj["end_time"],
        )
    span = decode_span(obj)
    return span.sequence_id, (
        span.span_id,
        span.parent_id,
        span.name,
        span.attributes,
        span.start_time,
        span.end_time,
    )


def _parsed(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """The span line's JSON object, or None and why it cannot be one."""
    try:
        obj = codec.loads(line)
    except ValueError as err:
        return None, str(err).splitlines()[0] if line.strip(b"\x00 \t\r") else "NUL or blank bytes"
    if type(obj) is not dict:
        return None, "not a JSON object"
    if type(obj.get("span_id")) is not str:
        return None, "span_id is not a string"  # cannot validate; nor can later lines sharing it
    return obj, ""


def _file_rows(path: Path, seen: set[object], out: list[tuple[int, SpanRow]], bad: list[str]) -> None:
    data, reason = read_span_bytes(path)
    if reason is not None:
        log.warning("skipping %s: %s", path, reason)
        bad.append(f"{path}: {reason}")
    end = data.rfind(b"\n") + 1
    if end < len(data):
        bad.append(f"{path}: {len(data) - end} {TORN_TAIL}")
    offset = 0
    for line in data[:end].split(b"\n")[:-1]:
        at, offset = offset, offset + len(line) + 1
        if not line:
            continue
        obj, why = _parsed(line)
        if obj is not None:
            key = obj["span_id"]
            if key in seen:
                continue
            seen.add(key)
            try:
                out.append(row_of(obj))
                continue
            except ValidationError as err:
                why = str(err).splitlines()[0]
        if why != "NUL or blank bytes":
            log.warning("skipping a span line in %s at byte %d: %s", path, at, why)
        bad.append(f"{path} at byte {at}: {why}")


def read_span_rows(store: FileStore, attempt_dir: Path, bad: list[str] | None = None) -> list[SpanRow]:
    """The rows of the spans ``query_spans`` returns for the attempt stored in ``attempt_dir``.

    What the store would skip (a line that does not parse or validate, a name that is no file)
    and the bytes after a file's last newline (a write in progress, or a writer killed in one)
    are described in ``bad``, one string each."""
    seen: set[object] = set()
    keyed: list[tuple[int, SpanRow]] = []
    problems: list[str] = [] if bad is None else bad
    for path in store._spans._span_files(attempt_dir):
        _file_rows(path, seen, keyed, problems)
    keyed.sort(key=_by_sequence)
    return [row for _seq, row in keyed]
