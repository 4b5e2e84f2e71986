"""AgentOpsTracer: offline, no key, spans of one rollout in the store, nothing but loopback touched,
and every OpenAI call kind recorded once (agentops' own spans where it records a call in full,
agl's instrumentation for the rest), under the attempt's root span.

agentops patches ``builtins.__import__`` and ``print`` for the whole process, so every run that
imports it happens in a child process (with a timeout; killed and reaped whatever happens). Two
children, started side by side once for the module, hold all the runs: tracers in sequence (no
API key), and one rollout making every OpenAI call kind (with an API key that must be ignored).
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
REWARD = "agentlightning.annotation"

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

    TRACERS = {"agentops": AgentOpsTracer, "otel": OtelTracer}


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


    def attributes_kept(count):
        # How many of ``count`` attributes a span of agentops' provider keeps.
        tracer = AgentOpsTracer()
        tracer.init()
        span = tracer.provider.get_tracer("limits").start_span("many attributes")
        for i in range(count):
            span.set_attribute(f"gen_ai.prompt.{i}.content", f"turn {i}")
        span.end()
        return len(span.attributes)


    with MockOpenAIServer() as mock:
        rollouts = asyncio.run(main(Path(sys.argv[1]), mock.base_url, sys.argv[2].split(",")))
    result = {"rollouts": rollouts, "targets": targets, "attributes_kept": attributes_kept(300)}
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


CHILD_TIMEOUT = 180.0
IGNORED_KEY = "must-be-ignored"


def _spawn(
    script: str, cwd: Path, *args: str, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOPS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(env_extra or {})
    path = cwd / "script.py"
    path.write_text(script)
    # stderr to a file: a child logging more than a pipe holds must not block.
    with (cwd / "stderr.txt").open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def _output(child: subprocess.Popen[str], cwd: Path) -> str:
    try:
        out, _ = child.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    err = (cwd / "stderr.txt").read_text()[-4000:]
    assert child.returncode == 0, f"child failed ({child.returncode}):\n{out}\n{err}"
    return out


def _run(script: str, cwd: Path, *args: str) -> str:
    return _output(_spawn(script, cwd, *args), cwd)


def _result(out: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
    return result


@pytest.fixture(scope="module")
def children(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both children's results, and their working directories (where agentops would log)."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in ("sequence", "call_kinds")}
    started: dict[str, subprocess.Popen[str]] = {}
    try:
        # Tracers in sequence in one process, no API key: agentops, agentops again, agl's default.
        started["sequence"] = _spawn(
            ROLLOUT_SCRIPT, dirs["sequence"], str(dirs["sequence"]), "agentops,agentops,otel"
        )
        env = {"AGENTOPS_API_KEY": IGNORED_KEY}
        started["call_kinds"] = _spawn(
            CALL_KINDS_SCRIPT, dirs["call_kinds"], str(dirs["call_kinds"]), env_extra=env
        )
        return {
            name: {**_result(_output(child, dirs[name])), "cwd": dirs[name]}
            for name, child in started.items()
        }
    finally:
        for child in started.values():
            if child.poll() is None:
                child.kill()
            child.wait()


def test_a_rollout_is_traced_offline_into_the_store(children: dict[str, Any]) -> None:
    result = children["sequence"]
    _assert_loopback_only(result["targets"])
    assert not (result["cwd"] / "agentops.log").exists()
    _assert_agentops_rollout(result["rollouts"][0])


def test_agentops_spans_keep_more_than_128_attributes(children: dict[str, Any]) -> None:
    """agentops' provider had OpenTelemetry's default limit of 128 attributes a span: a long
    conversation lost its first prompt messages (the system prompt) without a word, as agl's own
    tracer did before (tests/test_openai_tracing.py)."""
    assert children["sequence"]["attributes_kept"] == 300


def test_an_api_key_in_the_environment_is_ignored_and_restored(children: dict[str, Any]) -> None:
    result = children["call_kinds"]  # every call kind, AGENTOPS_API_KEY set
    _assert_loopback_only(result["targets"])
    assert not (result["cwd"] / "agentops.log").exists()
    assert result["status"] == "succeeded"
    assert result["key_during_rollout"] is None  # hidden from agentops while its tracer runs
    assert result["key_after_teardown"] == IGNORED_KEY


def test_tracers_in_sequence_in_one_process_do_not_double_or_leak_spans(children: dict[str, Any]) -> None:
    first, again, otel = children["sequence"]["rollouts"]
    _assert_agentops_rollout(first)
    _assert_agentops_rollout(again)  # init after teardown: exactly one processor again
    # agentops still instruments openai after teardown, but its spans stay out of other tracers'
    # rollouts: agl's default tracer records each call once, in its own shape.
    assert otel["status"] == "succeeded"
    names = [s["name"] for s in otel["spans"] if not s["name"].endswith(".session")]
    assert sorted(names) == sorted([*["openai.chat.completion"] * 2, "agentlightning.message", REWARD])
    systems = [
        s["attributes"]["gen_ai.system"] for s in otel["spans"] if s["name"] == "openai.chat.completion"
    ]
    assert systems == ["openai", "openai"]  # agentops would say "OpenAI"


CALL_KINDS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from pathlib import Path

    targets = []
    keys = {}

    def audit(event, args):
        if event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else f"unix:{address!r}"
            targets.append(["connect", str(host)])
        elif event == "socket.getaddrinfo":
            host = args[0]
            targets.append(["getaddrinfo", host.decode() if isinstance(host, bytes) else str(host)])

    sys.addaudithook(audit)

    import openai
    from pydantic import BaseModel

    from store_fs import FileStore
    from store_fs.agent import rollout
    from store_fs.models.resource_types import LLM
    from store_fs.runner import LitAgentRunner
    from store_fs.testing.mock_openai import MockOpenAIServer
    from store_fs.tracing.agentops_tracer import AgentOpsTracer

    USAGE = {"include_usage": True}
    TOOL = {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a fact up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }


    class Answer(BaseModel):
        text: str


    def ask(kind):
        return [{"role": "user", "content": kind}]


    def sync_calls(s, m):
        s.chat.completions.create(model=m, messages=ask("chat-sync"))
        chunks = s.chat.completions.create(
            model=m, messages=ask("chat-stream-sync"), stream=True, stream_options=USAGE
        )
        for _ in chunks:
            pass
        broken_and_abandoned(s, m)
        with s.chat.completions.stream(model=m, messages=ask("chat-helper-sync"), stream_options=USAGE) as st:
            for _ in st:
                pass
        s.chat.completions.parse(model=m, messages=ask("chat-parse-sync"), response_format=Answer)
        s.chat.completions.with_raw_response.create(model=m, messages=ask("chat-raw-sync")).parse()
        with s.chat.completions.with_streaming_response.create(
            model=m, messages=ask("chat-rawstream-sync"), stream=True, stream_options=USAGE
        ) as raw:
            for _ in raw.parse():
                pass
        s.completions.create(model=m, prompt="text-sync")
        for _ in s.completions.create(model=m, prompt="text-stream-sync", stream=True, stream_options=USAGE):
            pass
        s.responses.create(model=m, input="resp-sync")
        for _ in s.responses.create(model=m, input="resp-stream-sync", stream=True):
            pass
        with s.responses.stream(model=m, input="resp-helper-sync") as st:
            for _ in st:
                pass


    def broken_and_abandoned(s, m):
        # A stream the server breaks part-way, then one the agent stops reading: neither may
        # stay the parent of the calls after it (agentops makes a stream's span current).
        mock.break_next_stream(1)
        try:
            for _ in s.chat.completions.create(model=m, messages=ask("chat-broken-sync"), stream=True):
                pass
        except openai.APIError:
            pass
        for _ in s.chat.completions.create(model=m, messages=ask("chat-abandoned-sync"), stream=True):
            break


    async def async_calls(a, m):
        await a.chat.completions.create(model=m, messages=ask("chat-async"))
        stream = await a.chat.completions.create(
            model=m, messages=ask("chat-stream-async"), stream=True, stream_options=USAGE
        )
        async for _ in stream:
            pass
        mock.break_next_stream(1)
        try:
            broken = await a.chat.completions.create(model=m, messages=ask("chat-broken-async"), stream=True)
            async for _ in broken:
                pass
        except openai.APIError:
            pass
        left = await a.chat.completions.create(model=m, messages=ask("chat-abandoned-async"), stream=True)
        async for _ in left:
            break
        helper = a.chat.completions.stream(model=m, messages=ask("chat-helper-async"), stream_options=USAGE)
        async with helper as st:
            async for _ in st:
                pass
        await a.chat.completions.parse(model=m, messages=ask("chat-parse-async"), response_format=Answer)
        raw = await a.chat.completions.with_raw_response.create(model=m, messages=ask("chat-raw-async"))
        raw.parse()
        rawjson = a.chat.completions.with_streaming_response
        raw_json = rawjson.create(model=m, messages=ask("chat-rawjson-async"))
        async with raw_json as r:
            await r.parse()
        await a.completions.create(model=m, prompt="text-async")
        stream = await a.completions.create(
            model=m, prompt="text-stream-async", stream=True, stream_options=USAGE
        )
        async for _ in stream:
            pass
        await a.responses.create(model=m, input="resp-async")
        stream = await a.responses.create(model=m, input="resp-stream-async", stream=True)
        async for _ in stream:
            pass
        await a.responses.parse(model=m, input="resp-parse-async", text_format=Answer)
        messages = ask("tool-round-trip")
        first = await a.chat.completions.create(model=m, messages=messages, tools=[TOOL])
        (call,) = first.choices[0].message.tool_calls
        # content None, as agents echo it: agentops records a None attribute, which must not fail the call.
        calls = [call.model_dump(exclude_none=True)]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "4"})
        await a.chat.completions.create(model=m, messages=messages, tools=[TOOL])


    @rollout
    async def agent(task, llm):
        keys["key_during_rollout"] = os.environ.get("AGENTOPS_API_KEY")
        with openai.OpenAI(base_url=llm.endpoint, api_key="sk-mock", max_retries=0) as s:
            await asyncio.to_thread(sync_calls, s, llm.model)
        async with openai.AsyncOpenAI(base_url=llm.endpoint, api_key="sk-mock", max_retries=0) as a:
            await async_calls(a, llm.model)
        return 1.0


    async def main(root, base_url):
        store = FileStore(root / "store", scan_debounce_seconds=0)
        await store.add_resources({"llm": LLM(endpoint=base_url, model="mock-gpt")})
        enqueued = await store.enqueue_rollout(input="all call kinds")
        runner = LitAgentRunner(tracer=AgentOpsTracer(), poll_interval=0.05, max_rollouts=1)
        with runner.run_context(agent=agent, store=store):
            await asyncio.wait_for(runner.iter(), 90)
        keys["key_after_teardown"] = os.environ.get("AGENTOPS_API_KEY")
        got = await store.get_rollout_by_id(enqueued.rollout_id)
        spans = await store.query_spans(enqueued.rollout_id)
        dumped = [s.model_dump(mode="json") for s in spans]
        return {"status": got.status, "rollout_id": enqueued.rollout_id, "spans": dumped}


    with MockOpenAIServer() as mock:
        result = asyncio.run(main(Path(sys.argv[1]), mock.base_url))
    result.update(keys, targets=targets)
    sys.stdout.write("RESULT " + json.dumps(result) + "\\n")
    """
)

