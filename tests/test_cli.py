"""End-to-end tests of the ``agl`` command: every call is a subprocess of the installed script.

Covers the whole training loop from the shell, the output conventions (JSON / JSONL on a
pipe, messages on stderr, ``--json``), bad input (documented exit code, one-line message,
store unchanged), the help texts, and ``examples/shell_loop.sh``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import (
    AGL,
    ATTEMPT_KEYS,
    CALL_TIMEOUT,
    ROLLOUT_KEYS,
    SPAN_KEYS,
    Agl,
    WarmAgl,
    agl_env,
    assert_error,
    diff_snapshots,
    json_lines,
    run_driver,
    run_on_tty,
    snapshot,
)

REPO = Path(__file__).resolve().parent.parent
HAVE_JQ = shutil.which("jq") is not None
needs_jq = pytest.mark.skipif(not HAVE_JQ, reason="jq is not installed")
UNKNOWN_ID = "ro-000000000000"
REWARD_NAME = "agentlightning.reward.0.name"
REWARD_VALUE = "agentlightning.reward.0.value"


@pytest.fixture
def agl(tmp_path: Path) -> Agl:
    """agl against an initialised, empty store at tmp_path/store."""
    runner = Agl(tmp_path / "store", tmp_path)
    runner.ok("init")
    return runner


def _finish(proc: subprocess.Popen[str], timeout: float = CALL_TIMEOUT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"agl did not finish within {timeout}s; stderr: {err}")
    return proc.returncode, out, err


# --------------------------------------------------------------------------------------------
# 1. The whole loop
# --------------------------------------------------------------------------------------------


def test_init_and_resources(tmp_path: Path) -> None:
    agl = Agl(tmp_path / "store", tmp_path)
    res = agl.ok("init")
    assert_error(agl("resources", "update", "latest", "--template", "x"), 3, "no resources yet")
    assert res.stdout == ""
    assert "store ready" in res.stderr
    assert (tmp_path / "store" / "FORMAT.json").is_file()
    agl.ok("init")  # safe to run again

    added = agl.ok("resources", "add", "--template", "Answer briefly: {any_question}").json()
    assert added["resources_id"].startswith("rs-")
    assert added["version"] == 1
    prompt = added["resources"]["main_prompt"]
    assert prompt["resource_type"] == "prompt_template"
    assert prompt["template"] == "Answer briefly: {any_question}"

    assert agl.ok("resources", "show", "latest").json() == added
    assert agl.ok("resources", "show").json() == added

    rid = added["resources_id"]
    updated = agl.ok("resources", "update", rid, "--template", "Answer at length: {any_question}")
    data = updated.json()
    assert data["resources_id"] == rid
    assert data["version"] == 2
    assert data["resources"]["main_prompt"]["template"] == "Answer at length: {any_question}"
    assert f"version {data['version']}" in updated.stderr
    assert agl.ok("resources", "show", rid).json()["version"] == 2
    assert agl.ok("resources", "show", "latest").json()["version"] == 2
    # 'latest' names the latest snapshot here too, never a new one called "latest"
    again = agl.ok("resources", "update", "latest", "--template", "Answer: {any_question}").json()
    assert (again["resources_id"], again["version"]) == (rid, 3)
    back = agl.ok("resources", "update", rid, "--template", "Answer at length: {any_question}").json()
    assert back["version"] == 4

    # new rollouts use the latest snapshot by default
    assert agl.enqueue("q")["resources_id"] == rid


def test_enqueue_forms(agl: Agl, tmp_path: Path) -> None:
    res = agl.ok(
        "enqueue",
        '{"question": "What is 2+2?"}',
        "--mode",
        "train",
        "--max-attempts",
        "3",
        "--retry-on",
        "failed",
        "--retry-on",
        "timeout",
        "--timeout",
        "30",
        "--unresponsive",
        "10",
        "--metadata",
        '{"source": "test"}',
    )
    assert "queued 1 rollout(s)" in res.stderr
    first = res.json()
    assert first.keys() >= ROLLOUT_KEYS
    assert first["rollout_id"].startswith("ro-")
    assert first["input"] == {"question": "What is 2+2?"}
    assert first["mode"] == "train"
    assert first["status"] == "queuing"
    assert first["metadata"] == {"source": "test"}
    assert first["config"]["max_attempts"] == 3
    assert first["config"]["retry_condition"] == ["failed", "timeout"]
    assert first["config"]["timeout_seconds"] == 30
    assert first["config"]["unresponsive_seconds"] == 10

    task = tmp_path / "task.json"
    task.write_text(json.dumps({"question": "from a file"}))
    from_file = agl.ok("enqueue", f"@{task}", "--mode", "val").json()
    assert from_file["input"] == {"question": "from a file"}
    assert from_file["mode"] == "val"

    many = agl.ok("enqueue", "--mode", "test", input='"a"\n{"b": 2}\n\n[3]\n')
    records = many.lines()
    assert [r["input"] for r in records] == ["a", {"b": 2}, [3]]
    assert all(r["mode"] == "test" and r["status"] == "queuing" for r in records)
    assert len({r["rollout_id"] for r in records}) == 3
    assert "queued 3 rollout(s)" in many.stderr

    keyed = agl.enqueue("keyed", "--key", "job-1")
    again = agl.enqueue("keyed", "--key", "job-1")
    assert again["rollout_id"] == keyed["rollout_id"]

    idem = agl.ok("enqueue", "--idempotent", input='"x"\n"y"\n').lines()
    idem_again = agl.ok("enqueue", "--idempotent", input='"x"\n"y"\n').lines()
    assert [r["rollout_id"] for r in idem_again] == [r["rollout_id"] for r in idem]
    assert len({r["rollout_id"] for r in idem}) == 2

    listed = agl.ok("rollouts", "list").lines()
    ids = [r["rollout_id"] for r in listed]
    assert len(ids) == len(set(ids))
    assert ids.count(keyed["rollout_id"]) == 1
    # 1 + 1 + 3 + 1 keyed + 2 idempotent
    assert len(ids) == 8
    assert sum(1 for r in listed if r["input"] == "keyed") == 1


def test_dequeue_on_empty_queue(agl: Agl) -> None:
    res = agl("dequeue", "--worker-id", "w1")
    assert res.code == 10, str(res)
    assert res.stdout == ""
    assert "empty" in res.stderr

    res = agl("dequeue", "--worker-id", "w1", "--wait", "1")
    assert res.code == 10, str(res)
    assert res.stdout == ""
    assert 0.9 <= res.seconds < 4.0, str(res)


def test_dequeue_wait_returns_when_something_is_enqueued(agl: Agl) -> None:
    proc = agl.popen("dequeue", "--worker-id", "bg", "--wait", "5")
    try:
        time.sleep(0.8)
        assert proc.poll() is None, "dequeue --wait returned before anything was queued"
        queued = agl.enqueue({"late": True})
        enqueued_at = time.monotonic()
    finally:
        code, out, err = _finish(proc)
    waited = time.monotonic() - enqueued_at
    assert code == 0, err
    got = json.loads(out)
    assert got["rollout_id"] == queued["rollout_id"]
    assert got["attempt"]["worker_id"] == "bg"
    assert waited < 3.0, f"dequeue returned {waited:.2f}s after the enqueue"


def test_a_negative_reward_needs_no_double_dash(agl: Agl) -> None:
    """``agl reward RID -0.25`` failed with "no such option: -0": a penalty needed ``--``."""
    rid = agl.enqueue({"question": "2+2"})["rollout_id"]
    aid = agl.ok("dequeue", "--worker-id", "w1").json()["attempt"]["attempt_id"]
    assert "reward -0.25 recorded" in agl.ok("reward", rid, "-0.25", "--attempt", aid).stderr
    assert "reward -1.0 recorded" in agl.ok("reward", rid, "--attempt", aid, "-1").stderr
    spans = agl.ok("spans", "list", rid).lines()
    assert [s["attributes"][REWARD_VALUE] for s in spans] == [-0.25, -1.0]
    assert_error(agl("reward", "--bogus", "1"), 2, "no such option: --bogus")


def test_runner_loop(agl: Agl) -> None:
    agl.ok("resources", "add", "--template", "Q: {any_question}")
    queued = agl.enqueue({"question": "2+2"}, "--mode", "train")
    rid = queued["rollout_id"]

    # the runner claims it
    res = agl.ok("dequeue", "--worker-id", "w1")
    got = res.json()
    assert got.keys() >= ROLLOUT_KEYS
    assert got["rollout_id"] == rid
    assert got["input"] == {"question": "2+2"}
    attempt = got["attempt"]
    assert attempt.keys() >= ATTEMPT_KEYS
    assert attempt["rollout_id"] == rid
    assert attempt["attempt_id"].startswith("at-")
    assert attempt["sequence_id"] == 1
    assert attempt["worker_id"] == "w1"
    assert attempt["status"] == "preparing"
    aid = attempt["attempt_id"]

    hb = agl("heartbeat", rid, aid)
    assert hb.code == 0, str(hb)
    assert hb.stdout == ""

    updated = agl.ok("attempts", "update", rid, aid, "--status", "running").json()
    assert updated["attempt_id"] == aid
    assert updated["status"] == "running"

    # partial spans on stdin, ids as arguments
    partial = '{"name": "openai.chat.completion", "attributes": {"gen_ai.prompt.0.content": "2+2"}}\n'
    partial += '{"name": "tool.call", "attributes": {"tool": "calc"}}\n'
    added = agl.ok("spans", "add", rid, aid, input=partial)
    assert "stored 2 span(s)" in added.stderr
    stored = added.lines()
    assert [s["name"] for s in stored] == ["openai.chat.completion", "tool.call"]
    assert all(s.keys() >= SPAN_KEYS for s in stored)
    assert all(s["rollout_id"] == rid and s["attempt_id"] == aid for s in stored)

    # a full upstream span line naming its own rollout and attempt
    full = _full_span(rid, aid, sequence_id=3, name="agent.step")
    full_added = agl.ok("spans", "add", input=json.dumps(full) + "\n").lines()
    assert len(full_added) == 1
    assert full_added[0]["span_id"] == full["span_id"]
    assert full_added[0]["attributes"] == full["attributes"]

    rewarded = agl.ok("reward", rid, "0.75", "--attempt", aid)
    assert "reward 0.75" in rewarded.stderr

    spans = agl.ok("spans", "list", rid).lines()
    assert [s["name"] for s in spans] == [
        "openai.chat.completion",
        "tool.call",
        "agent.step",
        "agentlightning.annotation",
    ]
    seqs = [s["sequence_id"] for s in spans]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    reward = spans[-1]
    assert reward["attributes"][REWARD_NAME] == "primary"
    assert reward["attributes"][REWARD_VALUE] == 0.75
    assert spans[0]["attributes"] == {"gen_ai.prompt.0.content": "2+2"}

    # tail without -f prints what is there and returns
    tailed = agl.ok("spans", "tail", rid).lines()
    assert [s["span_id"] for s in tailed] == [s["span_id"] for s in spans]

    done = agl.ok("complete", rid, aid).json()
    assert done["attempt_id"] == aid
    assert done["status"] == "succeeded"

    shown = agl.ok("rollouts", "show", rid).json()
    assert shown["status"] == "succeeded"
    assert [a["attempt_id"] for a in shown["attempts"]] == [aid]
    assert "attempt" not in shown

    waited = agl("wait", rid, "--timeout", "10")
    assert waited.code == 0, str(waited)
    assert [r["rollout_id"] for r in waited.lines()] == [rid]

    exported = agl.ok("export", rid)
    doc = exported.json()  # one JSON document
    assert doc["rollout_id"] == rid
    assert doc["status"] == "succeeded"
    assert [a["attempt_id"] for a in doc["attempts"]] == [aid]
    assert [s["span_id"] for s in doc["spans"]] == [s["span_id"] for s in spans]

    workers = agl.ok("workers", "list").lines()
    assert [w["worker_id"] for w in workers] == ["w1"]

    stats = agl.ok("stats").json()
    assert stats["total_rollouts"] == 1
    assert stats["total_attempts"] == 1
    assert stats["total_spans"] == 4
    assert stats["total_resources"] == 1
    assert stats["total_workers"] == 1

    clean = agl("check")
    assert clean.code == 0, str(clean)
    assert clean.stdout == ""
    assert "0 problem(s)" in clean.stderr


def _full_span(rollout_id: str, attempt_id: str, sequence_id: int, name: str) -> dict[str, Any]:
    """A complete span exactly as upstream Agent-lightning serialises one."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    span_id = "00f067aa0ba902b7"
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": sequence_id,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": None,
        "name": name,
        "status": {"status_code": "OK", "description": None},
        "attributes": {"step": 1, "agent.name": "calc"},
        "events": [],
        "links": [],
        "start_time": 1700000000.0,
        "end_time": 1700000001.5,
        "context": {"trace_id": trace_id, "span_id": span_id, "is_remote": False, "trace_state": {}},
        "parent": None,
        "resource": {"attributes": {"service.name": "runner"}, "schema_url": ""},
    }


