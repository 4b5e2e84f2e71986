"""The mock server's chat completions through the real openai SDK: tools, structured outputs,
logprobs, streaming (raw chunks and the SDK's ``stream`` helper), raw and streaming responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import openai
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall

from store_fs.testing.mock_openai import MockOpenAIServer, judge_score

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
        },
    },
}
CLOCK: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


class Verdict(pydantic.BaseModel):
    answer: str
    score: float
    passed: bool
    tags: list[str]
    level: Literal["low", "high"]


class Lookup(pydantic.BaseModel):
    """Look a word up."""

    word: str
    limit: int


@pytest.fixture(scope="module")
def server() -> Iterator[MockOpenAIServer]:
    with MockOpenAIServer() as s:
        yield s


@pytest.fixture(scope="module")
def client(server: MockOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(server: MockOpenAIServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        yield c


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def _calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, all function calls (the mock makes no custom-tool calls)."""
    calls = message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def _extra(model: pydantic.BaseModel) -> dict[str, Any]:
    assert model.model_extra is not None
    return model.model_extra


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="m", messages=_user("Paris"), tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["city"] == "Paris"  # strings carry the user's words
    assert 1 <= arguments["days"] <= 7
    assert arguments["unit"] == "celsius"
    spelled = f"<call get_weather {call.function.arguments}>"
    assert bytes(_extra(choice)["token_ids"]).decode() == spelled
    assert first.usage is not None
    assert first.usage.completion_tokens == len(spelled.encode())
    again = client.chat.completions.create(model="m", messages=_user("Paris"), tools=[WEATHER])
    [again_call] = _calls(again.choices[0].message)
    assert again_call.function.arguments == call.function.arguments
    assert again_call.id == call.id  # ids are a function of the conversation

    history = [
        *_user("Paris"),
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    second = client.chat.completions.create(model="m", messages=history, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == "tool results: get_weather -> sunny, 21C"
    prompt = bytes(_extra(second)["prompt_token_ids"]).decode()
    assert prompt == f"user: Paris\nassistant: {spelled}\ntool: sunny, 21C\n"


async def test_async_parallel_tool_round_trip(aclient: openai.AsyncOpenAI) -> None:
    first = await aclient.chat.completions.create(
        model="m", messages=_user("Oslo"), tools=[WEATHER, CLOCK], parallel_tool_calls=True
    )
    calls = _calls(first.choices[0].message)
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    results = [{"role": "tool", "tool_call_id": c.id, "content": f"r{i}"} for i, c in enumerate(calls)]
    history = [*_user("Oslo"), first.choices[0].message.model_dump(exclude_none=True), *results]
    second = await aclient.chat.completions.create(model="m", messages=history, tools=[WEATHER, CLOCK])
    assert second.choices[0].message.content == "tool results: get_weather -> r0; get_time -> r1"


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("none", None),
        ("auto", ["get_weather"]),
        ("required", ["get_weather"]),
        ({"type": "function", "function": {"name": "get_time"}}, ["get_time"]),
    ],
)
def test_tool_choice(client: openai.OpenAI, tool_choice: Any, expected: list[str] | None) -> None:
    reply = client.chat.completions.create(
        model="m", messages=_user("x"), tools=[WEATHER, CLOCK], tool_choice=tool_choice
    )
    calls = _calls(reply.choices[0].message)
    assert ([c.function.name for c in calls] or None) == expected
    if expected is None:
        assert reply.choices[0].message.content == "echo: x"


def test_logprobs_only_when_asked(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="m", messages=_user("hé"))
    assert plain.choices[0].logprobs is None
    reply = client.chat.completions.create(model="m", messages=_user("hé"), logprobs=True, top_logprobs=3)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    content = reply.choices[0].message.content
    assert content == "echo: hé"
    assert [b for entry in logprobs.content for b in entry.bytes or []] == list(content.encode())
    assert [entry.bytes for entry in logprobs.content] == [[i] for i in _extra(reply.choices[0])["token_ids"]]
    for entry in logprobs.content:
        assert entry.logprob < 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
    no_top = client.chat.completions.create(model="m", messages=_user("hé"), logprobs=True)
    assert no_top.choices[0].logprobs is not None
    assert no_top.choices[0].logprobs.content is not None
    assert all(e.top_logprobs == [] for e in no_top.choices[0].logprobs.content)


def test_parse_pydantic_model(client: openai.OpenAI, server: MockOpenAIServer) -> None:
    completion = client.chat.completions.parse(
        model="m", messages=_user("Rate this essay"), response_format=Verdict
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Verdict)
    score = judge_score("Rate this essay")
    # The responder's reply is the judge score; strings carry it, numbers are the score itself.
    assert parsed == Verdict(
        answer=f"{score:.2f}", score=score, passed=score >= 0.5, tags=[f"{score:.2f}"], level="low"
    )
    sent = server.requests[-1]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["name"] == "Verdict"


async def test_async_parse_and_json_mode(aclient: openai.AsyncOpenAI) -> None:
    completion = await aclient.chat.completions.parse(
        model="m", messages=_user("hello"), response_format=Verdict
    )
    parsed = completion.choices[0].message.parsed
    assert parsed is not None
    assert parsed.answer == "echo: hello"
    json_mode = await aclient.chat.completions.create(
        model="m", messages=_user("hello"), response_format={"type": "json_object"}
    )
    assert json.loads(json_mode.choices[0].message.content or "") == {"text": "echo: hello"}