# The prompt each call sends, and the span it must produce.
CHAT, TEXT, RESPONSES = "openai.chat.completion", "openai.completion", "openai.responses.create"
CALLS = {
    **{f"chat-{k}-{m}": CHAT for k in ("stream", "helper", "parse", "raw") for m in ("sync", "async")},
    "chat-sync": CHAT,
    "chat-async": CHAT,
    "chat-rawstream-sync": CHAT,
    "chat-rawjson-async": CHAT,
    **{f"text-{m}": TEXT for m in ("sync", "stream-sync", "async", "stream-async")},
    **{
        f"resp-{m}": RESPONSES
        for m in ("sync", "stream-sync", "helper-sync", "async", "stream-async", "parse-async")
    },
}
# Streams broken by the server part-way, and streams the agent stopped reading (agentops' own).
BROKEN = {"chat-broken-sync", "chat-broken-async"}
ABANDONED = {"chat-abandoned-sync", "chat-abandoned-async"}
# agentops records plain chat.completions.create itself (its spans say gen_ai.system "OpenAI").
BY_AGENTOPS = {"chat-sync", "chat-async", "chat-stream-sync", "chat-stream-async"}


@pytest.fixture(scope="module")
def call_kinds(children: dict[str, Any]) -> dict[str, Any]:
    """The rollout making every call kind, its spans by prompt."""
    result: dict[str, Any] = children["call_kinds"]
    spans = result["spans"]
    (root,) = [s for s in spans if s["name"] == f"{result['rollout_id']}.session"]
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span["name"] in (CHAT, TEXT, RESPONSES):
            by_prompt.setdefault(str(span["attributes"].get("gen_ai.prompt.0.content")), []).append(span)
    return {**result, "root": root, "by_prompt": by_prompt}


