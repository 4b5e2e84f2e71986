"""The mock server's Responses API (``/v1/responses``) through the real openai SDK, sync and async:
create, ``parse``, the ``stream`` helper, function-call round trips, raw and streaming responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pydantic
import pytest

from store_fs.testing.mock_openai import MockOpenAIServer, judge_score

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
CLOCK: Any = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {}},
}


class Verdict(pydantic.BaseModel):
    answer: str
    score: float


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


def _extra(model: pydantic.BaseModel) -> dict[str, Any]:
    assert model.model_extra is not None
    return model.model_extra


def test_create_from_string_and_items(client: openai.OpenAI, server: MockOpenAIServer) -> None:
    response = client.responses.create(model="m", input="hé", instructions="Be brief.")
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert (response.model, response.status, response.instructions) == ("m", "completed", "Be brief.")
    assert response.output_text == "echo: hé"
    [item] = response.output
    assert item.type == "message"
    assert item.role == "assistant"
    assert item.id.startswith("msg_")
    assert [part.type for part in item.content] == ["output_text"]
    prompt = bytes(_extra(response)["prompt_token_ids"]).decode()
    assert prompt == "system: Be brief.\nuser: hé\n"
    assert bytes(_extra(response)["token_ids"]).decode() == "echo: hé"
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (len(prompt.encode()), len("echo: hé".encode()))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert server.paths[-1] == "/v1/responses"
    assert server.requests[-1]["instructions"] == "Be brief."

    items: Any = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Grade this"}]},
    ]
    graded = client.responses.create(model="m", input=items)
    assert graded.output_text == f"{judge_score('Grade this'):.2f}"
    assert (
        bytes(_extra(graded)["prompt_token_ids"]).decode() == "user: first\nassistant: ok\nuser: Grade this\n"
    )


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(model="m", input="Paris", tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.call_id.startswith("call_")
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris", "days": round(judge_score("Paris") * 100)}
    assert first.output_text == ""
    assert bytes(_extra(first)["token_ids"]).decode() == f"<call get_weather {call.arguments}>"
    history: Any = [
        {"role": "user", "content": "Paris"},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    second = client.responses.create(model="m", input=history, tools=[WEATHER])
    assert [item.type for item in second.output] == ["message"]
    assert second.output_text == "tool results: get_weather -> sunny"
    prompt = bytes(_extra(second)["prompt_token_ids"]).decode()
    assert prompt == f"user: Paris\nassistant: <call get_weather {call.arguments}>\ntool: sunny\n"


async def test_async_parallel_function_calls(aclient: openai.AsyncOpenAI) -> None:
    first = await aclient.responses.create(
        model="m", input="Oslo", tools=[WEATHER, CLOCK], parallel_tool_calls=True
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    outputs = [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"r{i}"} for i, c in enumerate(calls)
    ]
    history: Any = [
        {"role": "user", "content": "Oslo"},
        *[c.model_dump(exclude_none=True) for c in calls],
        *outputs,
    ]
    second = await aclient.responses.create(model="m", input=history, tools=[WEATHER, CLOCK])
    assert second.output_text == "tool results: get_weather -> r0; get_time -> r1"
    forced = await aclient.responses.create(
        model="m", input="x", tools=[WEATHER, CLOCK], tool_choice={"type": "function", "name": "get_time"}
    )
    assert [item.type == "function_call" and item.name for item in forced.output] == ["get_time"]
    none = await aclient.responses.create(model="m", input="x", tools=[WEATHER], tool_choice="none")
    assert none.output_text == "echo: x"


def test_parse_pydantic_model(client: openai.OpenAI, server: MockOpenAIServer) -> None:
    parsed = client.responses.parse(model="m", input="Rate my essay", text_format=Verdict)
    score = judge_score("Rate my essay")
    assert parsed.output_parsed == Verdict(answer=f"{score:.2f}", score=score)
    sent = server.requests[-1]["text"]["format"]
    assert (sent["type"], sent["name"], sent["strict"]) == ("json_schema", "Verdict", True)
    assert parsed.text is not None
    assert parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"  # the request's format is echoed


def test_stream_helper_text(client: openai.OpenAI) -> None:
    with client.responses.stream(model="m", input="one two three", text_format=Verdict) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 3
    assert deltas[-1].snapshot == final.output_text  # the helper accumulated the deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_parsed == Verdict(
        answer="echo: one two three", score=judge_score("echo: one two three")
    )
    assert final.usage is not None
    assert final.usage.output_tokens == len(final.output_text.encode())


def test_stream_helper_function_call_and_logprobs(client: openai.OpenAI) -> None:
    with client.responses.stream(model="m", input="Rome", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) >= 2
    [call] = final.output
    assert call.type == "function_call"
    assert deltas[-1].snapshot == call.arguments
    assert call.parsed_arguments == {"city": "Rome", "days": round(judge_score("Rome") * 100)}
    assert [e.type for e in events if e.type.startswith("response.function_call_arguments")][-1] == (
        "response.function_call_arguments.done"
    )
    with client.responses.stream(
        model="m", input="abc", include=["message.output_text.logprobs"], top_logprobs=2
    ) as stream:
        final = stream.get_final_response()
    [message] = final.output
    assert message.type == "message"
    part = message.content[0]
    assert part.type == "output_text"
    assert part.logprobs is not None
    assert "".join(lp.token for lp in part.logprobs) == "echo: abc"
    assert all(len(lp.top_logprobs) == 2 for lp in part.logprobs)


async def test_async_stream_helper_and_raw_stream(aclient: openai.AsyncOpenAI) -> None:
    async with aclient.responses.stream(model="m", input="async", tools=[WEATHER]) as stream:
        final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["function_call"]
    raw = await aclient.responses.create(model="m", input="async", stream=True)
    events = [e async for e in raw]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo: async"


def test_max_output_tokens_makes_the_response_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model="m", input="abcdef", max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "echo"
    events = list(client.responses.create(model="m", input="abcdef", max_output_tokens=4, stream=True))
    assert events[-1].type == "response.incomplete"  # as the API does; no response.completed


def test_raw_and_streaming_responses(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="m", input="raw")
    assert raw.headers["x-request-id"].startswith("req_mock_")
    assert raw.parse().output_text == "echo: raw"
    with client.responses.with_streaming_response.create(model="m", input="raw", stream=True) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = list(response.parse())
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "echo: raw"


async def test_async_raw_and_streaming_responses(aclient: openai.AsyncOpenAI) -> None:
    raw = await aclient.responses.with_raw_response.create(model="m", input="raw")
    assert raw.parse().output_text == "echo: raw"
    async with aclient.responses.with_streaming_response.create(model="m", input="raw") as response:
        parsed = await response.parse()
    assert parsed.output_text == "echo: raw"


def test_bad_input_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="input"):
        client.responses.create(model="m", input=42)  # type: ignore[call-overload]
