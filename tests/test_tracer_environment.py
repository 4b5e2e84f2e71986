"""OpenTelemetry's environment settings for an application's telemetry do not thin out training data.

With ``OTEL_TRACES_SAMPLER=always_off`` (or a ratio, or ``OTEL_SDK_DISABLED=true``) in the
environment, agl's tracer recorded nothing: the LLM call and the emitted reward were never
stored, and the attempt succeeded (found by an adversarial pass).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from store_fs import FileStore, PromptTemplate
from store_fs.agent import rollout
from store_fs.emitter import emit_reward
from store_fs.rewards import find_final_reward
from store_fs.runner import LitAgentRunner
from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.tracer import OtelTracer

_server: list[MockOpenAIServer] = []


@rollout
def asks_then_rewards(task: str, prompt_template: PromptTemplate) -> None:
    client = openai.OpenAI(api_key="sk-mock", base_url=_server[0].base_url, max_retries=0)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": task}])
    emit_reward(0.9)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
        {"OTEL_SDK_DISABLED": "true"},
    ],
    ids=["always-off", "ratio-0", "sdk-disabled"],
)
def test_every_call_and_reward_is_recorded_whatever_the_sampler_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def run() -> None:
        store = FileStore(tmp_path / "store")
        await store.add_resources({"main_prompt": PromptTemplate(template="{q}", engine="f-string")})
        rid = (await store.enqueue_rollout(input="q")).rollout_id
        runner = LitAgentRunner(tracer=OtelTracer(), poll_interval=0.05, max_rollouts=1)
        with runner.run_context(agent=asks_then_rewards, store=store):
            await asyncio.wait_for(runner.iter(), 30)
        spans = list(await store.query_spans(rid))
        assert [s.name for s in spans if s.name.startswith("openai.")] == ["openai.chat.completion"]
        assert find_final_reward(spans) == 0.9
        store.close()

    _server[:] = [MockOpenAIServer().start()]
    try:
        asyncio.run(run())
    finally:
        _server[0].stop()


def test_agentops_tracer_refuses_to_start_when_the_sdk_is_switched_off(tmp_path: Path) -> None:
    """AgentOps records through the process's global provider, which keeps the application's
    OTEL_SDK_DISABLED: with it set, AgentOpsTracer would store nothing, so it says so at init
    (a fresh process: AgentOps is set up once per process)."""
    script = (
        "from store_fs.tracing.agentops_tracer import AgentOpsTracer\n"
        "try:\n"
        "    AgentOpsTracer().init()\n"
        "except RuntimeError as err:\n"
        "    print('refused:', err)\n"
    )
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "AGENTOPS_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "refused: OTEL_SDK_DISABLED=true switches off" in done.stdout, (done.stdout, done.stderr)
