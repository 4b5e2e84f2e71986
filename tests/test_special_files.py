"""A FIFO, a socket or a device where the store keeps a regular file, and SIGTERM to a command
writing a file.

A FIFO planted under a span log's or a revision's name blocked every reader in ``open`` until
a writer came (``agl spans list``, ``agl report`` and the server's ``query_spans`` hung), and a
link to ``/dev/zero`` would be read without end. Readers now open store files without blocking
and read only regular files (``fsio.open_to_read``): such a name is damage, named as a
directory in a file's place is, ``agl check`` reports it and ``--fix`` moves it aside. A
``rollout.json`` or an index snapshot of the wrong type made ``agl check`` itself fail (exit 1),
so nothing could repair it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import AGL, Agl, WarmAgl, agl_env, finished_rollouts

from store_fs import FileStore
from store_fs._disk import fsio
from store_fs.models import EnqueueRolloutRequest

# A reader that blocks on a FIFO would hold its call this long before the test fails it.
_CALL_TIMEOUT = 20.0


@pytest.fixture
def agl(tmp_path: Path, warm_agl: WarmAgl) -> Agl:
    asyncio.run(finished_rollouts(tmp_path / "st", runs=2))
    return Agl(tmp_path / "st", tmp_path, warm=warm_agl)


def _first_rollout(store: Path) -> tuple[str, Path]:
    directory = sorted(store.glob("rollouts/*/ro-*"))[0]
    return directory.name, directory


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Callable[[Path], None]]:
    bound: list[socket.socket] = []

    short = Path(tempfile.mkdtemp(prefix="agl-sock-", dir="/tmp"))

    def make(path: Path) -> None:
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX)
        # Bound under a short name (a socket's path has ~108 bytes), then renamed into place.
        sock.bind(str(short / f"s{len(bound)}"))
        bound.append(sock)
        os.rename(short / f"s{len(bound) - 1}", path)

    yield make
    for sock in bound:
        sock.close()
    shutil.rmtree(short)


def _span_log(store: Path) -> Path:
    _rid, directory = _first_rollout(store)
    (attempt,) = json.loads((directory / "rollout.json").read_bytes())["attempts"]
    attempt_dir = directory / "attempts" / f"{attempt['sequence_id']:04d}-{attempt['attempt_id']}"
    attempt_dir.mkdir(parents=True, exist_ok=True)  # made by a first span; these have none
    return attempt_dir / "spans.zz-damage.jsonl"


def _newest_revision(store: Path) -> Path:
    _rid, directory = _first_rollout(store)
    return max((directory / "history").glob("*.json"))


def _mirror(store: Path) -> Path:
    return _first_rollout(store)[1] / "rollout.json"


def _index_log(store: Path) -> Path:
    return store / "index" / "rollouts" / "zz-damage.jsonl"


def _snapshot(store: Path) -> Path:
    return store / "index" / "rollouts" / "snapshot.json"


# Where, and what readers make of it: "skipped" (they read on without it), "damaged" (the
# rollout's readers fail naming it, exit 7, as for a directory there).
_PLACES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "span-log": (_span_log, "skipped"),
    "newest-revision": (_newest_revision, "damaged"),
    "mirror": (_mirror, "skipped"),
    "index-log": (_index_log, "skipped"),
    "index-snapshot": (_snapshot, "skipped"),
}


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("place", sorted(_PLACES))
def test_a_special_file_in_the_store_blocks_no_reader_and_check_moves_it(
    agl: Agl, place: str, kind: str
) -> None:
    where, effect = _PLACES[place]
    bad = where(agl.store)
    (_fifo if kind == "fifo" else _zero)(bad)
    rid, _directory = _first_rollout(agl.store)
    calls = [
        ("rollouts", "list"),
        ("rollouts", "show", rid),
        ("spans", "list", rid),
        ("export", rid),
        ("stats",),
        ("data", "rollouts", "--ended", "any", "-o", str(agl.cwd / "rows.jsonl")),
        ("report", "-o", str(agl.cwd / "report.html")),
    ]
    for args in calls:
        res = agl(*args, timeout=_CALL_TIMEOUT)  # raises TimeoutExpired if a reader blocks
        assert "Traceback" not in res.stderr, str(res)
        if effect == "damaged" and args[0] in ("rollouts", "spans", "export", "data"):
            assert res.code == 7, str(res)
            assert str(bad) in res.stderr, str(res)
        elif place == "span-log" and args[0] in ("data", "export"):
            # Training data leaves the rollout out, named; export prints what it could read, named.
            assert res.code == 7, str(res)
            assert str(bad) in res.stderr, str(res)
        else:
            assert res.code == 0, str(res)
    listed = agl("rollouts", "list", "--json")
    assert len(listed.lines()) == 2 - (effect == "damaged"), str(listed)

    found = agl("check", "--json", timeout=_CALL_TIMEOUT)
    assert found.code == 7, str(found)
    assert str(bad) in {p["path"] for p in found.lines()}, str(found)
    fixed = agl("check", "--fix", "--grace", "0", "--json", timeout=_CALL_TIMEOUT)
    assert fixed.code == 0, str(fixed)
    assert all(p["fixed"] for p in fixed.lines()), str(fixed)
    # Moved aside; a mirror is made anew in the same pass.
    assert not os.path.lexists(bad) or (place == "mirror" and stat.S_ISREG(os.lstat(bad).st_mode))
    assert agl.ok("check", "--json").lines() == []
    assert len(agl.ok("rollouts", "list", "--json").lines()) == 2  # nothing stored was lost
    agl.ok("compact")  # a new snapshot can be written where the bad one was


def test_a_fifo_as_the_format_file_is_named_like_a_directory_there(agl: Agl) -> None:
    _fifo(agl.store / "FORMAT.json")
    res = agl("stats", timeout=_CALL_TIMEOUT)
    assert res.code == 7, str(res)  # a corrupt record, as a directory there is
    assert "a FIFO, not the store's format file" in res.stderr, str(res)


def test_a_fifo_as_this_hosts_clock_probe_blocks_no_command(agl: Agl) -> None:
    """Found in review: every command that opens the store writes the file server's clock probe
    ``locks/clock.<host>``, which blocked on a FIFO planted there: ``agl check --fix`` too."""
    probe = agl.store / "locks" / f"clock.{fsio.host_tag()}"
    probe.parent.mkdir(exist_ok=True)
    _fifo(probe)
    for args in (("stats",), ("rollouts", "list"), ("check",)):
        res = agl(*args, timeout=_CALL_TIMEOUT)  # raises TimeoutExpired if it blocks
        assert res.code == 0, str(res)


def test_a_socket_in_place_of_a_span_log_is_named(agl: Agl, unix_socket: Callable[[Path], None]) -> None:
    bad = _span_log(agl.store)
    unix_socket(bad)
    rid, _directory = _first_rollout(agl.store)
    res = agl.ok("spans", "list", rid, timeout=_CALL_TIMEOUT)
    assert f"{bad} at byte 0: a socket, not a span file" in res.stderr, str(res)


def test_open_to_read_names_each_kind(tmp_path: Path, unix_socket: Callable[[Path], None]) -> None:
    regular = tmp_path / "file"
    regular.write_bytes(b"x\n")
    fd, st = fsio.open_to_read(regular)
    os.close(fd)
    assert st.st_size == 2
    _fifo(tmp_path / "fifo")
    _zero(tmp_path / "zero")
    unix_socket(tmp_path / "sock")
    for name, what in (("fifo", "a FIFO"), ("zero", "a character device"), ("sock", "a socket")):
        with pytest.raises(fsio.SpecialFileError) as err:
            fsio.open_to_read(tmp_path / name)
        assert err.value.what == what
        assert fsio.broken_name(err.value, tmp_path / name) == what
    with pytest.raises(IsADirectoryError):
        fsio.open_to_read(tmp_path)
    assert fsio.read_bytes(tmp_path / "missing") is None


# --------------------------------------------------------------------------------------------
# SIGTERM: a command writing a file stops as on Ctrl-C, through its clean-up
# --------------------------------------------------------------------------------------------


async def _queued(root: Path, n: int) -> None:
    store = FileStore(root)
    try:
        for start in range(0, n, 500):
            await store.enqueue_many_rollouts(
                [EnqueueRolloutRequest(input={"q": i}) for i in range(start, min(n, start + 500))]
            )
    finally:
        store.close()


def _temps(directory: Path, name: str) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]


@pytest.mark.parametrize("delay", [0.0, 0.2], ids=["at-once", "later"])
def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path: Path, delay: float) -> None:
    """The defect: SIGTERM (``kill``, a service manager's stop) ended ``agl data -o`` and
    ``agl report -o`` where they stood, leaving ``.<name>.<host>-<pid>.<hex>.tmp`` beside the
    target for good. It now ends them as Ctrl-C does (exit 130), through their clean-up."""
    root = tmp_path / "st"
    asyncio.run(_queued(root, 4000))
    out = tmp_path / "rows.jsonl"
    caught = False
    for _round in range(3):  # the temporary file lives about a second here; caught at once
        proc = subprocess.Popen(
            [AGL, "data", "rollouts", "--ended", "any", "-o", str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=agl_env(root),
        )
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline and not _temps(tmp_path, out.name):
                time.sleep(0.002)
            if proc.poll() is None and _temps(tmp_path, out.name):
                time.sleep(delay)  # the signal lands at another point of the writing
                proc.send_signal(signal.SIGTERM)
                caught = True
            _stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if caught and proc.returncode == 130:
            break
        caught = False  # finished before the signal landed: try again
        out.unlink(missing_ok=True)
    assert caught, "the command never showed its temporary file"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert _temps(tmp_path, out.name) == []
    assert not out.exists()  # published whole or not at all


def test_temporary_outputs_not_published_are_removed_at_the_end(tmp_path: Path) -> None:
    """What the command line does as it ends, whatever ended it (the window between a temporary
    file's making and the ``try`` that removes it is not covered by that ``try``)."""
    from store_fs.output_targets import create_temp_beside, publish_temp, remove_unpublished

    fd, _left = create_temp_beside(tmp_path / "left.jsonl")
    os.close(fd)
    fd, kept = create_temp_beside(tmp_path / "kept.jsonl")
    os.close(fd)
    publish_temp(kept, tmp_path / "kept.jsonl")
    remove_unpublished()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.jsonl"]
