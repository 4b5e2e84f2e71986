"""`agl data triplets|messages|rollouts` and `agl prune`, end to end through the installed command."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path

import pytest
from cli_helpers import Agl, assert_error
from datasets_helpers import make_rollout

from store_fs import FileStore


@pytest.fixture
def made(tmp_path: Path) -> tuple[Agl, dict[str, str]]:
    root = tmp_path / "store"

    async def seed() -> dict[str, str]:
        store = FileStore(root)
        ids = {
            "ok": await make_rollout(store, question="the key is sk-SECRET42", calls=2),
            "silent": await make_rollout(store, reward=None),
            "failed": await make_rollout(store, end="failed"),
            "running": await make_rollout(store, end=None),
        }
        store.close()
        return ids

    return Agl(root, tmp_path), asyncio.run(seed())


def test_data_views_print_json_lines(made: tuple[Agl, dict[str, str]]) -> None:
    agl, ids = made
    triplets = agl.ok("data", "triplets").lines()
    assert [(t["rollout_id"], t["step"]) for t in triplets] == [
        (ids["ok"], 0),
        (ids["ok"], 1),
        (ids["silent"], 0),
        (ids["silent"], 1),
    ]
    assert {t["ended"] for t in triplets} == {"succeeded", "no_reward"}
    everything = agl.ok("data", "messages", "--ended", "any").lines()
    assert {m["rollout_id"] for m in everything} == set(ids.values())
    failed = agl.ok("data", "rollouts", "--ended", "failed")
    assert [r["rollout_id"] for r in failed.lines()] == [ids["failed"]]
    assert "from 1 rollout(s)" in failed.stderr  # those written, not those read
    no_reward = agl.ok("data", "triplets", "--ended", "no_reward")
    assert "wrote 2 triplets row(s) from 1 rollout(s)" in no_reward.stderr
    assert failed.lines()[0]["attempts"][0]["status"] == "failed"
    res = agl.ok(
        "data",
        "triplets",
        "--rollout",
        ids["ok"],
        "--status",
        "succeeded",
        "--since",
        "1d",
        "--mode",
        "train",
    )
    assert {t["rollout_id"] for t in res.lines()} == {ids["ok"]}
    assert "wrote 2 triplets row(s) from 1 rollout(s)" in res.stderr


def test_redact_output_files_and_cursor(made: tuple[Agl, dict[str, str]], tmp_path: Path) -> None:
    agl, ids = made
    text = agl.ok("data", "triplets", "--redact", r"sk-[A-Z0-9]+").stdout
    assert "sk-SECRET42" not in text
    assert "[REDACTED]" in text
    out = tmp_path / "t.jsonl"
    agl.ok("data", "messages", "-o", str(out))
    assert len(out.read_text().splitlines()) == 2
    pytest.importorskip("pyarrow")
    parquet = tmp_path / "t.parquet"
    agl.ok("data", "triplets", "-o", str(parquet))
    assert parquet.stat().st_size > 0
    cursor = tmp_path / "c.json"
    first = agl.ok("data", "triplets", "--cursor", str(cursor)).lines()
    assert {t["rollout_id"] for t in first} == {ids["ok"], ids["silent"]}
    assert agl.ok("data", "triplets", "--cursor", str(cursor)).lines() == []
    json.loads(cursor.read_text())  # a JSON document, saved whole
    # A device as the cursor ended in "unexpected" (exit 1, a traceback with --verbose).
    refused = agl("data", "triplets", "--cursor", "/dev/null")
    assert refused.code == 4, str(refused)
    assert "not a regular file" in refused.stderr


def test_a_reward_given_after_the_rollout_finished_comes_again_from_the_cursor(
    made: tuple[Agl, dict[str, str]], tmp_path: Path
) -> None:
    agl, ids = made
    cursor = tmp_path / "c.json"
    first = agl.ok("data", "triplets", "--cursor", str(cursor)).lines()
    assert {(t["rollout_id"], t["final_reward"]) for t in first} == {(ids["ok"], 1.0), (ids["silent"], None)}
    agl.ok("reward", ids["silent"], "0.7")  # a grader, after the rollout finished
    again = agl.ok("data", "triplets", "--cursor", str(cursor)).lines()
    assert {(t["rollout_id"], t["final_reward"]) for t in again} == {(ids["silent"], 0.7)}
    assert agl.ok("data", "triplets", "--cursor", str(cursor)).lines() == []


def test_follow_stops_after_idle_timeout(made: tuple[Agl, dict[str, str]]) -> None:
    agl, ids = made
    res = agl.ok("data", "messages", "--follow", "--idle-timeout", "0.5")
    assert {m["rollout_id"] for m in res.lines()} == {ids["ok"], ids["silent"]}


def test_bad_input_is_refused(made: tuple[Agl, dict[str, str]], tmp_path: Path) -> None:
    agl, _ids = made
    assert_error(agl("data", "triplets", "--redact", "("), 4, "not a regular expression")
    assert_error(agl("data", "triplets", "--since", "yesterday"), 4, "not a time")
    assert_error(agl("data", "triplets", "--follow", "-o", str(tmp_path / "x.jsonl")), 4, "stdout")
    missing = tmp_path / "no-such-dir" / "x.jsonl"
    assert_error(agl("data", "triplets", "-o", str(missing)), 4, f"{missing.parent} is not a directory")
    assert_error(agl("data", "triplets", "-o", str(tmp_path)), 4, "is a directory, not a file")
    assert_error(agl("data", "triplets", "--cursor", str(tmp_path)), 4, "is a directory, not a file")
    cursor = tmp_path / "new-dir" / "c.json"  # a cursor's directory is made when it is saved
    agl.ok("data", "triplets", "--cursor", str(cursor))
    assert cursor.is_file()
    assert_error(agl("prune"), 4, "say what to remove")
    existing = tmp_path / "exists.tar"
    existing.write_text("")
    assert_error(agl("prune", "--status", "failed", "--archive", str(existing)), 4, "exists")


def test_prune_dry_run_then_for_real(made: tuple[Agl, dict[str, str]], tmp_path: Path) -> None:
    agl, ids = made
    dry = agl.ok("prune", "--status", "failed", "--dry-run")
    assert [r["rollout_id"] for r in dry.lines()] == [ids["failed"]]
    assert dry.lines()[0]["bytes"] > 0
    assert "would remove 1 rollout(s)" in dry.stderr
    archive = tmp_path / "failed.tar"
    done = agl.ok("prune", "--status", "failed", "--older-than", "0s", "--archive", str(archive))
    assert [r["rollout_id"] for r in done.lines()] == [ids["failed"]]
    assert "removed 1 rollout(s)" in done.stderr
    with tarfile.open(archive) as tar:
        assert any(ids["failed"] in name for name in tar.getnames())
    assert ids["failed"] not in {r["rollout_id"] for r in agl.ok("rollouts", "list").lines()}
    assert agl.ok("stats").json()["total_rollouts"] == 3
    agl.ok("check")
    # Running rollouts are never removed, whatever is asked.
    assert agl.ok("prune", "--status", "running", "--status", "succeeded", "--keep-last", "5").lines() == []


def test_prune_help_says_what_its_filters_remove(made: tuple[Agl, dict[str, str]]) -> None:
    """prune shared agl data's help: '--status: Keep rollouts in this status' and '--ended
    [default: succeeded, no_reward]', both wrong for a command that removes (found by a pass)."""
    agl, _ = made
    text = " ".join(agl("prune", "--help").stdout.split())
    assert "Remove only rollouts in this status" in text
    assert "[default: any ending; unfinished rollouts are never removed]" in text
    assert "Keep rollouts in this status" not in text
    assert "succeeded, no_reward" not in text