def test_fail_retry_and_wait_exit_codes(agl: Agl) -> None:
    good = agl.enqueue("good")["rollout_id"]
    bad = agl.enqueue("bad")["rollout_id"]

    first = agl.dequeue("w1")
    assert first["rollout_id"] == good  # oldest first
    agl.ok("complete", good, first["attempt"]["attempt_id"])

    second = agl.dequeue("w2")
    assert second["rollout_id"] == bad
    failed = agl.ok("fail", bad, second["attempt"]["attempt_id"], "--error", "agent crashed").json()
    assert failed["status"] == "failed"
    assert failed["metadata"] == {"error": "agent crashed"}

    assert agl("wait", good, "--timeout", "10").code == 0
    both = agl("wait", good, bad, "--timeout", "10")
    assert both.code == 12, str(both)
    assert {r["rollout_id"]: r["status"] for r in both.lines()} == {good: "succeeded", bad: "failed"}

    by_status = agl.ok("rollouts", "list", "--status", "failed").lines()
    assert [r["rollout_id"] for r in by_status] == [bad]
    two = agl.ok("rollouts", "list", "--status", "succeeded", "--status", "failed").lines()
    assert sorted(r["rollout_id"] for r in two) == sorted([good, bad])

    retried = agl.ok("rollouts", "retry", bad)
    assert [r["status"] for r in retried.lines()] == ["requeuing"]
    assert "requeued" in retried.stderr
    assert [r["rollout_id"] for r in agl.ok("rollouts", "list", "--status", "requeuing").lines()] == [bad]

    again = agl.dequeue("w3")
    assert again["rollout_id"] == bad
    assert again["attempt"]["sequence_id"] == 2
    assert again["attempt"]["attempt_id"] != second["attempt"]["attempt_id"]
    shown = agl.ok("rollouts", "show", bad).json()
    assert [a["sequence_id"] for a in shown["attempts"]] == [1, 2]
    assert shown["attempts"][0]["status"] == "failed"
    assert shown["attempts"][0]["metadata"] == {"error": "agent crashed"}

    pending = agl.enqueue("never picked up")["rollout_id"]
    timed_out = agl("wait", pending, "--timeout", "0.5")
    assert timed_out.code == 11, str(timed_out)
    assert timed_out.stdout == ""
    assert "not finished" in timed_out.stderr

    assert_error(agl("wait", UNKNOWN_ID, "--timeout", "1"), 3, UNKNOWN_ID)
    # A filter that matched nothing: none to wait for, so done (it was exit 4, and a script's
    # `agl rollouts list --status running | jq -r .rollout_id | agl wait - && next` stopped).
    nothing = agl("wait", "-", "--timeout", "1", input="")
    assert (nothing.code, nothing.stdout) == (0, ""), str(nothing)
    assert "nothing to wait for" in nothing.stderr
    piped = agl("wait", "-", "--timeout", "10", input=f"{good}\n\n")
    assert piped.code == 0, str(piped)
    # '-' among ids was taken for a rollout id ("unknown rollout -", exit 3).
    assert_error(agl("wait", "-", good, "--timeout", "1", input=""), 4, "give it alone")


