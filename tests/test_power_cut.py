"""The store in ``durability="fsync"`` mode loses nothing it acknowledged when the power goes (issue 22).

The store lives on ``tests/crash_fuse.py``: a FUSE mount that keeps what was not fsynced
(file data since the file's last fsync, directory entries since their directory's last
fsync) in a volatile layer and, at a simulated power cut, throws it away, persisting a
random subset (in a random order) of the unsynced namespace operations and a random
prefix of unsynced data, as a real disk may have written back some of them. The mount
is then mounted afresh ("reboot"), showing the durable state only.

* The crash filesystem itself: fixed cases, and random sequences of file and namespace
  operations checked against :class:`Oracle` (the durability rules, followed by name).
* Each call alone (``test_each_call_is_durable_when_it_returns``): a store made durable by
  sync(2), one call, a cut that lets nothing unsynced through, reboot: the call's effect
  must be there.
* The loop: an algorithm process enqueueing and runner processes dequeuing, adding spans
  and completing (spawned interpreters, ``tests/power_cut_workers.py``), run to a random
  point, all SIGKILLed, power cut, reboot. On the rebooted mount: every call that returned
  before the cut (journalled on the real disk) is there (rollouts enqueued, attempts
  handed out and the status they were given, spans added); ``agl --store DIR check`` (the
  real CLI) is clean, or ``agl check --fix`` (and, for claims check leaves to the reaper,
  one reaper scan) repairs every problem without losing any of the above; every rollout,
  its attempts and its spans can be read. Two cut modes (``MODES``): "random" lets half of
  the unsynced operations and data through; "journal" all unsynced namespace operations
  (a journal committed just before the power went) and part of the unsynced data.

The tests found durability bugs, since fixed: store creation, ``enqueue_rollout`` (its
directories), ``add_span`` (the names of a new attempt directory and span log) and
``get_next_span_sequence_id`` (the counter's rename) returned before their change was
durable; and ``check --fix`` left what an enqueue cut short leaves. Each has its test here.

The default suite cuts at a few points (seconds each); ``pytest -m stress
tests/test_power_cut.py`` at 50 per mode. Skipped (with the reason) where FUSE cannot be
mounted: no ``/dev/fuse``, no ``fusermount3``/``fusermount``, no libfuse or no ``mfusepy``
(``tests/two_hosts.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import power_cut_workers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mp_workers import make_span
from test_multiprocess import children
from two_hosts import fusermount, unavailable_reason

from store_fs import EnqueueRolloutRequest, FileStore, PromptTemplate, init_store
from store_fs._disk.context import Durability
from store_fs._disk.ids import new_rollout_id
from store_fs._disk.layout import Layout
from store_fs._disk.removal import RemovalRun, trashed_rollouts

CRASH_FUSE = Path(__file__).with_name("crash_fuse.py")
CONTROL = ".crash_fuse"
AGL = Path(sys.executable).with_name("agl")
RUNNERS = 2
SPANS = 3


# -- the crash mount ---------------------------------------------------------------------
def _mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.resolve())
    with open("/proc/self/mounts") as f:
        return any(len(line.split()) > 1 and line.split()[1] == target for line in f)


@dataclass
class CrashMount:
    """One ``crash_fuse.py`` process over ``backing``, mounted on ``path`` (remountable)."""

    backing: Path
    path: Path
    state: Path
    log: Path
    seed: int = 0
    persist: float = 0.5
    keep_data: float = 0.5
    proc: subprocess.Popen[bytes] | None = None

    def mount(self, startup_timeout: float = 15.0) -> None:
        argv = [sys.executable, str(CRASH_FUSE), str(self.backing), str(self.path)]
        argv += [f"--state={self.state}", f"--seed={self.seed}"]
        argv += [f"--persist-fraction={self.persist}", f"--keep-data-fraction={self.keep_data}"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + startup_timeout
        while not (_mounted(self.path) and (self.path / CONTROL).exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(
                    f"crash_fuse did not mount {self.path}:\n{self.log.read_text(errors='replace')}"
                )
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / CONTROL).read_bytes())
        return data

    def command(self, text: str) -> None:
        fd = os.open(self.path / CONTROL, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def cut(self) -> dict[str, Any]:
        """The power cut; what it threw away and what it let through (``last_cut``)."""
        self.command("cut")
        summary: dict[str, Any] = self.status()["last_cut"]
        return summary

    def reboot(self) -> None:
        self.unmount()
        self.mount()

    def unmount(self, timeout: float = 10.0) -> None:
        tool = fusermount()
        if tool is not None and _mounted(self.path):
            done = subprocess.run([tool, "-u", str(self.path)], capture_output=True, check=False)
            if done.returncode != 0 and _mounted(self.path):
                subprocess.run([tool, "-u", "-z", str(self.path)], capture_output=True, check=False)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)


@pytest.fixture
def crash_mount(tmp_path: Path) -> Iterator[Callable[..., CrashMount]]:
    """Factory: ``crash_mount(seed, persist=, keep_data=)`` mounts a fresh crash filesystem (the
    fractions of unsynced operations and data the cut lets through); all are unmounted at the end."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    made: list[CrashMount] = []

    def make(seed: int, persist: float = 0.5, keep_data: float = 0.5) -> CrashMount:
        base = tmp_path / f"crash{len(made)}"
        for sub in ("backing", "mnt", "state"):
            (base / sub).mkdir(parents=True)
        mount = CrashMount(
            base / "backing", base / "mnt", base / "state", base / "fuse.log", seed, persist, keep_data
        )
        made.append(mount)
        mount.mount()
        return mount

    try:
        yield make
    finally:
        for mount in made:
            mount.unmount()


