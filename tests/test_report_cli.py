"""``agl report`` end to end, through the installed command: the demo's store, a store with every
outcome, bad input (one line on stderr, a documented exit code), and ``--watch``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import AGL, Agl, agl_env, assert_error
from report_helpers import build_rich_store

from store_fs import FileStore, PromptTemplate
from store_fs.errors import ExitCode
from store_fs.rewards import find_final_reward

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "apo_custom_algorithm.py"


def embedded(page: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="agl-report-data">(.*?)</script>', page, re.S)
    assert match
    doc: dict[str, Any] = json.loads(match.group(1))
    return doc


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store the README's demo leaves (offline: the local stand-in LLM)."""
    store = tmp_path_factory.mktemp("demo") / "apo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGL_"))}
    done = subprocess.run(
        [sys.executable, str(DEMO), "demo", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return store


def _template_rewards(root: Path) -> dict[str, float]:
    """Each template's reward, read from the store (as the demo's own test does)."""
    store = FileStore(root, create=False)

    async def read() -> dict[str, float]:
        out: dict[str, float] = {}
        for rollout in await store.query_rollouts():
            resources = await store.get_resources_by_id(rollout.resources_id or "")
            assert resources is not None
            template = resources.resources["main_prompt"]
            assert isinstance(template, PromptTemplate)
            reward = find_final_reward(list(await store.query_spans(rollout.rollout_id)))
            assert reward is not None
            out[template.template] = reward
        return out

    return asyncio.run(read())


def test_report_of_the_demo_store(demo_store: Path, tmp_path: Path) -> None:
    agl = Agl(demo_store, tmp_path)
    res = agl.ok("report", str(demo_store), "-o", "demo.html")
    printed = res.json()
    page = (tmp_path / "demo.html").read_text()
    assert printed["path"] == "demo.html"
    assert printed["rollouts"] == 3
    assert printed["problems"] == 0
    assert printed["bytes"] == len(page.encode())
    assert "report written to demo.html" in res.stderr
    rewards = _template_rewards(demo_store)
    doc = embedded(page)
    assert doc["summary"]["total"] == 3
    assert doc["summary"]["success_rate"] == 1.0
    assert doc["summary"]["best_reward"] == max(rewards.values())
    best = [v for v in doc["versions"] if v["best"]]
    assert len(best) == 1
    assert best[0]["mean_reward"] == max(rewards.values())
    for template, reward in rewards.items():
        assert template.replace("{any_question}", "") in page
        assert any(v["mean_reward"] == reward for v in doc["versions"])
    assert "mock-gpt · " in page  # the LLM calls in the waterfall name their model
    assert len(doc["waterfalls"]) == 2


def test_report_of_a_store_with_every_outcome(tmp_path: Path) -> None:
    store, exp = build_rich_store(tmp_path / "store")
    agl = Agl(store.root, tmp_path)  # the store comes from AGL_STORE
    res = agl.ok("report", "-o", "r.html", "--rollout", exp.timed_out, "--rollout", exp.retried)
    assert res.json()["rollouts"] == 18
    assert res.json()["problems"] == 1
    doc = embedded((tmp_path / "r.html").read_text())
    assert doc["summary"]["by_status"] == exp.by_status
    assert doc["waterfalls"] == [exp.timed_out, exp.retried]
    assert [v["resources_id"] for v in doc["versions"] if v["best"]] == [exp.version_ids[2]]
    assert doc["check"] == "quick"
    full = agl.ok("report", "-o", "full.html", "--full-check")
    assert full.json()["problems"] == 1
    assert embedded((tmp_path / "full.html").read_text())["check"] == "full"
    assert "<code>agl check</code> finds 1 problem(s)" in (tmp_path / "full.html").read_text()


def test_an_empty_store_gives_a_report_that_says_so(tmp_path: Path) -> None:
    agl = Agl(tmp_path / "store", tmp_path)
    agl.ok("init")
    res = agl.ok("report", "-o", "empty.html", "--no-check")
    assert res.json()["rollouts"] == 0
    assert "This store has no rollouts yet" in (tmp_path / "empty.html").read_text()


def test_bad_input_gives_one_line_and_a_documented_exit(tmp_path: Path) -> None:
    store, _exp = build_rich_store(tmp_path / "store")
    agl = Agl(store.root, tmp_path)
    assert_error(agl("report", str(tmp_path / "nowhere"), "-o", "r.html"), ExitCode.NO_STORE, "no store at")
    assert_error(
        agl("report", "--rollout", "ro-000000000000", "-o", "r.html"), ExitCode.NOT_FOUND, "not found"
    )
    assert_error(
        agl("report", "--rollout", "../etc", "-o", "r.html"), ExitCode.BAD_INPUT, "invalid rollout id"
    )
    assert_error(agl("report", "-o", "missing/r.html"), ExitCode.BAD_INPUT, "cannot write the report")
    (tmp_path / "a-file").write_text("")
    assert_error(agl("report", "-o", "a-file/r.html"), ExitCode.BAD_INPUT, "Not a directory")
    assert_error(agl("report", "-o", "."), ExitCode.BAD_INPUT, "is a directory")
    assert_error(agl("report", "--watch", "--interval", "0", "-o", "r.html"), ExitCode.USAGE, "--interval")
    assert_error(agl("report", "--no-check", "--full-check", "-o", "r.html"), ExitCode.USAGE, "--no-check")
    assert not (tmp_path / "r.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "store"]  # no temporary files left


def test_watch_writes_the_report_again_as_the_store_changes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    out = tmp_path / "live.html"
    proc = subprocess.Popen(
        [AGL, "report", "--watch", "--interval", "0.2", "-o", str(out)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=agl_env(store.root),
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert out.exists(), proc.stderr.read() if proc.poll() is not None and proc.stderr else "no report"
        page = out.read_text()
        assert embedded(page)["summary"]["total"] == 0
        assert '<meta http-equiv="refresh"' in page  # an open browser reloads it
        asyncio.run(store.enqueue_rollout(input={"q": 1}))
        while time.monotonic() < deadline and embedded(out.read_text())["summary"]["total"] != 1:
            time.sleep(0.05)
        assert embedded(out.read_text())["summary"]["total"] == 1
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    written = [json.loads(line) for line in stdout.splitlines()]
    assert [w["rollouts"] for w in written][:1] == [0]
    assert written[-1]["rollouts"] == 1
