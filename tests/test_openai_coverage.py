"""Every generation call of the openai SDK, made by an agent under agl's runner, leaves one span.

One runner drains five rollouts against the local mock OpenAI server, with a FileStore in a
temporary directory: a sync agent making every call kind, an async agent making every call kind,
and three tool-call round trips (chat, streamed chat, Responses). Each call names its own model
(``m-<kind>-<flavour>``), so each test finds its call's span; then it reads what the store kept:
one LLM span per call with the request's model, prompt, completion (or tool calls), usage and
token ids, one tree per attempt under its root span, and no credential anywhere. (Upstream's
adapters over these spans: tests/test_tracing_equivalence.py, whose child imports upstream.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from store_fs import FileStore, PromptTemplate
from store_fs.agent import rollout
from store_fs.emitter import emit_annotation
from store_fs.models import NamedResources, Span
from store_fs.runner import LitAgentRunner
from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.openai_instrument import CHAT_SPAN, RESPONSES_SPAN, TEXT_SPAN
from store_fs.tracing.tracer import OtelTracer

API_KEY = "sk-agltest-SECRETKEY-0123456789abcdef"
HEADER_KEY = "hdr-SECRETVALUE-9876543210"
HEADERS = {"api-key": HEADER_KEY, "X-Team": "visible-team"}
LLM_SPANS = {CHAT_SPAN, TEXT_SPAN, RESPONSES_SPAN}
PROMPT: NamedResources = {"main_prompt": PromptTemplate(template="{q}", engine="f-string")}


class Answer(BaseModel):
    answer: str
    confidence: int


def _sync_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=API_KEY, base_url=url, default_headers=HEADERS, max_retries=0)


def _async_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=API_KEY, base_url=url, default_headers=HEADERS, max_retries=0)


def _chat(text: str) -> Any:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


USAGE: Any = {"include_usage": True}


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


async def _adrain(stream: Any) -> None:
    async for _ in stream:
        pass


# Each call kind: what it does with a client (model and prompt text given), in both flavours.
def _s_chat(c: openai.OpenAI, m: str, t: str) -> None:
    c.chat.completions.create(model=m, messages=_chat(t))


def _s_chat_stream(c: openai.OpenAI, m: str, t: str) -> None:
    _drain(c.chat.completions.create(model=m, messages=_chat(t), stream=True, stream_options=USAGE))


def _s_chat_parse(c: openai.OpenAI, m: str, t: str) -> None:
    c.chat.completions.parse(model=m, messages=_chat(t), response_format=Answer)


def _s_chat_helper(c: openai.OpenAI, m: str, t: str) -> None:
    with c.chat.completions.stream(model=m, messages=_chat(t), stream_options=USAGE) as stream:
        _drain(stream)


def _s_chat_raw(c: openai.OpenAI, m: str, t: str) -> None:
    c.chat.completions.with_raw_response.create(model=m, messages=_chat(t)).parse()


def _s_chat_streaming_response(c: openai.OpenAI, m: str, t: str) -> None:
    with c.chat.completions.with_streaming_response.create(model=m, messages=_chat(t)) as response:
        response.parse()


def _s_chat_streaming_response_stream(c: openai.OpenAI, m: str, t: str) -> None:
    with c.chat.completions.with_streaming_response.create(
        model=m, messages=_chat(t), stream=True, stream_options=USAGE
    ) as response:
        _drain(response.parse())


def _s_text(c: openai.OpenAI, m: str, t: str) -> None:
    c.completions.create(model=m, prompt=t)


def _s_text_stream(c: openai.OpenAI, m: str, t: str) -> None:
    _drain(c.completions.create(model=m, prompt=t, stream=True, stream_options=USAGE))


def _s_responses(c: openai.OpenAI, m: str, t: str) -> None:
    c.responses.create(model=m, input=t, instructions="be brief")


def _s_responses_stream(c: openai.OpenAI, m: str, t: str) -> None:
    _drain(c.responses.create(model=m, input=t, instructions="be brief", stream=True))


def _s_responses_parse(c: openai.OpenAI, m: str, t: str) -> None:
    c.responses.parse(model=m, input=t, instructions="be brief", text_format=Answer)


def _s_responses_helper(c: openai.OpenAI, m: str, t: str) -> None:
    with c.responses.stream(model=m, input=t, instructions="be brief") as stream:
        _drain(stream)


async def _a_chat(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await c.chat.completions.create(model=m, messages=_chat(t))


async def _a_chat_stream(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await _adrain(
        await c.chat.completions.create(model=m, messages=_chat(t), stream=True, stream_options=USAGE)
    )


async def _a_chat_parse(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await c.chat.completions.parse(model=m, messages=_chat(t), response_format=Answer)


async def _a_chat_helper(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    async with c.chat.completions.stream(model=m, messages=_chat(t), stream_options=USAGE) as stream:
        await _adrain(stream)


async def _a_chat_raw(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    (await c.chat.completions.with_raw_response.create(model=m, messages=_chat(t))).parse()


async def _a_chat_streaming_response(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    async with c.chat.completions.with_streaming_response.create(model=m, messages=_chat(t)) as response:
        await response.parse()


async def _a_chat_streaming_response_stream(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    async with c.chat.completions.with_streaming_response.create(
        model=m, messages=_chat(t), stream=True, stream_options=USAGE
    ) as response:
        await _adrain(await response.parse())


async def _a_text(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await c.completions.create(model=m, prompt=t)


async def _a_text_stream(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await _adrain(await c.completions.create(model=m, prompt=t, stream=True, stream_options=USAGE))


async def _a_responses(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await c.responses.create(model=m, input=t, instructions="be brief")


async def _a_responses_stream(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await _adrain(await c.responses.create(model=m, input=t, instructions="be brief", stream=True))


async def _a_responses_parse(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    await c.responses.parse(model=m, input=t, instructions="be brief", text_format=Answer)


async def _a_responses_helper(c: openai.AsyncOpenAI, m: str, t: str) -> None:
    async with c.responses.stream(model=m, input=t, instructions="be brief") as stream:
        await _adrain(stream)


SyncCall = Callable[[openai.OpenAI, str, str], None]
AsyncCall = Callable[[openai.AsyncOpenAI, str, str], Awaitable[None]]
# kind -> (sync call, async call, span name, streamed, structured output)
KINDS: dict[str, tuple[SyncCall, AsyncCall, str, bool, bool]] = {
    "chat": (_s_chat, _a_chat, CHAT_SPAN, False, False),
    "chat-stream": (_s_chat_stream, _a_chat_stream, CHAT_SPAN, True, False),
    "chat-parse": (_s_chat_parse, _a_chat_parse, CHAT_SPAN, False, True),
    "chat-stream-helper": (_s_chat_helper, _a_chat_helper, CHAT_SPAN, True, False),
    "chat-raw": (_s_chat_raw, _a_chat_raw, CHAT_SPAN, False, False),
    "chat-streaming-response": (
        _s_chat_streaming_response,
        _a_chat_streaming_response,
        CHAT_SPAN,
        False,
        False,
    ),
    "chat-streaming-response-stream": (
        _s_chat_streaming_response_stream,
        _a_chat_streaming_response_stream,
        CHAT_SPAN,
        True,
        False,
    ),
    "completions": (_s_text, _a_text, TEXT_SPAN, False, False),
    "completions-stream": (_s_text_stream, _a_text_stream, TEXT_SPAN, True, False),
    "responses": (_s_responses, _a_responses, RESPONSES_SPAN, False, False),
    "responses-stream": (_s_responses_stream, _a_responses_stream, RESPONSES_SPAN, True, False),
    "responses-parse": (_s_responses_parse, _a_responses_parse, RESPONSES_SPAN, False, True),
    "responses-stream-helper": (_s_responses_helper, _a_responses_helper, RESPONSES_SPAN, True, False),
}
TOOL: Any = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def _add(arguments: str) -> str:
    values = json.loads(arguments)
    return str(values["a"] + values["b"])


def _chat_tool_round_trip(c: openai.OpenAI, model: str) -> None:
    messages: Any = [{"role": "user", "content": "what is 2 + 3?"}]
    first = c.chat.completions.create(model=model, messages=messages, tools=[TOOL])
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages.append(first.choices[0].message)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": _add(call.function.arguments)})  # type: ignore[union-attr]
    c.chat.completions.create(model=model, messages=messages, tools=[TOOL])


async def _chat_tool_round_trip_streamed(c: openai.AsyncOpenAI, model: str) -> None:
    messages: Any = [{"role": "user", "content": "what is 2 + 3?"}]
    async with c.chat.completions.stream(model=model, messages=messages, tools=[TOOL]) as stream:
        await _adrain(stream)
        first = await stream.get_final_completion()
    call: Any = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": _add(call.function.arguments)})
    await _adrain(await c.chat.completions.create(model=model, messages=messages, tools=[TOOL], stream=True))


def _responses_tool_round_trip(c: openai.OpenAI, model: str) -> None:
    tool: Any = {"type": "function", **TOOL["function"]}
    items: Any = [{"role": "user", "content": "what is 2 + 3?"}]
    first = c.responses.create(model=model, input=items, tools=[tool])
    call: Any = next(item for item in first.output if item.type == "function_call")
    items += [call.model_dump(exclude_none=True)]
    items += [{"type": "function_call_output", "call_id": call.call_id, "output": _add(call.arguments)}]
    c.responses.create(model=model, input=items, tools=[tool])


def _sync_work(run: str, url: str) -> None:
    with _sync_client(url) as client:
        if run == "tools-chat":
            _chat_tool_round_trip(client, "m-tools-chat")
        elif run == "tools-responses":
            _responses_tool_round_trip(client, "m-tools-responses")
        else:
            for kind, (call, *_) in KINDS.items():
                call(client, f"m-{kind}-sync", f"question {kind} sync")


async def _async_work(run: str, url: str) -> None:
    async with _async_client(url) as client:
        if run == "tools-chat-streamed":
            await _chat_tool_round_trip_streamed(client, "m-tools-chat-streamed")
        else:
            for kind, (_, call, *_) in KINDS.items():
                await call(client, f"m-{kind}-async", f"question {kind} async")


SYNC_RUNS = ("sync", "tools-chat", "tools-responses")
RUNS = (*SYNC_RUNS, "async", "tools-chat-streamed")


@rollout
async def async_agent(task: dict[str, Any], prompt_template: PromptTemplate) -> float:
    run, url = task["run"], task["url"]
    if run in SYNC_RUNS:  # a sync agent's calls, in a thread as a sync agent would
        await asyncio.to_thread(_sync_work, run, url)
    else:
        await _async_work(run, url)
    if run == "sync":
        emit_annotation(
            {"note": f"the key is {API_KEY}", "http.request.header.authorization": f"Bearer {API_KEY}"}
        )
    return 1.0


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Span]]]:
    """Spans of every run (:data:`RUNS`), from one runner draining one rollout per run."""
    root: Path = tmp_path_factory.mktemp("coverage")

    async def drain(store: FileStore, url: str) -> dict[str, list[Span]]:
        await store.add_resources(PROMPT)
        ids = {}
        for run in RUNS:
            ids[run] = (await store.enqueue_rollout(input={"run": run, "url": url})).rollout_id
        runner = LitAgentRunner(
            tracer=OtelTracer(),
            max_rollouts=len(RUNS),
            max_parallel=4,
            poll_interval=0.05,
            interval_jitter=0.0,
        )
        with runner.run_context(agent=async_agent, store=store):
            await asyncio.wait_for(runner.iter(), 120)
        out = {}
        for key, rid in ids.items():
            found = await store.get_rollout_by_id(rid)
            assert found is not None, key
            assert found.status == "succeeded", (key, found)
            out[key] = list(await store.query_spans(rid))
        return out

    with MockOpenAIServer() as server:
        store = FileStore(root / "store", scan_debounce_seconds=0)
        yield asyncio.run(drain(store, server.base_url))


def _llm_spans(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.name in LLM_SPANS]


def _usage_ok(attrs: dict[str, Any]) -> None:
    prompt, completion = attrs["gen_ai.usage.prompt_tokens"], attrs["gen_ai.usage.completion_tokens"]
    assert prompt > 0
    assert completion > 0
    assert attrs["gen_ai.usage.total_tokens"] == prompt + completion
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (prompt, completion)


def test_each_agent_leaves_one_span_per_call(stored: dict[str, list[Span]]) -> None:
    for flavour in ("sync", "async"):
        models = [s.attributes["gen_ai.request.model"] for s in _llm_spans(stored[flavour])]
        assert sorted(models) == sorted(f"m-{kind}-{flavour}" for kind in KINDS), flavour


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_span_per_call_with_request_prompt_completion_usage(
    stored: dict[str, list[Span]], kind: str, flavour: str
) -> None:
    _, _, span_name, streamed, structured = KINDS[kind]
    model = f"m-{kind}-{flavour}"
    [span] = [s for s in _llm_spans(stored[flavour]) if s.attributes["gen_ai.request.model"] == model]
    attrs: dict[str, Any] = dict(span.attributes)
    assert span.name == span_name
    assert attrs["gen_ai.request.model"] == f"m-{kind}-{flavour}"
    assert attrs["gen_ai.response.model"] == f"m-{kind}-{flavour}"
    assert attrs["gen_ai.request.streaming"] is streamed
    assert isinstance(attrs["gen_ai.response.id"], str)
    assert attrs["gen_ai.response.id"]
    question = f"question {kind} {flavour}"
    if span_name == TEXT_SPAN:
        assert attrs["gen_ai.request.type"] == "completion"
        assert attrs["gen_ai.prompt.0.content"] == question
    else:
        assert attrs["gen_ai.request.type"] == "chat"
        assert (attrs["gen_ai.prompt.0.role"], attrs["gen_ai.prompt.0.content"]) == ("system", "be brief")
        assert (attrs["gen_ai.prompt.1.role"], attrs["gen_ai.prompt.1.content"]) == ("user", question)
        assert attrs["gen_ai.completion.0.role"] == "assistant"
    completion = attrs["gen_ai.completion.0.content"]
    if structured:
        assert set(json.loads(completion)) == {"answer", "confidence"}
        schema = json.loads(attrs["gen_ai.request.response_format"])
        assert schema["type"] == "json_schema"
        assert attrs["gen_ai.output.type"] == "json"
    else:
        assert completion == f"echo: {question}"
    assert attrs["gen_ai.completion.0.finish_reason"] == "stop"
    _usage_ok(attrs)
    assert attrs["prompt_token_ids"]  # the mock sends vLLM-style token ids, streamed or not
    assert len(attrs["response_token_ids"]) == attrs["gen_ai.usage.completion_tokens"]
    if streamed:
        assert 0 < attrs["gen_ai.streaming.time_to_first_token"] < 60
    else:
        assert "gen_ai.streaming.time_to_first_token" not in attrs
    assert span.status.status_code != "ERROR"


@pytest.mark.parametrize("run", RUNS)
def test_a_rollouts_spans_form_one_tree_under_its_root(stored: dict[str, list[Span]], run: str) -> None:
    spans = stored[run]
    [root] = [s for s in spans if s.parent_id is None]
    assert root.name == f"{spans[0].rollout_id}.session"
    assert not any(k.startswith("gen_ai.") for k in root.attributes)
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans)
    for span in spans:
        assert span.trace_id == root.trace_id
        seen, node = set(), span
        while node.parent_id is not None:  # every span reaches the root through stored spans
            assert node.span_id not in seen
            seen.add(node.span_id)
            node = by_id[node.parent_id]
        assert node is root
    # The reward the agent returned (built after the agent ended) hangs under the root too.
    [reward] = [
        s for s in spans if s.name == "agentlightning.annotation" and "reward" in json.dumps(s.attributes)
    ]
    assert reward.parent_id == root.span_id


def test_no_credential_reaches_the_store(stored: dict[str, list[Span]]) -> None:
    text = json.dumps([[s.model_dump(mode="json") for s in spans] for spans in stored.values()])
    assert "SECRET" not in text
    assert "authorization" not in text.lower()
    assert "visible-team" not in text  # no header is recorded at all, secret or not
    [note] = [s for s in stored["sync"] if "note" in s.attributes]
    assert note.attributes["note"] == "the key is [REDACTED]"


def _tool_children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and s.name.startswith("tool_call.")]


@pytest.mark.parametrize("run", ["tools-chat", "tools-chat-streamed", "tools-responses"])
def test_a_tool_call_round_trip_shows_name_arguments_and_result(
    stored: dict[str, list[Span]], run: str
) -> None:
    spans = stored[run]
    first, second = sorted(_llm_spans(spans), key=lambda s: s.sequence_id)
    a: dict[str, Any] = dict(first.attributes)
    assert a["gen_ai.request.functions.0.name"] == "add"
    assert json.loads(a["gen_ai.request.functions.0.parameters"])["required"] == ["a", "b"]
    assert a["gen_ai.completion.0.finish_reason"] == "tool_calls"
    assert a["gen_ai.completion.0.tool_calls.0.name"] == "add"
    arguments, call_id = (
        a["gen_ai.completion.0.tool_calls.0.arguments"],
        a["gen_ai.completion.0.tool_calls.0.id"],
    )
    assert set(json.loads(arguments)) == {"a", "b"}
    [tool] = _tool_children(spans, first)
    assert tool.name == "tool_call.add"
    assert (tool.attributes["tool.name"], tool.attributes["tool.parameters"]) == ("add", arguments)
    assert tool.attributes["tool.call.id"] == call_id
    b: dict[str, Any] = dict(second.attributes)
    assert b["gen_ai.prompt.1.role"] == "assistant"
    assert (b["gen_ai.prompt.1.tool_calls.0.name"], b["gen_ai.prompt.1.tool_calls.0.id"]) == ("add", call_id)
    assert b["gen_ai.prompt.1.tool_calls.0.arguments"] == arguments
    assert (b["gen_ai.prompt.2.role"], b["gen_ai.prompt.2.tool_call_id"]) == ("tool", call_id)
    assert b["gen_ai.prompt.2.content"] == _add(arguments)
    assert isinstance(b["gen_ai.completion.0.content"], str)
    assert _tool_children(spans, second) == []