def test_attempts_update_status_drives_the_rollout(agl: Agl) -> None:
    rid = agl.enqueue("x")["rollout_id"]
    aid = agl.dequeue()["attempt"]["attempt_id"]
    res = agl.ok("attempts", "update", rid, "latest", "--status", "failed", "--metadata", '{"why": "test"}')
    assert res.json()["attempt_id"] == aid
    assert res.json()["status"] == "failed"
    shown = agl.ok("rollouts", "show", rid).json()
    assert shown["status"] == "failed"
    assert shown["attempts"][0]["metadata"] == {"why": "test"}


def test_heartbeat_after_cancel_exits_13(agl: Agl) -> None:
    running = agl.enqueue("long task")["rollout_id"]
    queued = agl.enqueue("never runs")["rollout_id"]
    aid = agl.dequeue("w1")["attempt"]["attempt_id"]
    assert agl("heartbeat", running, aid).code == 0

    cancelled = agl.ok("rollouts", "cancel", running, queued)
    assert [(r["rollout_id"], r["status"]) for r in cancelled.lines()] == [
        (running, "cancelled"),
        (queued, "cancelled"),
    ]
    assert f"cancelled {running}" in cancelled.stderr

    hb = agl("heartbeat", running, aid)
    assert hb.code == 13, str(hb)
    assert hb.stdout == ""
    assert "no longer live" in hb.stderr
    assert agl.ok("rollouts", "show", running).json()["status"] == "cancelled"
    # a cancelled queued rollout never runs
    assert agl("dequeue", "--worker-id", "w2").code == 10
    assert agl("wait", running, queued, "--timeout", "5").code == 12


