"""Every payload the mock server sends validates against the installed openai SDK's own types.

The SDK itself builds responses without validation (``construct``), so a wrong field would go
unnoticed through the client; these tests read the raw HTTP bodies and SSE events and validate
them strictly, over generated request variations, with the invariants that hold across them.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from store_fs.testing.mock_openai import MockOpenAIServer

EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
PARAMETERS = {
    "type": "object",
    "properties": {
        "q": {"type": "string"},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["q", "n", "tags"],
    "additionalProperties": False,
}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "number"}, "ok": {"type": "boolean"}},
    "required": ["answer", "score", "ok"],
    "additionalProperties": False,
}
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server() -> Iterator[MockOpenAIServer]:
    with MockOpenAIServer() as s:
        yield s


def _post(server: MockOpenAIServer, path: str, body: dict[str, Any]) -> tuple[str, bytes]:
    request = urllib.request.Request(
        server.base_url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return str(response.headers["Content-Type"]), response.read()


def _sse(raw: bytes) -> list[tuple[str | None, str]]:
    """``(event name, data)`` per frame."""
    frames = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        frames.append((fields.get("event"), fields["data"]))
    return frames


def _json(server: MockOpenAIServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    kind, raw = _post(server, path, body)
    assert kind == "application/json"
    payload = json.loads(raw)
    assert isinstance(payload, dict)
    return payload


def _stream(server: MockOpenAIServer, path: str, body: dict[str, Any]) -> list[tuple[str | None, str]]:
    kind, raw = _post(server, path, {**body, "stream": True})
    assert kind == "text/event-stream"
    return _sse(raw)


texts = st.text(max_size=24)
limits = st.one_of(st.none(), st.integers(min_value=1, max_value=40))


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": draw(texts)}]}
    if draw(st.booleans()):
        tool = {"type": "function", "function": {"name": "find", "parameters": PARAMETERS, "strict": True}}
        body["tools"] = [tool, {"type": "function", "function": {"name": "other"}}]
        body["tool_choice"] = draw(st.sampled_from(["auto", "none", "required"]))
        body["parallel_tool_calls"] = draw(st.booleans())
    fmt = draw(st.sampled_from([None, "json_object", "json_schema"]))
    if fmt == "json_schema":
        body["response_format"] = {
            "type": fmt,
            "json_schema": {"name": "S", "schema": SCHEMA, "strict": True},
        }
    elif fmt:
        body["response_format"] = {"type": fmt}
    if draw(st.booleans()):
        body["logprobs"] = True
        body["top_logprobs"] = draw(st.integers(min_value=0, max_value=3))
    if (limit := draw(limits)) is not None:
        body["max_completion_tokens"] = limit
    return body


@SLOW
@given(body=chat_bodies())
def test_chat_payloads_validate(server: MockOpenAIServer, body: dict[str, Any]) -> None:
    plain = ChatCompletion.model_validate(_json(server, "/chat/completions", body))
    choice = plain.choices[0]
    ids = (choice.model_extra or {})["token_ids"]
    assert plain.usage is not None
    assert plain.usage.completion_tokens == len(ids)
    assert plain.usage.prompt_tokens == len((plain.model_extra or {})["prompt_token_ids"])
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
            assert isinstance(arguments, dict)
    elif "response_format" in body and choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)
    frames = _stream(server, "/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert frames[-1] == (None, "[DONE]")
    chunks = [ChatCompletionChunk.model_validate_json(data) for _, data in frames[:-1]]
    assert chunks[-1].usage == plain.usage
    streamed = [i for c in chunks if c.choices for i in (c.choices[0].model_extra or {}).get("token_ids", [])]
    assert streamed == ids


@st.composite
def completion_bodies(draw: st.DrawFn) -> dict[str, Any]:
    prompt = draw(st.one_of(texts, st.lists(texts, min_size=1, max_size=3)))
    body: dict[str, Any] = {"model": "m", "prompt": prompt}
    if draw(st.booleans()):
        body["logprobs"] = draw(st.integers(min_value=0, max_value=3))
    if (limit := draw(limits)) is not None:
        body["max_tokens"] = limit
    return body


def _completion_chunk(data: str) -> Completion:
    """Validate a streamed completions chunk. The SDK types chunks as ``Completion``, whose
    ``finish_reason`` is not optional, while the API (like the mock) sends null until a choice ends."""
    payload = json.loads(data)
    unfinished = [n for n, c in enumerate(payload["choices"]) if c["finish_reason"] is None]
    for n in unfinished:
        payload["choices"][n]["finish_reason"] = "stop"
    chunk = Completion.model_validate(payload)
    for n in unfinished:
        chunk.choices[n].finish_reason = None  # type: ignore[assignment]
    return chunk


@SLOW
@given(body=completion_bodies())
def test_completion_payloads_validate(server: MockOpenAIServer, body: dict[str, Any]) -> None:
    plain = Completion.model_validate(_json(server, "/completions", body))
    assert plain.usage is not None
    assert plain.usage.completion_tokens == sum(
        len((c.model_extra or {})["token_ids"]) for c in plain.choices
    )
    frames = _stream(server, "/completions", {**body, "stream_options": {"include_usage": True}})
    assert frames[-1] == (None, "[DONE]")
    chunks = [_completion_chunk(data) for _, data in frames[:-1]]
    assert chunks[-1].usage == plain.usage
    for choice in plain.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text


@st.composite
def response_bodies(draw: st.DrawFn) -> dict[str, Any]:
    text = draw(texts)
    items = [{"role": "user", "content": [{"type": "input_text", "text": text}]}]
    body: dict[str, Any] = {"model": "m", "input": draw(st.sampled_from([text, items]))}
    if draw(st.booleans()):
        body["instructions"] = draw(texts)
    if draw(st.booleans()):
        body["tools"] = [
            {"type": "function", "name": "find", "parameters": PARAMETERS, "strict": True},
            {"type": "function", "name": "other", "parameters": None, "strict": False},
        ]
        body["tool_choice"] = draw(
            st.sampled_from(["auto", "none", "required", {"type": "function", "name": "other"}])
        )
        body["parallel_tool_calls"] = draw(st.booleans())
    fmt = draw(st.sampled_from([None, "json_object", "json_schema"]))
    if fmt == "json_schema":
        body["text"] = {"format": {"type": fmt, "name": "S", "schema": SCHEMA, "strict": True}}
    elif fmt:
        body["text"] = {"format": {"type": fmt}}
    if draw(st.booleans()):
        body["include"] = ["message.output_text.logprobs"]
        body["top_logprobs"] = draw(st.integers(min_value=0, max_value=3))
    if (limit := draw(limits)) is not None:
        body["max_output_tokens"] = limit
    return body


def _comparable(response: Response) -> dict[str, Any]:
    return response.model_dump(exclude={"id", "created_at", "completed_at"})


@SLOW
@given(body=response_bodies())
def test_response_payloads_and_events_validate(server: MockOpenAIServer, body: dict[str, Any]) -> None:
    plain = Response.model_validate(_json(server, "/responses", body))
    assert plain.usage is not None
    assert plain.usage.output_tokens == len((plain.model_extra or {})["token_ids"])
    assert plain.usage.total_tokens == plain.usage.input_tokens + plain.usage.output_tokens
    frames = _stream(server, "/responses", body)
    events = [EVENTS.validate_json(data) for _, data in frames]
    assert [name for name, _ in frames] == [e.type for e in events]  # every frame names its event
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    final = events[-1]
    assert final.type == ("response.completed" if plain.status == "completed" else "response.incomplete")
    assert _comparable(final.response) == _comparable(plain)
    added = [e.item for e in events if e.type == "response.output_item.added"]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert done == plain.output
    assert [(a.type, a.id) for a in added] == [(d.type, d.id) for d in done]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == plain.output_text
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert arguments == "".join(item.arguments for item in plain.output if item.type == "function_call")