# -- what must have survived -------------------------------------------------------------
@dataclass
class Acknowledged:
    """The calls the workers' journals say returned before the cut."""

    enqueued: set[str] = field(default_factory=set)
    dequeued: set[tuple[str, str]] = field(default_factory=set)
    spans: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    completed: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lines: int = 0

    @classmethod
    def read(cls, journals: list[Path]) -> Acknowledged:
        out = cls()
        for path in journals:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                out.add(json.loads(line))
        return out

    def add(self, e: dict[str, Any]) -> None:
        self.lines += 1
        key = (e.get("rollout_id", ""), e.get("attempt_id", ""))
        if e["event"] == "enqueued":
            self.enqueued.add(e["rollout_id"])
        elif e["event"] == "dequeued":
            self.dequeued.add(key)
        elif e["event"] == "span":
            self.spans.setdefault(key, {})[e["span_id"]] = e["sequence_id"]
        elif e["event"] == "completed":
            self.completed[key] = e["status"]
        elif e["event"] == "error":
            self.errors.append(e["error"])

    def progress(self) -> int:
        """Calls acknowledged so far (each one a journal line)."""
        return self.lines


def journal_lines(journals: list[Path]) -> int:
    total = 0
    for path in journals:
        with contextlib.suppress(FileNotFoundError):
            total += path.read_bytes().count(b"\n")
    return total


async def _missing(store: FileStore, acked: Acknowledged) -> list[str]:
    """Acknowledged calls whose effect is not in the store, and whatever cannot be read."""
    lost: list[str] = []
    rollouts = {r.rollout_id: r for r in await store.query_rollouts()}
    lost += [f"enqueued rollout {rid} is gone" for rid in sorted(acked.enqueued - rollouts.keys())]
    attempts: dict[tuple[str, str], Any] = {}
    spans: dict[tuple[str, str], dict[str, int]] = {}
    for rid in rollouts:
        try:
            for attempt in await store.query_attempts(rid):
                attempts[(rid, attempt.attempt_id)] = attempt
            for span in await store.query_spans(rid):
                spans.setdefault((rid, span.attempt_id), {})[span.span_id] = span.sequence_id
        except Exception as err:  # any failure to read a rollout is the finding
            lost.append(f"rollout {rid} is unreadable: {type(err).__name__}: {err}")
    for key in sorted(acked.dequeued - attempts.keys()):
        lost.append(f"attempt {key} handed out by dequeue_rollout is gone")
    for key, status in sorted(acked.completed.items()):
        got = attempts.get(key)
        if got is not None and got.status != status:
            lost.append(f"attempt {key} was set {status}, reads {got.status}")
        if status == "succeeded" and key[0] in rollouts and rollouts[key[0]].status != "succeeded":
            lost.append(f"rollout {key[0]} of succeeded attempt {key[1]} reads {rollouts[key[0]].status}")
    for key, added in sorted(acked.spans.items()):
        have = spans.get(key, {})
        gone = {sid: seq for sid, seq in added.items() if have.get(sid) != seq}
        if gone:
            lost.append(
                f"{len(gone)} of {len(added)} spans of attempt {key} are gone: {sorted(gone.values())}"
            )
    return lost


