"""The examples run end to end, offline, and `agl run` starts and stops runner processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from store_fs import FileStore, PromptTemplate
from store_fs.rewards import find_final_reward
from store_fs.runner_pool import worker_name
from store_fs.testing.mock_openai import MockOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGL_"))}
    env.update(extra)
    return env


def _run(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=ROOT
    )


def _rewards_by_template(root: Path) -> dict[str, float]:
    """Read back, from the store itself, each template's reward."""
    store = FileStore(root, create=False)

    async def read() -> dict[str, float]:
        out: dict[str, float] = {}
        for rollout in await store.query_rollouts():
            assert rollout.status == "succeeded"
            resources = await store.get_resources_by_id(rollout.resources_id or "")
            assert resources is not None
            template = resources.resources["main_prompt"]
            assert isinstance(template, PromptTemplate)
            reward = find_final_reward(list(await store.query_spans(rollout.rollout_id)))
            assert reward is not None
            out[template.template] = reward
        return out

    return asyncio.run(read())


def _best_printed(stdout: str) -> str:
    match = re.search(r"Best prompt: '(.*)' with reward", stdout)
    assert match, stdout
    return match.group(1)


def test_demo_picks_the_prompt_with_the_highest_stored_reward(tmp_path: Path) -> None:
    store = tmp_path / "apo"
    result = _run([str(EXAMPLES / "apo_custom_algorithm.py"), "demo", "--store", str(store)])
    assert result.returncode == 0, result.stderr
    assert "OFFLINE STAND-IN" in result.stdout  # labelled as such
    assert result.stdout.count("openai.chat.completion") == 6  # answer + judge, per template
    rewards = _rewards_by_template(store)
    assert len(rewards) == 3
    assert len(set(rewards.values())) > 1  # the judge tells the prompts apart
    assert _best_printed(result.stdout) == max(rewards, key=lambda t: rewards[t])
    assert "succeeded in" in result.stderr  # runners log each completed rollout with its duration


def test_trainer_example_gives_the_same_answer(tmp_path: Path) -> None:
    store = tmp_path / "apo"
    result = _run([str(EXAMPLES / "apo_custom_algorithm_trainer.py"), "--store", str(store)])
    assert result.returncode == 0, result.stderr
    rewards = _rewards_by_template(store)
    best = max(rewards, key=lambda t: rewards[t])
    assert f"[Trainer] best prompt: '{best}'" in result.stdout


@pytest.fixture
def mock() -> Iterator[MockOpenAIServer]:
    with MockOpenAIServer() as server:
        yield server


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str]:
    """Signal a process and reap it; returns its exit code and stderr."""
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


def test_runner_and_algo_modes_share_a_store(tmp_path: Path, mock: MockOpenAIServer) -> None:
    store = tmp_path / "apo"
    FileStore(store)
    env = _env(AGL_LLM_BASE_URL=mock.base_url)
    runner = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "apo_custom_algorithm.py"), "runner", "--store", str(store)],
        env=env,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        algo = _run(
            [str(EXAMPLES / "apo_custom_algorithm.py"), "algo", "--store", str(store)],
            AGL_LLM_BASE_URL=mock.base_url,
        )
    finally:
        code, err = _stop(runner)
    assert algo.returncode == 0, algo.stderr
    assert code == 0, err  # Ctrl-C stops the runner cleanly
    assert "Traceback" not in err
    rewards = _rewards_by_template(store)
    assert _best_printed(algo.stdout) == max(rewards, key=lambda t: rewards[t])


def test_demo_runs_against_agl_store_over_http(tmp_path: Path) -> None:
    from server_helpers import ServerProcess

    FileStore(tmp_path / "apo")
    with ServerProcess(tmp_path / "apo", tmp_path / "server.log") as server:
        result = _run([str(EXAMPLES / "apo_custom_algorithm.py"), "demo", "--store", server.url])
    assert result.returncode == 0, result.stderr
    rewards = _rewards_by_template(tmp_path / "apo")
    assert _best_printed(result.stdout) == max(rewards, key=lambda t: rewards[t])


def _agl() -> str:
    from cli_helpers import AGL

    return AGL


def test_agl_run_starts_runners_and_ctrl_c_stops_them(tmp_path: Path, mock: MockOpenAIServer) -> None:
    store_dir = tmp_path / "s"
    store = FileStore(store_dir)

    async def enqueue() -> list[str]:
        await store.add_resources(
            {"main_prompt": PromptTemplate(template="Hi {any_question}", engine="f-string")}
        )
        return [(await store.enqueue_rollout(input=f"q{i}")).rollout_id for i in range(4)]

    ids = asyncio.run(enqueue())
    proc = subprocess.Popen(
        [
            _agl(),
            "--store",
            str(store_dir),
            "run",
            "examples.apo_custom_algorithm:apo_rollout",
            "--workers",
            "2",
        ],
        env=_env(AGL_LLM_BASE_URL=mock.base_url),
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        done = asyncio.run(store.wait_for_rollouts(rollout_ids=ids, timeout=60))
    finally:
        code, err = _stop(proc)
    assert [r.status for r in done] == ["succeeded"] * 4, err
    assert code == 0, err
    assert "runners stopped" in err
    workers = asyncio.run(store.query_workers())
    # Named by host and pool: runners of several machines, or pools, on one store are told apart.
    assert {w.worker_id for w in workers} <= {worker_name(0, proc.pid), worker_name(1, proc.pid)}
    assert all(w.worker_id.endswith(("-Worker-0", "-Worker-1")) for w in workers)


def test_agl_run_rejects_a_bad_agent_spec(tmp_path: Path) -> None:
    FileStore(tmp_path / "s")
    result = subprocess.run(
        [_agl(), "--store", str(tmp_path / "s"), "run", "no_such_module:agent"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 4
    assert result.stderr.startswith("agl: cannot import no_such_module")


def test_quickstart_runs(tmp_path: Path) -> None:
    start = time.monotonic()
    result = _run([str(EXAMPLES / "quickstart.py"), "--store", str(tmp_path / "q"), "--tasks", "4"])
    assert result.returncode == 0, result.stderr
    assert "[Algo] 4/4 rollouts finished" in result.stdout
    assert time.monotonic() - start < 60
