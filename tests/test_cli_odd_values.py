"""Odd values and odd files through the real ``agl`` command: one line and the right exit code.

Found by an adversarial pass over the CLI: an archive path in a missing directory wedged the
store after ``prune`` had moved the rollouts out; one span timed 1e306 ended ``agl report``;
a span timed 1e20 ended a table on a terminal; ``nan`` passed as a time; ``agl init ''``
turned the current directory into a store; ids that can name no rollout passed as filters;
damaged cursor, template and FORMAT.json files, and odd ``agl run`` targets, ended as
"unexpected" errors (exit 1) instead of bad input or damage.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl, Ids, WarmAgl, assert_error, run_on_tty, seed_store, snapshot

from store_fs.errors import ExitCode


@pytest.fixture
def seeded(tmp_path: Path, warm_agl: WarmAgl) -> tuple[Agl, Ids]:
    store = tmp_path / "store"
    ids = seed_store(store)
    return Agl(store, tmp_path, warm=warm_agl), ids


def test_prune_with_an_archive_in_a_missing_directory_changes_nothing(
    seeded: tuple[Agl, Ids], tmp_path: Path
) -> None:
    agl, ids = seeded
    before = snapshot(agl.store)
    res = agl("prune", "--status", "succeeded", "--archive", str(tmp_path / "no-such-dir" / "a.tar"))
    assert_error(res, ExitCode.BAD_INPUT, "no-such-dir")
    assert snapshot(agl.store) == before
    agl.ok("check")
    assert ids.done in agl.ok("rollouts", "list", "--status", "succeeded").stdout


def test_prune_to_an_archive_that_cannot_be_made_changes_nothing(
    seeded: tuple[Agl, Ids], tmp_path: Path
) -> None:
    """The library checks by making a file where the archive goes (here its "directory" is a
    file, which stops root as well as anyone), before any rollout is moved."""
    from store_fs import FileStore
    from store_fs.datasets import RolloutFilter
    from store_fs.prune import prune_store

    agl, _ids = seeded
    (tmp_path / "a-file").write_text("x")
    before = snapshot(agl.store)
    store = FileStore(agl.store)
    try:
        with pytest.raises(NotADirectoryError, match="cannot write the archive there"):
            prune_store(
                store,
                RolloutFilter.of(status_in=["succeeded"], endings=None),
                archive=tmp_path / "a-file" / "a.tar",
            )
    finally:
        store.close()
    assert snapshot(agl.store) == before
    agl.ok("check")


def test_a_prune_whose_archive_cannot_be_written_at_the_end_says_how_to_finish(
    seeded: tuple[Agl, Ids], tmp_path: Path
) -> None:
    """The archive's directory vanished between the start and the end of a removal (here: its
    recovery). The message names the archive and the way out; once the directory is back,
    ``check --fix`` finishes the removal and writes the archive."""
    import json

    agl, _ids = seeded
    target = tmp_path / "archives" / "a.tar"
    target.parent.mkdir()
    agl.ok("prune", "--status", "succeeded", "--archive", str(target))
    assert target.exists()
    # Simulate an interrupted removal whose archive directory has gone: a run left in trash/.
    run = agl.store / "trash" / "20260101T000000Z-host-1"
    (run / "rollouts").mkdir(parents=True)
    gone = tmp_path / "gone" / "b.tar"
    (run / "run.json").write_text(json.dumps({"archive": str(gone), "started": 0, "by": "test"}))
    res = agl("check", "--fix")
    assert_error(res, ExitCode.ERROR, "cannot write its archive", "agl check --fix", "b.tar")
    gone.parent.mkdir()
    agl.ok("check", "--fix")
    assert gone.exists()
    agl.ok("check")


def test_absurd_span_times_do_not_end_a_report_or_a_table(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    agl.ok(
        "spans",
        "add",
        ids.running,
        ids.attempt,
        input='{"name": "llm", "start_time": 1, "end_time": 1e306}',
    )
    agl.ok("spans", "add", ids.running, ids.attempt, input='{"name": "late", "start_time": 1e20}')
    agl.ok("reward", ids.running, "0.5")
    agl.ok("complete", ids.running, ids.attempt)
    agl.ok("report", "-o", "r.html")
    page = (agl.cwd / "r.html").read_text()
    assert ids.running in page  # the rollout with the absurd spans is in it, charted
    bad_geometry = re.search(
        r'\b(?:x|y|x1|x2|y1|y2|cx|cy|width|height|d|points)="[^"]*(?:nan|inf)', page, re.I
    )
    assert bad_geometry is None, bad_geometry
    code, out, err = run_on_tty(agl, "spans", "list", ids.running)
    assert code == 0, err
    assert "1e+20" in out


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("option", [("prune", "--dry-run", "--older-than"), ("data", "rollouts", "--since")])
def test_a_time_that_is_not_finite_is_refused_naming_the_option(
    seeded: tuple[Agl, Ids], option: tuple[str, ...], value: str
) -> None:
    agl, _ = seeded
    res = agl(*option, value)
    assert_error(res, ExitCode.BAD_INPUT, option[-1], "not a finite number")


def test_a_time_that_does_not_parse_is_named_by_the_option_given(seeded: tuple[Agl, Ids]) -> None:
    agl, _ = seeded
    assert_error(agl("prune", "--older-than", "abc", "--dry-run"), ExitCode.BAD_INPUT, "--older-than")


def test_agl_init_of_an_empty_path_is_refused(tmp_path: Path) -> None:
    agl = Agl(tmp_path / "store", tmp_path)
    assert_error(agl("init", ""), ExitCode.BAD_INPUT, "empty")
    assert not (tmp_path / "FORMAT.json").exists()


def test_agl_init_over_a_format_file_linked_to_nothing_says_so(tmp_path: Path) -> None:
    """It said "store ready" (exit 0), and every command then "no store" (an adversarial pass)."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "FORMAT.json").symlink_to(tmp_path / "nowhere")
    assert_error(Agl(root, tmp_path)("init", str(root)), ExitCode.CORRUPT, "FORMAT.json", "link to nothing")