def test_spans_tail_follow_stops_when_the_rollout_finishes(agl: Agl) -> None:
    rid = agl.enqueue("followed")["rollout_id"]
    aid = agl.dequeue()["attempt"]["attempt_id"]
    agl.ok("spans", "add", rid, aid, input='{"name": "before"}\n')
    proc = agl.popen("spans", "tail", "-f", rid, "--interval", "0.1")
    try:
        agl.ok("spans", "add", rid, aid, input='{"name": "during"}\n')
        time.sleep(0.3)
        assert proc.poll() is None, "tail -f stopped while the rollout was still running"
        agl.ok("complete", rid, aid)
    finally:
        code, out, err = _finish(proc, timeout=10)
    assert code == 0, err
    assert [s["name"] for s in json_lines(out)] == ["before", "during"]


@pytest.mark.parametrize("tool", [pytest.param("jq", marks=needs_jq), "python"])
def test_shell_pipeline_extracts_ids(agl: Agl, tool: str) -> None:
    """The README's pipeline: ids out of `agl dequeue` and spans out of `agl spans list`."""
    rid = agl.enqueue({"question": "2+2"})["rollout_id"]
    if tool == "jq":
        script = (
            'R=$("$AGL" dequeue --worker-id w1) && jq -r .rollout_id <<<"$R" && '
            'jq -r .attempt.attempt_id <<<"$R"'
        )
        res = _bash(agl, script)
        got_rid, got_aid = res.stdout.split()
    else:
        got = agl.dequeue("w1")
        got_rid, got_aid = got["rollout_id"], got["attempt"]["attempt_id"]
    assert got_rid == rid
    assert got_aid.startswith("at-")

    agl.ok("spans", "add", rid, got_aid, input='{"name": "one"}\n{"name": "two"}\n')
    if tool == "jq":
        res = _bash(agl, '"$AGL" spans list "$1" | jq -c \'{sequence_id, name}\'', rid)
        pairs = json_lines(res.stdout)
    else:
        pairs = [
            {"sequence_id": s["sequence_id"], "name": s["name"]} for s in agl.ok("spans", "list", rid).lines()
        ]
    assert pairs == [{"sequence_id": 1, "name": "one"}, {"sequence_id": 2, "name": "two"}]