def missing(root: Path, acked: Acknowledged) -> list[str]:
    store = FileStore(root, create=False, watch_mode="poll", scan_debounce_seconds=3600)
    try:
        return asyncio.run(_missing(store, acked))
    finally:
        store.close()


def agl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI on the store ``root`` (JSON lines out)."""
    return subprocess.run(
        [str(AGL), "--store", str(root), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _problems(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode in (0, 7), f"agl check failed: {done.returncode}\n{done.stdout}{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _left_for_the_reaper(problem: dict[str, Any]) -> bool:
    return problem["kind"] == "orphan-claim" and "reaper" in problem["detail"]


def check_then_fix(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``agl check --fix`` (which reports every problem it finds, repaired or not); if claims are
    left to the reaper (a dequeue cut short: a claim with no attempt recorded), one reaper scan
    (no grace); then, if anything was found, ``agl check`` must say what is left (nothing, for a
    clean store). (problems found, problems left)."""
    found = _problems(agl(root, "check", "--fix", "--grace", "0"))  # nothing runs after the cut
    if not found:
        return [], []
    if any(_left_for_the_reaper(p) and not p["fixed"] for p in found):
        store = FileStore(root, create=False, claim_grace_seconds=0.0, watch_mode="poll")
        try:
            store.reap()
        finally:
            store.close()
    return found, _problems(agl(root, "check", "--grace", "0"))


# -- the scenario ------------------------------------------------------------------------
@dataclass
class CutReport:
    seed: int
    acked: Acknowledged
    cut: dict[str, Any]
    lost: list[str]
    lost_after_fix: list[str]
    check_problems: list[dict[str, Any]]
    check_left: list[dict[str, Any]]

    def __str__(self) -> str:
        a = self.acked
        return (
            f"seed {self.seed}: {len(a.enqueued)} enqueued, {len(a.dequeued)} dequeued, "
            f"{sum(len(s) for s in a.spans.values())} spans, {len(a.completed)} completed acknowledged; "
            f"cut dropped {self.cut.get('pending_ops')} unsynced namespace ops "
            f"(persisted {len(self.cut.get('persisted_ops', []))}), "
            f"{self.cut.get('dirty_files')} dirty files; "
            f"check found {sorted({p['kind'] for p in self.check_problems})}, "
            f"left {[p['kind'] for p in self.check_left]}"
        )


# How much the cut lets through: (fraction of unsynced namespace operations, of files with
# unsynced bytes, which keep a random prefix of them). "random": half of each. "journal":
# every namespace operation (a journal committed just before the power went, as ext4's is
# every few seconds), and half of the files keep part of their unsynced bytes.
MODES = {"random": (0.5, 0.5), "journal": (1.0, 0.5)}


def cut_loop_at_random_point(
    make_mount: Callable[..., CrashMount], seed: int, tmp_path: Path, mode: str = "random", most: int = 60
) -> CutReport:
    """Run the loop on a crash mount, cut the power after a random number (10 to ``most``) of
    acknowledged calls plus a random fraction of a second, reboot, and audit (:class:`CutReport`)."""
    rng = random.Random(seed)
    persist, keep_data = MODES[mode]
    mount = make_mount(seed, persist=persist, keep_data=keep_data)
    try:
        return _cut_loop(mount, rng, seed, tmp_path, most)
    finally:
        mount.unmount()


def _cut_loop(mount: CrashMount, rng: random.Random, seed: int, tmp_path: Path, most: int) -> CutReport:
    root = mount.path / "store"
    FileStore(root, durability="fsync").close()  # durable when it returns (tested below)
    journals = [tmp_path / f"journal-{seed}-{name}.jsonl" for name in ("algo", *map(str, range(RUNNERS)))]
    target = rng.randint(10, most)
    with children() as kids:
        kids.start(power_cut_workers.algorithm, str(root), str(journals[0]), rng.uniform(0.0, 0.05))
        for i in range(RUNNERS):
            kids.start(
                power_cut_workers.runner, str(root), str(journals[i + 1]), f"w{i}", SPANS, seed * 10 + i
            )
        deadline = time.monotonic() + 60
        while journal_lines(journals) < target and time.monotonic() < deadline:
            if any(not p.is_alive() for p in kids.procs):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        for proc in kids.procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for proc in kids.procs:
            proc.join(10)
    summary = mount.cut()
    mount.reboot()
    acked = Acknowledged.read(journals)
    assert not acked.errors, acked.errors[0]
    lost = missing(root, acked)
    found, left = check_then_fix(root)
    lost_after_fix = missing(root, acked)
    return CutReport(seed, acked, summary, lost, lost_after_fix, found, left)