@pytest.mark.parametrize(
    "args",
    [
        ("events", "--rollout", "../x"),
        ("prune", "--rollout", "../x", "--dry-run"),
        ("data", "rollouts", "--rollout", "ro-zz"),
    ],
)
def test_a_rollout_filter_that_can_name_no_rollout_is_refused(
    seeded: tuple[Agl, Ids], args: tuple[str, ...]
) -> None:
    agl, _ = seeded
    assert_error(agl(*args), ExitCode.BAD_INPUT, "invalid rollout id")


def test_an_unknown_but_well_formed_rollout_filter_matches_nothing(seeded: tuple[Agl, Ids]) -> None:
    agl, _ = seeded
    assert agl.ok("events", "--rollout", "ro-000000000000").stdout == ""


def test_a_template_file_that_is_not_utf8_is_bad_input(seeded: tuple[Agl, Ids]) -> None:
    agl, _ = seeded
    (agl.cwd / "t.txt").write_bytes(b"Q \xff {x}")
    assert_error(
        agl("resources", "add", "--template-file", "t.txt"),
        ExitCode.BAD_INPUT,
        "not UTF-8",
        "t.txt",
    )


@pytest.mark.parametrize("content", [b"[]", b'{"format": "agl-cursor"', b'{"format": "other"}'])
def test_a_damaged_cursor_file_is_named_as_damaged(seeded: tuple[Agl, Ids], content: bytes) -> None:
    agl, _ = seeded
    (agl.cwd / "c.json").write_bytes(content)
    assert_error(agl("data", "rollouts", "--cursor", "c.json"), ExitCode.CORRUPT, "c.json")
    assert (agl.cwd / "c.json").read_bytes() == content  # left as it was


@pytest.mark.parametrize(
    ("target", "needle"),
    [("os:path", "is a module"), ("../x:y", "not a module name"), (".x:y", "not a module name")],
)
def test_agl_run_of_a_target_that_is_no_agent_is_bad_input(
    seeded: tuple[Agl, Ids], target: str, needle: str
) -> None:
    agl, _ = seeded
    assert_error(agl("run", target), ExitCode.BAD_INPUT, needle)


@pytest.mark.parametrize(
    ("damage", "needle"),
    [("torn", "not JSON"), ("no-version", "no format version"), ("directory", "a directory")],
)
def test_a_damaged_format_file_is_reported_as_damage(
    seeded: tuple[Agl, Ids], damage: str, needle: str
) -> None:
    agl, _ = seeded
    path = agl.store / "FORMAT.json"
    if damage == "torn":
        path.write_bytes(path.read_bytes()[:3])
    elif damage == "no-version":
        path.write_text('{"format": "agl"}\n')
    else:
        path.unlink()
        path.mkdir()
    for args in (("stats",), ("init", str(agl.store))):
        assert_error(agl(*args), ExitCode.CORRUPT, "FORMAT.json", needle)


def test_ctrl_c_stops_a_store_call_that_is_blocked_waiting(seeded: tuple[Agl, Ids]) -> None:
    """A span counter directory with no counter in it makes a span write wait (for a network
    filesystem's caches) up to a minute; asyncio only cancelled at the next await, so the
    first Ctrl-C went unheard. Now it stops the command at once, exit 130."""
    import signal
    import time

    agl, ids = seeded
    seq = next(agl.store.glob(f"rollouts/*/{ids.running}")) / "span-seq"
    seq.mkdir(exist_ok=True)
    for counter in list(seq.iterdir()):
        counter.unlink()
    (seq / "junk").touch()
    proc = agl.popen("reward", ids.running, "1", "--attempt", ids.attempt)
    try:
        time.sleep(2.0)  # well into the wait
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == ExitCode.INTERRUPTED, err
        assert time.monotonic() - sent < 5
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_wait_with_progress_keeps_what_it_saw_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal ``agl wait A B`` re-asks in 1 s slices: A, seen finished and then pruned,
    dropped out of every later answer, and the wait never ended (found by an adversarial pass)."""
    from types import SimpleNamespace

    from agl_cli import cmd_queue, progress

    monkeypatch.setattr(progress, "_on_terminal", lambda: True)
    a, b = SimpleNamespace(rollout_id="ro-aaaaaaaaaaaa"), SimpleNamespace(rollout_id="ro-bbbbbbbbbbbb")
    answers = iter([[a], [], [b]])  # A finished, then pruned; B finishes later

    class Store:
        async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None) -> list[Any]:
            got = [r for r in next(answers, []) if r.rollout_id in rollout_ids]
            return got

    done = await asyncio.wait_for(
        cmd_queue._wait_with_progress(Store(), [a.rollout_id, b.rollout_id], 30), 10
    )
    assert done == [a, b]
