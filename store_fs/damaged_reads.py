"""Damaged records that a lenient read passed over, for callers that must not look complete.

Listing reads (``query_rollouts``, statistics, the tree scan) pass over a rollout whose
record cannot be read, with a warning, as upstream's API has no way to say "all but
these": an algorithm keeps working, and ``agl check`` reports the damage. A command
printing a listing must instead exit non-zero, or a script would take a partial list
for the whole. :func:`collecting` lets it find out which records were passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from store_fs.errors import CorruptRecordError

__all__ = ["collecting", "passed_over"]

log = logging.getLogger("store_fs.store")

_collector: ContextVar[dict[str, CorruptRecordError] | None] = ContextVar("agl_damaged_reads", default=None)


@contextmanager
def collecting() -> Iterator[dict[str, CorruptRecordError]]:
    """Inside the block (threads and tasks started in it included: they copy the context),
    every damaged record a read passes over is added to the dict yielded, by path."""
    found: dict[str, CorruptRecordError] = {}
    token = _collector.set(found)
    try:
        yield found
    finally:
        _collector.reset(token)


def passed_over(err: CorruptRecordError) -> None:
    """Log ``err`` as a record a read left out, and note it for a :func:`collecting` block."""
    log.warning("%s", err)
    found = _collector.get()
    if found is not None:
        found.setdefault(err.path, err)
