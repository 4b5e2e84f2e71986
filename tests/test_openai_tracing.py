"""store_fs.tracing.openai_instrument: one span per chat completion, against the local mock server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai._base_client import AsyncAPIClient, SyncAPIClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from store_fs.models import Span
from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.openai_instrument import SPAN_NAME, instrument_openai
from store_fs.tracing.rollout_binding import UNFINISHED_KEY
from store_fs.tracing.tracer import OtelTracer

ORIGINAL_SYNC = SyncAPIClient.request
ORIGINAL_ASYNC = AsyncAPIClient.request
USER: Any = [{"role": "user", "content": "hello world"}]


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def spans(self, name: str = SPAN_NAME) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def only(self) -> ReadableSpan:
        spans = self.spans()
        assert len(spans) == 1, spans
        return spans[0]


@pytest.fixture
def server() -> Iterator[MockOpenAIServer]:
    with MockOpenAIServer() as s:
        yield s


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    undo = instrument_openai(o.tracer)
    yield o
    undo()
    o.provider.shutdown()
    # Every test must leave openai unpatched, whatever it did.
    assert SyncAPIClient.request is ORIGINAL_SYNC
    assert AsyncAPIClient.request is ORIGINAL_ASYNC


@pytest.fixture
def client(server: MockOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        yield c


def _bytes(text: str) -> tuple[int, ...]:
    return tuple(text.encode("utf-8"))


def test_plain_call_exact_attributes(otel: Otel, client: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    with otel.tracer.start_as_current_span("agent") as parent:
        reply = client.chat.completions.create(
            model="m1", messages=messages, temperature=0.5, max_tokens=64, top_p=0.9
        )
    span = otel.only()
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.status.status_code is StatusCode.UNSET
    prompt_ids = _bytes("system: be brief\nuser: hello world\n")
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.type": "chat",
        "gen_ai.request.streaming": False,
        "gen_ai.request.model": "m1",
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.top_p": 0.9,
        "server.address": "127.0.0.1",
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "be brief",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "hello world",
        "gen_ai.response.id": reply.id,
        "gen_ai.response.model": "m1",
        "gen_ai.openai.system_fingerprint": "fp_mock",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "echo: hello world",
        "gen_ai.completion.0.finish_reason": "stop",
        "gen_ai.usage.input_tokens": len(prompt_ids),
        "gen_ai.usage.prompt_tokens": len(prompt_ids),
        "gen_ai.usage.output_tokens": 17,
        "gen_ai.usage.completion_tokens": 17,
        "gen_ai.usage.total_tokens": len(prompt_ids) + 17,
        "prompt_token_ids": prompt_ids,
        "response_token_ids": _bytes("echo: hello world"),
    }


def test_request_runs_inside_the_span(otel: Otel, server: MockOpenAIServer) -> None:
    seen: list[str] = []

    def hook(request: Any) -> None:  # runs in the caller's thread and context, during the request
        current = trace.get_current_span()
        seen.append(getattr(current, "name", "?"))

    http = openai.DefaultHttpx2Client(event_hooks={"request": [hook]})
    with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, http_client=http) as c:
        c.chat.completions.create(model="m", messages=USER)
    assert seen == [SPAN_NAME]


def test_structured_content_and_tool_calls_are_json_strings(otel: Otel, client: openai.OpenAI) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "done?"},
    ]
    sentinels: Any = {"top_p": openai.NOT_GIVEN}  # what wrappers sometimes pass through
    client.chat.completions.create(model="m", messages=messages, temperature=openai.omit, **sentinels)
    attrs = dict(otel.only().attributes or {})
    assert (
        attrs["gen_ai.prompt.0.content"] == '[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]'
    )
    assert "gen_ai.prompt.1.content" not in attrs
    assert {k: v for k, v in attrs.items() if k.startswith("gen_ai.prompt.1.")} == {
        "gen_ai.prompt.1.role": "assistant",
        "gen_ai.prompt.1.tool_calls.0.id": "c1",
        "gen_ai.prompt.1.tool_calls.0.name": "f",
        "gen_ai.prompt.1.tool_calls.0.arguments": "{}",
    }
    assert attrs["gen_ai.prompt.2.role"] == "tool"
    assert attrs["gen_ai.prompt.2.content"] == "42"
    assert attrs["gen_ai.prompt.2.tool_call_id"] == "c1"
    assert attrs["gen_ai.completion.0.content"] == "echo: done?"
    assert "gen_ai.request.temperature" not in attrs  # omit / NOT_GIVEN are not values
    assert "gen_ai.request.top_p" not in attrs


@pytest.mark.parametrize("include_usage", [True, False])
def test_sync_stream(otel: Otel, client: openai.OpenAI, include_usage: bool) -> None:
    stream = client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": include_usage}
    )
    assert otel.spans() == []  # the span stays open until the stream is drained
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "echo: hello world"
    attrs = dict(otel.only().attributes or {})
    assert attrs["gen_ai.request.streaming"] is True
    assert attrs["gen_ai.completion.0.content"] == text
    assert attrs["gen_ai.completion.0.role"] == "assistant"
    assert attrs["gen_ai.completion.0.finish_reason"] == "stop"
    assert attrs["gen_ai.response.model"] == "m"
    first_token = attrs["gen_ai.streaming.time_to_first_token"]
    assert isinstance(first_token, float)
    assert 0 < first_token < 30
    assert attrs["response_token_ids"] == _bytes(text)
    assert attrs["prompt_token_ids"] == _bytes("user: hello world\n")
    usage_keys = {k for k in attrs if k.startswith("gen_ai.usage.")}
    if include_usage:
        assert attrs["gen_ai.usage.completion_tokens"] == attrs["gen_ai.usage.output_tokens"] == 17
        assert attrs["gen_ai.usage.prompt_tokens"] == attrs["gen_ai.usage.input_tokens"] == 18
        assert attrs["gen_ai.usage.total_tokens"] == 35
    else:
        assert usage_keys == set()


def test_sync_stream_closed_early_ends_span(otel: Otel, client: openai.OpenAI) -> None:
    with client.chat.completions.create(model="m", messages=USER, stream=True) as stream:
        next(iter(stream))
        next(iter(stream))
    span = otel.only()
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes["gen_ai.completion.0.content"] == "echo: "
    assert "gen_ai.completion.0.finish_reason" not in span.attributes
    stream.close()  # a second close must not end the span twice
    assert len(otel.spans()) == 1


async def test_async_plain(otel: Otel, server: MockOpenAIServer) -> None:
    async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        with otel.tracer.start_as_current_span("agent") as parent:
            reply = await c.chat.completions.create(model="m", messages=USER)
    span = otel.only()
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes is not None
    assert (
        span.attributes["gen_ai.completion.0.content"]
        == reply.choices[0].message.content
        == "echo: hello world"
    )
    assert span.attributes["gen_ai.request.streaming"] is False
    assert span.attributes["gen_ai.usage.total_tokens"] == 35


@pytest.mark.parametrize("include_usage", [True, False])
async def test_async_stream(otel: Otel, server: MockOpenAIServer, include_usage: bool) -> None:
    async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": include_usage},
        )
        assert otel.spans() == []
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    attrs = dict(otel.only().attributes or {})
    assert attrs["gen_ai.completion.0.content"] == "".join(parts) == "echo: hello world"
    assert attrs["gen_ai.request.streaming"] is True
    assert attrs["response_token_ids"] == _bytes("echo: hello world")
    assert ("gen_ai.usage.total_tokens" in attrs) is include_usage


async def test_async_stream_closed_early(otel: Otel, server: MockOpenAIServer) -> None:
    async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
        async with stream:
            await stream.__anext__()
    assert otel.only().status.status_code is StatusCode.UNSET


async def test_concurrent_async_calls(otel: Otel, server: MockOpenAIServer) -> None:
    async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:

        async def one(i: int) -> tuple[int, int]:
            with otel.tracer.start_as_current_span(f"agent-{i}") as parent:
                await asyncio.sleep(0)
                await c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{i}"}])
                return i, parent.get_span_context().span_id

        parents = dict(await asyncio.gather(*(one(i) for i in range(4))))
    spans = otel.spans()
    assert len(spans) == 4
    for span in spans:
        assert span.attributes is not None
        prompt = span.attributes["gen_ai.prompt.0.content"]
        assert isinstance(prompt, str)
        assert span.attributes["gen_ai.completion.0.content"] == f"echo: {prompt}"
        assert span.parent is not None
        assert span.parent.span_id == parents[int(prompt[1:])]
    assert sorted(str((s.attributes or {})["gen_ai.prompt.0.content"]) for s in spans) == [
        "q0",
        "q1",
        "q2",
        "q3",
    ]


@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)]
)
def test_error_marks_span_and_propagates(
    otel: Otel, server: MockOpenAIServer, client: openai.OpenAI, status: int, error: type[Exception]
) -> None:
    server.fail_next(status)
    with pytest.raises(error):
        client.chat.completions.create(model="m", messages=USER, stream=True)
    span = otel.only()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is not None
    assert error.__name__ in span.status.description
    assert [e.name for e in span.events] == ["exception"]
    assert span.attributes is not None
    assert "gen_ai.response.id" not in span.attributes


async def test_async_error_marks_span(otel: Otel, server: MockOpenAIServer) -> None:
    server.fail_next(500)
    async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=USER)
    assert otel.only().status.status_code is StatusCode.ERROR


def test_uninstrument_restores_and_is_reference_counted(
    server: MockOpenAIServer, client: openai.OpenAI
) -> None:
    first, second = Otel(), Otel()
    undo_first = instrument_openai(first.tracer)
    wrapped = SyncAPIClient.request
    assert wrapped is not ORIGINAL_SYNC
    undo_second = instrument_openai(second.tracer)
    assert SyncAPIClient.request is wrapped  # not double-wrapped
    client.chat.completions.create(model="m", messages=USER)
    assert (len(first.spans()), len(second.spans())) == (0, 1)  # the latest registration records
    undo_second()
    undo_second()  # idempotent: must not drop the first registration
    client.chat.completions.create(model="m", messages=USER)
    assert (len(first.spans()), len(second.spans())) == (1, 1)
    undo_first()
    assert SyncAPIClient.request is ORIGINAL_SYNC
    assert AsyncAPIClient.request is ORIGINAL_ASYNC
    client.chat.completions.create(model="m", messages=USER)
    assert (len(first.spans()), len(second.spans())) == (1, 1)
    first.provider.shutdown()
    second.provider.shutdown()


_net_log: list[tuple[str, Any]] | None = None
_hook_installed = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    log = _net_log
    if log is None:
        return
    if event == "socket.getaddrinfo":
        log.append((event, args[0]))
    elif event == "socket.connect":
        address = args[1]
        log.append((event, address[0] if isinstance(address, tuple) else address))


def test_traced_calls_contact_only_loopback(otel: Otel, server: MockOpenAIServer) -> None:
    global _net_log, _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed; this one is inert while _net_log is None
        sys.addaudithook(_audit)
        _hook_installed = True
    _net_log = []
    try:
        with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
            c.chat.completions.create(model="m", messages=USER)
            for _ in c.chat.completions.create(model="m", messages=USER, stream=True):
                pass
        log = list(_net_log)
    finally:
        _net_log = None
    assert any(event == "socket.connect" for event, _ in log), log  # the hook did see the traffic
    hosts = {host.decode() if isinstance(host, bytes) else str(host) for _, host in log}
    assert hosts <= {"127.0.0.1", "localhost", "::1"}, log
    assert len(otel.spans()) == 2


def test_raw_response_call_is_traced_with_its_reply(otel: Otel, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    reply = raw.parse()
    assert reply.choices[0].message.content == "echo: hello world"
    attrs = dict(otel.only().attributes or {})
    assert attrs["gen_ai.prompt.0.content"] == "hello world"
    assert attrs["gen_ai.response.id"] == reply.id
    assert attrs["gen_ai.completion.0.content"] == "echo: hello world"


def test_streamed_tool_calls_are_accumulated() -> None:
    from openai.types.chat import ChatCompletionChunk

    from store_fs.tracing._oai_chat import ChatChunks

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return ChatCompletionChunk.model_validate(
            {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}
        )

    def call(args: str, name: str | None = None, call_id: str | None = None) -> dict[str, Any]:
        return {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": args}}

    acc = ChatChunks()
    for c in (
        chunk({"role": "assistant", "tool_calls": [call('{"a"', "f", "call_1")]}),
        chunk({"tool_calls": [call(": 1}")]}),
        chunk({}, "tool_calls"),
    ):
        acc.add(c)
    attrs = acc.result()
    assert {k: v for k, v in attrs.items() if ".tool_calls." in k} == {
        "gen_ai.completion.0.tool_calls.0.id": "call_1",
        "gen_ai.completion.0.tool_calls.0.type": "function",
        "gen_ai.completion.0.tool_calls.0.name": "f",
        "gen_ai.completion.0.tool_calls.0.arguments": '{"a": 1}',
    }
    assert attrs["gen_ai.completion.0.finish_reason"] == "tool_calls"
    assert "gen_ai.completion.0.content" not in attrs
    assert "response_token_ids" not in attrs


def test_clients_and_raw_wrappers_made_before_instrumenting_are_traced(server: MockOpenAIServer) -> None:
    # Resources bind client.post, and with_raw_response binds create, when first used: the
    # patch must sit below both.
    with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response
        c.chat.completions.create(model="m", messages=USER)
        o = Otel()
        undo = instrument_openai(o.tracer)
        try:
            c.chat.completions.create(model="m", messages=USER)
            raw.create(model="m", messages=USER).parse()
        finally:
            undo()
    assert len(o.spans()) == 2


def test_stream_helper_gives_one_span_even_when_left_early(otel: Otel, client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="m", messages=USER) as stream:
        for event in stream:
            if event.type == "content.delta" and event.delta:
                break
    attrs = dict(otel.only().attributes or {})  # ended by the helper closing the response
    assert attrs["gen_ai.request.streaming"] is True
    assert attrs["gen_ai.completion.0.content"] == "echo: "
    assert "gen_ai.completion.0.finish_reason" not in attrs
    with client.chat.completions.stream(model="m", messages=USER) as stream:
        final = stream.get_final_completion()
    spans = otel.spans()
    assert len(spans) == 2
    assert dict(spans[1].attributes or {})["gen_ai.completion.0.content"] == final.choices[0].message.content


async def test_async_stream_helper_left_early(otel: Otel, server: MockOpenAIServer) -> None:
    client = openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0)
    async with client as c, c.chat.completions.stream(model="m", messages=USER) as stream:
        async for event in stream:
            if event.type == "content.delta" and event.delta:
                break
    assert dict(otel.only().attributes or {})["gen_ai.completion.0.content"] == "echo: "


def test_streaming_response_closed_unread_still_records_the_reply(otel: Otel, client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(model="m", messages=USER) as response:
        assert response.http_response.status_code == 200
    attrs = dict(otel.only().attributes or {})
    assert attrs["gen_ai.completion.0.content"] == "echo: hello world"


def test_other_requests_are_not_traced(otel: Otel, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()]
    assert otel.exporter.get_finished_spans() == ()


def test_logprobs_are_kept_when_the_server_returns_them(otel: Otel, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m", messages=USER, logprobs=True, top_logprobs=2)
    for _ in client.chat.completions.create(model="m", messages=USER, logprobs=True, stream=True):
        pass
    text = client.completions.create(model="m", prompt="hi", logprobs=1)
    plain, streamed, legacy = (dict(s.attributes or {}) for s in otel.exporter.get_finished_spans())
    assert reply.choices[0].logprobs is not None
    expected = [t.model_dump(mode="json", exclude_none=True) for t in reply.choices[0].logprobs.content or []]
    assert expected
    assert json.loads(str(plain["logprobs.content"])) == expected
    assert [t["token"] for t in json.loads(str(streamed["logprobs.content"]))] == [
        t["token"] for t in expected
    ]
    assert text.choices[0].logprobs is not None
    assert json.loads(str(legacy["logprobs.content"]))["tokens"] == text.choices[0].logprobs.tokens


# -- agl's tracers: what an instrumentation records, and which tracer records a call ---------------


class _RecordsNone(SpanProcessor):
    """An instrumentation that records ``None`` values, as agentops does for an absent content."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("gen_ai.prompt.1.content", None)
        span.set_attribute("mixed", [1, None])
        span.set_attribute("kept", "yes")
        span.add_event("looked", {"absent": None, "present": 1})


