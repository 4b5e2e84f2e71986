"""The ``agl`` command line as gh and kubectl users type it: global options anywhere and from
the environment (flag > env > default), errors as one line, shell completion of ids, bulk
export, and following the store live (``agl events --follow``, ``agl rollouts list --watch``).

End-to-end calls run the installed script (tests/cli_helpers.py); the hoisting of global
options is also checked in-process, as a property over the commands' own option lists.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import AGL, CALL_TIMEOUT, Agl, Ids, WarmAgl, agl_env, assert_error, seed_store
from hypothesis import given, settings
from hypothesis import strategies as st

from agl_cli.argv import GLOBAL_FLAGS, GLOBAL_VALUED, hoist_globals
from agl_cli.main import cli_command


@pytest.fixture
def seeded(tmp_path: Path, warm_agl: WarmAgl) -> tuple[Agl, Ids]:
    return Agl(tmp_path / "store", tmp_path, warm=warm_agl), seed_store(tmp_path / "store")


# --------------------------------------------------------------------------------------------
# Global options anywhere on the line
# --------------------------------------------------------------------------------------------


def test_global_options_anywhere_on_the_line(seeded: tuple[Agl, Ids], tmp_path: Path) -> None:
    agl, ids = seeded
    env = agl_env(None)  # no AGL_STORE: the option alone names the store
    store = str(agl.store)
    expected = {ids.done, ids.running, ids.queued}
    for args in (
        ["rollouts", "list", "--store", store, "--json"],  # the example
        ["--store", store, "rollouts", "list"],
        ["rollouts", "-s", store, "list"],
        ["rollouts", "list", f"--store={store}", "-q"],
        ["-q", "rollouts", "list", f"-s{store}"],
    ):
        res = agl(*args, env=env)
        assert res.code == 0, str(res)
        assert {r["rollout_id"] for r in res.lines()} == expected, str(res)
    # -q anywhere silences messages; errors still show
    quiet = agl("enqueue", '"x"', "-q", "--store", store, env=env)
    assert quiet.code == 0, str(quiet)
    assert quiet.stderr == ""
    assert_error(agl("rollouts", "show", "ro-000000000000", "-q", "-s", store, env=env), 3)


def test_option_values_that_look_like_global_options_stay_values(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    failed = agl.ok("fail", ids.running, ids.attempt, "--error", "--json").json()
    assert failed["metadata"] == {"error": "--json"}  # the value of --error, not the global flag
    # after --, everything is an argument: "--json" is a (malformed) rollout id
    assert_error(agl("rollouts", "cancel", "--", "--json"), (3, 4), "--json")
    assert_error(agl("rollouts", "list", "--store"), 2, "--store")  # no value: said as much


def test_env_precedence_flag_over_env_over_default(seeded: tuple[Agl, Ids], tmp_path: Path) -> None:
    agl, _ = seeded
    elsewhere = tmp_path / "elsewhere"
    Agl(elsewhere, tmp_path).ok("init")
    base = agl_env(None)
    # the flag wins over AGL_STORE
    listed = agl("rollouts", "list", "--store", str(agl.store), env={**base, "AGL_STORE": str(elsewhere)})
    assert len(listed.lines()) == 3, str(listed)
    # AGL_STORE wins over the default (runs/default, which does not exist here)
    assert agl("rollouts", "list", env={**base, "AGL_STORE": str(elsewhere)}).lines() == []
    assert_error(agl("rollouts", "list", env=base), 5, "runs/default")
    # AGL_QUIET and AGL_JSON; a flag on the line wins over a variable saying no
    queued = agl("enqueue", '"q"', env={**base, "AGL_STORE": str(elsewhere), "AGL_QUIET": "1"})
    assert (queued.code, queued.stderr) == (0, ""), str(queued)
    json_env = {**base, "AGL_STORE": str(elsewhere), "AGL_JSON": "0"}
    assert agl("--json", "stats", env=json_env).json()["total_rollouts"] == 1
    # a variable with a value that is not a boolean is a usage error, naming the variable
    assert_error(agl("stats", env={**base, "AGL_JSON": "maybe"}), 2, "AGL_JSON")


def test_verbose_shows_the_traceback_above_the_one_line(seeded: tuple[Agl, Ids]) -> None:
    agl, _ = seeded
    plain = agl("rollouts", "show", "ro-000000000000")
    assert_error(plain, 3, "ro-000000000000")
    for res in (
        agl("rollouts", "show", "ro-000000000000", "-v"),
        agl("rollouts", "show", "ro-000000000000", env={**agl.env, "AGL_VERBOSE": "1"}),
    ):
        assert res.code == 3, str(res)
        assert "Traceback (most recent call last)" in res.stderr, str(res)
        assert res.stderr.rstrip().splitlines()[-1] == plain.stderr.strip()


def test_usage_errors_are_one_line_with_the_valid_values(seeded: tuple[Agl, Ids]) -> None:
    agl, _ = seeded
    res = agl("rollouts", "list", "--status", "bogus")
    assert_error(res, 2, "'queuing'", "'running'", "'succeeded'", "agl rollouts list --help")
    assert_error(agl("rollouts", "list", "--sort-by", "nope"), 2, "'start_time'")
    assert_error(agl("rollouts", "list", "--offset", "-1"), 2, "--offset", "greater than or equal to 0")
    assert_error(agl("store", "--port", "65536"), 2, "--port", "less than or equal to 65535")
    assert_error(agl("store", "--max-body-mb", "nan"), 2, "finite")
    assert_error(agl("dequeue", "--wait", "inf"), 2, "--wait")
    assert_error(agl("rollouts", "list", "--limit", "1" + "0" * 30), 2, "--limit")
    assert_error(agl("init", str(agl.cwd / "store" / "FORMAT.json")), 4, "not a directory")
    # bare groups show their help, as gh and kubectl do
    group = agl("rollouts")
    assert group.code == 0, str(group)
    assert "agl rollouts list --watch" in group.stdout


# --------------------------------------------------------------------------------------------
# The hoisting, as a property over the commands' own option lists (in-process)
# --------------------------------------------------------------------------------------------

ROOT = cli_command()
LEAVES: list[tuple[tuple[str, ...], Any]] = []


def _leaves(cmd: Any, path: tuple[str, ...]) -> None:
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in sorted(subs.items()):
            _leaves(sub, (*path, name))
    else:
        LEAVES.append((path, cmd))


_leaves(ROOT, ())
GLOBAL_UNITS = (
    [[f] for f in GLOBAL_FLAGS]
    + [[o, "some/dir"] for o in GLOBAL_VALUED]
    + [["--store=x"], ["-vq"], ["-qs", "some/dir"], ["-vqsx"]]  # bundles ending with -s: found by a pass
)


def test_a_bundle_ending_with_the_store_option_is_hoisted_or_named_when_its_value_is_missing() -> None:
    assert hoist_globals(["stats", "-qs", "d"], ROOT).args == ["-qs", "d", "stats"]
    assert hoist_globals(["stats", "-vqsd"], ROOT).verbose
    assert hoist_globals(["stats", "-qs"], ROOT).missing_value == "-qs"


def test_no_command_declares_a_global_option() -> None:
    names = set(GLOBAL_FLAGS) | set(GLOBAL_VALUED)
    for path, cmd in LEAVES:
        declared = {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}
        assert not declared & names, path


@st.composite
def lines(draw: st.DrawFn) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """A command's own units (option + value, or an argument), global units, and their mix."""
    path, cmd = draw(st.sampled_from(LEAVES))
    units: list[list[str]] = []
    for param in cmd.params:
        if param.name == "help" or not draw(st.booleans()):
            continue
        value = draw(st.sampled_from(["x", "-1", "--json", "-q", "--store", "--", "ro-1"]))
        if param.param_type_name == "argument":
            units.append([value.lstrip("-") or "x"])
        elif getattr(param, "is_flag", False):
            units.append([param.opts[0]])
        else:
            units.append([param.opts[0], value])  # a value that may look like a global option
    globals_ = draw(st.lists(st.sampled_from(GLOBAL_UNITS), max_size=4))
    mixed = [[p] for p in path] + units
    for unit in globals_:
        mixed.insert(draw(st.integers(0, len(mixed))), unit)
    return list(path) + [t for u in units for t in u], globals_, mixed


