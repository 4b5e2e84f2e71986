"""Where view rows go: JSON Lines on a stream or into a file, or Parquet.

A file is published whole, or written into as a stream, as the output name decides
(:mod:`store_fs.output_targets`, through :func:`open_sink`). Parquet is refused on a stream
(:class:`OutputTargetError`): a Parquet file is readable only once its footer is written, so it
is only ever published whole.

**Parquet** (a file name ending in ``.parquet``) needs the optional extra ``agl[parquet]``, which
is `pyarrow <https://arrow.apache.org/docs/python/>`_: its ``ParquetWriter`` appends row groups one
at a time, so an export of any size keeps one row group (:data:`ROW_GROUP`) in memory; it is the
reference implementation of the format, and what pandas, polars, DuckDB and Hugging Face
``datasets`` read. Rows of the views are nested and vary from call to call (messages, request
parameters), so a Parquet file has a fixed, flat schema per view: identifiers and numbers as
columns, token ids as ``list<int64>`` columns (what a trainer feeds a model), and the nested parts
as JSON text (``json.loads`` gives back exactly the JSON Lines value):

* ``triplets``: ``rollout_id, attempt_id, step, resources_id, mode, final_reward, ended, reward,
  prompt_token_ids, response_token_ids, prompt_raw_content, response_raw_content,
  prompt_image_urls, response_logprobs, metadata``
* ``messages``: ``rollout_id, attempt_id, resources_id, mode, final_reward, ended, conversations``
* ``rollouts``: ``rollout_id, status, ended, final_reward, resources_id, mode, start_time,
  end_time, document`` (the whole JSON Lines row)

The store takes any JSON, so a row may hold a value its view's schema cannot: a token id outside
int64 (up to ``2**64 - 1`` is valid JSON and stored), a boolean where a token id goes, an image URL
that is not text. :meth:`ParquetSink.write` refuses such a row with :class:`ParquetRowError`
(naming the rollout, the column and why) before taking any of it, so the sink stays usable: the
rows written before and after it are in the file. JSON Lines writes every row as it is.
"""

from __future__ import annotations

import array
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import orjson

from store_fs.errors import AglError, UnstorableValueError
from store_fs.output_targets import (
    OutputTargetError,
    create_temp_beside,
    discard_temp,
    output_place,
    publish_temp,
)

__all__ = [
    "ROW_GROUP",
    "JsonLinesSink",
    "OutputTargetError",
    "ParquetRowError",
    "ParquetSink",
    "RowSink",
    "open_sink",
]

ROW_GROUP = 1000
_JSON = orjson.OPT_NON_STR_KEYS


class ParquetRowError(UnstorableValueError):
    """A row whose ``column`` holds a value the view's Parquet schema cannot (``reason`` says
    which and why). Raised by :meth:`ParquetSink.write` before the row is taken: nothing of it
    is in the file, and the sink takes further rows. A bad-input error (exit 4) if uncaught."""

    def __init__(self, rollout_id: str, column: str, reason: str) -> None:
        AglError.__init__(self, f"rollout {rollout_id}: {column} cannot go in a Parquet file: {reason}")
        self.what = f"{column} of rollout {rollout_id}"
        self.reason = reason
        self.rollout_id = rollout_id
        self.column = column