def assert_survived(report: CutReport) -> None:
    assert report.acked.progress() > 0, f"nothing ran before the cut: {report}"
    assert not report.lost, f"{report}\n" + "\n".join(report.lost)
    assert not report.lost_after_fix, f"agl check --fix lost acknowledged data: {report}\n" + "\n".join(
        report.lost_after_fix
    )
    left = report.check_left
    assert not left, f"agl check --fix left problems: {report}\n" + "\n".join(map(str, left))


# -- the crash filesystem itself -----------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_crash_fs_keeps_only_what_was_fsynced(crash_mount: Callable[..., CrashMount]) -> None:
    """The semantics the power-cut tests rely on (a check of tests/crash_fuse.py), with the
    default write-back (half of what is unsynced may come back): what was synced must come
    back, each unsynced change may or may not; and the control file's counts and sync."""
    mount = crash_mount(1)
    m = mount.path
    (m / "d").mkdir()
    (m / "d" / "synced").write_bytes(b"abc")
    _fsync_path(m / "d" / "synced")
    _fsync_path(m / "d")
    _fsync_path(m)
    # Durable from here: d, d/synced = "abc". Everything below is volatile.
    with open(m / "d" / "synced", "ab") as f:
        f.write(b" more")
    (m / "d" / "new").write_bytes(b"data")
    _fsync_path(m / "d" / "new")  # its data, not its name
    os.utime(m / "d" / "synced")  # UTIME_NOW: the current time, not the epoch
    assert abs(os.stat(m / "d" / "synced").st_mtime - time.time()) < 60
    status = mount.status()
    assert status["pending_ops"] >= 1, status
    assert status["dirty_files"] >= 1, status
    mount.command("sync")
    assert mount.status()["pending_ops"] == 0
    # After sync(2) everything so far is durable; then one rename and one write stay volatile.
    os.rename(m / "d" / "new", m / "d" / "renamed")
    with open(m / "d" / "synced", "ab") as f:
        f.write(b"!")
    summary = mount.cut()
    with pytest.raises(OSError, match="Input/output error"):
        os.listdir(m / "d")  # no power: every request fails
    mount.reboot()
    names = sorted(os.listdir(m / "d"))
    assert names in (["new", "synced"], ["renamed", "synced"]), names
    assert (m / "d" / names[0]).read_bytes() == b"data"
    assert (m / "d" / "synced").read_bytes() in (b"abc more", b"abc more!"), summary
    assert summary["pending_ops"] == 1, summary
    assert summary["dirty_files"] == 1, summary


def test_crash_fs_unsynced_names_and_data_are_lost(crash_mount: Callable[..., CrashMount]) -> None:
    """Nothing unsynced let through: exactly the durable state comes back."""
    mount = crash_mount(2, persist=0.0, keep_data=0.0)
    m = mount.path
    (m / "kept").write_bytes(b"1")
    _fsync_path(m / "kept")
    _fsync_path(m)
    (m / "kept").write_bytes(b"22")  # truncated and rewritten, never synced
    (m / "nameless").write_bytes(b"x")
    _fsync_path(m / "nameless")  # data synced, its name never is
    (m / "orphan").mkdir()
    _fsync_path(m / "orphan")
    os.unlink(m / "kept")
    summary = mount.cut()
    mount.reboot()
    assert os.listdir(m) == ["kept"], summary
    assert (m / "kept").read_bytes() == b"1"
    assert summary["persisted_ops"] == []
    assert summary["kept_unsynced_bytes"] == 0