def _bash(agl: Agl, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(agl.env, AGL=AGL)
    res = subprocess.run(
        ["bash", "-c", "set -euo pipefail; " + script, "bash", *args],
        capture_output=True,
        text=True,
        cwd=agl.cwd,
        env=env,
        timeout=CALL_TIMEOUT,
    )
    assert res.returncode == 0, res.stderr
    return res


# --------------------------------------------------------------------------------------------
# check and corrupt files
# --------------------------------------------------------------------------------------------


def _rollout_dir(store: Path, rollout_id: str) -> Path:
    (found,) = store.glob(f"rollouts/*/{rollout_id}")
    return found


def test_check_reports_a_corrupt_history_file(agl: Agl) -> None:
    rid = agl.enqueue("to be corrupted")["rollout_id"]
    assert agl("check").code == 0
    newest = sorted((_rollout_dir(agl.store, rid) / "history").iterdir())[-1]
    newest.write_text('{"rollout_id": "' + rid + '", "stat')  # a torn write

    res = agl("check")
    assert res.code == 7, str(res)
    assert "Traceback" not in res.stderr
    problems = res.lines()
    assert problems, str(res)
    assert any(p["path"] == str(newest) and not p["fixed"] for p in problems), problems
    assert all({"kind", "path", "detail", "fixed"} <= p.keys() for p in problems)

    assert_error(agl("rollouts", "show", rid), 7, newest.name)


def test_torn_span_line(agl: Agl) -> None:
    """A writer that died mid-line: readers skip the torn line, check reports it once the
    attempt is over (while it is live the tail may be a write in progress)."""
    rid = agl.enqueue("spans")["rollout_id"]
    aid = agl.dequeue()["attempt"]["attempt_id"]
    agl.ok("spans", "add", rid, aid, input='{"name": "a"}\n{"name": "b"}\n')
    (span_file,) = _rollout_dir(agl.store, rid).glob("attempts/*/spans*.jsonl")
    with span_file.open("ab") as f:
        f.write(b'{"rollout_id": "' + rid.encode() + b'", "attempt_id": "' + aid.encode() + b'", "seq')

    assert [s["name"] for s in agl.ok("spans", "list", rid).lines()] == ["a", "b"]
    agl.ok("complete", rid, aid)
    # Exported with what could be read, the torn line named, exit 7: a backup that lacks a span
    # must not look complete (as `agl data rollouts`, which leaves the rollout out).
    exported = agl("export", rid)
    assert exported.code == 7, str(exported)
    assert [s["name"] for s in exported.json()["spans"]] == ["a", "b"]
    assert str(span_file) in exported.stderr

    res = agl("check")
    assert res.code == 7, str(res)
    assert "Traceback" not in res.stderr
    problems = res.lines()
    assert any(
        p["path"] == str(span_file) and re.search(r"torn|corrupt", p["kind"] + p["detail"]) for p in problems
    ), problems


# --------------------------------------------------------------------------------------------
# 2. Output conventions
# --------------------------------------------------------------------------------------------


def test_messages_go_to_stderr_and_data_to_stdout(agl: Agl) -> None:
    res = agl.ok("enqueue", '"a"')
    assert "queued" in res.stderr
    assert "queued" not in res.stdout
    assert res.stdout.count("\n") == 1  # one compact document on a pipe
    rid = res.json()["rollout_id"]
    aid = agl.dequeue()["attempt"]["attempt_id"]
    steps = [
        (["spans", "add", rid, aid], '{"name": "s"}\n', "stored 1 span(s)"),
        (["reward", rid, "1"], None, "reward 1.0 recorded"),
        (["complete", rid, aid], None, None),
        (["rollouts", "retry", rid], None, f"requeued {rid}"),
        (["rollouts", "cancel", rid], None, f"cancelled {rid}"),
    ]
    for args, stdin, message in steps:
        out = agl.ok(*args, input=stdin)
        assert out.stdout.strip(), str(out)
        if message is not None:
            assert message in out.stderr, str(out)
            assert message not in out.stdout, str(out)
        for record in out.lines():  # every line is a JSON record of this rollout
            assert isinstance(record, dict)
            assert record["rollout_id"] == rid


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_json_option_forces_json_on_a_terminal(agl: Agl) -> None:
    agl.enqueue("one")
    agl.enqueue("two")
    table = _run_on_tty(agl, "rollouts", "list")
    assert table.splitlines()[0].split()[:2] == ["ROLLOUT_ID", "STATUS"]
    with pytest.raises(json.JSONDecodeError):
        json_lines(table)

    forced = json_lines(_run_on_tty(agl, "--json", "rollouts", "list"))
    assert [r["input"] for r in forced] == ["one", "two"]
    assert all(r.keys() >= ROLLOUT_KEYS for r in forced)
    stats = json_lines(_run_on_tty(agl, "--json", "stats"))
    assert len(stats) == 1
    assert stats[0]["total_rollouts"] == 2


def _run_on_tty(agl: Agl, *args: str) -> str:
    """agl with stdout on a pseudo-terminal (no colour); returns what it printed there."""
    code, out, err = run_on_tty(agl, *args, env={**agl.env, "NO_COLOR": "1"})
    assert code == 0, err
    return out


# --------------------------------------------------------------------------------------------
# 3. Bad input: documented exit code, one line on stderr, store unchanged
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, warm_agl: WarmAgl) -> tuple[Agl, str, str]:
    """A store with resources, a running rollout with spans and a queued one (shared: tests only
    run commands that must not change it, and each checks that it did not). Its many short
    calls run warm (cli_helpers.WarmAgl); the rest of this module runs the real executable."""
    root = tmp_path_factory.mktemp("populated")
    agl = Agl(root / "store", root, warm=warm_agl)
    agl.ok("init")
    agl.ok("resources", "add", "--template", "Q: {any_question}")
    rid = agl.enqueue("running")["rollout_id"]
    agl.enqueue("queued")
    aid = agl.dequeue()["attempt"]["attempt_id"]
    agl.ok("spans", "add", rid, aid, input='{"name": "a"}\n')
    return agl, rid, aid


