"""fsio primitives: temporary names, and what a crashed writer's leftovers do to them."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from store_fs._disk import fsio


def test_a_leftover_temporary_name_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crashed process that had our pid left the temporary names we are about to use.
    monkeypatch.setattr(fsio, "_tmp_serial", itertools.count(7))
    for serial in (7, 8):
        (tmp_path / f".rec.json.{fsio.writer_tag()}-{serial:x}.tmp").write_bytes(b"junk")
        (tmp_path / f".link.{fsio.writer_tag()}-{serial + 3:x}.tmp").symlink_to("junk")
    fsio.publish(tmp_path / "rec.json", b"new\n")
    assert (tmp_path / "rec.json").read_bytes() == b"new\n"
    assert fsio.create_exclusive(tmp_path / "other.json", b"x")  # takes serial 10; the link then meets 11
    fsio.publish_link(tmp_path / "link", tmp_path / "rec.json")
    assert (tmp_path / "link").samefile(tmp_path / "rec.json")
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert len(leftovers) == 4  # untouched: `agl check` reports them


def test_writer_tag_and_pid_follow_fork() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = fsio.current_pid() == os.getpid() and fsio.writer_tag().endswith(f"-{os.getpid()}")
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert status == 0
    assert fsio.current_pid() == os.getpid()


def test_relinking_a_name_to_the_file_it_already_is_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "rev1").write_bytes(b"1")
    (tmp_path / "rev2").write_bytes(b"2")
    for source in ("rev1", "rev1", "rev2"):  # the second rename(2) has nothing to do
        fsio.publish_link(tmp_path / "mirror", tmp_path / source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror", "rev1", "rev2"]
    assert (tmp_path / "mirror").read_bytes() == b"2"
    assert (tmp_path / "rev1").stat().st_nlink == 1


def test_append_own_takes_back_only_the_torn_line_of_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk writes what fits, then refuses the rest: the torn last line is taken back
    (the process's next line would join it), whole lines written before it stay (a reader
    may have read them, and would skip what is written over them)."""
    path = tmp_path / "own.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    real_write = os.write
    writes = itertools.count()

    def fits_then_full(fd_: int, data: bytes | memoryview) -> int:
        if next(writes) == 0:
            return real_write(fd_, bytes(data)[: len(b"one\n") + 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", fits_then_full)
    with pytest.raises(OSError, match="No space"):
        fsio.append_own(fd, b"one\ntwo\n")
    monkeypatch.setattr(os, "write", real_write)
    fsio.append_own(fd, b"three\n")
    os.close(fd)
    assert path.read_bytes() == b"one\nthree\n"