def test_every_call_is_recorded_once_in_one_tree(call_kinds: dict[str, Any]) -> None:
    assert call_kinds["status"] == "succeeded"
    root = call_kinds["root"]
    assert [s for s in call_kinds["spans"] if s["parent_id"] is None] == [root], "one tree under the root"
    by_prompt = call_kinds["by_prompt"]
    assert sorted(by_prompt) == sorted([*CALLS, *BROKEN, *ABANDONED, "tool-round-trip"])
    assert {prompt: len(spans) for prompt, spans in by_prompt.items() if prompt in CALLS} == dict.fromkeys(
        CALLS, 1
    )


@pytest.mark.parametrize("prompt", sorted(CALLS))
def test_each_call_kind_records_request_reply_usage_and_token_ids(
    call_kinds: dict[str, Any], prompt: str
) -> None:
    (span,) = call_kinds["by_prompt"][prompt]
    _assert_llm_span(span, CALLS[prompt], call_kinds["root"], by_agentops=prompt in BY_AGENTOPS)


def test_a_broken_or_abandoned_stream_is_not_the_parent_of_what_follows(call_kinds: dict[str, Any]) -> None:
    """agentops made a stream's span the current one until the stream was read to its end: one
    broken part-way (its error lost, its span never ended by the sync wrapper) or left half-read
    was the parent of every later call and reward of the attempt (found by an adversarial pass).
    Every later call's parent is checked by the test above; here, the streams' own spans."""
    by_prompt, root = call_kinds["by_prompt"], call_kinds["root"]
    for prompt in BROKEN | ABANDONED:
        (span,) = by_prompt[prompt]
        assert span["parent_id"] == root["span_id"], prompt
    for prompt in BROKEN:
        (span,) = by_prompt[prompt]
        assert span["status"]["status_code"] == "ERROR", prompt
        assert "injected failure mid-stream" in span["status"]["description"], prompt
        assert "exception" in [e["name"] for e in span["events"]], prompt