class RowSink(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None:
        """Finish: a file published whole appears at its name now (a stream is flushed)."""

    def abort(self) -> None:
        """Give up: a file is not published (the temporary file is removed); what went into a
        stream stays there."""


class JsonLinesSink:
    """One compact JSON object per line, to a binary stream or to a file name: published whole
    (a regular file, a new name, a link to one of those), or written straight into it as a
    stream (a FIFO, a device, ``/dev/stdout``...: see the module's doc; not published whole)."""

    def __init__(self, target: IO[bytes] | Path) -> None:
        self._path: Path | None = None  # the file published whole at close
        self._owned = False  # the stream is ours to close
        if isinstance(target, Path):
            place = output_place(target)
            self._owned = True
            if place.kind == "file":
                self._path = place.path
                fd, self._temp = create_temp_beside(place.path)
                self._stream: IO[bytes] = os.fdopen(fd, "wb")
            else:
                self._stream = open(place.path, "ab")  # noqa: SIM115 - closed in close/abort
        else:
            self._stream = target

    def write(self, row: dict[str, Any]) -> None:
        self._stream.write(orjson.dumps(row, option=_JSON | orjson.OPT_APPEND_NEWLINE))

    def write_bytes(self, lines: bytes) -> None:
        """Lines encoded already (by worker processes)."""
        self._stream.write(lines)

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
        if self._owned:
            self._stream.close()
        if self._path is not None:
            publish_temp(self._temp, self._path)

    def abort(self) -> None:
        if self._owned:
            try:
                self._stream.close()
            finally:
                if self._path is not None:
                    discard_temp(self._temp)


# The kinds of Parquet column, each a check-and-convert of a row's value (None stays None).
_Kind = Literal["text", "json", "number", "integer", "integers", "texts"]
_INT64 = 2**63


class _Unfit(Exception):
    """A value a column cannot hold; the message says why."""


def _what(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unfit(f"{_what(value)} is not text")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise _Unfit("text that is not valid UTF-8 (a lone surrogate)") from None
    return value


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_JSON).decode()
    except orjson.JSONEncodeError as err:
        raise _Unfit(f"not JSON: {err}") from None


def _number(value: Any) -> float:
    if isinstance(value, float):
        return value
    if type(value) is not int:
        raise _Unfit(f"{_what(value)} is not a number")
    return float(value)


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise _Unfit(f"{_what(value)} is not an integer")
    if not -_INT64 <= value < _INT64:
        raise _Unfit(f"{value} is outside int64")
    return value


def _integers(value: Any) -> array.array[int]:
    """A list of int64 (no bool, no float: pyarrow would take 1.5 as 1), as a C array."""
    if not isinstance(value, list | tuple):
        raise _Unfit(f"{_what(value)} is not a list")
    if not set(map(type, value)) <= {int}:
        bad = next(i for i, v in enumerate(value) if type(v) is not int)
        raise _Unfit(f"item {bad}: {_what(value[bad])} is not an integer")
    try:
        return array.array("q", value)
    except OverflowError:
        bad = next(i for i, v in enumerate(value) if not -_INT64 <= v < _INT64)
        raise _Unfit(f"item {bad}: {value[bad]} is outside int64") from None


def _texts(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise _Unfit(f"{_what(value)} is not a list")
    for i, item in enumerate(value):
        try:
            _text(item)
        except _Unfit as err:
            raise _Unfit(f"item {i}: {err}") from None
    return list(value)


_CONVERT: dict[_Kind, Callable[[Any], Any]] = {
    "text": _text,
    "json": _json,
    "number": _number,
    "integer": _integer,
    "integers": _integers,
    "texts": _texts,
}


def _triplet_columns(row: dict[str, Any]) -> dict[str, Any]:
    prompt, response = row.get("prompt") or {}, row.get("response") or {}
    return {
        "rollout_id": row["rollout_id"],
        "attempt_id": row["attempt_id"],
        "step": row["step"],
        "resources_id": row["resources_id"],
        "mode": row["mode"],
        "final_reward": row["final_reward"],
        "ended": row["ended"],
        "reward": row["reward"],
        "prompt_token_ids": prompt.get("token_ids") or [],
        "response_token_ids": response.get("token_ids") or [],
        "prompt_raw_content": prompt.get("raw_content"),
        "response_raw_content": response.get("raw_content"),
        "prompt_image_urls": prompt.get("image_urls") or [],
        "response_logprobs": response.get("logprobs"),
        "metadata": row.get("metadata"),
    }


def _message_columns(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("rollout_id", "attempt_id", "resources_id", "mode", "final_reward", "ended")
    return {**{k: row[k] for k in keys}, "conversations": row["conversations"]}


def _rollout_columns(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("rollout_id", "status", "ended", "final_reward", "resources_id", "mode", "start_time", "end_time")
    return {**{k: row.get(k) for k in keys}, "document": row}


_HEAD: dict[str, _Kind] = {"rollout_id": "text", "attempt_id": "text"}
_TAIL: dict[str, _Kind] = {"resources_id": "text", "mode": "text", "final_reward": "number", "ended": "text"}

# Each view's columns, in the file's order, and their kinds.
_KINDS: dict[str, dict[str, _Kind]] = {
    "triplets": {
        **_HEAD,
        "step": "integer",
        **_TAIL,
        "reward": "number",
        "prompt_token_ids": "integers",
        "response_token_ids": "integers",
        "prompt_raw_content": "json",
        "response_raw_content": "json",
        "prompt_image_urls": "texts",
        "response_logprobs": "json",
        "metadata": "json",
    },
    "messages": {**_HEAD, **_TAIL, "conversations": "json"},
    "rollouts": {
        "rollout_id": "text",
        "status": "text",
        "ended": "text",
        "final_reward": "number",
        "resources_id": "text",
        "mode": "text",
        "start_time": "number",
        "end_time": "number",
        "document": "json",
    },
}

_COLUMNS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "triplets": _triplet_columns,
    "messages": _message_columns,
    "rollouts": _rollout_columns,
}


def _arrow_type(kind: _Kind) -> Any:
    import pyarrow as pa

    return {
        "text": pa.string(),
        "json": pa.string(),
        "number": pa.float64(),
        "integer": pa.int64(),
        "integers": pa.list_(pa.int64()),
        "texts": pa.list_(pa.string()),
    }[kind]


def _schema(view: str) -> Any:
    import pyarrow as pa

    return pa.schema([(name, _arrow_type(kind)) for name, kind in _KINDS[view].items()])


def _int_lists(values: list[array.array[int]]) -> Any:
    """``list<int64>`` of C arrays, their items copied once (no Python int per item)."""
    import pyarrow as pa

    flat: array.array[int] = array.array("q")
    offsets = [0]
    for items in values:
        flat.extend(items)
        offsets.append(len(flat))
    items_array = pa.Array.from_buffers(pa.int64(), len(flat), [None, pa.py_buffer(flat)])
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), items_array)


class ParquetSink:
    """Rows of one view into a Parquet file, a row group at a time (published whole).

    :meth:`write` raises :class:`ParquetRowError` for a row the view's schema cannot hold, and
    takes nothing of it; the rows before and after it go in the file as usual."""

    def __init__(self, path: Path, view: str) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError(
                "writing Parquet needs pyarrow: pip install 'agl[parquet]' (or pip install pyarrow)"
            ) from None
        place = output_place(path)
        if place.kind == "stream":
            why = f"{place.what}; Parquet goes to a regular file or a new name (published whole)"
            raise OutputTargetError(str(path), why)
        self._path = place.path
        self._columns = _COLUMNS[view]
        self._kinds = _KINDS[view]
        self._schema = _schema(view)
        fd, self._temp = create_temp_beside(self._path)
        os.close(fd)  # the name is ours; pyarrow writes it
        try:
            self._writer = pq.ParquetWriter(self._temp, self._schema, compression="zstd")
        except BaseException:
            discard_temp(self._temp)  # no writer: nobody else would remove it
            raise
        self._pending: list[dict[str, Any]] = []

    def _converted(self, row: dict[str, Any]) -> dict[str, Any]:
        values = self._columns(row)
        out: dict[str, Any] = {}
        for name, kind in self._kinds.items():
            value = values[name]
            try:
                out[name] = None if value is None else _CONVERT[kind](value)
            except _Unfit as err:
                raise ParquetRowError(str(row.get("rollout_id")), name, str(err)) from None
        return out

    def write(self, row: dict[str, Any]) -> None:
        self._pending.append(self._converted(row))
        if len(self._pending) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            import pyarrow as pa

            arrays = []
            for field in self._schema:
                values = [r[field.name] for r in self._pending]
                if self._kinds[field.name] == "integers":
                    arrays.append(_int_lists(values))
                else:
                    arrays.append(pa.array(values, type=field.type))
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
            self._pending = []

    def close(self) -> None:
        self.flush()
        self._writer.close()
        publish_temp(self._temp, self._path)

    def abort(self) -> None:
        self._pending = []
        try:
            self._writer.close()
        finally:
            discard_temp(self._temp)


def open_sink(target: IO[bytes] | Path, view: str) -> RowSink:
    """A sink for ``view``'s rows: Parquet for a path ending in ``.parquet``, else JSON Lines.

    A path is resolved as the module's doc says; :class:`OutputTargetError` for one that cannot
    take the rows (Parquet into a FIFO or a device, a directory, a loop of links)."""
    if isinstance(target, Path) and target.suffix == ".parquet":
        return ParquetSink(target, view)
    return JsonLinesSink(target)
