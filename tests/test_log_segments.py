"""Segments (store_fs/_disk/log_segments.py): per-writer logs of exited processes absorbed into
segments, with every complete line seen exactly once by every reader, across compactions.

1. A stateful model: writers append complete lines and torn partial lines, die, have their pid
   reused; compactions (some killed between publishing the segment and removing its inputs,
   some with few ``max_segments`` so segments nest); incremental readers (``read_new``, and
   readers started at ``end_position``) read at random times. Every reader must have been
   handed each complete line written so far exactly once, by the file it was written to.
2. Directed tests: nested covers, a position carried across two compactions, a rebuilt index,
   ``end_position``, ``writer_gone``, the folded worker logs, and two known bugs (xfail).
3. A real store: short-lived child processes enqueue, dequeue, finish and update workers; the
   parent compacts; every query, the change feed and a cursor read the same before and after.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from store_fs import FakeClock, FileStore
from store_fs._disk import fsio, log_segments
from store_fs._disk.context import Context
from store_fs._disk.index_cursor import IndexPosition
from store_fs._disk.layout import Layout
from store_fs._disk.log_segments import (
    SEGMENT_MARK,
    Chunk,
    Kind,
    LogFile,
    Position,
    compact_directory,
    end_position,
    read_all,
    read_new,
    scan,
    writer_gone,
)
from store_fs._disk.worker_logs import WORKER_LOGS, WorkerStore, fold_bytes, fold_lines
from store_fs.datasets import Cursor
from store_fs.live import EventReader

KIND = Kind(prefix="")
#: Not this machine's name: ``writer_gone`` would ask about pids; the tests' ``take`` decides.
HOST = "fakehost"


class _Killed(Exception):
    """Stands for the compacting process being killed."""


def _lines(chunks: list[Chunk]) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    for chunk in chunks:
        assert chunk.data.endswith(b"\n"), chunk
        out.update(chunk.data.splitlines(keepends=True))
    return out


def _kill_after(removals: int) -> Any:
    """Patch: the compaction dies after ``removals`` calls of its removal step."""
    real = log_segments._remove_if_unchanged
    done = 0

    def removing(path: Path, ino: int, size: int) -> int:
        nonlocal done
        if done >= removals:
            raise _Killed
        done += 1
        return real(path, ino, size)

    return mock.patch.object(log_segments, "_remove_if_unchanged", removing)


# -- 1. the model --------------------------------------------------------------------------


class SegmentMachine(RuleBasedStateMachine):
    """Lines written vs lines read, through compactions. See the module docstring.

    ``DEAD_TORN_TAILS`` lets a writer die mid-line (its tail then sits between two inputs of a
    segment). ``REUSED_INODES`` would let a file recreated under a removed file's name get that
    file's inode (ext4 hands a freed inode out again at once); it stays off because the store
    never recreates a removed log's name: compactable logs are named after the process
    instance (``fsio.log_tag``), see ``test_log_names_are_never_reused``.
    """

    DEAD_TORN_TAILS = True
    REUSED_INODES = False
    WRITERS = 4
    READERS = 3

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="agl-segments-"))
        self.names = [f"{HOST}-{n}.jsonl" for n in range(self.WRITERS)]
        self.dead: set[str] = set()
        self.rest: dict[str, bytes] = {}  # a live writer's unwritten end of its torn line
        self.pending: dict[str, bytes] = {}  # per file: bytes after its last newline, not quarantined
        self.inodes: dict[str, set[int]] = {}  # every inode each name has had
        self.written: Counter[bytes] = Counter()
        self.origin: dict[bytes, str] = {}  # line -> the file it was written to
        self.positions: list[Position] = [{} for _ in range(self.READERS)]
        self.delivered: list[Counter[bytes]] = [Counter() for _ in range(self.READERS)]
        self.counter = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------
    def _line(self, name: str) -> bytes:
        self.counter += 1
        return json.dumps({"n": self.counter, "w": name, "pad": "x" * (self.counter % 7)}).encode() + b"\n"

    def _create(self, name: str) -> None:
        path = self.dir / name
        if self.REUSED_INODES:
            path.touch(exist_ok=False)
        else:  # a fresh inode: hold on to spares until one is new to this name
            held: list[Path] = []
            while True:
                spare = self.dir / f".spare-{len(held)}"
                spare.touch(exist_ok=False)
                if spare.stat().st_ino not in self.inodes.get(name, set()):
                    break
                held.append(spare)
            os.rename(spare, path)
            for h in held:
                h.unlink()
        self.inodes.setdefault(name, set()).add(path.stat().st_ino)

    def _write(self, name: str, data: bytes) -> None:
        path = self.dir / name
        if not path.exists():
            assert not self.pending.get(name), "a torn tail vanished without on_torn"
            self.pending[name] = b""
            self._create(name)
        with open(path, "ab") as f:
            f.write(data)
        *complete, self.pending[name] = (self.pending.get(name, b"") + data).split(b"\n")
        for line in complete:
            full = line + b"\n"
            assert full not in self.written
            self.written[full] += 1
            self.origin[full] = name

    def _alive(self) -> list[str]:
        return [n for n in self.names if n not in self.dead]

    def _take(self, log: LogFile) -> bool:
        return log.name in self.dead

    def _on_torn(self, path: Path, data: bytes, offset: int) -> None:
        name = path.name
        assert name in self.dead, f"{name}'s writer is alive: its partial line is no torn tail"
        assert data
        assert data == self.pending[name]
        assert offset + len(data) == path.stat().st_size
        self.pending[name] = b""

    def _compact(self, max_segments: int) -> log_segments.CompactionResult:
        return compact_directory(
            self.dir,
            KIND,
            take=self._take,
            writer="compactor-1",
            max_segments=max_segments,
            on_torn=self._on_torn,
        )

    def _check_chunks(self, chunks: list[Chunk]) -> Counter[bytes]:
        lines = _lines(chunks)
        for chunk in chunks:
            for line in chunk.data.splitlines(keepends=True):
                assert self.origin.get(line) == chunk.source, (line, chunk)
            try:
                with open(self.dir / chunk.file, "rb") as f:
                    f.seek(chunk.offset)
                    at_offset = f.read(len(chunk.data))
            except FileNotFoundError:
                continue  # absorbed since
            assert at_offset == chunk.data, chunk
        return lines

    # -- writers -----------------------------------------------------------------------
    @rule(w=st.integers(0, 99), k=st.integers(1, 3))
    def append(self, w: int, k: int) -> None:
        alive = self._alive()
        if alive:
            name = alive[w % len(alive)]
            data = self.rest.pop(name, b"") + b"".join(self._line(name) for _ in range(k))
            self._write(name, data)

    @rule(w=st.integers(0, 99), cut=st.integers(1, 20))
    def append_torn(self, w: int, cut: int) -> None:
        alive = [n for n in self._alive() if n not in self.rest]
        if alive:
            name = alive[w % len(alive)]
            line = self._line(name)
            self._write(name, line[:cut])
            self.rest[name] = line[cut:]

    @rule(w=st.integers(0, 99))
    def complete_torn(self, w: int) -> None:
        torn = sorted(self.rest)
        if torn:
            name = torn[w % len(torn)]
            self._write(name, self.rest.pop(name))

    @rule(w=st.integers(0, 99))
    def die(self, w: int) -> None:
        alive = self._alive()
        if len(alive) > 1:
            name = alive[w % len(alive)]
            rest = self.rest.pop(name, b"")
            if rest and not self.DEAD_TORN_TAILS:
                self._write(name, rest)
            self.dead.add(name)

    @rule(w=st.integers(0, 99), k=st.integers(1, 2))
    def pid_reused(self, w: int, k: int) -> None:
        """A new process with a dead writer's pid appends to its file (or makes it anew) and exits."""
        dead = sorted(self.dead)
        if dead:
            name = dead[w % len(dead)]
            self._write(name, b"".join(self._line(name) for _ in range(k)))

    # -- compaction --------------------------------------------------------------------
    @rule(max_segments=st.integers(1, 4))
    def compact(self, max_segments: int) -> None:
        result = self._compact(max_segments)
        listing = scan(self.dir, KIND)
        plain = {log.name for log in listing.plain()}
        assert plain == {n for n in self._alive() if (self.dir / n).exists()}, "dead writers' logs left"
        assert not listing.covered.keys() & {(f.name, f.ino) for f in listing.files.values()}
        assert len(listing.live_segments()) <= max_segments
        assert not any(self.pending.get(n) for n in self.dead), "a dead writer's torn tail was copied"
        if result.segment is not None:
            assert result.removed >= result.inputs >= 1
            assert (self.dir / result.segment).exists()

    @rule(max_segments=st.integers(1, 4), removals=st.integers(0, 3))
    def compact_killed(self, max_segments: int, removals: int) -> None:
        """Killed between publishing its segment and removing its inputs (or amid leftovers)."""
        with _kill_after(removals):
            try:
                self._compact(max_segments)
            except _Killed:
                pass

    # -- readers -----------------------------------------------------------------------
    @rule(i=st.integers(0, READERS - 1))
    def read(self, i: int) -> None:
        chunks, replaced = read_new(self.dir, KIND, self.positions[i])
        assert not replaced
        self.delivered[i] += self._check_chunks(chunks)
        missing = self.written - self.delivered[i]
        extra = self.delivered[i] - self.written
        assert not missing, missing
        assert not extra, extra

    @rule(i=st.integers(0, READERS - 1))
    def restart_at_end(self, i: int) -> None:
        self.positions[i] = end_position(self.dir, KIND)
        self.delivered[i] = Counter(self.written)

    @rule(i=st.integers(0, READERS - 1))
    def save_and_load(self, i: int) -> None:
        """A position survives its JSON form (the cursor file)."""
        saved = json.loads(json.dumps(IndexPosition(self.positions[i]).to_json()))
        self.positions[i] = IndexPosition.from_json(saved).files

    @invariant()
    def read_all_is_every_complete_line_once(self) -> None:
        assert self._check_chunks(read_all(self.dir, KIND)) == self.written