def test_a_tool_round_trip_shows_the_tools_name_arguments_and_result(call_kinds: dict[str, Any]) -> None:
    _assert_tool_round_trip(
        call_kinds["by_prompt"]["tool-round-trip"], call_kinds["spans"], call_kinds["root"]
    )


def _assert_llm_span(span: dict[str, Any], name: str, root: dict[str, Any], *, by_agentops: bool) -> None:
    attrs = span["attributes"]
    prompt = attrs["gen_ai.prompt.0.content"]
    assert (span["name"], span["parent_id"]) == (name, root["span_id"])
    assert span["status"]["status_code"] != "ERROR", prompt
    assert attrs["gen_ai.system"] == ("OpenAI" if by_agentops else "openai"), prompt
    assert attrs["gen_ai.request.model"] == "mock-gpt"
    assert attrs["gen_ai.response.model"] == "mock-gpt"
    completion = attrs["gen_ai.completion.0.content"]
    if "parse" in prompt:
        assert json.loads(completion), prompt  # structured output: the JSON the model produced
    else:
        assert completion == f"echo: {prompt}"
    assert attrs["gen_ai.request.streaming"] is any(k in prompt for k in ("stream", "helper")), prompt
    assert attrs["gen_ai.usage.prompt_tokens"] > 0, prompt
    assert attrs["gen_ai.usage.completion_tokens"] > 0, prompt
    assert attrs.get("prompt_token_ids"), prompt  # the mock sends vLLM-style token ids
    assert attrs.get("response_token_ids"), prompt
    assert len(attrs["response_token_ids"]) == attrs["gen_ai.usage.completion_tokens"], prompt