def _records_none(provider: TracerProvider) -> Callable[[], None]:
    provider.add_span_processor(_RecordsNone())
    return lambda: None


async def test_none_attribute_values_are_left_out_instead_of_failing_the_call(
    server: MockOpenAIServer,
) -> None:
    tracer = OtelTracer(instrument=[_records_none])
    client = openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0)
    with tracer.lifespan():
        async with tracer.trace_context(rollout_id="ro-none", attempt_id="at-none") as binding, client as c:
            reply = await c.chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "echo: hello world"  # the call did not fail
    assert (binding.lost, binding.lost_error) == (0, None)
    [call] = [s for s in binding.spans if s.name == SPAN_NAME]
    assert call.attributes["kept"] == "yes"
    assert "gen_ai.prompt.1.content" not in call.attributes
    assert "mixed" not in call.attributes  # a stored sequence holds one type: no None in it
    assert call.attributes["gen_ai.prompt.0.content"] == "hello world"
    [event] = call.events
    assert event.attributes == {"present": 1}
    assert {s.name for s in binding.spans} == {SPAN_NAME, "ro-none.session"}  # the root was stored too


def _exporting(exporter: InMemorySpanExporter) -> Callable[[TracerProvider], Callable[[], None]]:
    def hook(provider: TracerProvider) -> Callable[[], None]:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return lambda: None

    return hook


