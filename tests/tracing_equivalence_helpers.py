"""One agent, run by upstream's and agl's runners and tracers in two child processes, its spans
and what upstream's adapters make of them printed as JSON.

Two children run side by side, each against fresh mock servers (one per run, so the mock's
response and tool-call ids come out alike):

* ``python tests/tracing_equivalence_helpers.py agl <url> <url> <workdir>`` runs the agent on one
  rollout under agl's ``LitAgentRunner`` on a ``FileStore`` under ``workdir``, first with
  ``OtelTracer`` (``agl-default``), then with ``AgentOpsTracer`` (``agl-agentops``; agentops is
  imported only then, so the first run never sees it), and prints ``RESULT <json>``: per run, the
  rollout's spans (``Span.model_dump(mode="json")``) and the non-loopback addresses the process
  tried to reach (an audit hook refuses them, so none is reached).
* ``python tests/tracing_equivalence_helpers.py upstream <url> <workdir>`` runs it under
  upstream's ``LitAgentRunner`` and ``AgentOpsTracer`` on its ``InMemoryLightningStore``
  (``upstream-agentops``), then reads the agl child's result from stdin and prints, for all three
  runs, the spans, the addresses refused, and upstream's ``TracerTraceToTriplet`` and
  ``TraceToMessages`` outputs.

agentops runs in children because it can be initialised once per process, patches the
interpreter (``builtins.__import__``, ``print``) and leaves its OpenAI wrappers in place. The
adapters run in the upstream child because it imports agentlightning anyway (about 10-17 s of
CPU, mostly LiteLLM): the test process need not.

The test side: :func:`run_all` runs the children; :func:`differences` compares the adapters'
outputs with ids aside.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MODES = ("upstream-agentops", "agl-default", "agl-agentops")
REWARD_AFTER_PLAIN, FINAL_REWARD = 0.25, 1.0
MODEL, TASK = "mock-gpt", "the task"

LOOKUP_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a fact up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    },
}


def _refuse_the_network() -> list[list[str]]:
    """Record, and refuse, every DNS lookup or connection to a host that is not loopback."""
    refused: list[list[str]] = []

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect" and isinstance(args[1], tuple):
            host = str(args[1][0])
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        else:
            return
        if host not in LOOPBACK:
            refused.append([event, host])
            raise ConnectionRefusedError(f"test: no network ({host})")

    sys.addaudithook(audit)
    return refused


async def converse(client: Any, model: str, emit_reward: Callable[[float], object]) -> None:
    """Plain chat (with logprobs), a tool-call round trip (call, result, final answer), then a
    streamed chat.

    ``emit_reward`` (the runner's side's own) is called after the plain chat, so the adapters'
    reward matching is part of the comparison.
    """
    system = {"role": "system", "content": "Answer briefly."}
    plain = [system, {"role": "user", "content": "plain question"}]
    await client.chat.completions.create(
        model=model, messages=plain, temperature=0.1, logprobs=True, top_logprobs=1
    )
    emit_reward(REWARD_AFTER_PLAIN)

    messages: list[dict[str, Any]] = [system, {"role": "user", "content": "use the lookup tool for 2+2"}]
    first = await client.chat.completions.create(model=model, messages=messages, tools=[LOOKUP_TOOL])
    calls = first.choices[0].message.tool_calls or []
    assert calls, f"the mock did not call the tool: {first}"
    asked = [{"id": c.id, "type": "function", "function": c.function.model_dump()} for c in calls]
    # No "content": None: upstream's tracer stores the None agentops records and fails the call
    # (agl's AgentOpsTracer leaves it out; tests/test_agentops_tracer.py sends one).
    messages.append({"role": "assistant", "tool_calls": asked})
    messages += [{"role": "tool", "tool_call_id": c.id, "content": "4"} for c in calls]
    await client.chat.completions.create(model=model, messages=messages, tools=[LOOKUP_TOOL])

    streamed = [system, {"role": "user", "content": "stream please"}]
    stream = await client.chat.completions.create(model=model, messages=streamed, stream=True)
    async for _ in stream:
        pass


async def _agent_body(task: str, llm: Any, emit_reward: Callable[[float], object]) -> float:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=llm.endpoint, api_key="sk-mock", max_retries=0) as client:
        await converse(client, llm.model, emit_reward)
    return FINAL_REWARD


async def _upstream_agentops(base_url: str) -> list[dict[str, Any]]:
    import agentlightning as up

    upstream_rollout: Callable[[Callable[..., Any]], Any] = up.rollout  # untyped upstream

    @upstream_rollout
    async def agent(task: str, llm: Any) -> float:
        return await _agent_body(task, llm, up.emit_reward)

    store = up.InMemoryLightningStore()
    await store.add_resources({"llm": up.LLM(endpoint=base_url, model=MODEL)})
    enqueued = await store.enqueue_rollout(input=TASK)
    runner = up.LitAgentRunner(tracer=up.AgentOpsTracer(), max_rollouts=1, poll_interval=0.05)
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 60)
    return [s.model_dump(mode="json") for s in await store.query_spans(enqueued.rollout_id)]


async def _agl(base_url: str, workdir: Path, tracer: Any) -> list[dict[str, Any]]:
    from store_fs import FileStore
    from store_fs.agent import rollout
    from store_fs.emitter import emit_reward
    from store_fs.models.resource_types import LLM
    from store_fs.runner import LitAgentRunner

    @rollout
    async def agent(task: str, llm: Any) -> float:
        return await _agent_body(task, llm, emit_reward)

    store = FileStore(workdir / "store")
    await store.add_resources({"llm": LLM(endpoint=base_url, model=MODEL)})
    enqueued = await store.enqueue_rollout(input=TASK)
    runner = LitAgentRunner(tracer=tracer, max_rollouts=1, poll_interval=0.05)
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), 60)
    return [s.model_dump(mode="json") for s in await store.query_spans(enqueued.rollout_id)]


async def _agl_runs(urls: dict[str, str], workdir: Path, refused: list[list[str]]) -> dict[str, Any]:
    from store_fs.tracing.tracer import OtelTracer

    runs: dict[str, Any] = {}
    seen = len(refused)
    runs["agl-default"] = {"spans": await _agl(urls["agl-default"], workdir / "default", OtelTracer())}
    runs["agl-default"]["refused"], seen = refused[seen:], len(refused)
    # Imports agentops: after the default tracer's run, which must not see it.
    from store_fs.tracing.agentops_tracer import AgentOpsTracer

    runs["agl-agentops"] = {"spans": await _agl(urls["agl-agentops"], workdir / "agentops", AgentOpsTracer())}
    runs["agl-agentops"]["refused"] = refused[seen:]
    return runs


def _adapted(spans: list[dict[str, Any]]) -> dict[str, Any]:
    """What upstream's adapters make of ``spans``, as JSON."""
    from agentlightning.adapter import TracerTraceToTriplet, TraceToMessages
    from agentlightning.types import Span as UpstreamSpan

    parsed = [UpstreamSpan.model_validate(span) for span in spans]
    return {
        "triplets": [t.model_dump(mode="json") for t in TracerTraceToTriplet().adapt(parsed)],
        "messages": json.loads(json.dumps(TraceToMessages().adapt(parsed))),
    }


