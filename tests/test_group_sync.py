"""Group commit (store_fs/_disk/group_sync.py): threads syncing one path at once share
syncs, each returns only after a sync that began after its call, different paths do not
wait for each other, a failed sync is never taken for success, and a forked child starts
clean."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from store_fs import EnqueueRolloutRequest, FileStore
from store_fs._disk import group_sync
from store_fs._disk.group_sync import GroupSync


class SlowFlush:
    """A flush that takes ``seconds`` and records when each one started."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.started: list[tuple[str, float]] = []
        self.finished: list[tuple[str, float, float]] = []  # (path, started, finished)

    def __call__(self, path: str) -> None:
        start = time.monotonic()
        with self.lock:
            self.started.append((path, start))
        time.sleep(self.seconds)
        with self.lock:
            self.finished.append((path, start, time.monotonic()))


def _run_together(count: int, target: object) -> list[BaseException | None]:
    errors: list[BaseException | None] = [None] * count
    barrier = threading.Barrier(count)

    def body(i: int) -> None:
        barrier.wait()
        try:
            target(i)  # type: ignore[operator]
        except BaseException as err:  # recorded for the test to look at
            errors[i] = err

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def _until_registered(group: GroupSync, path: str, count: int) -> None:
    """Block (in a flush) until ``count`` callers have asked to sync ``path``: a loaded machine
    may start threads late, and the tests must not depend on when."""
    deadline = time.monotonic() + 20
    while group._rounds[path].requested < count:
        assert time.monotonic() < deadline, "the threads never all called sync"
        time.sleep(0.001)


def test_threads_on_one_path_share_syncs_and_each_waits_for_one_begun_after_its_call() -> None:
    flush = SlowFlush(0.01)
    group: GroupSync

    def first_waits_for_everyone(path: str) -> None:
        if not flush.started:
            _until_registered(group, path, 16)
        flush(path)

    group = GroupSync(first_waits_for_everyone)
    calls: list[tuple[float, float]] = [(0.0, 0.0)] * 16

    def call(i: int) -> None:
        asked = time.monotonic()
        group.sync("/log")
        calls[i] = (asked, time.monotonic())

    assert _run_together(16, call) == [None] * 16
    # The first sync began before fifteen of the writes, so it covers one caller; the second,
    # begun after all of them, covers the fifteen others (16 syncs without group commit).
    assert len(flush.finished) == 2, flush.finished
    for asked, returned in calls:
        # Some whole sync ran between this call and its return.
        assert any(asked <= start and end <= returned for _, start, end in flush.finished)


def test_different_paths_do_not_wait_for_each_other() -> None:
    release = threading.Event()

    def flush(path: str) -> None:
        if path == "/slow":
            assert release.wait(10)

    group = GroupSync(flush)
    slow = threading.Thread(target=group.sync, args=("/slow",))
    slow.start()
    try:
        started = time.monotonic()
        group.sync("/fast")  # would hang if paths shared rounds
        assert time.monotonic() - started < 5
        assert slow.is_alive()
    finally:
        release.set()
        slow.join(10)


def test_a_failed_sync_fails_every_caller_it_may_have_carried_and_later_ones_sync_afresh() -> None:
    """Linux reports a failed writeback to one fsync only: a caller whose write the failed sync
    may have carried must fail too, not sync again and hear that all is well."""
    flush = SlowFlush(0.0)
    group: GroupSync

    def fails_once(path: str) -> None:
        if not flush.started:
            _until_registered(group, path, 8)
            flush(path)
            raise OSError(5, "Input/output error")
        flush(path)

    group = GroupSync(fails_once)
    errors = _run_together(8, lambda i: group.sync("/log"))
    assert len(flush.finished) == 1
    assert all(isinstance(e, OSError) and e.errno == 5 for e in errors), errors
    group.sync("/log")  # a caller after the failure: a new sync, which succeeds
    assert len(flush.finished) == 2
    assert group._rounds == {}