async def test_each_rollouts_calls_are_recorded_by_its_own_tracer(server: MockOpenAIServer) -> None:
    # Two tracers initialised in one process (the second registers last), two rollouts at once:
    # each call is recorded on the provider of the tracer whose rollout made it.
    exporters = {name: InMemorySpanExporter() for name in ("first", "second")}
    tracers = {name: OtelTracer(instrument=[_exporting(exporters[name])]) for name in exporters}
    both_started = asyncio.Barrier(2)

    async def one_rollout(name: str) -> list[Span]:
        tracer = tracers[name]
        async with tracer.trace_context(rollout_id=f"ro-{name}", attempt_id=f"at-{name}") as binding:
            await both_started.wait()  # both trace contexts are open while the calls run
            async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
                await c.chat.completions.create(model=f"model-{name}", messages=USER)
                await asyncio.sleep(0.01)
                await c.chat.completions.create(model=f"model-{name}", messages=USER)
        return binding.spans

    with tracers["first"].lifespan(), tracers["second"].lifespan():
        stored = dict(zip(exporters, await asyncio.gather(*map(one_rollout, exporters)), strict=True))
    for name, exporter in exporters.items():
        recorded = [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.name == SPAN_NAME]
        assert [a["gen_ai.request.model"] for a in recorded] == [f"model-{name}"] * 2, name
        assert {a["agentlightning.rollout_id"] for a in recorded} == {f"ro-{name}"}
        calls = [s for s in stored[name] if s.name == SPAN_NAME]
        assert [s.attributes["gen_ai.request.model"] for s in calls] == [f"model-{name}"] * 2, name


