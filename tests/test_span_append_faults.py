"""A span whose write failed is not held: the retry stores it, readable, whatever the failure left.

The runner retries spans through storage outages (docs/runner.md); a span the store marked as
held before its write failed would then be refused as a duplicate and lost.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from mp_workers import make_span

from store_fs import FileStore
from store_fs._disk import fsio


async def _attempt(store: FileStore) -> tuple[str, str]:
    await store.enqueue_rollout(input=1)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    return attempted.rollout_id, attempted.attempt.attempt_id


@pytest.mark.parametrize("written", [0, 0.5], ids=["nothing-written", "half-written"])
async def test_a_failed_span_write_is_stored_by_the_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: float
) -> None:
    store = FileStore(tmp_path / "store")
    rid, aid = await _attempt(store)
    await store.add_span(make_span(rid, aid, 1))
    real = fsio.append
    failures = [1]

    def failing(fd: int, data: bytes) -> None:
        if failures:
            failures.pop()
            os.write(fd, data[: int(len(data) * written)])  # what the failed write left behind
            raise OSError(errno.EIO, "injected")
        real(fd, data)

    monkeypatch.setattr(fsio, "append", failing)
    span = make_span(rid, aid, 2)
    with pytest.raises(OSError, match="injected"):
        await store.add_span(span)
    assert await store.add_span(span) is not None  # not refused as a duplicate
    monkeypatch.undo()
    await store.add_span(make_span(rid, aid, 3))
    fresh = FileStore(tmp_path / "store", create=False)
    spans = list(await fresh.query_spans(rid, aid))
    assert [s.sequence_id for s in spans] == [1, 2, 3]
    # A half-written line stays behind as one unreadable line, which check reports and repairs.
    kinds = [p.kind for p in fresh.check()]
    assert kinds == ([] if written == 0 else ["corrupt-span"])
    store.close()
    fresh.close()
