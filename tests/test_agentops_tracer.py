"""AgentOpsTracer: offline, no key, spans of one rollout in the store, nothing but loopback touched.

agentops patches ``builtins.__import__`` and ``print`` for the whole process, so every run that
imports it happens in a child process (with a timeout; ``subprocess.run`` kills and reaps it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

ROLLOUT_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    targets = []

    def audit(event, args):
        if event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else f"unix:{address!r}"
            targets.append(["connect", str(host)])
        elif event == "socket.getaddrinfo":
            host = args[0]
            targets.append(["getaddrinfo", host.decode() if isinstance(host, bytes) else str(host)])

    sys.addaudithook(audit)

    from openai import AsyncOpenAI

    from store_fs import FileStore, PromptTemplate
    from store_fs.agent import rollout
    from store_fs.emitter import emit_message
    from store_fs.runner import LitAgentRunner
    from store_fs.testing.mock_openai import MockOpenAIServer
    from store_fs.tracing.agentops_tracer import AgentOpsTracer
    from store_fs.tracing.tracer import OtelTracer

    TRACERS = {"agentops": AgentOpsTracer, "otel": lambda: OtelTracer(instrument_openai=False)}


    async def main(root, base_url, kinds):
        store = FileStore(root / "store", scan_debounce_seconds=0, claim_grace_seconds=0.5)
        await store.add_resources({"main_prompt": PromptTemplate(template="{q}", engine="f-string")})
        return [await one_rollout(store, base_url, TRACERS[kind]()) for kind in kinds]


    async def one_rollout(store, base_url, tracer):
        enqueued = await store.enqueue_rollout(input="ping")

        @rollout
        async def agent(task, prompt_template):
            async with AsyncOpenAI(base_url=base_url, api_key="sk-mock", max_retries=0) as client:
                await client.chat.completions.create(
                    model="mock", messages=[{"role": "user", "content": f"plain {task}"}]
                )
                stream = await client.chat.completions.create(
                    model="mock", messages=[{"role": "user", "content": f"stream {task}"}], stream=True
                )
                async for _ in stream:
                    pass
            emit_message("agent done")
            return 0.7

        runner = LitAgentRunner(tracer=tracer, poll_interval=0.05, max_rollouts=1)
        with runner.run_context(agent=agent, store=store):
            await asyncio.wait_for(runner.iter(), 60)
        got = await store.get_rollout_by_id(enqueued.rollout_id)
        spans = await store.query_spans(enqueued.rollout_id)
        return {
            "rollout_id": enqueued.rollout_id,
            "status": got.status if got else None,
            "spans": [s.model_dump(mode="json") for s in spans],
        }


    with MockOpenAIServer() as mock:
        rollouts = asyncio.run(main(Path(sys.argv[1]), mock.base_url, sys.argv[2].split(",")))
    result = {"rollouts": rollouts, "targets": targets}
    sys.stdout.write("RESULT " + json.dumps(result) + "\\n")
    """
)

IMPORT_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import store_fs, store_fs.tracing, store_fs.tracing.agentops_tracer
    from store_fs.tracing.agentops_tracer import AgentOpsTracer

    clone = pickle.loads(pickle.dumps(AgentOpsTracer(agentops_service=False, token_ids=False)))
    assert (clone.agentops_service, clone.token_ids) == (False, False)
    print("agentops" in sys.modules, any(m.startswith("agentops.") for m in sys.modules))
    """
)


def _run(script: str, cwd: Path, *args: str, env_extra: dict[str, str] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOPS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(env_extra or {})
    path = cwd / "script.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _rollouts(tmp_path: Path, kinds: str, env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one rollout per tracer kind in ``kinds`` ("agentops,otel"), one after another, in a child."""
    out = _run(ROLLOUT_SCRIPT, tmp_path, str(tmp_path), kinds, env_extra=env_extra)
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


@pytest.mark.parametrize(
    "env_extra",
    [pytest.param({}, id="no-key"), pytest.param({"AGENTOPS_API_KEY": "must-be-ignored"}, id="key-ignored")],
)
def test_a_rollout_is_traced_offline_into_the_store(tmp_path: Path, env_extra: dict[str, str]) -> None:
    result = _rollouts(tmp_path, "agentops", env_extra)
    _assert_loopback_only(result["targets"])
    assert not (tmp_path / "agentops.log").exists()
    (rollout,) = result["rollouts"]
    _assert_agentops_rollout(rollout)


def test_tracers_in_sequence_in_one_process_do_not_double_or_leak_spans(tmp_path: Path) -> None:
    result = _rollouts(tmp_path, "agentops,agentops,otel")
    _assert_loopback_only(result["targets"])
    first, again, otel = result["rollouts"]
    _assert_agentops_rollout(first)
    _assert_agentops_rollout(again)  # init after teardown: exactly one processor again
    # agentops still instruments openai after teardown, but its spans stay out of other tracers' rollouts.
    assert otel["status"] == "succeeded"
    assert [s["name"] for s in otel["spans"]] == ["agentlightning.message", "agentlightning.annotation"]


def _assert_loopback_only(targets: list[list[str]]) -> None:
    non_loopback = [t for t in targets if t[1] not in LOOPBACK]
    assert non_loopback == [], f"non-loopback network access: {non_loopback}"
    assert targets, "the audit hook saw no connection at all (was the mock reached?)"


def _assert_agentops_rollout(result: dict[str, Any]) -> None:
    assert result["status"] == "succeeded"
    spans = result["spans"]
    rid = result["rollout_id"]
    assert all(s["rollout_id"] == rid for s in spans)
    assert [s["sequence_id"] for s in spans] == list(range(1, len(spans) + 1))
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_name.setdefault(s["name"], []).append(s)

    (session,) = by_name[f"{rid}.session"]
    assert session["status"]["status_code"] == "OK"
    assert session["attributes"]["agentlightning.rollout_id"] == rid

    llm = by_name["openai.chat.completion"]
    assert len(llm) == 2
    plain, streamed = sorted(llm, key=lambda s: bool(s["attributes"].get("gen_ai.request.streaming")))
    for span, prompt in ((plain, "plain ping"), (streamed, "stream ping")):
        attrs = span["attributes"]
        assert attrs["gen_ai.prompt.0.content"] == prompt
        assert attrs["gen_ai.completion.0.content"] == f"echo: {prompt}"
        assert attrs["agentlightning.rollout_id"] == rid
        assert attrs["response_token_ids"] == list(f"echo: {prompt}".encode())
        assert attrs["prompt_token_ids"]
        assert span["parent_id"] == session["span_id"]
    assert streamed["attributes"]["gen_ai.request.streaming"] is True

    # emit_message goes through create_span, i.e. agentops' provider, inside the agentops trace.
    (message,) = by_name["agentlightning.message"]
    assert message["attributes"]["agentlightning.message.body"] == "agent done"
    assert message["parent_id"] == session["span_id"]

    (reward,) = by_name["agentlightning.annotation"]
    assert reward["attributes"]["agentlightning.reward.0.value"] == 0.7
    assert reward["sequence_id"] == len(spans)


def test_importing_store_fs_does_not_import_agentops(tmp_path: Path) -> None:
    assert _run(IMPORT_SCRIPT, tmp_path).split() == ["False", "False"]