def _assert_tool_round_trip(
    calls: list[dict[str, Any]], spans: list[dict[str, Any]], root: dict[str, Any]
) -> None:
    first, second = sorted(calls, key=lambda s: s["start_time"])
    for span in (first, second):
        assert span["parent_id"] == root["span_id"]
        assert span["attributes"]["gen_ai.request.functions.0.name"] == "lookup"
    assert first["attributes"]["gen_ai.completion.0.finish_reason"] == "tool_calls"
    (tool,) = [s for s in spans if s["parent_id"] == first["span_id"]]
    assert tool["name"] == "tool_call.lookup"
    assert tool["attributes"]["tool.name"] == "lookup"
    call_id = tool["attributes"]["tool.call.id"]
    assert json.loads(tool["attributes"]["tool.parameters"]).keys() == {"q"}
    prompt = second["attributes"]
    assert prompt["gen_ai.prompt.1.tool_calls.0.id"] == call_id
    assert prompt["gen_ai.prompt.1.tool_calls.0.name"] == "lookup"
    assert (prompt["gen_ai.prompt.2.role"], prompt["gen_ai.prompt.2.content"]) == ("tool", "4")
    assert prompt["gen_ai.prompt.2.tool_call_id"] == call_id
    assert "gen_ai.prompt.1.content" not in prompt  # agentops' None left out, not stored
    assert second["attributes"]["gen_ai.completion.0.content"]


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


# -- the pieces that share calls between agentops and agl, in-process (no agentops needed) -----------


def test_agentops_keeps_only_the_chat_calls_it_records_in_full() -> None:
    import openai

    from store_fs.tracing._agentops_openai import agentops_records

    plain = {"model": "m", "messages": [], "stream": True}
    assert agentops_records(plain)
    assert not agentops_records({**plain, "extra_headers": {"X-Stainless-Raw-Response": "true"}})
    assert not agentops_records({**plain, "tools": openai.omit})  # the stream() helper's way
    assert not agentops_records({**plain, "tools": openai.NOT_GIVEN})


def test_no_agl_span_while_agentops_records_the_call() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from store_fs.tracing._agentops_openai import BesideAgentOps, marking

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    beside = BesideAgentOps(provider.get_tracer("t"))

    def sdk_method(self: object, name: str) -> tuple[bool, bool]:
        """Starts a span and a child of it, as agl's instrumentation does; says which record."""
        span = beside.start_span(name)
        child = beside.start_span(f"{name}.child", context=trace.set_span_in_context(span))
        recording = span.is_recording(), child.is_recording()
        child.end()
        span.end()
        return recording

    outer = provider.get_tracer("agentops").start_span("openai.chat.completion")
    with trace.use_span(outer, end_on_exit=True):
        assert marking(sdk_method, is_async=False)(None, "inside") == (False, False)
        assert sdk_method(None, "beside") == (True, True)  # a call agentops does not record
        with beside.start_as_current_span("current") as current:
            assert current.is_recording()
    names = sorted(s.name for s in exported.get_finished_spans())
    assert names == ["beside", "beside.child", "current", "openai.chat.completion"]
    assert all(s.parent is not None for s in exported.get_finished_spans() if s.name.startswith("beside"))