def test_crash_fs_lets_unsynced_operations_through_when_told(crash_mount: Callable[..., CrashMount]) -> None:
    """Every unsynced namespace operation persisted (``--persist-fraction 1``), with the order of
    operations on one name kept: the names come back as they were; unsynced data does not."""
    mount = crash_mount(4, persist=1.0, keep_data=0.0)
    m = mount.path
    (m / "a").mkdir()
    (m / "a" / "f").write_bytes(b"f")
    os.rename(m / "a" / "f", m / "a" / "g")
    os.link(m / "a" / "g", m / "a" / "h")
    (m / "a" / "f").write_bytes(b"second f")
    os.unlink(m / "a" / "g")
    (m / "b").mkdir()
    os.rename(m / "a" / "h", m / "b" / "h")
    mount.command("cut 7")
    mount.reboot()
    assert sorted(os.listdir(m)) == ["a", "b"]
    assert os.listdir(m / "a") == ["f"]
    assert os.listdir(m / "b") == ["h"]
    assert (m / "a" / "f").read_bytes() == b""
    assert (m / "b" / "h").read_bytes() == b""


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 2), st.sampled_from("xyz")), min_size=1, max_size=2)))
def test_cut_reorders_only_independent_operations(keys: list[list[tuple[int, str]]]) -> None:
    """The cut applies unsynced operations in a random order that keeps, for every name, the
    order of the operations on it (crash_fuse._ordered_sample)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import crash_fuse

    ops = [crash_fuse.PendingOp(i, "op", "", [(d, n, None) for d, n in k]) for i, k in enumerate(keys)]
    out = crash_fuse._ordered_sample(ops, random.Random(len(keys)))
    assert sorted(op.seq for op in out) == list(range(len(ops)))
    position = {op.seq: i for i, op in enumerate(out)}
    for a in ops:
        for b in ops[a.seq + 1 :]:
            if {(d, n) for d, n, _ in a.effects} & {(d, n) for d, n, _ in b.effects}:
                assert position[a.seq] < position[b.seq]


class Oracle:
    """The durable state of one directory by the rules of crash_fuse's docstring, kept by name:
    the reference the filesystem is checked against (nothing unsynced let through)."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}  # name -> inode (the oracle's numbering)
        self.content: dict[int, bytes] = {}
        self.durable_names: dict[str, int] = {}
        self.durable_content: dict[int, bytes] = {}
        self.inodes = 0

    def apply(self, d: Path, op: tuple[str, str, str, bytes]) -> None:
        """Do ``op`` in ``d`` and follow it (ops that would fail here are skipped)."""
        kind, a, b, data = op
        if kind == "write":  # open(O_CREAT | O_TRUNC) + write: the same file if the name exists
            (d / a).write_bytes(data)
            if a not in self.names:
                self.inodes += 1
                self.names[a] = self.inodes
            self.content[self.names[a]] = data
        elif kind == "append" and a in self.names:
            with open(d / a, "ab") as f:
                f.write(data)
            self.content[self.names[a]] += data
        elif kind == "fsync" and a in self.names:
            _fsync_path(d / a)
            self.durable_content[self.names[a]] = self.content[self.names[a]]
        elif kind == "rename" and a in self.names and a != b:
            os.rename(d / a, d / b)  # a no-op when both names are links to one file
            if self.names.get(b) != self.names[a]:
                self.names[b] = self.names.pop(a)
        elif kind == "link" and a in self.names and b not in self.names:
            os.link(d / a, d / b)
            self.names[b] = self.names[a]
        elif kind == "unlink" and a in self.names:
            os.unlink(d / a)
            del self.names[a]
        elif kind == "fsyncdir":
            _fsync_path(d)
            self.durable_names = dict(self.names)

    def expected(self) -> dict[str, bytes]:
        return {name: self.durable_content.get(ino, b"") for name, ino in self.durable_names.items()}


_NAMES = st.sampled_from(["a", "b", "c"])
_OPS = st.tuples(
    st.sampled_from(["write", "append", "fsync", "rename", "link", "unlink", "fsyncdir"]),
    _NAMES,
    _NAMES,
    st.binary(min_size=1, max_size=6),
)


def check_against_oracle(mount: CrashMount, max_examples: int) -> None:
    """Random sequences of writes, fsyncs, renames, links and unlinks in one directory (a fresh
    one per example, on ``mount``): after a cut that lets nothing unsynced through, the directory
    holds exactly what :class:`Oracle` (the rules, followed by name) says is durable, hard links
    included."""
    examples = [0]

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_OPS, max_size=14))
    def run(ops: list[tuple[str, str, str, bytes]]) -> None:
        examples[0] += 1
        d = mount.path / f"ex{examples[0]}"
        d.mkdir()
        mount.command("sync")
        oracle = Oracle()
        for op in ops:
            oracle.apply(d, op)
        mount.cut()
        mount.reboot()
        got = {name: (d / name).read_bytes() for name in sorted(os.listdir(d))}
        assert got == oracle.expected(), ops
        by_inode: dict[int, set[str]] = {}
        for name, ino in oracle.durable_names.items():
            by_inode.setdefault(ino, set()).add(name)
        for names in by_inode.values():
            first = min(names)
            assert all(os.path.samefile(d / first, d / other) for other in names), ops

    run()