BAD_CASES: list[tuple[str, list[str], str | None, int | tuple[int, ...], str]] = [
    ("malformed-json-arg", ["enqueue", '{"question": '], None, 4, "malformed JSON"),
    ("metadata-not-object", ["enqueue", '"x"', "--metadata", "[1]"], None, 4, "--metadata"),
    ("missing-at-file", ["enqueue", "@does-not-exist.json"], None, 4, "does-not-exist.json"),
    ("bad-retry-on", ["enqueue", '"x"', "--retry-on", "sometimes"], None, 2, "'failed', 'timeout'"),
    ("stdin-line-2", ["enqueue"], '"one"\n{"two": \n"three"\n', 4, "line 2"),
    (
        "spans-line-2",
        ["spans", "add", "{rid}", "{aid}"],
        '{"name": "ok"}\n{"name"\n{"name": "c"}\n',
        4,
        "line 2",
    ),
    ("span-not-object", ["spans", "add", "{rid}", "{aid}"], "[1, 2]\n", 4, "line 1"),
    ("bad-status", ["attempts", "update", "{rid}", "{aid}", "--status", "bogus"], None, 2, "--status"),
    ("unknown-show", ["rollouts", "show", UNKNOWN_ID], None, 3, UNKNOWN_ID),
    ("unknown-export", ["export", UNKNOWN_ID], None, 3, UNKNOWN_ID),
    ("unknown-spans", ["spans", "list", UNKNOWN_ID], None, 3, UNKNOWN_ID),
    ("unknown-complete", ["complete", UNKNOWN_ID, "at-00000000"], None, 3, UNKNOWN_ID),
    ("unknown-reward", ["reward", UNKNOWN_ID, "1"], None, 3, UNKNOWN_ID),
    ("unknown-heartbeat", ["heartbeat", UNKNOWN_ID, "at-00000000"], None, 3, UNKNOWN_ID),
    ("unknown-cancel", ["rollouts", "cancel", "{rid}", UNKNOWN_ID], None, 3, UNKNOWN_ID),
    ("unknown-attempt", ["complete", "{rid}", "at-00000000"], None, 3, "at-00000000"),
    ("unknown-resources", ["resources", "show", "rs-000000000000"], None, 3, "rs-000000000000"),
    ("escape-show", ["rollouts", "show", "../x"], None, (3, 4), "../x"),
    ("escape-prefixed", ["rollouts", "show", "ro-../../etc"], None, (3, 4), "ro-../../etc"),
    ("escape-spans-list", ["spans", "list", "../x"], None, (3, 4), "../x"),
    ("escape-complete", ["complete", "ro-../../etc", "../x"], None, (3, 4), "../"),
    ("escape-wait", ["wait", "../x", "--timeout", "1"], None, (3, 4), "../x"),
    ("escape-attempt", ["heartbeat", "{rid}", "../../x"], None, (3, 4), "../../x"),
    (
        "escape-span-line",
        ["spans", "add"],
        '{"rollout_id": "ro-../../etc", "attempt_id": "../x", "name": "s"}\n',
        (3, 4),
        "../",
    ),
    ("escape-resources", ["resources", "update", "../x", "--template", "t"], None, (3, 4), "../x"),
]


@pytest.mark.parametrize(
    ("args", "stdin", "code", "needle"),
    [pytest.param(a, s, c, n, id=name) for name, a, s, c, n in BAD_CASES],
)
def test_bad_input_leaves_the_store_unchanged(
    populated: tuple[Agl, str, str],
    args: list[str],
    stdin: str | None,
    code: int | tuple[int, ...],
    needle: str,
) -> None:
    agl, rid, aid = populated
    args = [a.format(rid=rid, aid=aid) if a in ("{rid}", "{aid}") else a for a in args]
    before = snapshot(agl.store)
    res = agl(*args, input=stdin)
    assert_error(res, code, needle)
    assert diff_snapshots(before, snapshot(agl.store)) == []
    assert not (agl.store.parent / "x").exists()
    assert not (agl.store / "x").exists()


def test_missing_store_exits_5(tmp_path: Path) -> None:
    agl = Agl(tmp_path / "store", tmp_path)
    missing = tmp_path / "nowhere"
    for args in (["--store", str(missing), "stats"], ["--store", str(missing), "enqueue", '"x"']):
        assert_error(agl(*args), 5, str(missing))
    # AGL_STORE pointing at nothing is the same
    assert_error(agl("rollouts", "list"), 5)
    assert not missing.exists()
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "runs").exists()


def test_unknown_option_exits_2(populated: tuple[Agl, str, str]) -> None:
    agl, _, _ = populated
    before = snapshot(agl.store)
    for args, needle in (
        (["rollouts", "list", "--bogus"], "agl rollouts list --help"),
        (["--bogus", "stats"], "agl --help"),
        (["no-such-command"], "no-such-command"),
    ):
        assert_error(agl(*args), 2, needle)  # one line naming the problem and where help is
    assert diff_snapshots(before, snapshot(agl.store)) == []


# --------------------------------------------------------------------------------------------
# 4. Help
# --------------------------------------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    """Every leaf command of the app, e.g. ("rollouts", "list")."""
    import typer

    from agl_cli.main import app

    paths: list[tuple[str, ...]] = []

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        subcommands = getattr(cmd, "commands", None)  # typer vendors click: no isinstance check
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                walk(sub, (*prefix, name))
        else:
            paths.append(prefix)

    walk(typer.main.get_command(app), ())
    return paths


COMMANDS = _command_paths()
GROUPS = sorted({path[:1] for path in COMMANDS if len(path) > 1})


def test_the_command_list_is_complete() -> None:
    names = {" ".join(p) for p in COMMANDS}
    expected = {
        "init",
        "enqueue",
        "dequeue",
        "wait",
        "complete",
        "fail",
        "heartbeat",
        "reward",
        "stats",
        "check",
        "export",
        "events",
        "rollouts list",
        "rollouts show",
        "rollouts cancel",
        "rollouts retry",
        "attempts update",
        "spans add",
        "spans list",
        "spans tail",
        "resources add",
        "resources update",
        "resources show",
        "workers list",
    }
    assert expected <= names