class _LockProxy:
    """A re-entrant lock that a test can slow down or break at the calls GroupSync makes."""

    def __init__(self) -> None:
        self.real = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self.real.acquire(blocking, timeout)

    def release(self) -> None:
        self.real.release()

    def _is_owned(self) -> bool:
        owned: bool = getattr(self.real, "_is_owned")()  # noqa: B009
        return owned

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _SlowToWake(_LockProxy):
    """Thread ``late`` takes the lock (back, after a wait) only once ``hold`` is cleared: a caller
    that is slow to wake up on a loaded machine."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.late: threading.Thread | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        while threading.current_thread() is self.late and self.hold.is_set():
            time.sleep(0.001)
        return super().acquire(blocking, timeout)


def test_a_success_after_a_failure_does_not_clear_the_callers_the_failure_carried() -> None:
    """A fails; before B (registered during A's sync) wakes, C comes and syncs successfully on a
    fresh descriptor, after the kernel has reported the error. B must still fail."""
    flushes: list[str] = []
    fail_now = threading.Event()

    def flush(path: str) -> None:
        flushes.append(path)
        if len(flushes) == 1:
            assert fail_now.wait(10)
            raise OSError(5, "writeback failed")

    group = GroupSync(flush)
    lock = _SlowToWake()
    group._lock = lock  # type: ignore[assignment]
    results: dict[str, str] = {}

    def call(name: str) -> None:
        try:
            group.sync("/log")
            results[name] = "ok"
        except OSError as err:
            results[name] = f"OSError {err.errno}"

    a = threading.Thread(target=call, args=("A",))
    a.start()
    _until_flushed = time.monotonic() + 10
    while not flushes:
        assert time.monotonic() < _until_flushed
        time.sleep(0.001)
    b = threading.Thread(target=call, args=("B",))
    lock.late = b
    b.start()
    _until_registered(group, "/log", 2)
    lock.hold.set()  # B will be slow to take the lock back after A's failure wakes it
    fail_now.set()
    a.join(10)
    c = threading.Thread(target=call, args=("C",))
    c.start()
    c.join(10)
    lock.hold.clear()
    b.join(10)
    assert results == {"A": "OSError 5", "C": "ok", "B": "OSError 5"}, results
    assert len(flushes) == 2


class _InterruptAfter(_LockProxy):
    """Raises KeyboardInterrupt in thread ``victim`` right after its ``nth`` ``op`` ("acquire" or
    "release") returns: where Python may run a signal handler."""

    def __init__(self, op: str, nth: int) -> None:
        super().__init__()
        self.op, self.nth, self.count = op, nth, 0
        self.victim: threading.Thread | None = None

    def _after(self, op: str) -> None:
        if op == self.op and threading.current_thread() is self.victim:
            self.count += 1
            if self.count == self.nth:
                raise KeyboardInterrupt

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = super().acquire(blocking, timeout)
        self._after("acquire")
        return got

    def release(self) -> None:
        super().release()
        self._after("release")


@pytest.mark.parametrize(("op", "nth"), [("release", 1), ("acquire", 2)])
def test_an_interrupt_right_after_a_lock_call_leaves_nobody_stuck(op: str, nth: int) -> None:
    """release #1: the flushing thread lets the lock go; acquire #2: it takes it back."""
    flushing = threading.Event()

    def flush(path: str) -> None:
        flushing.set()
        time.sleep(0.2)

    group = GroupSync(flush)
    lock = _InterruptAfter(op, nth)
    group._lock = lock  # type: ignore[assignment]
    results: dict[str, str] = {}

    def call(name: str, after: threading.Event | None = None) -> None:
        if after is not None:
            after.wait(2)
        try:
            group.sync("/log")
            results[name] = "ok"
        except BaseException as err:  # the interrupt, or a failed sync
            results[name] = type(err).__name__

    a = threading.Thread(target=call, args=("A",))
    b = threading.Thread(target=call, args=("B", flushing))
    lock.victim = a
    a.start()
    b.start()
    a.join(10)
    b.join(10)
    assert not a.is_alive(), "the interrupted thread hung"
    assert not b.is_alive(), "the other caller hung"
    assert results["A"] == "KeyboardInterrupt", results
    assert results["B"] in ("ok", "OSError"), results
    assert group._rounds == {}
    assert lock._is_owned() is False


CTRL_C_IN_A_FLUSH = r"""
import os, signal, sys, threading, time
from store_fs._disk.group_sync import GroupSync

group = None
waiter_in = threading.Event()
hog_has_lock = threading.Event()

def flush(path):
    if threading.current_thread() is threading.main_thread():
        waiter_in.wait(5)  # a second thread waits for the next round
        def hog():  # another thread holds the lock when the flush ends, for 2 s
            with group._lock:
                hog_has_lock.set()
                time.sleep(2.0)
        threading.Thread(target=hog, daemon=True).start()
        hog_has_lock.wait(5)
        # Ctrl-C while the flushing thread waits to take the lock back.
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()

group = GroupSync(flush)

def waiter():
    time.sleep(0.1)
    waiter_in.set()
    group.sync("/log")
    sys.stdout.write("waiter returned\n")

w = threading.Thread(target=waiter, daemon=True)
w.start()
try:
    group.sync("/log")
except KeyboardInterrupt:
    sys.stdout.write("main interrupted\n")
w.join(10)
sys.stdout.write("waiter blocked\n" if w.is_alive() else "waiter done\n")
"""


def test_ctrl_c_while_a_flush_retakes_the_lock_leaves_no_waiter_stuck(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_IN_A_FLUSH], capture_output=True, text=True, timeout=60, check=False
    )
    lines = done.stdout.splitlines()
    # Both threads end (in either order), and then the waiter is found done, not blocked.
    assert sorted(lines[:2]) == ["main interrupted", "waiter returned"], done
    assert lines[2:] == ["waiter done"], done


