"""Report rows of settled rollouts, kept between reports: ``cache/report-rows/<bucket>.json``.

A report row is a function of a rollout's newest revision and of its span files. Of a rollout
that has finished, the revision changes whenever anything the row shows can change: an update is
a revision, and a span added to a finished attempt stamps its heartbeat time in a new revision
unless the last stamp is under 0.25 s old (``SpanMethods._promote``). So a row made from
revision ``N`` holds while ``N`` is the newest, for a rollout that ended long enough ago that
no stamp can still be that recent, whatever the clocks of the hosts that write (``SETTLE_SECONDS``).
A report then lists ``history/`` of each rollout, as it does anyway to find the newest revision,
and uses the kept row when the revision matches, instead of reading the record and every span
file again: ``tests/test_report_cache.py`` checks that the page's figures are the same either way.

Only rows read straight from the files are kept (:mod:`~store_fs.report.report_fastscan`), with
the bad span lines found while making them, so the quick data health check still reports them.
The files are a cache: each is written whole (temporary file, then rename; the last report
wins), a file that does not parse or was written for other row fields is ignored, a store a
report cannot write to gets no cache, and ``agl report --no-cache`` neither reads nor writes
one. Pruned rollouts drop out: a bucket's file keeps only the rollouts its last scan listed.
``check --fix``, which can rewrite span files without a revision, deletes the whole cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, get_args

from store_fs._disk import codec, fsio
from store_fs._disk.layout import Layout
from store_fs._disk.status_rules import LIVE_ATTEMPT_STATUSES, TERMINAL_ROLLOUT_STATUSES
from store_fs.models.rollout_types import AttemptStatus, RolloutStatus
from store_fs.report._span_digest import BadSpanLine
from store_fs.report.report_scan import AttemptRow, RolloutRow

__all__ = ["SETTLE_SECONDS", "BucketCache"]

log = logging.getLogger(__name__)

#: How long after a rollout's end its row may be kept: far above the 0.25 s heartbeat stamp
#: interval, and above any clock difference between hosts that agl runs with (``agl doctor``).
SETTLE_SECONDS: Final = 120.0
# Attempts whose row the API makes from heartbeat files: never kept (an unresponsive one may revive).
_LIVE: Final = LIVE_ATTEMPT_STATUSES | {"unresponsive"}

# Each field and the JSON types its value may have (int where a float is asked: JSON keeps 1.0
# as a float, but a reward may be an int).
_STR, _OPT_STR = (str,), (str, type(None))
_INT, _NUM, _OPT_NUM = (int,), (float, int), (float, int, type(None))
_ROW_TYPES: Final = {
    "rollout_id": _STR,
    "status": _STR,
    "mode": _OPT_STR,
    "resources_id": _OPT_STR,
    "start_time": _NUM,
    "end_time": _OPT_NUM,
    "reward": _OPT_NUM,
    "spans": _INT,
    "llm_calls": _INT,
    "input_tokens": _INT,
    "output_tokens": _INT,
}
_ATTEMPT_TYPES: Final = {
    "rollout_id": _STR,
    "sequence_id": _INT,
    "attempt_id": _STR,
    "worker_id": _OPT_STR,
    "status": _STR,
    "start_time": _NUM,
    "end_time": _OPT_NUM,
    "last_heartbeat_time": _OPT_NUM,
    "error": _OPT_STR,
    "verdict_time": _OPT_NUM,
}
_BAD_TYPES: Final = {"path": _STR, "offset": _INT, "detail": _STR, "torn": (bool,), "kind": _OPT_STR}
# A status goes into the page's markup (a chart's CSS class): a cached one must be one of these.
_ROLLOUT_STATUSES: Final = frozenset(get_args(RolloutStatus))
_ATTEMPT_STATUSES: Final = frozenset(get_args(AttemptStatus))
# Written into each file: a file made for other fields (another build) is not used.
_SHAPE: Final = {
    "version": 1,
    "row": list(_ROW_TYPES),
    "attempt": list(_ATTEMPT_TYPES),
    "bad": list(_BAD_TYPES),
}


def _values(types: Mapping[str, tuple[type, ...]], values: Any) -> dict[str, Any]:
    """``values`` (a JSON list) as keyword arguments, if each has a type its field allows."""
    if type(values) is not list or len(values) != len(types):
        raise ValueError("not a cached row")
    out = dict(zip(types, values, strict=True))
    for name, allowed in types.items():
        value = out[name]
        if type(value) not in allowed:
            raise ValueError(f"cached {name} has the wrong type")
    return out


def _settled(row: RolloutRow, now: float) -> bool:
    """Whether no stamp of a late span can be recent: the rollout ended long ago, and so did
    every attempt's last heartbeat (a late span stamps it; a second one within 0.25 s of that
    stamp writes no revision, so a row kept between them went stale: an adversarial pass)."""
    since = now - SETTLE_SECONDS
    return (
        row.status in TERMINAL_ROLLOUT_STATUSES
        and row.end_time is not None
        and row.end_time < since
        and not any(a.status in _LIVE for a in row.attempts)
        and all(max(a.last_heartbeat_time or 0.0, a.end_time or 0.0) < since for a in row.attempts)
    )


class BucketCache:
    """The kept rows of one fan-out directory, and the ones the current scan keeps."""

    def __init__(self, root: str, bucket: str) -> None:
        self._root = root
        self._path = Layout(Path(root)).report_cache / f"{bucket}.json"
        self._old: dict[str, Any] = self._load()
        self._new: dict[str, Any] = {}
        self._now = time.time()

    def _load(self) -> dict[str, Any]:
        try:
            data = fsio.read_bytes(self._path)
        except OSError as err:
            log.info("%s: %s; ignored", self._path, os.strerror(err.errno or 0))
            return {}
        if data is None:
            return {}
        try:
            body = codec.loads(data)
        except codec.DecodeError:
            log.info("%s: not JSON; ignored", self._path)
            return {}
        if type(body) is not dict or body.get("shape") != _SHAPE or type(body.get("rows")) is not dict:
            return {}
        rows: dict[str, Any] = body["rows"]
        return rows

    def get(self, rollout_id: str, rev: int) -> tuple[RolloutRow, list[BadSpanLine]] | None:
        """The kept row of ``rollout_id`` and its bad span lines, if made from revision ``rev``."""
        entry = self._old.get(rollout_id)
        if type(entry) is not list or len(entry) != 4 or entry[0] != rev:
            return None
        try:
            _rev, values, attempts, bad = entry
            row = RolloutRow(**_values(_ROW_TYPES, values))
            if type(attempts) is not list or type(bad) is not list:
                raise ValueError("not a cached row")
            row.attempts = [AttemptRow(**_values(_ATTEMPT_TYPES, a)) for a in attempts]
            lines = [BadSpanLine(**_values(_BAD_TYPES, b)) for b in bad]
        except ValueError:
            return None  # a damaged entry: the rollout is read again
        if (
            row.rollout_id != rollout_id
            or row.status not in _ROLLOUT_STATUSES
            or any(a.status not in _ATTEMPT_STATUSES for a in row.attempts)
        ):
            return None  # damaged or tampered with: the rollout is read again
        self._new[rollout_id] = entry
        # Paths are kept relative to the store: a copied or moved store's stay right.
        return row, [
            b if b.path.startswith("/") else dataclasses.replace(b, path=f"{self._root}/{b.path}")
            for b in lines
        ]

    def put(self, rollout_id: str, rev: int, row: RolloutRow, bad: list[BadSpanLine]) -> None:
        """Keep the row made from revision ``rev``, if the rollout has settled."""
        if not _settled(row, self._now):
            return
        prefix = self._root + "/"
        self._new[rollout_id] = [
            rev,
            [getattr(row, name) for name in _ROW_TYPES],
            [[getattr(a, name) for name in _ATTEMPT_TYPES] for a in row.attempts],
            [[b.path.removeprefix(prefix), b.offset, b.detail, b.torn, b.kind] for b in bad],
        ]

    def save(self) -> None:
        """Write the rows this scan kept, when they differ from the file's (errors are logged:
        a report of a store it cannot write to still comes out)."""
        if self._new == self._old:
            return
        data = codec.dumps_line({"shape": _SHAPE, "rows": self._new})
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fsio.publish(self._path, data)
        except OSError as err:
            log.info("report rows not kept in %s: %s", self._path.parent, os.strerror(err.errno or 0))
