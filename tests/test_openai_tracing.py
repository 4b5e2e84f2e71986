"""store_fs.tracing.openai_instrument: one span per chat completion, against the local mock server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.resources.chat.completions import AsyncCompletions, Completions
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from store_fs.testing.mock_openai import MockOpenAIServer
from store_fs.tracing.openai_instrument import SPAN_NAME, instrument_openai

ORIGINAL_SYNC = Completions.create
ORIGINAL_ASYNC = AsyncCompletions.create
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
    assert Completions.create is ORIGINAL_SYNC
    assert AsyncCompletions.create is ORIGINAL_ASYNC


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
        "gen_ai.response.finish_reasons": ("stop",),
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
    assert attrs["gen_ai.prompt.1.tool_calls"] == (
        '[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]'
    )
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
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.response.model"] == "m"
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
    assert span.attributes["gen_ai.response.finish_reasons"] == ()
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
    wrapped = Completions.create
    assert wrapped is not ORIGINAL_SYNC
    undo_second = instrument_openai(second.tracer)
    assert Completions.create is wrapped  # not double-wrapped
    client.chat.completions.create(model="m", messages=USER)
    assert (len(first.spans()), len(second.spans())) == (0, 1)  # the latest registration records
    undo_second()
    undo_second()  # idempotent: must not drop the first registration
    client.chat.completions.create(model="m", messages=USER)
    assert (len(first.spans()), len(second.spans())) == (1, 1)
    undo_first()
    assert Completions.create is ORIGINAL_SYNC
    assert AsyncCompletions.create is ORIGINAL_ASYNC
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


def test_raw_response_call_is_traced_without_failing(otel: Otel, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert raw.parse().choices[0].message.content == "echo: hello world"
    attrs = dict(otel.only().attributes or {})
    assert attrs["gen_ai.prompt.0.content"] == "hello world"
    assert "gen_ai.response.id" not in attrs  # a raw response is not read by the instrumentation


def test_streamed_tool_calls_are_accumulated() -> None:
    from openai.types.chat import ChatCompletionChunk

    from store_fs.tracing.openai_instrument import _Accumulator

    def chunk(delta: dict[str, Any], finish: str | None = None) -> ChatCompletionChunk:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return ChatCompletionChunk.model_validate(
            {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [choice]}
        )

    def call(args: str, name: str | None = None, call_id: str | None = None) -> dict[str, Any]:
        return {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": args}}

    acc = _Accumulator()
    for c in (
        chunk({"role": "assistant", "tool_calls": [call('{"a"', "f", "call_1")]}),
        chunk({"tool_calls": [call(": 1}")]}),
        chunk({}, "tool_calls"),
    ):
        acc.add(c)
    attrs = acc.result()
    assert attrs["gen_ai.completion.0.tool_calls"] == (
        '[{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1}"}}]'
    )
    assert attrs["gen_ai.completion.0.finish_reason"] == "tool_calls"
    assert "gen_ai.completion.0.content" not in attrs
    assert "response_token_ids" not in attrs