def _example_lines(help_text: str, command: tuple[str, ...]) -> list[str]:
    """Lines of an example (an indented line running `agl <command>`), not the usage line."""
    call = " ".join(("agl", *command))
    return [
        line
        for line in help_text.splitlines()
        if not line.lstrip().startswith("Usage:") and line.startswith(" ") and call in line
    ]


def test_top_level_help(tmp_path: Path) -> None:
    # How fast --help answers is a benchmark's business (a timed assertion flakes on a shared
    # machine); here, that it answers and teaches.
    res = subprocess.run(
        [AGL, "--help"], capture_output=True, text=True, env=agl_env(None), timeout=CALL_TIMEOUT
    )
    assert res.returncode == 0, res.stderr
    assert _example_lines(res.stdout, ("init",)), res.stdout
    assert "Exit codes" in res.stdout
    for group in GROUPS:
        assert group[0] in res.stdout


@pytest.fixture(scope="module")
def help_texts(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], dict[str, Any]]:
    """``agl <command> --help`` of every command and group, run by the installed script in forked
    children of one warm interpreter (cli_helpers.run_driver): ~50 fresh processes cost ~25 s
    of imports. test_top_level_help runs the real executable."""
    root = tmp_path_factory.mktemp("help")
    sandbox, work = root / "sandbox", root / "work"
    sandbox.mkdir()
    work.mkdir()
    env = agl_env(sandbox / "none")
    commands = COMMANDS + GROUPS
    specs = [
        {"args": [*command, "--help"], "env": env, "stdin": None, "timeout": CALL_TIMEOUT}
        for command in commands
    ]
    return dict(zip(commands, run_driver(sandbox, specs, work), strict=True))


@pytest.mark.parametrize("command", COMMANDS + GROUPS, ids=lambda p: "-".join(p))
def test_command_help_has_an_example(
    help_texts: dict[tuple[str, ...], dict[str, Any]], command: tuple[str, ...]
) -> None:
    res = help_texts[command]
    assert res["code"] == 0, res["stderr"]
    assert "Traceback" not in res["stderr"]
    assert res["changes"] == []  # --help writes nothing
    stdout = res["stdout"]
    if command in GROUPS:  # a group lists its commands, and shows examples too
        for sub in (p for p in COMMANDS if p[: len(command)] == command):
            assert sub[-1] in stdout
        assert "Examples:" in stdout, stdout
    assert _example_lines(stdout, command), f"no example of `agl {' '.join(command)}`:\n{stdout}"


# --------------------------------------------------------------------------------------------
# 5. examples/shell_loop.sh
# --------------------------------------------------------------------------------------------