TestSegmentMachine = SegmentMachine.TestCase
TestSegmentMachine.settings = settings(
    max_examples=35, stateful_step_count=35, deadline=None, suppress_health_check=list(HealthCheck)
)


@pytest.mark.stress
def test_segment_machine_long() -> None:
    run_state_machine_as_test(
        SegmentMachine,
        settings=settings(
            max_examples=1500, stateful_step_count=60, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


# -- 2. directed ---------------------------------------------------------------------------


def _write_lines(path: Path, *texts: str) -> list[bytes]:
    lines = [json.dumps({"line": t}).encode() + b"\n" for t in texts]
    with open(path, "ab") as f:
        f.write(b"".join(lines))
    return lines


def _take_all(log: LogFile) -> bool:
    return True


def test_nested_segments_flatten_their_covers(tmp_path: Path) -> None:
    a, b = tmp_path / f"{HOST}-1.jsonl", tmp_path / f"{HOST}-2.jsonl"
    written = _write_lines(a, "a1", "a2")
    a_ino = a.stat().st_ino
    first = compact_directory(tmp_path, KIND, take=_take_all, writer="c-1")
    assert first.segment is not None
    assert (first.inputs, first.removed) == (1, 1)
    assert not a.exists()
    first_ino = (tmp_path / first.segment).stat().st_ino
    written += _write_lines(b, "b1")
    b_ino = b.stat().st_ino
    second = compact_directory(tmp_path, KIND, take=_take_all, writer="c-1", max_segments=1)
    assert second.segment is not None
    assert (second.inputs, second.removed) == (2, 2)
    assert sorted(os.listdir(tmp_path)) == [second.segment]
    listing = scan(tmp_path, KIND)
    header = listing.files[second.segment].segment
    assert header is not None
    assert not header.folded
    covers = {(c.name, c.ino): c for c in header.covers}
    # The file the first segment absorbed is named in the second's header, at its new offset.
    assert covers.keys() == {(a.name, a_ino), (first.segment, first_ino), (b.name, b_ino)}
    assert covers[(a.name, a_ino)].at == covers[(first.segment, first_ino)].at == 0
    assert covers[(b.name, b_ino)].at == len(written[0] + written[1])
    assert [(c.source, c.data) for c in read_all(tmp_path, KIND)] == [
        (a.name, written[0] + written[1]),
        (b.name, written[2]),
    ]


def test_position_saved_before_two_compactions_resumes_exactly(tmp_path: Path) -> None:
    logs = [tmp_path / f"{HOST}-{n}.jsonl" for n in range(3)]
    seen = _write_lines(logs[0], "0a", "0b") + _write_lines(logs[1], "1a")
    position: Position = {}
    chunks, replaced = read_new(tmp_path, KIND, position)
    assert not replaced
    assert _lines(chunks) == Counter(seen)
    saved = json.dumps(IndexPosition(position).to_json())
    later = _write_lines(logs[0], "0c") + _write_lines(logs[2], "2a")
    compact_directory(tmp_path, KIND, take=lambda log: log.name != logs[2].name, writer="c-1")
    later += _write_lines(logs[2], "2b") + _write_lines(logs[1], "1b")
    compact_directory(tmp_path, KIND, take=_take_all, writer="c-2", max_segments=1)
    assert [p.name for p in tmp_path.iterdir() if SEGMENT_MARK not in p.name] == []
    resumed = IndexPosition.from_json(json.loads(saved)).files
    chunks, replaced = read_new(tmp_path, KIND, resumed)
    assert not replaced
    assert _lines(chunks) == Counter(later)
    assert read_new(tmp_path, KIND, resumed) == ([], False)
    assert _lines(read_all(tmp_path, KIND)) == Counter(seen + later)


def test_replaced_when_a_known_file_vanishes_without_a_segment(tmp_path: Path) -> None:
    log = tmp_path / f"{HOST}-1.jsonl"
    _write_lines(log, "x", "y")
    position: Position = {}
    read_new(tmp_path, KIND, position)
    before = dict(position)
    log.unlink()  # the index was rebuilt: no segment holds the file
    _write_lines(tmp_path / f"{HOST}-2.jsonl", "z")
    assert read_new(tmp_path, KIND, position) == ([], True)
    assert position == before  # left alone: the caller decides
    # Shrunk, or another inode under the name: replaced too.
    _write_lines(log, "x")
    assert read_new(tmp_path, KIND, position) == ([], True)
    # A file absorbed by a segment is not "replaced".
    fresh: Position = {}
    read_new(tmp_path, KIND, fresh)
    compact_directory(tmp_path, KIND, take=_take_all, writer="c-1")
    assert read_new(tmp_path, KIND, fresh) == ([], False)


def test_a_log_cut_short_in_place_is_read_on_and_the_others_from_where_they_were(tmp_path: Path) -> None:
    """A power cut takes back lines a writer had not synced, leaving its log shorter under the
    same inode. Taken for a rebuilt index, every log was followed on from its end: lines
    written meanwhile to the other logs (rollouts finished and acknowledged) were never read
    (found by an adversarial pass)."""
    cut, other = tmp_path / f"{HOST}-1.jsonl", tmp_path / f"{HOST}-2.jsonl"
    _write_lines(cut, "synced", "unsynced-1", "unsynced-2")
    _write_lines(other, "o1")
    position: Position = {}
    read_new(tmp_path, KIND, position)
    kept = len(b'{"line": "synced"}\n')
    os.truncate(cut, kept + 4)  # the cut: one whole line and a torn piece left
    [added] = _write_lines(other, "o2")  # acknowledged after the cursor had read
    chunks, replaced = read_new(tmp_path, KIND, position)
    assert not replaced
    assert b"".join(c.data for c in chunks) == added
    assert position[cut.name][1] == kept  # read on from its last complete line


def test_end_position_then_read_new_returns_only_what_follows(tmp_path: Path) -> None:
    a, b = tmp_path / f"{HOST}-1.jsonl", tmp_path / f"{HOST}-2.jsonl"
    _write_lines(a, "a1")
    _write_lines(b, "b1")
    compact_directory(tmp_path, KIND, take=lambda log: log.name == a.name, writer="c-1")
    with open(b, "ab") as f:
        f.write(b'{"line": "b2')  # a line being written
    position = end_position(tmp_path, KIND)
    assert read_new(tmp_path, KIND, position) == ([], False)
    with open(b, "ab") as f:
        f.write(b'"}\n')
    later = _write_lines(tmp_path / f"{HOST}-3.jsonl", "c1")
    chunks, _ = read_new(tmp_path, KIND, position)
    assert _lines(chunks) == Counter([b'{"line": "b2"}\n', *later])
    assert read_new(tmp_path, KIND, position) == ([], False)


def test_writer_gone(tmp_path: Path) -> None:
    host, now = fsio.host_tag(), 1_000_000.0
    assert not writer_gone(f"{host}-{fsio.current_pid()}", 0.0, now=now, idle_seconds=1.0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        child.wait(timeout=30)
    finally:
        child.kill()
    assert writer_gone(f"{host}-{child.pid}", now, now=now, idle_seconds=3600.0)  # not asked by time
    other = "some-other-host-4242"
    assert not writer_gone(other, now - 10.0, now=now, idle_seconds=3600.0)
    assert writer_gone(other, now - 3600.0, now=now, idle_seconds=3600.0)
    # A pid of this host that is alive (ours, seen as another process's) is never gone.
    assert not writer_gone(f"{host}-{os.getppid()}", 0.0, now=now, idle_seconds=1.0)


def test_torn_tail_goes_to_on_torn_and_leftovers_are_removed_later(tmp_path: Path) -> None:
    log = tmp_path / f"{HOST}-1.jsonl"
    lines = _write_lines(log, "one")
    with open(log, "ab") as f:
        f.write(b'{"line": "to')
    torn: list[tuple[str, bytes, int]] = []

    def on_torn(path: Path, data: bytes, offset: int) -> None:
        torn.append((path.name, data, offset))

    with _kill_after(0), pytest.raises(_Killed):
        compact_directory(tmp_path, KIND, take=_take_all, writer="c-1", on_torn=on_torn)
    assert torn == [(log.name, b'{"line": "to', len(lines[0]))]
    assert log.exists()
    assert _lines(read_all(tmp_path, KIND)) == Counter(lines)
    again = compact_directory(tmp_path, KIND, take=_take_all, writer="c-1", on_torn=on_torn)
    assert again.segment is None
    assert again.removed == 1
    assert not log.exists()
    assert len(torn) == 1  # quarantined once
    assert _lines(read_all(tmp_path, KIND)) == Counter(lines)


def test_torn_tail_between_two_inputs_is_not_read(tmp_path: Path) -> None:
    a, b = tmp_path / f"{HOST}-1.jsonl", tmp_path / f"{HOST}-2.jsonl"
    lines = _write_lines(a, "a1")
    with open(a, "ab") as f:
        f.write(b'{"line": "a2')  # its writer was killed mid-line
    lines += _write_lines(b, "b1")
    compact_directory(tmp_path, KIND, take=_take_all, writer="c-1", on_torn=lambda *_: None)
    assert [(c.source, c.data) for c in read_all(tmp_path, KIND)] == [(a.name, lines[0]), (b.name, lines[1])]


def test_log_names_are_never_reused(tmp_path: Path) -> None:
    """A covered (name, inode) could come back (a reused pid, and ext4 hands a freed inode out
    again at once), so compactable logs are named after the process instance: a forked child,
    which may even get a pid seen before, never writes under a name another process used."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its tag and exits at once
        os.write(write, fsio.log_tag().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 200).decode()
    os.close(read)
    assert child.startswith(f"{fsio.writer_tag().rpartition('-')[0]}-{pid}.")
    assert child != fsio.log_tag()
    assert fsio.log_tag().startswith(fsio.writer_tag() + ".")
    assert len({fsio.log_tag() for _ in range(3)}) == 1  # stable within a process


# -- the folded worker logs ----------------------------------------------------------------


_WORKER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 3), st.sampled_from(["idle", "busy", "unknown"])),
        st.tuples(st.just("torn"), st.integers(0, 3), st.just("")),
        st.tuples(st.just("die"), st.integers(0, 3), st.just("")),
        st.tuples(st.just("compact"), st.integers(1, 3), st.just("")),
        st.tuples(st.just("kill"), st.integers(0, 2), st.just("")),
    ),
    max_size=25,
)


def _fold_read_all(directory: Path) -> dict[str, Any]:
    changes = []
    for order, line in enumerate(_lines(read_all(directory, WORKER_LOGS)).elements()):
        obj = json.loads(line)
        changes.append((float(obj.pop("t")), order, obj))
    return fold_lines(changes)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_WORKER_OPS)
def test_folded_worker_logs_fold_the_same(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, str]]
) -> None:
    """Worker logs compacted with ``fold_bytes`` (some compactions killed) fold to the state of
    every complete line written, as ``WorkerStore`` reads them; torn tails are quarantined."""
    root = tmp_path_factory.mktemp("workers")
    layout = Layout(root)
    store = WorkerStore(Context(layout=layout, clock=FakeClock()))
    directory = layout.worker_dir("w-1")
    directory.mkdir(parents=True)
    lines: list[tuple[float, int, dict[str, Any]]] = []
    dead: set[str] = set()
    torn: list[bytes] = []
    quarantined: list[bytes] = []
    created: set[str] = set()

    def compact(**kwargs: Any) -> None:
        compact_directory(
            directory,
            WORKER_LOGS,
            take=lambda log: log.name in dead,
            writer="c-1",
            fold=fold_bytes,
            on_torn=lambda path, data, offset: quarantined.append(data),
            **kwargs,
        )

    t = 0.0
    for op, n, status in ops:
        name = f"{WORKER_LOGS.prefix}{HOST}-{n}{WORKER_LOGS.suffix}"
        if op in ("write", "torn") and name not in dead:
            t += 1.0
            fields = {"status": status or "idle", "last_heartbeat_time": t, f"field_{n}": t}
            data = json.dumps({"t": t, **fields}).encode() + b"\n"
            if op == "torn":  # killed mid-line
                data = data[:-5]
                torn.append(data)
                dead.add(name)
            else:
                lines.append((t, len(lines), fields))
            with open(directory / name, "ab") as f:
                f.write(data)
            created.add(name)
        elif op == "die":
            dead.add(name)
        elif op == "compact":
            compact(max_segments=n)
        elif op == "kill":
            with _kill_after(n):
                try:
                    compact()
                except _Killed:
                    pass
        expected = fold_lines(lines)
        assert _fold_read_all(directory) == expected
        worker = store.get("w-1")
        assert worker is not None
        assert (worker.status, worker.last_heartbeat_time) == (
            expected.get("status", "unknown"),
            expected.get("last_heartbeat_time"),
        )
    compact()
    assert _fold_read_all(directory) == fold_lines(lines)
    assert sorted(quarantined) == sorted(torn)  # each once
    plain = [p.name for p in directory.iterdir() if not WORKER_LOGS.is_segment(p.name)]
    assert sorted(plain) == sorted(created - dead)
    segments = scan(directory, WORKER_LOGS).live_segments()
    assert len(segments) <= 1
    for segment in segments:  # folded: one line per time that still wins a field
        payload = (directory / segment.name).read_bytes().split(b"\n", 1)[1]
        times = [json.loads(line)["t"] for line in payload.splitlines()]
        assert len(times) == len(set(times)) <= len(lines)


# -- 3. a real store -------------------------------------------------------------------------


_CHILD = r"""
import asyncio, sys
from store_fs import FileStore

async def main(root: str, i: int) -> None:
    store = FileStore(root)
    try:
        await store.enqueue_rollout({"child": i})
        got = await store.dequeue_rollout(worker_id=f"w-{i % 2}")
        if got is not None and i % 3 != 0:
            await store.update_attempt(got.rollout_id, got.attempt.attempt_id, status="succeeded")
        await store.update_worker(f"w-{i % 2}", {"child": i})
        await store.update_worker(f"solo-{i}")
    finally:
        store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _snapshot(store: FileStore) -> dict[str, Any]:
    rollouts = await store.query_rollouts()
    stats = dict(await store.statistics())
    stats.pop("uptime")
    workers = await store.query_workers()
    return {
        "rollouts": [r.model_dump() for r in rollouts.items],
        "stats": stats,
        "workers": [w.model_dump() for w in workers.items],
        "by_id": {w.worker_id: (await store.get_worker_by_id(w.worker_id)) for w in workers.items},
        "events": sorted(json.dumps(e, sort_keys=True) for e in EventReader(store.layout.events).read_new()),
    }


def _logs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".jsonl"))


def test_store_compaction_keeps_every_answer(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = FileStore(root)
    layout = store.layout
    children: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(store.enqueue_rollout({"parent": 0}))
        asyncio.run(store.update_worker("w-0", {"parent": 0}))
        mine = fsio.log_tag() + ".jsonl"
        own = {d: (d / n).stat().st_ino for d, n in ((layout.rollout_index, mine), (layout.events, mine))}
        early_cursor = Cursor.start()
        early_cursor.finished(store)
        early_events = EventReader(layout.events)
        assert len(early_events.read_new()) == 1
        early_position = dict(early_events.position)
        children = [
            subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(i)], stderr=subprocess.PIPE)
            for i in range(6)
        ]
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err.decode()
        before = asyncio.run(_snapshot(store))
        assert (before["stats"]["total_rollouts"], before["stats"]["total_workers"]) == (7, 8)
        assert (len(_logs(layout.rollout_index)), len(_logs(layout.workers / "w-1"))) == (7, 3)
        cursor_json = early_cursor.to_json()
        events = EventReader(layout.events)
        assert len(events.read_new()) == len(before["events"])
        children_events = EventReader(layout.events, dict(early_position)).read_new()
        assert {e["writer"].partition(".")[0] for e in children_events} == {
            f"{fsio.host_tag()}-{c.pid}" for c in children
        }
        finished_by_children = Cursor.from_json(cursor_json).finished(store)
        assert len(finished_by_children) == 4  # children 1, 2, 4, 5

        report = store.compact()
        assert report.segments >= 3
        assert report.torn == 0
        for directory in (layout.rollout_index, layout.events):
            names = _logs(directory)
            assert mine in names, names
            assert len(names) == 2, names  # this process's log and one segment
            assert (directory / mine).stat().st_ino == own[directory]
        for worker in layout.workers.iterdir():
            names = _logs(worker)
            assert sum(SEGMENT_MARK in n for n in names) == 1, names
            assert [n for n in names if SEGMENT_MARK not in n] == (
                [f"log.{mine}"] if worker.name == "w-0" else []
            )
        assert asyncio.run(_snapshot(store)) == before
        fresh = FileStore(root)
        try:
            assert asyncio.run(_snapshot(fresh)) == before
        finally:
            fresh.close()
        # Positions taken before the compaction go on exactly: nothing again, nothing missed.
        assert events.read_new() == []
        assert EventReader(layout.events, dict(early_position)).read_new() == children_events
        assert sorted(Cursor.from_json(cursor_json).finished(store)) == sorted(finished_by_children)
        # This process's logs were left open and in place: its later writes are seen.
        rollout = asyncio.run(store.enqueue_rollout({"parent": 1}))
        got = asyncio.run(store.dequeue_rollout(worker_id="w-0"))
        assert got is not None
        asyncio.run(store.update_attempt(got.rollout_id, got.attempt.attempt_id, status="succeeded"))
        asyncio.run(store.update_worker("w-0", {"parent": 1}))
        assert sorted({e["rollout_id"] for e in events.read_new()}) == sorted(
            {rollout.rollout_id, got.rollout_id}
        )
        assert (layout.events / mine).stat().st_ino == own[layout.events]
        fresh = FileStore(root)
        try:
            after = asyncio.run(_snapshot(fresh))
            w0 = asyncio.run(fresh.get_worker_by_id("w-0"))
        finally:
            fresh.close()
        assert after["stats"]["total_rollouts"] == 8
        assert w0 is not None
        assert (w0.heartbeat_stats, w0.status) == ({"parent": 1}, "idle")
        finished = Cursor.from_json(cursor_json).finished(store)
        assert sorted(finished) == sorted([*finished_by_children, got.rollout_id])
    finally:
        for child in children:
            child.kill()
            child.wait()
        store.close()