def test_crash_fs_matches_the_durability_rules(crash_mount: Callable[..., CrashMount]) -> None:
    check_against_oracle(crash_mount(6, persist=0.0, keep_data=0.0), max_examples=5)


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_stress_crash_fs_matches_the_durability_rules(crash_mount: Callable[..., CrashMount]) -> None:
    check_against_oracle(crash_mount(6, persist=0.0, keep_data=0.0), max_examples=150)


# -- the store ---------------------------------------------------------------------------
def test_store_created_in_fsync_mode_survives_a_cut(crash_mount: Callable[..., CrashMount]) -> None:
    """``FileStore(root, durability="fsync")`` returned: the store is there after a power cut
    (nothing unsynced let through, so only what the store made durable counts)."""
    mount = crash_mount(3, persist=0.0, keep_data=0.0)
    root = mount.path / "store"
    FileStore(root, durability="fsync").close()
    mount.cut()
    mount.reboot()
    reopened = FileStore(root, create=False)
    assert reopened.durability == "fsync"  # the setting is part of what was made durable
    reopened.close()
    assert agl(root, "check").returncode == 0


def test_a_changed_durability_setting_survives_a_cut(crash_mount: Callable[..., CrashMount]) -> None:
    """``init_store(root, durability=...)`` returned on an existing store: the new setting is
    there after a power cut, and the file is whole."""
    mount = crash_mount(7, persist=0.0, keep_data=0.0)
    root = mount.path / "store"
    FileStore(root, durability="fsync").close()
    settings: tuple[Durability, ...] = ("process", "fsync", "process")
    for setting in settings:
        init_store(root, durability=setting)
        mount.cut()
        mount.reboot()
        reopened = FileStore(root, create=False)
        assert reopened.durability == setting
        reopened.close()


@dataclass
class CallCase:
    """One store call made durable or not: ``setup`` runs (then sync(2)), ``call`` runs and
    returns what ``verify`` must find in the store reopened after the cut."""

    setup: Callable[[FileStore], Any]
    call: Callable[[FileStore, Any], Any]
    verify: Callable[[FileStore, Any], Any]


async def _enqueued(store: FileStore) -> str:
    return (await store.enqueue_rollout(input={"task": 1})).rollout_id


async def _dequeued(store: FileStore) -> tuple[str, str]:
    await _enqueued(store)
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    return attempted.rollout_id, attempted.attempt.attempt_id


async def _nothing(store: FileStore) -> None:
    return None


async def _call_enqueue(store: FileStore, _: None) -> str:
    return await _enqueued(store)


async def _verify_enqueue(store: FileStore, rid: str) -> None:
    assert await store.get_rollout_by_id(rid) is not None, f"enqueued rollout {rid} is gone"


async def _call_enqueue_many(store: FileStore, _: None) -> list[str]:
    batch = [EnqueueRolloutRequest(input={"task": i}) for i in range(20)]
    return [r.rollout_id for r in await store.enqueue_many_rollouts(batch)]


async def _verify_enqueue_many(store: FileStore, rids: list[str]) -> None:
    # Each record, its queue token and its index line: listed as queued, and handed out.
    listed = {r.rollout_id for r in await store.query_rollouts(status_in=["queuing"])}
    assert listed == set(rids), f"queued after the cut: {sorted(listed)}, enqueued: {rids}"
    handed = []
    while (attempted := await store.dequeue_rollout(worker_id="w")) is not None:
        handed.append(attempted.rollout_id)
    assert handed == rids, f"handed out after the cut: {handed}, enqueued: {rids}"


async def _call_dequeue(store: FileStore, _: None) -> tuple[str, str]:
    attempted = await store.dequeue_rollout(worker_id="w")
    assert attempted is not None
    return attempted.rollout_id, attempted.attempt.attempt_id


