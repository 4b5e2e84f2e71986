"""FileStore.check: finds half-finished work and damage; fix repairs only what is safe."""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

from store_fs import FileStore, Span
from store_fs._disk import fsio
from store_fs._disk.codec import loads
from store_fs._disk.queue_tokens import ClaimToken


def _span(rid: str, aid: str, seq: int) -> Span:
    return Span.from_attributes(attributes={"k": seq}, rollout_id=rid, attempt_id=aid, sequence_id=seq)


async def test_clean_store_has_no_problems(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    a = await store.dequeue_rollout()
    assert a is not None
    await store.add_span(_span(r.rollout_id, a.attempt.attempt_id, 1))
    await store.update_attempt(r.rollout_id, a.attempt.attempt_id, status="succeeded")
    assert store.check() == []


async def test_finds_and_fixes_half_finished_work(store: FileStore) -> None:
    done = await store.enqueue_rollout(input="done")
    queued = await store.enqueue_rollout(input="queued")
    a = await store.dequeue_rollout()
    assert a is not None
    assert a.rollout_id == done.rollout_id
    aid = a.attempt.attempt_id
    await store.add_span(_span(done.rollout_id, aid, 1))
    # A committer that renamed its token to done/ and died before updating the record.
    entry = store._queue.settle(ClaimToken(done.rollout_id, 1, aid), "done", "succeeded")
    assert entry is not None
    # A torn span line, a stale mirror, a lost pending token, an old temp file, an orphan token.
    span_file = next(store._engine.attempt_dir(a.attempt).glob("spans.*.jsonl"))
    with open(span_file, "ab") as f:
        f.write(b'{"half": ')
    mirror = store.layout.mirror_file(queued.rollout_id)
    mirror.unlink()  # replaced by a stale copy (as an older build wrote it)
    mirror.write_text("{}\n")
    for token in store._queue.list_pending():
        store._queue.discard_pending(token)
    tmp = store.layout.rollouts / ".leftover.json.x.tmp"
    tmp.write_text("x")
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    store._queue.publish_pending("ro-000000000000", 1)

    kinds = sorted(p.kind for p in store.check(grace=0))  # as after a crash, nothing running
    assert kinds == ["not-queued", "orphan-pending", "stale-mirror", "temp-file", "unapplied-decision"]

    fixed = store.check(fix=True, grace=0)
    assert all(p.fixed for p in fixed)
    # The torn tail shows once the attempt is no longer live, i.e. after its decision is applied.
    assert "torn-tail" in {p.kind for p in fixed}
    assert store.check() == []
    rollout = await store.get_rollout_by_id(done.rollout_id)
    assert rollout is not None
    assert rollout.status == "succeeded"
    again = await store.dequeue_rollout()
    assert again is not None
    assert again.rollout_id == queued.rollout_id
    assert mirror.read_text() != "{}\n"
    assert len(await store.query_spans(done.rollout_id)) == 1


async def test_corrupt_record_is_reported_not_touched(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    head = store.layout.history_dir(r.rollout_id) / "00000001.json"
    head.write_bytes(b'{"rollout_id": ')
    problems = store.check(fix=True)
    assert [p.kind for p in problems] == ["corrupt-record"]
    assert not problems[0].fixed
    assert head.read_bytes() == b'{"rollout_id": '


async def test_rollout_json_links_to_the_newest_read_only_revision(store: FileStore) -> None:
    rollout = await store.enqueue_rollout(input={"q": 1})
    attempted = await store.dequeue_rollout()
    assert attempted is not None
    mirror = store.layout.mirror_file(rollout.rollout_id)
    history = store.layout.history_dir(rollout.rollout_id)
    newest = max(history.glob("*.json"))
    assert mirror.samefile(newest)  # a hard link: no inode of its own
    assert loads(mirror.read_bytes())["status"] == "preparing"
    # Revisions are immutable: nobody may write through the link into history.
    assert all(p.stat().st_mode & 0o777 == 0o444 for p in history.glob("*.json"))
    assert store.check() == []


async def test_a_symlink_mirror_from_an_older_build_is_kept_while_current(store: FileStore) -> None:
    rollout = await store.enqueue_rollout(input={"q": 1})
    mirror = store.layout.mirror_file(rollout.rollout_id)
    mirror.unlink()
    mirror.symlink_to("history/00000001.json")  # what builds before the hard link wrote
    assert store.check() == []
    assert await store.dequeue_rollout() is not None  # revision 2: the next writer re-links it
    assert not mirror.is_symlink()
    assert loads(mirror.read_bytes())["status"] == "preparing"
    mirror.unlink()
    mirror.symlink_to("history/00000001.json")  # stale now
    assert [p.kind for p in store.check()] == ["stale-mirror"]
    assert [p.fixed for p in store.check(fix=True)] == [True]
    assert mirror.samefile(store.layout.history_dir(rollout.rollout_id) / "00000002.json")


async def test_a_corrupt_record_with_a_live_claim_is_reported(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    assert await store.dequeue_rollout() is not None
    newest = max(store.layout.history_dir(r.rollout_id).glob("*.json"))
    newest.chmod(0o644)
    newest.write_bytes(b'{"rollout_id": ')
    assert [p.kind for p in store.check()] == ["corrupt-record"]


async def test_a_copy_of_the_newest_revision_is_a_good_mirror(store: FileStore) -> None:
    r = await store.enqueue_rollout(input=1)
    mirror = store.layout.mirror_file(r.rollout_id)
    data = mirror.read_bytes()
    mirror.unlink()
    mirror.write_bytes(data)  # what cp -r, rsync without -H or git make of a hard link
    assert store.check() == []


async def test_a_revision_another_user_wrote_gets_a_symlink_mirror(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await store.enqueue_rollout(input=1)

    def protected(*args: object, **kwargs: object) -> None:  # fs.protected_hardlinks refusing
        raise PermissionError(errno.EPERM, "Operation not permitted")

    assert await store.dequeue_rollout() is not None
    mirror = store.layout.mirror_file(r.rollout_id)
    mirror.unlink()
    # The writer of a revision renames its own temporary file onto rollout.json; repairing
    # a mirror links the revision instead, which the kernel refuses for another user's file.
    monkeypatch.setattr(fsio, "publish_link", protected)
    assert [(p.kind, p.fixed) for p in store.check(fix=True)] == [("stale-mirror", True)]
    assert os.readlink(mirror) == "history/00000002.json"
    assert store.check() == []


async def test_a_mirror_that_cannot_be_updated_fails_no_update(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    r = await store.enqueue_rollout(input=1)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio.Staged, "rename_onto", full)
    with caplog.at_level(logging.WARNING, logger="store_fs._disk.rollout_history"):
        attempted = await store.dequeue_rollout()  # the revision is the truth: the call succeeds
    assert attempted is not None
    assert "rollout.json" in caplog.text
    monkeypatch.undo()
    assert [p.kind for p in store.check()] == ["stale-mirror"]
    assert [p.fixed for p in store.check(fix=True)] == [True]
    assert store.check() == []
    assert r.rollout_id == attempted.rollout_id


async def test_a_resources_id_without_a_version_is_neither_counted_nor_silent(tmp_path: Path) -> None:
    """The directory an add makes before its first version (a kill in between leaves it) was
    counted by statistics() though no listing showed it, and check said nothing (found by an
    adversarial pass). Old enough, check names it; it is never counted."""
    from store_fs import PromptTemplate

    store = FileStore(tmp_path / "store")
    await store.add_resources({"p": PromptTemplate(template="Q: {q}", engine="f-string")})
    empty = store.layout.resource_id_dir("rs-00000000dead")
    empty.mkdir(parents=True)
    assert (await store.statistics())["total_resources"] == len(await store.query_resources()) == 1
    assert store.check() == []  # new: an add in flight
    old = time.time() - 3600
    os.utime(empty, (old, old))
    assert [(p.kind, p.path) for p in store.check()] == [("empty-resources-id", str(empty))]
    store.close()


@pytest.mark.parametrize("log", ["index", "events", "workers"])
async def test_a_log_line_cut_short_by_a_full_disk_is_taken_back(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, log: str
) -> None:
    """A full disk writes what fits of a line, then refuses the rest: the process kept its log
    open and glued its next line to the fragment, a corrupt line in the rollout index, the
    change feed or a worker log (found by an adversarial pass on a 4 MiB tmpfs). The bytes a
    failed append wrote are taken back."""
    r = await store.enqueue_rollout(input=1)
    await store.update_worker("w1", heartbeat_stats={"n": 0})
    real_write = os.write

    def half_then_full(fd: int, data: bytes | memoryview) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if f"/{log}/" in path and path.endswith(".jsonl"):
            if len(data) > 1:
                return real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    async def wrote_half_then_failed(call: Awaitable[object]) -> None:
        monkeypatch.setattr(os, "write", half_then_full)
        raised: list[int | None] = []
        try:
            await call
        except OSError as err:  # the index's and the feed's failures are logged, not raised
            raised.append(err.errno)
        finally:
            monkeypatch.setattr(os, "write", real_write)
        assert raised in ([], [errno.ENOSPC])

    if log == "workers":
        await wrote_half_then_failed(store.update_worker("w1", heartbeat_stats={"n": 1}))
        await store.update_worker("w1", heartbeat_stats={"n": 2})
        worker = await store.get_worker_by_id("w1")
        assert worker is not None
        assert worker.heartbeat_stats == {"n": 2}
    elif log == "events":  # status changes make event lines
        await wrote_half_then_failed(store.dequeue_rollout())
        await store.update_rollout(r.rollout_id, status="cancelled")
        assert [e["status"] for e in map(json.loads, _lines(store.layout.events))][-1] == "cancelled"
    else:
        await wrote_half_then_failed(store.update_rollout(r.rollout_id, metadata={"i": 1}))
        await store.update_rollout(r.rollout_id, metadata={"i": 2})
    problems = [p.kind for p in store.check()]
    assert [k for k in problems if k.startswith("corrupt")] == [], problems
    for logs in (store.layout.rollout_index, store.layout.events):
        for line in _lines(logs):
            json.loads(line)


def _lines(directory: Path) -> list[bytes]:
    return [line for path in sorted(directory.glob("*.jsonl")) for line in path.read_bytes().splitlines()]
