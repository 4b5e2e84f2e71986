"""Where view rows go: JSON Lines on a stream or into a file, or Parquet.

A file is published whole: rows go to a temporary file beside it (``.<name>.<host>-<pid>.tmp``),
renamed over the target when the export ends, so a reader never sees half an export and an
interrupted one leaves the old file as it was.

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
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from store_fs._disk import fsio

__all__ = ["ROW_GROUP", "JsonLinesSink", "ParquetSink", "RowSink", "open_sink"]

ROW_GROUP = 1000
_JSON = orjson.OPT_NON_STR_KEYS


class RowSink(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None:
        """Finish: a file appears at its name now."""

    def abort(self) -> None:
        """Give up: a file is not published (the temporary file is removed)."""


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{fsio.writer_tag()}.tmp")


class JsonLinesSink:
    """One compact JSON object per line, to a binary stream or (published whole) a file."""

    def __init__(self, target: IO[bytes] | Path) -> None:
        self._path: Path | None = None
        if isinstance(target, Path):
            self._path = target
            self._stream: IO[bytes] = open(_tmp_for(target), "wb")  # noqa: SIM115 - closed in close/abort
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
        if self._path is not None:
            self._stream.close()
            os.replace(_tmp_for(self._path), self._path)

    def abort(self) -> None:
        if self._path is not None:
            self._stream.close()
            _tmp_for(self._path).unlink(missing_ok=True)


def _json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=_JSON).decode()


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
        "prompt_raw_content": _json_text(prompt.get("raw_content")),
        "response_raw_content": _json_text(response.get("raw_content")),
        "prompt_image_urls": prompt.get("image_urls") or [],
        "response_logprobs": _json_text(response.get("logprobs")),
        "metadata": _json_text(row.get("metadata")),
    }


def _message_columns(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("rollout_id", "attempt_id", "resources_id", "mode", "final_reward", "ended")
    return {**{k: row[k] for k in keys}, "conversations": _json_text(row["conversations"])}


def _rollout_columns(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("rollout_id", "status", "ended", "final_reward", "resources_id", "mode", "start_time", "end_time")
    return {**{k: row.get(k) for k in keys}, "document": _json_text(row)}


def _schema(view: str) -> Any:
    import pyarrow as pa

    text, number = pa.string(), pa.float64()
    head = [("rollout_id", text), ("attempt_id", text)]
    tail = [("resources_id", text), ("mode", text), ("final_reward", number), ("ended", text)]
    if view == "triplets":
        fields = [*head, ("step", pa.int64()), *tail, ("reward", number)]
        fields += [("prompt_token_ids", pa.list_(pa.int64())), ("response_token_ids", pa.list_(pa.int64()))]
        fields += [("prompt_raw_content", text), ("response_raw_content", text)]
        fields += [("prompt_image_urls", pa.list_(text)), ("response_logprobs", text), ("metadata", text)]
    elif view == "messages":
        fields = [*head, *tail, ("conversations", text)]
    else:
        fields = [("rollout_id", text), ("status", text), ("ended", text), ("final_reward", number)]
        fields += [("resources_id", text), ("mode", text), ("start_time", number), ("end_time", number)]
        fields += [("document", text)]
    return pa.schema(fields)


_COLUMNS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "triplets": _triplet_columns,
    "messages": _message_columns,
    "rollouts": _rollout_columns,
}


class ParquetSink:
    """Rows of one view into a Parquet file, a row group at a time (published whole)."""

    def __init__(self, path: Path, view: str) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError(
                "writing Parquet needs pyarrow: pip install 'agl[parquet]' (or pip install pyarrow)"
            ) from None
        self._path = path
        self._columns = _COLUMNS[view]
        self._schema = _schema(view)
        self._writer = pq.ParquetWriter(_tmp_for(path), self._schema, compression="zstd")
        self._pending: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self._pending.append(self._columns(row))
        if len(self._pending) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            import pyarrow as pa

            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=self._schema))
            self._pending = []

    def close(self) -> None:
        self.flush()
        self._writer.close()
        os.replace(_tmp_for(self._path), self._path)

    def abort(self) -> None:
        self._pending = []
        try:
            self._writer.close()
        finally:
            _tmp_for(self._path).unlink(missing_ok=True)


def open_sink(target: IO[bytes] | Path, view: str) -> RowSink:
    """A sink for ``view``'s rows: Parquet for a path ending in ``.parquet``, else JSON Lines."""
    if isinstance(target, Path) and target.suffix == ".parquet":
        return ParquetSink(target, view)
    return JsonLinesSink(target)