def test_parse_strict_tool_arguments(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model="m", messages=_user("lightning"), tools=[openai.pydantic_function_tool(Lookup)]
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.parsed_arguments == Lookup(
        word="lightning", limit=round(judge_score("lightning") * 100)
    )


def _raw_stream(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    return list(client.chat.completions.create(model="m", stream=True, **kwargs))


def test_stream_tool_call_deltas_and_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="m", messages=_user("Lyon"), tools=[WEATHER, CLOCK], parallel_tool_calls=True
    )
    chunks = _raw_stream(
        client,
        messages=_user("Lyon"),
        tools=[WEATHER, CLOCK],
        parallel_tool_calls=True,
        stream_options={"include_usage": True},
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert _extra(chunks[0])["prompt_token_ids"] == _extra(plain)["prompt_token_ids"]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    expected = _calls(plain.choices[0].message)
    assert len(expected) == 2
    for index, call in enumerate(expected):
        mine = [d for d in deltas if d.index == index]
        assert mine[0].id == call.id
        assert mine[0].type == "function"
        assert mine[0].function is not None
        assert mine[0].function.name == call.function.name
        assert all(d.id is None and d.function is not None and d.function.name is None for d in mine[1:])
        assert len(mine) >= 3  # the arguments come in pieces
        assert "".join(d.function.arguments or "" for d in mine if d.function) == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    ids = [i for c in chunks if c.choices for i in _extra(c.choices[0]).get("token_ids", [])]
    assert ids == _extra(plain.choices[0])["token_ids"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_helper_text_tools_and_parse(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model="m", messages=_user("hi there"), stream_options={"include_usage": True}, logprobs=True
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == "echo: hi there"
    assert len(deltas) >= 3
    assert final.usage is not None
    assert final.usage.completion_tokens == len("echo: hi there")
    assert final.choices[0].logprobs is not None
    assert final.choices[0].logprobs.content is not None
    assert "".join(e.token for e in final.choices[0].logprobs.content) == "echo: hi there"

    with client.chat.completions.stream(
        model="m", messages=_user("storm"), tools=[openai.pydantic_function_tool(Lookup)]
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [e.name for e in done] == ["Lookup"]
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.parsed_arguments == done[0].parsed_arguments
    assert isinstance(done[0].parsed_arguments, Lookup)
    assert done[0].parsed_arguments.word == "storm"

    with client.chat.completions.stream(
        model="m", messages=_user("essay"), response_format=Verdict
    ) as parsing:
        verdict = parsing.get_final_completion().choices[0].message.parsed
    assert verdict is not None
    assert verdict.answer == "echo: essay"


async def test_async_stream_helper_and_raw_stream(aclient: openai.AsyncOpenAI) -> None:
    async with aclient.chat.completions.stream(model="m", messages=_user("async"), tools=[WEATHER]) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert json.loads(calls[0].function.arguments)["city"] == "async"
    stream_ = await aclient.chat.completions.create(
        model="m", messages=_user("async"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream_]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: async"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len("echo: async")


def test_raw_and_streaming_responses(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="m", messages=_user("raw"))
    assert raw.headers["x-request-id"].startswith("req_mock_")
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().choices[0].message.content == "echo: raw"
    with client.chat.completions.with_streaming_response.create(model="m", messages=_user("raw")) as response:
        assert response.parse().choices[0].message.content == "echo: raw"
    with client.chat.completions.with_streaming_response.create(
        model="m", messages=_user("raw"), stream=True
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        chunks = list(response.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: raw"


async def test_async_raw_and_streaming_responses(aclient: openai.AsyncOpenAI) -> None:
    raw = await aclient.chat.completions.with_raw_response.create(model="m", messages=_user("raw"))
    assert raw.parse().choices[0].message.content == "echo: raw"
    async with aclient.chat.completions.with_streaming_response.create(
        model="m", messages=_user("raw"), stream=True
    ) as response:
        chunks = [c async for c in await response.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: raw"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40), limit=st.one_of(st.none(), st.integers(min_value=1, max_value=30)))
def test_stream_assembles_to_plain_reply(client: openai.OpenAI, text: str, limit: int | None) -> None:
    kwargs: dict[str, Any] = {"messages": _user(text), "logprobs": True}
    if limit is not None:
        kwargs["max_completion_tokens"] = limit
    plain = client.chat.completions.create(model="m", **kwargs)
    chunks = _raw_stream(client, **kwargs)
    choices = [c.choices[0] for c in chunks if c.choices]
    assert "".join(c.delta.content or "" for c in choices) == plain.choices[0].message.content
    assert choices[-1].finish_reason == plain.choices[0].finish_reason
    ids = [i for c in choices for i in _extra(c).get("token_ids", [])]
    assert ids == _extra(plain.choices[0])["token_ids"]
    streamed_logprobs = [e for c in choices if c.logprobs and c.logprobs.content for e in c.logprobs.content]
    assert plain.choices[0].logprobs is not None
    assert streamed_logprobs == plain.choices[0].logprobs.content