def test_a_forked_child_starts_with_no_sync_in_flight() -> None:
    """A child forked while another thread is inside a directory sync syncs on its own."""
    release = threading.Event()
    entered = threading.Event()
    real = group_sync.DIRECTORIES._flush

    def stuck(path: str) -> None:
        entered.set()
        assert release.wait(10)

    group_sync.DIRECTORIES._flush = stuck
    holder = threading.Thread(target=group_sync.DIRECTORIES.sync, args=("/stuck",))
    holder.start()
    try:
        assert entered.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: the round the parent's thread has in flight must not block it
            code = 1
            try:
                group_sync.DIRECTORIES._flush = lambda path: None
                group_sync.DIRECTORIES.sync("/stuck")
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 10
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung on its parent's sync")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        holder.join(10)
        group_sync.DIRECTORIES._flush = real


def test_concurrent_durable_writes_share_the_index_and_queue_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads of one process (as the server's) dequeuing on an fsync store: the rollout
    index log and ``queue/`` directories are synced fewer times than there were writes, and
    every rollout is claimed once with its index entry in place."""
    store = FileStore(tmp_path / "store", durability="fsync")

    requests = [EnqueueRolloutRequest(input=i) for i in range(64)]
    rollouts = asyncio.run(store.enqueue_many_rollouts(requests))
    counts: dict[str, int] = {}
    lock = threading.Lock()
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def counting(real: object) -> object:
        def sync(fd: int) -> None:
            name = os.readlink(f"/proc/self/fd/{fd}")
            with lock:
                counts[name] = counts.get(name, 0) + 1
            time.sleep(0.002)  # a disk's flush: long enough for callers to meet
            real(fd)  # type: ignore[operator]

        return sync

    monkeypatch.setattr(os, "fsync", counting(real_fsync))
    monkeypatch.setattr(os, "fdatasync", counting(real_fdatasync))
    claimed: list[str] = []

    def worker(i: int) -> None:
        while True:
            got = asyncio.run(store.dequeue_rollout(worker_id=f"w{i}"))
            if got is None:
                return
            with lock:
                claimed.append(got.rollout_id)

    assert _run_together(8, worker) == [None] * 8
    monkeypatch.undo()
    assert sorted(claimed) == sorted(r.rollout_id for r in rollouts)
    index_syncs = sum(n for name, n in counts.items() if "/index/rollouts/" in name)
    claimed_dir_syncs = counts.get(str(store.layout.root / "queue" / "claimed"), 0)
    assert 0 < index_syncs < 64, counts
    assert 0 < claimed_dir_syncs < 64, counts
    stats = asyncio.run(store.statistics())
    assert stats["total_rollouts"] == 64
    running = asyncio.run(store.query_rollouts(status_in=["preparing"]))
    assert len(running) == 64  # every index entry is there: listings by status agree
    assert store.check() == []


def test_a_batch_syncs_each_directory_and_log_once_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``enqueue_many_rollouts`` on an fsync store defers the syncs of ``queue/pending/`` and of
    its index log to the end of the batch (fsio.syncs_deferred): each is synced once for twenty
    rollouts, while each record is still synced before its index line is written."""
    store = FileStore(tmp_path / "store", durability="fsync")
    asyncio.run(store.enqueue_rollout({"warm": True}))  # shards and logs of a first rollout exist
    synced: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def counting(real: Any) -> Any:
        def sync(fd: int) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        return sync

    monkeypatch.setattr(os, "fsync", counting(real_fsync))
    monkeypatch.setattr(os, "fdatasync", counting(real_fdatasync))
    batch = [EnqueueRolloutRequest(input=i) for i in range(20)]
    rollouts = asyncio.run(store.enqueue_many_rollouts(batch))
    monkeypatch.undo()
    pending = str(store.layout.pending)
    assert synced.count(pending) == 1
    assert len([p for p in synced if "/index/rollouts/" in p]) == 1
    for rollout in rollouts:  # each record's own syncs still happen
        history = store.layout.history_dir(rollout.rollout_id)
        assert synced.count(str(history)) == 1
        assert any(p.startswith(str(history) + "/.") for p in synced)  # the revision's content
    # The records' directories are synced as they are made, the index log once after them all.
    index_sync = next(i for i, p in enumerate(synced) if "/index/rollouts/" in p)
    last_history = max(i for i, p in enumerate(synced) if p.endswith("/history"))
    assert last_history < index_sync
    assert len(synced) < 8 * 20  # each rollout synced 8 times when synced one by one


def test_deferred_syncs_run_once_at_the_end_of_the_block_even_after_an_error() -> None:
    from store_fs._disk import fsio

    ran: list[tuple[str, str]] = []
    real_dirs, real_files = group_sync.DIRECTORIES._flush, group_sync.FILES._flush
    group_sync.DIRECTORIES._flush = lambda p: ran.append(("dir", p))
    group_sync.FILES._flush = lambda p: ran.append(("file", p))

    def failing_batch() -> None:
        with fsio.syncs_deferred("/a", "/log"):
            fsio.fsync_dir("/a")
            fsio.sync_data("/log")
            fsio.fsync_dir("/a")
            fsio.fsync_dir("/b")  # not deferred: synced at once
            assert ran == [("dir", "/b")]
            raise RuntimeError("the batch failed halfway")

    try:
        with pytest.raises(RuntimeError, match="halfway"):
            failing_batch()
        assert ran == [("dir", "/b"), ("dir", "/a"), ("file", "/log")]
        fsio.fsync_dir("/a")  # outside a block: at once
        assert ran[-1] == ("dir", "/a")
        with fsio.syncs_deferred("/a"), pytest.raises(RuntimeError, match="nest"), fsio.syncs_deferred("/b"):
            pass
    finally:
        group_sync.DIRECTORIES._flush, group_sync.FILES._flush = real_dirs, real_files