@settings(max_examples=300, deadline=None)
@given(lines())
def test_global_options_are_hoisted_wherever_they_are(
    case: tuple[list[str], list[list[str]], list[list[str]]],
) -> None:
    canonical, globals_, mixed = case
    flat = [t for u in mixed for t in u]
    hoisted = hoist_globals(flat, ROOT)
    in_order = [u for u in mixed if any(u is g for g in globals_)]
    assert hoisted.args == [t for u in in_order for t in u] + canonical
    assert hoist_globals(hoisted.args, ROOT).args == hoisted.args  # idempotent
    # after --, nothing moves
    tail = ["--", "--json", "-s", "x"]
    assert hoist_globals([*flat, *tail], ROOT).args[-len(tail) :] == tail


# --------------------------------------------------------------------------------------------
# Shell completion of ids from the store
# --------------------------------------------------------------------------------------------


def _complete(agl: Agl, line: str, shell: str = "bash") -> list[str]:
    words = line.split(" ")
    env = {
        **agl.env,
        "_AGL_COMPLETE": f"complete_{shell}",
        "COMP_WORDS": line,
        "COMP_CWORD": str(len(words) - 1),
    }
    env["_TYPER_COMPLETE_ARGS"] = line
    res = subprocess.run([AGL], capture_output=True, text=True, env=env, cwd=agl.cwd, timeout=CALL_TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res.stdout.split()


def test_completion_of_ids_statuses_and_options(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    assert set(_complete(agl, "agl rollouts show ")) == {ids.done, ids.running, ids.queued}
    assert _complete(agl, f"agl rollouts show {ids.running[:6]}") == [
        r for r in (ids.queued, ids.running, ids.done) if r.startswith(ids.running[:6])
    ]
    assert _complete(agl, f"agl complete {ids.running} ") == [ids.attempt, "latest"]
    assert _complete(agl, f"agl reward {ids.running} 1 --attempt ") == [ids.attempt, "latest"]
    assert set(_complete(agl, "agl rollouts list --status ")) >= {"queuing", "running", "succeeded"}
    assert "--watch" in _complete(agl, "agl rollouts list --")
    assert _complete(agl, "agl resources show ") == [ids.resources, "latest"]
    zsh = _complete(agl, f"agl complete {ids.running} ", shell="zsh")
    assert any(ids.attempt in word for word in zsh)
    # no store: no suggestions, and no error
    assert _complete(Agl(agl.cwd / "nowhere", agl.cwd), "agl rollouts show ") == []


# --------------------------------------------------------------------------------------------
# Bulk export
# --------------------------------------------------------------------------------------------


def test_export_all_and_by_status(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    everything = agl.ok("export", "--all")
    docs = everything.lines()
    assert [d["rollout_id"] for d in docs] == [ids.done, ids.running, ids.queued]
    assert all({"attempts", "spans"} <= d.keys() and "attempt" not in d for d in docs)
    assert [s["name"] for s in docs[0]["spans"]] == ["step"]
    assert "exported 3 rollout(s)" in everything.stderr
    by_status = agl.ok("export", "--status", "succeeded", "--status", "queuing").lines()
    assert [d["rollout_id"] for d in by_status] == [ids.done, ids.queued]
    two = agl.ok("export", ids.queued, ids.done).lines()
    assert [d["rollout_id"] for d in two] == [ids.queued, ids.done]
    one = agl.ok("export", ids.done)
    assert one.json()["rollout_id"] == ids.done  # one id: one document, as before
    assert_error(agl("export"), 4, "--all")


def rollouts_list_names_the_damage(agl: Agl, ids: Ids, damaged: Path, *, indexed: bool) -> None:
    """``agl rollouts list`` lists the others and exits 7 naming the damaged record (it exited
    0 after a warning: a script took the partial list for the whole). Without a complete index
    every listing reads every record, so it meets the damage whatever its filter."""
    for args in ([], ["--status", "running"], ["--id-contains", ids.running[3:9]]):
        res = agl("rollouts", "list", *args)
        assert res.code == 7, str(res)
        assert [d["rollout_id"] for d in res.lines()] == ([ids.done, ids.queued] if not args else [])
        last = res.stderr.splitlines()[-1]
        assert last.startswith("agl: 1 rollout(s) left out, their records are damaged:"), str(res)
        assert str(damaged) in last, str(res)
        assert "Traceback" not in res.stderr, str(res)
    succeeded = agl("rollouts", "list", "--status", "succeeded")
    assert succeeded.code == (0 if indexed else 7), str(succeeded)
    assert [d["rollout_id"] for d in succeeded.lines()] == [ids.done]


def test_export_names_a_damaged_record_exports_the_rest_and_exits_7(seeded: tuple[Agl, Ids]) -> None:
    """A backup made with ``export --all`` must not look complete when a record could not be read."""
    agl, ids = seeded
    (directory,) = agl.store.glob(f"rollouts/*/{ids.running}")
    *_, newest = sorted((directory / "history").iterdir())
    newest.chmod(0o644)
    newest.write_text("{torn")
    (directory / "rollout.json").unlink()  # the mirror would still name the rollout's status
    for args in (["--all"], ["--status", "running", "--status", "succeeded", "--status", "queuing"]):
        res = agl("export", *args)
        assert res.code == 7, str(res)
        assert [d["rollout_id"] for d in res.lines()] == [ids.done, ids.queued]
        lines = res.stderr.splitlines()
        assert any(line.startswith("agl: corrupt record") and newest.name in line for line in lines), str(res)
        assert lines[-1].startswith("agl: 1 rollout(s) not exported"), str(res)
        assert ids.running in lines[-1], str(res)
        assert "exported 2 rollout(s)" in res.stderr
        assert "Traceback" not in res.stderr
    # A filter the damaged rollout was not in before the damage: nothing to report.
    assert [d["rollout_id"] for d in agl.ok("export", "--status", "succeeded").lines()] == [ids.done]
    rollouts_list_names_the_damage(agl, ids, newest, indexed=True)
    # A store whose rollout index is not known complete (one from before the index): the ids
    # come from the records, and the damaged one is still listed, so still reported.
    (agl.store / "index" / "rollouts" / "complete.json").unlink()
    rollouts_list_names_the_damage(agl, ids, newest, indexed=False)
    for args in (["--all"], ["--status", "running"]):
        res = agl("export", *args)
        assert res.code == 7, str(res)
        assert [d["rollout_id"] for d in res.lines()] == ([ids.done, ids.queued] if args == ["--all"] else [])
        assert ids.running in res.stderr.splitlines()[-1], str(res)
    alone = agl("export", ids.running)  # stderr may also hold the reaper's warning about it
    assert alone.code == 7, str(alone)
    assert alone.stderr.splitlines()[-1].startswith("agl: corrupt record"), str(alone)


def test_a_file_where_a_rollouts_history_belongs_is_damage_not_absence(seeded: tuple[Agl, Ids]) -> None:
    """Read as "no such rollout", it left `export --all` complete-looking and exit 0."""
    agl, ids = seeded
    (directory,) = agl.store.glob(f"rollouts/*/{ids.done}")
    history = directory / "history"
    for revision in history.iterdir():
        revision.chmod(0o644)
    shutil.rmtree(history)
    history.write_text("not a directory\n")
    res = agl("export", "--all")
    assert res.code == 7, str(res)
    assert [d["rollout_id"] for d in res.lines()] == [ids.running, ids.queued]
    assert ids.done in res.stderr.splitlines()[-1], str(res)
    shown = agl("rollouts", "show", ids.done)
    assert shown.code == 7, str(shown)
    assert shown.stderr.splitlines()[-1] == f"agl: corrupt record {history}: not a directory", str(shown)
    problem = {"kind": "corrupt-record", "path": str(history), "detail": "not a directory", "fixed": False}
    assert problem in agl("check").lines()


# --------------------------------------------------------------------------------------------
# Following the store: agl events --follow, agl rollouts list --watch
# --------------------------------------------------------------------------------------------


class Lines:
    """JSON lines of a running agl's stdout, read from the pipe itself (no hidden buffering, so
    a wait for the next line never blocks past its deadline)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.pending = b""

    def take(self, count: int, timeout: float = CALL_TIMEOUT) -> list[Any]:
        deadline = time.monotonic() + timeout
        while self.pending.count(b"\n") < count:
            ready, _, _ = select.select([self.fd], [], [], max(deadline - time.monotonic(), 0))
            assert ready, f"not {count} line(s) within {timeout}s: {self.pending!r}"
            chunk = os.read(self.fd, 65536)
            assert chunk, f"stdout closed: {self.pending!r}"
            self.pending += chunk
        lines = self.pending.split(b"\n")
        self.pending = b"\n".join(lines[count:])
        return [json.loads(line) for line in lines[:count]]


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Ctrl-C, then the exit code and stderr (killed if it does not stop)."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=CALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("agl did not stop on Ctrl-C")
    return proc.returncode, err


def test_events_follow_and_rollouts_watch(seeded: tuple[Agl, Ids]) -> None:
    agl, ids = seeded
    history = agl.ok("events").lines()
    assert {e["rollout_id"] for e in history} == {ids.done, ids.running, ids.queued}
    assert all({"rollout_id", "status", "previous", "time", "writer"} <= e.keys() for e in history)
    assert [e["status"] for e in agl.ok("events", "--rollout", ids.done).lines()][-1] == "succeeded"

    # one follower polls, as on a network filesystem; the other uses inotify
    procs: list[subprocess.Popen[str]] = []
    try:
        follow_proc = agl.popen(
            "events", "--follow", "--rollout", ids.queued, env={**agl.env, "AGL_WATCH": "poll"}
        )
        procs.append(follow_proc)
        watch_proc = agl.popen("rollouts", "list", "--watch", "--status", "queuing", "--status", "preparing")
        procs.append(watch_proc)
        follow, watch = Lines(follow_proc), Lines(watch_proc)
        assert [e["status"] for e in follow.take(1)] == ["queuing"]  # the past first
        assert [r["rollout_id"] for r in watch.take(1)] == [ids.queued]
        claimed = agl.dequeue("w-live")
        assert claimed["rollout_id"] == ids.queued
        event = follow.take(1)[0]
        assert (event["previous"], event["status"]) == ("queuing", "preparing")
        changed = watch.take(1)[0]  # only what changed is printed again
        assert (changed["rollout_id"], changed["status"]) == (ids.queued, "preparing")
        assert changed["attempt"]["worker_id"] == "w-live"
    finally:
        results = [_stop(proc) for proc in procs]
    for code, err in results:
        assert code == 130, err
        assert "Traceback" not in err
    assert "Ctrl-C" in results[0][1]


def test_follow_on_a_missing_store_is_one_line(tmp_path: Path) -> None:
    agl = Agl(tmp_path / "none", tmp_path)
    assert_error(agl("events", "--follow"), 5)
    assert_error(agl("rollouts", "list", "--watch"), 5)


def test_event_reader_reads_new_complete_lines_only(tmp_path: Path) -> None:
    from store_fs.live import EventReader

    events = tmp_path / "events"
    events.mkdir()
    log = events / "host-1.jsonl"
    first = {"rollout_id": "ro-1", "status": "queuing", "previous": None, "time": 2.0}
    log.write_text(json.dumps(first) + "\n" + '{"rollout_id": "ro-1", "sta')  # a line being written
    (events / "host-2.jsonl").write_text(
        'not json\n{"rollout_id": "ro-2", "status": "queuing", "time": 1.0}\n'
    )
    reader = EventReader(events)
    assert [(e["rollout_id"], e["writer"]) for e in reader.read_new()] == [
        ("ro-2", "host-2"),
        ("ro-1", "host-1"),
    ]
    assert reader.read_new() == []
    with log.open("a") as f:
        f.write('tus": "preparing", "previous": "queuing", "time": 3.0}\n')
    assert [(e["status"], e["previous"]) for e in reader.read_new()] == [("preparing", "queuing")]