async def test_a_long_conversation_keeps_every_prompt_message(
    server: MockOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenTelemetry's default limit of 128 attributes a span dropped the first prompt messages
    (the system prompt) and the model of a 70-message call, and the attempt still succeeded."""
    messages: Any = [{"role": "system", "content": "be brief"}]
    messages += [{"role": "user" if i % 2 else "assistant", "content": f"turn {i}"} for i in range(1, 70)]
    tracer = OtelTracer()
    client = openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0)
    with tracer.lifespan():
        async with tracer.trace_context(rollout_id="ro-long", attempt_id="at-long") as binding, client as c:
            await c.chat.completions.create(model="m-long", messages=messages)
    [call] = [s for s in binding.spans if s.name == SPAN_NAME]
    assert len(call.attributes) > 140
    assert call.attributes["gen_ai.request.model"] == "m-long"
    assert call.attributes["gen_ai.prompt.0.content"] == "be brief"
    assert call.attributes["gen_ai.prompt.69.content"] == "turn 69"
    assert call.attributes["agentlightning.rollout_id"] == "ro-long"
    # A limit asked for by its environment variable is still the user's to set.
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "7")
    limited = OtelTracer()
    with limited.lifespan():
        assert limited.provider._span_limits.max_span_attributes == 7


@pytest.mark.parametrize("how", ["read", "left", "unread"])
async def test_a_stream_not_read_to_its_end_is_still_recorded(server: MockOpenAIServer, how: str) -> None:
    """A streamed call the agent left after its first chunk (a ``break``, no ``close``), or never
    read, never ended its span: the call was missing from the trace of an attempt that
    succeeded (found by an adversarial pass). The trace context ends such spans, marked."""
    tracer = OtelTracer()
    client = openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0)
    streams = []  # kept referenced: a collected stream would not close it either
    with tracer.lifespan():
        async with tracer.trace_context(rollout_id="ro-stream", attempt_id="at-stream") as binding:
            stream = client.chat.completions.create(model="m-stream", messages=USER, stream=True)
            streams.append(stream)
            if how == "read":
                for _chunk in stream:
                    pass
            elif how == "left":
                for _chunk in stream:
                    break
    [call] = [s for s in binding.spans if s.name == SPAN_NAME]
    assert call.attributes["gen_ai.request.model"] == "m-stream"
    assert (UNFINISHED_KEY in call.attributes) == (how != "read")
    assert (binding.lost, binding.dropped) == (0, 0)
    root = [s for s in binding.spans if s.name.endswith(".session")]
    assert [s.parent_id for s in [call]] == [root[0].span_id]
    client.close()


def test_a_stream_the_server_breaks_part_way_is_a_failed_span(
    otel: Otel, server: MockOpenAIServer, client: openai.OpenAI
) -> None:
    """Chat: the SDK raises the error event, and the span records it."""
    server.break_next_stream(1)
    with pytest.raises(openai.APIError, match="injected failure mid-stream"):
        for _ in client.chat.completions.create(model="m", messages=USER, stream=True):
            pass
    span = otel.only()
    assert span.status.status_code == StatusCode.ERROR
    assert "injected failure mid-stream" in (span.status.description or "")


def test_a_responses_stream_ending_in_an_error_event_is_a_failed_span(
    otel: Otel, server: MockOpenAIServer, client: openai.OpenAI
) -> None:
    """The Responses API's ``error`` event is handed to the agent, not raised: the span looked
    like a normal, short reply (found by an adversarial pass)."""
    server.break_next_stream(2)
    kinds = [event.type for event in client.responses.create(model="m", input="hello world", stream=True)]
    assert kinds[-1] == "error"
    (span,) = otel.spans("openai.responses.create")
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "StreamReportedError: server_error: injected failure mid-stream"
    assert [e.name for e in span.events] == ["exception"]
