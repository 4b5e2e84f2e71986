"""Spans reach the file server before their attempt is reported finished (docs/nfs.md).

On NFS a write to a file the writer keeps open may wait in that client's cache until the
file is closed or synced, so a reader on another host that sees ``succeeded`` could read
a span log without its last spans (the final reward among them). The store flushes the
attempt's span log first; these tests watch the ``fdatasync`` calls.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mp_workers import make_span

from store_fs import FileStore
from store_fs.store import _base


def _open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, network: bool) -> FileStore:
    monkeypatch.setattr(_base, "is_network_fs", lambda path: network)
    return FileStore(tmp_path / "store", watch_mode="poll")


def _synced_fds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    return calls


@pytest.mark.parametrize("status", ["succeeded", "failed"])
async def test_on_a_network_filesystem_the_span_log_is_flushed_before_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    store = _open(tmp_path, monkeypatch, network=True)
    await store.enqueue_rollout(input=1)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    await store.add_span(make_span(rid, aid, await store.get_next_span_sequence_id(rid, aid)))
    span_files = list(store.layout.rollout_dir(rid).rglob("spans.*.jsonl"))
    assert len(span_files) == 1
    calls = _synced_fds(monkeypatch)
    await store.update_attempt(rid, aid, status=status)  # type: ignore[arg-type]
    assert len(calls) == 1
    assert os.path.samefile(f"/proc/self/fd/{calls[0]}", span_files[0])
    store.close()


async def test_on_a_local_filesystem_nothing_is_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(tmp_path, monkeypatch, network=False)
    await store.enqueue_rollout(input=1)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    await store.add_span(make_span(rid, aid, await store.get_next_span_sequence_id(rid, aid)))
    calls = _synced_fds(monkeypatch)
    await store.update_attempt(rid, aid, status="succeeded")
    assert calls == []
    store.close()


async def test_an_attempt_without_spans_from_this_process_flushes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _open(tmp_path, monkeypatch, network=True)
    await store.enqueue_rollout(input=1)
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    calls = _synced_fds(monkeypatch)
    await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="succeeded")
    assert calls == []
    store.close()