async def _verify_dequeue(store: FileStore, ids: tuple[str, str]) -> None:
    rid, aid = ids
    assert aid in {a.attempt_id for a in await store.query_attempts(rid)}, f"attempt {aid} is gone"
    again = await store.dequeue_rollout(worker_id="w2")
    assert again is None, f"rollout {rid}, handed out before the cut, was handed out again"


async def _call_next_seq(store: FileStore, ids: tuple[str, str]) -> tuple[str, str, int]:
    return (*ids, await store.get_next_span_sequence_id(*ids))


async def _verify_next_seq(store: FileStore, got: tuple[str, str, int]) -> None:
    rid, aid, seq = got
    after = await store.get_next_span_sequence_id(rid, aid)
    assert after > seq, f"sequence id {seq} was handed out before the cut and {after} after it"


async def _call_add_span(store: FileStore, ids: tuple[str, str]) -> tuple[str, str, str]:
    span = make_span(*ids, await store.get_next_span_sequence_id(*ids))
    await store.add_span(span)
    return (*ids, span.span_id)


async def _verify_add_span(store: FileStore, got: tuple[str, str, str]) -> None:
    rid, aid, span_id = got
    assert span_id in {s.span_id for s in await store.query_spans(rid, aid)}, f"span {span_id} is gone"


async def _call_add_numbered_span(store: FileStore, ids: tuple[str, str]) -> tuple[str, str, int]:
    # A span that brings its own number, above the counter: the counter's rename that follows it
    # is not synced by itself (store_fs/_disk/span_log.py, ``bump``); the span line is.
    await store.add_span(make_span(*ids, 1000))
    return (*ids, 1000)


async def _verify_numbered_span(store: FileStore, got: tuple[str, str, int]) -> None:
    rid, aid, seq = got
    assert seq in {s.sequence_id for s in await store.query_spans(rid, aid)}, f"span {seq} is gone"
    after = await store.get_next_span_sequence_id(rid, aid)
    assert after > seq, f"span {seq} was stored before the cut and {after} was handed out after it"


async def _call_complete(store: FileStore, ids: tuple[str, str]) -> tuple[str, str]:
    await store.update_attempt(*ids, status="succeeded")
    return ids


async def _verify_complete(store: FileStore, ids: tuple[str, str]) -> None:
    rid, aid = ids
    attempts = {a.attempt_id: a.status for a in await store.query_attempts(rid)}
    assert attempts.get(aid) == "succeeded", attempts
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None
    assert rollout.status == "succeeded"


async def _resources(store: FileStore) -> str:
    return (
        await store.add_resources({"p": PromptTemplate(template="first {x}", engine="f-string")})
    ).resources_id


async def _call_add_resources(store: FileStore, _: str) -> str:
    added = await store.add_resources({"p": PromptTemplate(template="second {x}", engine="f-string")})
    return added.resources_id


async def _call_update_resources(store: FileStore, rid: str) -> str:
    await store.update_resources(rid, {"p": PromptTemplate(template="updated {x}", engine="f-string")})
    return rid


async def _verify_resources(store: FileStore, rid: str) -> None:
    # A power cut forgot the directories of the body and of the id's versions (never synced),
    # while the publication naming them survived: the latest resources read as none, or failed.
    got = await store.get_resources_by_id(rid)
    assert got is not None, f"resources {rid} are gone"
    latest = await store.get_latest_resources()
    assert latest is not None
    assert (latest.resources_id, latest.version) == (rid, got.version)


async def _finished(store: FileStore) -> str:
    rid, aid = await _dequeued(store)
    await store.update_attempt(rid, aid, status="succeeded")
    return rid


async def _call_prune_one(store: FileStore, rid: str) -> str:
    # A prune that moved one rollout to its trash (the move returned, durable) and went no further.
    run = RemovalRun.begin(store._ctx, store._index, store._queue, None)
    assert run.remove(rid) is not None
    run.close()
    return rid


async def _verify_in_store_or_trash(store: FileStore, rid: str) -> None:
    # The run's directories were never made durable: after the cut the rollout was in neither.
    in_trash = rid in trashed_rollouts(store._ctx)
    assert in_trash or await store.get_rollout_by_id(rid) is not None, f"rollout {rid} is nowhere"


