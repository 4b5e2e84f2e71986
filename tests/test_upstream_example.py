"""examples/upstream_first_algorithm.py, code written against upstream Agent-lightning's API with
only its store line pointing at a FileStore, runs end to end offline (upstream's Trainer and
runner processes), and what it prints is what the directory holds."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from store_fs import FileStore, PromptTemplate
from store_fs.rewards import find_final_reward

# Upstream runs only in the example's process: look for it without importing it here.
pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(
        importlib.util.find_spec("agentlightning") is None, reason="needs pip install -e '.[upstream]'"
    ),
]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "upstream_first_algorithm.py"


def stored_rewards(root: Path) -> dict[str, tuple[str, float | None, list[str]]]:
    """Each template's rollout, read back from the directory by agl: status, reward, span names."""
    store = FileStore(root, create=False)

    async def read() -> dict[str, tuple[str, float | None, list[str]]]:
        out: dict[str, tuple[str, float | None, list[str]]] = {}
        for rollout in await store.query_rollouts():
            update = await store.get_resources_by_id(rollout.resources_id or "")
            assert update is not None
            template = update.resources["main_prompt"]
            assert isinstance(template, PromptTemplate)
            spans = list(await store.query_spans(rollout.rollout_id))
            out[template.template] = (rollout.status, find_final_reward(spans), [s.name for s in spans])
        return out

    return asyncio.run(read())


def test_the_upstream_example_runs_on_a_file_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AGL_"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "demo", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OFFLINE STAND-IN" in result.stdout
    rewards = stored_rewards(store)
    assert len(rewards) == 3
    for status, reward, names in rewards.values():
        assert status == "succeeded"
        assert reward is not None
        # upstream's emit_message, then the agent's result
        assert names == ["agentlightning.message", "agentlightning.annotation"]
    best = re.search(r"Best prompt: '(.*)' with reward (\S+)", result.stdout)
    assert best, result.stdout
    assert best.group(1) == max(rewards, key=lambda t: rewards[t][1] or 0.0)
    assert float(best.group(2)) == rewards[best.group(1)][1]
