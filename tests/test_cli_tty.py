"""``agl`` on a terminal, under a pseudo-terminal: aligned tables with dates, relative ages,
durations and coloured statuses (none with NO_COLOR), a live ``--watch`` view, machine output
unchanged with ``--json``; and the pieces behind them (formatting, the progress bar) in-process.
"""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl, Ids, OnTty, json_lines, run_on_tty, seed_store
from hypothesis import given
from hypothesis import strategies as st

from agl_cli import progress
from agl_cli.tables import ROLLOUT_COLUMNS, Column, Table, age, duration

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Agl, Ids]:
    root = tmp_path_factory.mktemp("tty")
    ids = seed_store(root / "store")
    agl = Agl(root / "store", root)
    agl.env["TZ"] = "UTC"
    return agl, ids


def _columns(header: str, titles: list[str]) -> list[int]:
    starts = [header.index(t) for t in titles]
    assert starts == sorted(starts), header
    return starts


def _cells(line: str, starts: list[int]) -> list[str]:
    """The cells of ``line``: every column starts where its title does (that is alignment)."""
    for start in starts[1:]:
        assert (line[start - 1], line[start] != " ") == (" ", True), f"not aligned at {start}: {line!r}"
    ends = [*starts[1:], len(line) + 1]
    return [line[a:b].strip() for a, b in zip(starts, ends, strict=True)]


def test_rollouts_table_on_a_terminal(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    piped = {r["rollout_id"]: r for r in agl.ok("rollouts", "list").lines()}
    code, screen, err = run_on_tty(agl, "rollouts", "list")
    assert code == 0, err
    assert "3 of 3 rollout(s)" in err
    assert "\x1b[32msucceeded\x1b[0m" in screen
    assert "\x1b[36mrunning\x1b[0m" in screen
    lines = ANSI.sub("", screen).splitlines()
    titles = [c.title for c in ROLLOUT_COLUMNS]
    assert lines[0].split() == titles
    starts = _columns(lines[0], titles)
    rows = {
        cells[0]: dict(zip(titles, cells, strict=True)) for cells in (_cells(x, starts) for x in lines[1:])
    }
    assert set(rows) == {ids.done, ids.running, ids.queued}
    for rid, row in rows.items():
        started = piped[rid]["start_time"]
        assert row["STARTED"] == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started))  # TZ=UTC
        assert re.fullmatch(r"\d+s ago|\d+m\d\ds ago", row["AGE"]), row
        assert re.fullmatch(r"\d+\.\d\ds|\d+\.\ds|\d+m\d\ds", row["DURATION"]), row
        assert row["STATUS"] == piped[rid]["status"]
    done = piped[ids.done]
    assert float(rows[ids.done]["DURATION"].rstrip("s")) == pytest.approx(
        done["end_time"] - done["start_time"], abs=0.01
    )
    assert rows[ids.done]["INPUT"] == '{"q":"done"}'