# -- the test side --------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT = 240.0
ID_KEYS = frozenset({"id", "response_id", "tool_call_id"})


def run_all(workdir: Path) -> dict[str, dict[str, Any]]:
    """Run the two children side by side; per run (:data:`MODES`): its spans, the addresses
    refused, and upstream's adapters' triplets and messages."""
    from store_fs.testing.mock_openai import MockOpenAIServer

    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOPS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    servers = {mode: MockOpenAIServer().start() for mode in MODES}
    commands = {
        "agl": ["agl", servers["agl-default"].base_url, servers["agl-agentops"].base_url],
        "upstream": ["upstream", servers["upstream-agentops"].base_url],
    }
    children: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    try:
        for name, command in commands.items():
            cwd = workdir / name
            cwd.mkdir(parents=True)
            # stderr to a file: a child logging more than a pipe holds must not block.
            with (cwd / "stderr.txt").open("w") as stderr:
                child = subprocess.Popen(
                    [sys.executable, __file__, *command, str(cwd)],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            children[name] = (child, cwd)
        agl_runs = _result("agl", *children["agl"])
        result: dict[str, dict[str, Any]] = _result("upstream", *children["upstream"], json.dumps(agl_runs))
        return result
    finally:
        for child, _ in children.values():
            if child.poll() is None:
                child.kill()
            child.wait()
        for server in servers.values():
            server.stop()


def _result(name: str, child: subprocess.Popen[str], cwd: Path, stdin: str = "") -> Any:
    out, _ = child.communicate(stdin, timeout=RUN_TIMEOUT)
    err = (cwd / "stderr.txt").read_text()[-4000:]
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert child.returncode == 0, f"{name} failed ({child.returncode}):\n{out}\n{err}"
    assert lines, f"{name} printed no result:\n{out}\n{err}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def differences(
    theirs: Any, ours: Any, ignore: Callable[[str], bool] = lambda path: False
) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """The leaves that differ, ids aside, as path -> (theirs, ours) ("<absent>" where one side has
    none): those whose path ``ignore`` accepts, and the rest.

    Ids (values under a key in :data:`ID_KEYS`) are compared by pattern: each side's distinct ids
    are numbered in path order, so which ids are equal still counts, their values do not.
    Ignored leaves take no part in the numbering.
    """
    a, b = _leaves(theirs), _leaves(ours)
    absent = "<absent>"
    ignored = {k: (a.get(k, absent), b.get(k, absent)) for k in sorted({*a, *b}) if ignore(k)}
    a, b = (
        _numbered({k: v for k, v in a.items() if not ignore(k)}),
        _numbered({k: v for k, v in b.items() if not ignore(k)}),
    )
    rest = {k: (a.get(k, absent), b.get(k, absent)) for k in sorted({*a, *b})}
    return {k: v for k, v in rest.items() if v[0] != v[1]}, {k: v for k, v in ignored.items() if v[0] != v[1]}


def _numbered(leaves: dict[str, Any]) -> dict[str, Any]:
    seen: dict[str, str] = {}
    out = dict(leaves)
    for path in sorted(leaves):
        key = path.rsplit(".", 1)[-1]
        if key in ID_KEYS and isinstance(leaves[path], str):
            out[path] = seen.setdefault(leaves[path], f"id-{len(seen)}")
    return out


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        if not value:
            return {path: {}}
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        if not value:
            return {path: []}
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}[{i}]").items()}
    return {path: value}


def main(argv: list[str]) -> int:
    refused = _refuse_the_network()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # agentlightning imports litellm
    if argv[0] == "agl":
        urls = {"agl-default": argv[1], "agl-agentops": argv[2]}
        runs = asyncio.run(_agl_runs(urls, Path(argv[3]), refused))
    elif argv[0] == "upstream":
        spans = asyncio.run(_upstream_agentops(argv[1]))
        runs = {"upstream-agentops": {"spans": spans, "refused": list(refused)}}
        runs.update(json.loads(sys.stdin.read()))  # the agl child's runs
        for run in runs.values():
            run.update(_adapted(run["spans"]))
    else:
        raise SystemExit("usage: tracing_equivalence_helpers.py agl <url> <url> <dir> | upstream <url> <dir>")
    sys.stdout.write("RESULT " + json.dumps(runs) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