def test_a_listing_that_loses_a_file_to_another_hosts_compaction_lists_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction on another host (where flock is not shared, NFS with local_lock) absorbed a
    file while this one listed: ``agl compact`` failed with the private "_Vanished" error."""
    _write_lines(tmp_path / f"{HOST}-1.jsonl", "x")
    once = log_segments._scan_once
    calls = []

    def vanishing_once(directory: Path, kind: Kind) -> log_segments.Listing:
        calls.append(directory)
        if len(calls) == 1:
            raise log_segments._Vanished
        return once(directory, kind)

    monkeypatch.setattr(log_segments, "_scan_once", vanishing_once)
    assert list(scan(tmp_path, KIND).files) == [f"{HOST}-1.jsonl"]
    assert len(calls) == 2
    result = compact_directory(tmp_path, KIND, take=_take_all, writer="c-1")
    assert result.inputs == 1

    def always(directory: Path, kind: Kind) -> log_segments.Listing:
        raise log_segments._Vanished

    monkeypatch.setattr(log_segments, "_scan_once", always)
    monkeypatch.setattr(log_segments, "_RELIST_PAUSES", (0.0, 0.0))
    with pytest.raises(OSError, match="kept vanishing"):
        scan(tmp_path, KIND)


@pytest.mark.parametrize("how", ["removed", "truncated", "renamed"])
def test_an_event_reader_rereads_only_the_log_that_was_replaced(tmp_path: Path, how: str) -> None:
    """One writer's feed file removed, cut short or rotated away made a follower re-read every
    other writer's file from its start: ``agl events --follow`` printed their events twice
    (found by an adversarial pass)."""
    from store_fs.live import EventReader

    events = tmp_path / "events"
    events.mkdir()

    def line(rollout: int, status: str) -> bytes:
        return (
            json.dumps({"rollout_id": f"ro-{rollout:012x}", "status": status, "time": rollout}).encode()
            + b"\n"
        )

    (events / "host-1.jsonl").write_bytes(line(1, "queuing") + line(2, "queuing"))
    (events / "host-2.jsonl").write_bytes(line(3, "queuing"))
    reader = EventReader(events)
    assert len(reader.read_new()) == 3
    victim = events / "host-1.jsonl"
    if how == "removed":
        victim.unlink()
    elif how == "truncated":
        victim.write_bytes(b"")
    else:
        victim.rename(events / "host-1.jsonl.1")
    with (events / "host-2.jsonl").open("ab") as log:
        log.write(line(4, "running"))
    assert [(e["rollout_id"], e["status"]) for e in reader.read_new()] == [("ro-000000000004", "running")]
    victim.write_bytes(line(5, "queuing"))  # the writer begins its file again
    assert [e["rollout_id"] for e in reader.read_new()] == ["ro-000000000005"]