@needs_jq
def test_shell_loop_example(tmp_path: Path) -> None:
    env = agl_env(None)
    env["PATH"] = os.pathsep.join([str(Path(AGL).parent), env.get("PATH", "")])
    res = subprocess.run(
        ["bash", str(REPO / "examples" / "shell_loop.sh"), str(tmp_path / "loop"), "4"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 4, res.stdout
    for line in lines:
        match = re.fullmatch(r"\[Algo\] (ro-[0-9a-f]+) reward (\S+)", line)
        assert match, line
        assert float(match.group(2)) == pytest.approx(0.17)  # "question number N" has 17 characters
    assert len({line.split()[1] for line in lines}) == 4


def test_shell_completion_suggests_subcommands(tmp_path: Path) -> None:
    env = {**os.environ, "_AGL_COMPLETE": "complete_bash", "COMP_WORDS": "agl rollouts l", "COMP_CWORD": "2"}
    result = subprocess.run([AGL], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0
    assert "list" in result.stdout.split()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [[], ["rollouts"], ["data"]], ids=["agl", "group", "data"])
def test_help_of_a_bare_group_into_a_full_stdout_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """Found by an adversarial pass: `agl` or `agl rollouts` alone prints help, and a stdout
    that cannot be written ended that in a traceback."""
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [AGL, *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=agl_env(tmp_path / "s"),
            timeout=60,
        )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip() == "agl: No space left on device (--verbose shows the traceback)"


def test_a_store_inside_another_store_is_refused(tmp_path: Path) -> None:
    """Found by an adversarial pass: `agl init outer/rollouts` made a store among the outer
    store's rollouts, which `agl check` then reported as hundreds of problems and `--fix`
    could not repair (exit 1). A store is never made inside another one."""
    from store_fs import FileStore
    from store_fs.errors import NestedStoreError

    outer = Agl(tmp_path / "outer", tmp_path)
    outer.ok("init", str(outer.store))
    outer.ok("enqueue", '"x"')
    before = snapshot(outer.store)
    for inner in (outer.store / "rollouts", outer.store / "deeper" / "store"):
        assert_error(outer("init", str(inner)), 4, "inside the store at", str(outer.store))
    with pytest.raises(NestedStoreError):
        FileStore(outer.store / "index" / "x")
    assert diff_snapshots(before, snapshot(outer.store)) == []
    assert outer.ok("check", "--json").lines() == []


def test_a_server_url_is_refused_where_a_store_directory_is_needed(tmp_path: Path) -> None:
    """Found by an adversarial pass: `agl init http://127.0.0.1:4747` made a directory `http:`,
    and every command given that URL then worked on it without a word."""
    agl = Agl(tmp_path / "unused", tmp_path)
    env = {**agl.env, "AGL_STORE": "http://127.0.0.1:4747"}
    for args in (("init",), ("enqueue", '"x"'), ("stats",), ("check",)):
        res = agl(*args, env=env)
        assert_error(res, 4, "http://127.0.0.1:4747", "store server's URL")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options",
    [
        ["--template", "Q: {q}", "--llm-endpoint", "http://127.0.0.1:8000/v1", "--model", "m"],
        ["--template", "Q: {q}", "--llm-endpoint", "http://127.0.0.1:8000/v1"],
        [
            "--body",
            '{"p": {"resource_type": "prompt_template", "template": "b", "engine": "f-string"}}',
            "--template",
            "x",
        ],
    ],
    ids=["template-and-llm", "template-and-endpoint", "body-and-template"],
)
def test_resources_add_refuses_several_sources_at_once(tmp_path: Path, options: list[str]) -> None:
    """Found by an adversarial pass: all but one were dropped without a word (exit 0)."""
    agl = Agl(tmp_path / "s", tmp_path)
    agl.ok("init", str(agl.store))
    before = snapshot(agl.store)
    assert_error(agl("resources", "add", *options), 4, "not several")
    assert diff_snapshots(before, snapshot(agl.store)) == []


def test_a_store_path_or_archive_path_that_is_not_utf8_is_refused_before_anything(tmp_path: Path) -> None:
    """Found by an adversarial pass: AGL_STORE holding bytes that are not UTF-8 gave "unexpected
    TypeError" (doctor, report), and `agl prune --archive` run in such a directory left an
    empty removal behind, which `agl check` took for an unfinished prune (exit 7)."""
    agl = Agl(tmp_path / "s", tmp_path)
    bad_env = {**agl.env, "AGL_STORE": os.fsdecode(b"st\xff")}
    for args in (("doctor",), ("report", "-o", "r.html"), ("stats",)):
        assert_error(agl(*args, env=bad_env), 4, "AGL_STORE is not valid UTF-8")
    agl.ok("init", str(agl.store))
    rid = agl.enqueue("x")["rollout_id"]
    aid = agl.dequeue()["attempt"]["attempt_id"]
    agl.ok("complete", rid, aid)
    odd = tmp_path / os.fsdecode(b"cwd\xff")
    odd.mkdir()
    res = subprocess.run(
        [AGL, "prune", "--status", "succeeded", "--archive", "a.tar"],
        cwd=odd,
        env=agl.env,
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
    )
    assert res.returncode == 4, res.stderr
    assert "Traceback" not in res.stderr
    assert agl.ok("check", "--json").lines() == []  # nothing half done
    assert [r["rollout_id"] for r in agl.ok("rollouts", "list", "--json").lines()] == [rid]


def test_a_closed_standard_stream_is_taken_for_dev_null(tmp_path: Path) -> None:
    """Found by an adversarial pass: `agl stats >&-` ended in "unexpected AttributeError", and
    `agl enqueue 1 >&-` too, after storing its rollout."""
    agl = Agl(tmp_path / "s", tmp_path)
    agl.ok("init", str(agl.store))

    def closed(args: list[str], fd: int) -> subprocess.CompletedProcess[str]:
        close = {0: "<&-", 1: ">&-", 2: "2>&-"}[fd]
        line = " ".join(f"'{a}'" for a in [AGL, *args]) + f" {close}"
        return subprocess.run(
            ["bash", "-c", line], env=agl.env, capture_output=True, text=True, timeout=CALL_TIMEOUT
        )

    assert closed(["stats"], 1).returncode == 0
    assert closed(["enqueue", "1"], 1).returncode == 0
    assert agl.ok("stats").json()["total_rollouts"] == 1
    assert closed(["rollouts", "show", "ro-000000000000"], 2).returncode == 3
    res = closed(["enqueue"], 0)
    assert res.returncode == 4
    assert "Traceback" not in res.stderr


def test_output_and_cursor_naming_one_file_is_refused(tmp_path: Path) -> None:
    """Found by an adversarial pass: the cursor, saved after the rows, replaced them (exit 0),
    and the next run exported nothing: the cursor said they were delivered."""
    agl = Agl(tmp_path / "s", tmp_path)
    agl.ok("init", str(agl.store))
    same = tmp_path / "rows.jsonl"
    assert_error(agl("data", "rollouts", "-o", str(same), "--cursor", str(same)), 4, "same file")
    assert not same.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_dequeue_whose_answer_cannot_be_printed_names_the_claimed_attempt(tmp_path: Path) -> None:
    """Found by an adversarial pass: the claim was made, the answer lost (exit 1) without a word
    of which attempt was now the caller's, left preparing for good."""
    agl = Agl(tmp_path / "s", tmp_path)
    agl.ok("init", str(agl.store))
    rid = agl.enqueue("x")["rollout_id"]
    with open("/dev/full", "w") as full:
        res = subprocess.run(
            [AGL, "dequeue", "--worker-id", "w1"], stdout=full, stderr=subprocess.PIPE, text=True, env=agl.env
        )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    (rollout,) = agl.ok("rollouts", "list", "--json").lines()
    assert f"claimed attempt {rollout['attempt']['attempt_id']} of {rid}" in res.stderr