def test_no_colour_with_no_color_or_a_dumb_terminal(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    for extra in ({"NO_COLOR": "1"}, {"TERM": "dumb"}):
        code, screen, err = run_on_tty(agl, "attempts", "list", ids.running, env={**agl.env, **extra})
        assert code == 0, err
        assert "\x1b[" not in screen
        header, row = screen.splitlines()
        assert header.split() == ["SEQ", "ATTEMPT_ID", "STATUS", "WORKER", "STARTED", "DURATION", "HEARTBEAT"]
        assert DATE.search(row)
        assert "running" in row
        assert "w2" in row


def test_machine_output_is_unchanged_on_a_terminal_with_json(seeded: tuple[Agl, Ids]) -> None:
    agl, _ = seeded
    piped = agl.ok("rollouts", "list").stdout
    code, screen, err = run_on_tty(agl, "rollouts", "list", "--json")
    assert code == 0, err
    assert screen == piped  # byte for byte (the terminal's \r\n aside)
    code, screen, err = run_on_tty(agl, "events", env={**agl.env, "AGL_JSON": "1"})
    assert code == 0, err
    assert screen == agl.ok("events").stdout


def test_watch_on_a_terminal(tmp_path: Path) -> None:
    own = Agl(tmp_path / "store", tmp_path)  # a store of its own: this test changes it
    ids = seed_store(own.store)
    live = OnTty(own, "rollouts", "list", "--watch", "--status", "queuing", "--status", "preparing")
    try:
        live.read_until(ids.queued)
        claimed = own.dequeue("w-tty")
        assert claimed["rollout_id"] == ids.queued
        screen = live.read_until("preparing")
    finally:
        live.interrupt()
        code, screen, err = live.finish()
    lines = ANSI.sub("", screen).splitlines()
    assert lines[0].split() == [c.title for c in ROLLOUT_COLUMNS]
    starts = _columns(lines[0], [c.title for c in ROLLOUT_COLUMNS])
    rows = [_cells(line, starts) for line in lines[1:] if line.startswith("ro-")]
    assert [(r[0], r[1]) for r in rows] == [(ids.queued, "queuing"), (ids.queued, "preparing")]
    assert code == 130, err
    assert "watching for changes" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------
# The pieces, in-process
# --------------------------------------------------------------------------------------------


@given(st.floats(min_value=0, max_value=99 * 86400))
def test_durations_and_ages_fit_their_columns(seconds: float) -> None:
    text = duration(seconds)
    assert len(text) <= 8, text
    assert re.fullmatch(r"\d+\.\d\ds|\d+\.\ds|\d+m\d\ds|\d+h\d\dm|\d+d\d\dh", text), text
    assert len(age(1000.0, 1000.0 + seconds)) <= 10


def test_duration_and_age_examples() -> None:
    assert [duration(s) for s in (0.4213, 12.34, 184, 7500, 273600)] == [
        "0.42s",
        "12.3s",
        "3m04s",
        "2h05m",
        "3d04h",
    ]
    assert [age(0, s) for s in (5, 190, 2700, 19200, 86400, 3 * 86400)] == [
        "5s ago",
        "3m10s ago",
        "45m ago",
        "5h20m ago",
        "24h ago",
        "3d ago",
    ]


def test_table_cuts_the_last_column_to_the_terminal() -> None:
    columns = [
        Column("ID", "id", 6),
        Column("STATUS", "status", 10, "status"),
        Column("INPUT", "input", 60, "json"),
    ]
    rows: list[dict[str, Any]] = [{"id": "ro-1", "status": "failed", "input": {"text": "x" * 100}}]
    plain = Table(columns, max_width=40).render(rows)
    assert all(len(line) <= 40 for line in plain), plain
    assert plain[1].endswith("…")
    painted = Table(columns, color=True).render(rows)
    assert "\x1b[31mfailed\x1b[0m" in painted[1]
    assert ANSI.sub("", painted[1]).index("{") == plain[1].index("{")  # colour does not shift columns


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "REDRAW", 0.0)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.Progress("exported", 4) as bar:
        for _ in range(4):
            bar.advance()
    drawn = terminal.getvalue()
    assert "[" + "#" * 30 + "] 4/4 exported" in drawn
    assert drawn.endswith("\r\x1b[K")  # erased: the command's own message follows on a clean line
    with progress.Progress("checking", ticking=True):
        time.sleep(0.05)
    assert "checking" in terminal.getvalue()[len(drawn) :]
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    with progress.Progress("exported", 4) as bar:
        bar.advance(4)
    assert piped.getvalue() == ""
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with progress.Progress("exported", 4, quiet=True) as bar:
        bar.advance(4)
    assert quiet.getvalue() == ""


def test_export_messages_stay_off_stdout(seeded: tuple[Agl, Ids]) -> None:
    """stdout to a file, stderr on a terminal (where a progress bar would be drawn): the file
    holds only the documents, the terminal only the messages."""
    agl, ids = seeded
    out = agl.cwd / "export.jsonl"
    code, screen, _ = OnTty(agl, "export", "--all", stdout_file=out).finish()
    assert code == 0, screen
    assert [d["rollout_id"] for d in json_lines(out.read_text())] == [ids.done, ids.running, ids.queued]
    assert ANSI.sub("", screen).strip().splitlines()[-1] == "exported 3 rollout(s)"


HOSTILE_NAME = "s\x1b]0;o\x07\x1b[2J\u202egnp"  # fits the NAME column as codes


def test_stored_text_reaches_the_terminal_as_codes_not_escape_sequences(tmp_path: Path) -> None:
    """A span name (free text from an agent) holding escape sequences went to the terminal as
    it was: it could retitle the window, clear the screen, or (U+202E) read reversed."""
    import asyncio

    from store_fs import FileStore, Span

    async def seed() -> str:
        store = FileStore(tmp_path / "store")
        attempted = await store.start_rollout(input={"q": "\x9b1m"})  # CSI, in 8 bits
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        seq = await store.get_next_span_sequence_id(rid, aid)
        await store.add_span(Span.model_validate(_span(rid, aid, seq, HOSTILE_NAME)))
        store.close()
        return rid

    rid = asyncio.run(seed())
    agl = Agl(tmp_path / "store", tmp_path)
    for args in (["spans", "list", rid], ["rollouts", "list"]):
        code, screen, err = run_on_tty(agl, *args)
        assert code == 0, err
        shown = ANSI.sub("", screen)  # the table's own colours
        assert not any(c in shown for c in "\x1b\x07\x9b\u202e"), repr(shown)
        assert ("\\u009b1m" if args[0] == "rollouts" else "s\\u001b]0;o\\u0007\\u001b[2J\\u202egnp") in shown
    [line] = agl.ok("spans", "list", rid).lines()
    assert line["name"] == HOSTILE_NAME  # piped JSON keeps the value exactly


def _span(rid: str, aid: str, seq: int, name: str) -> dict[str, Any]:
    return {
        "rollout_id": rid,
        "attempt_id": aid,
        "sequence_id": seq,
        "trace_id": "0" * 31 + "1",
        "span_id": "0" * 15 + "1",
        "parent_id": None,
        "name": name,
        "status": {"status_code": "OK", "description": None},
        "attributes": {},
        "events": [],
        "links": [],
        "start_time": 1.0,
        "end_time": 2.0,
        "context": None,
        "parent": None,
        "resource": {"attributes": {}, "schema_url": ""},
    }