CALLS = {
    "enqueue_rollout": CallCase(_nothing, _call_enqueue, _verify_enqueue),
    "enqueue_many_rollouts": CallCase(_nothing, _call_enqueue_many, _verify_enqueue_many),
    "dequeue_rollout": CallCase(_enqueued, _call_dequeue, _verify_dequeue),
    "get_next_span_sequence_id": CallCase(_dequeued, _call_next_seq, _verify_next_seq),
    "add_span": CallCase(_dequeued, _call_add_span, _verify_add_span),
    "add_span numbered": CallCase(_dequeued, _call_add_numbered_span, _verify_numbered_span),
    "update_attempt": CallCase(_dequeued, _call_complete, _verify_complete),
    "add_resources": CallCase(_resources, _call_add_resources, _verify_resources),
    "update_resources": CallCase(_resources, _call_update_resources, _verify_resources),
    "a prune's first move": CallCase(_finished, _call_prune_one, _verify_in_store_or_trash),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_each_call_is_durable_when_it_returns(crash_mount: Callable[..., CrashMount], name: str) -> None:
    """One call on a store made durable by sync(2) just before; the cut lets nothing unsynced
    through, so what the call made durable itself is all that counts."""
    case = CALLS[name]
    mount = crash_mount(5, persist=0.0, keep_data=0.0)
    root = mount.path / "store"
    FileStore(root, durability="fsync").close()
    store = FileStore(root, create=False, durability="fsync", watch_mode="poll", scan_debounce_seconds=3600)
    try:
        prepared = asyncio.run(case.setup(store))
        mount.command("sync")
        returned = asyncio.run(case.call(store, prepared))
        volatile = mount.status()["volatile"]
    finally:
        store.close()
    mount.cut()
    mount.reboot()
    after = FileStore(root, create=False, watch_mode="poll", scan_debounce_seconds=3600)
    try:
        asyncio.run(case.verify(after, returned))
    except AssertionError as err:
        raise AssertionError(
            f"{err}\nvolatile when {name} returned: {json.dumps(volatile, indent=1)}"
        ) from err
    finally:
        after.close()


def test_check_fix_repairs_an_interrupted_enqueue(tmp_path: Path) -> None:
    """What the loop's cuts leave when an enqueue is cut short, made directly (no FUSE needed):
    the directories RolloutHistory.create() makes first, before any revision is linked."""
    root = tmp_path / "store"
    FileStore(root, durability="fsync").close()
    layout = Layout(root)
    rid = new_rollout_id()
    layout.history_dir(rid).mkdir(parents=True)
    layout.span_seq_dir(rid).mkdir()
    (layout.span_seq_dir(rid) / "0").write_bytes(b"")
    found, left = check_then_fix(root)
    assert [p["kind"] for p in found] == ["no-record"]
    assert not left, left
    assert asyncio.run(_rollout_ids(root)) == set()


async def _rollout_ids(root: Path) -> set[str]:
    store = FileStore(root, create=False)
    try:
        return {r.rollout_id for r in await store.query_rollouts()}
    finally:
        store.close()


SHORT_CUTS = [pytest.param("random", 11), pytest.param("journal", 13)]


@pytest.mark.parametrize(("mode", "seed"), SHORT_CUTS)
def test_loop_survives_power_cut(
    crash_mount: Callable[..., CrashMount], tmp_path: Path, mode: str, seed: int
) -> None:
    report = cut_loop_at_random_point(crash_mount, seed, tmp_path, mode, most=30)
    assert_survived(report)


def _stress(crash_mount: Callable[..., CrashMount], tmp_path: Path, mode: str) -> None:
    failures = []
    for seed in range(1000, 1050):
        report = cut_loop_at_random_point(crash_mount, seed, tmp_path, mode, most=80)
        print(report)  # the run's record (pytest -s, or shown on failure)
        left = report.check_left
        if report.lost or report.lost_after_fix or left or not report.acked.progress():
            details = report.lost + report.lost_after_fix + [f"check left {p}" for p in left]
            failures.append(f"{report}\n  " + "\n  ".join(details))
    assert not failures, f"{len(failures)} of 50 cuts lost acknowledged calls:\n" + "\n".join(failures)


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_stress_loop_survives_50_random_power_cuts(
    crash_mount: Callable[..., CrashMount], tmp_path: Path
) -> None:
    _stress(crash_mount, tmp_path, "random")


@pytest.mark.stress
@pytest.mark.timeout(1800)
def test_stress_loop_survives_50_power_cuts_after_journal_commit(
    crash_mount: Callable[..., CrashMount], tmp_path: Path
) -> None:
    _stress(crash_mount, tmp_path, "journal")
