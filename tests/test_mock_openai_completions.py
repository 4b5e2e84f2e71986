"""The mock server's legacy ``/v1/completions`` through the real openai SDK, sync and async."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_fs.testing.mock_openai import MockOpenAIServer, default_responder, judge_score


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


def _extra(model: Any) -> dict[str, Any]:
    assert model.model_extra is not None
    return dict(model.model_extra)


def test_one_prompt(client: openai.OpenAI, server: MockOpenAIServer) -> None:
    reply = client.completions.create(model="m", prompt="hé")
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert reply.model == "m"
    [choice] = reply.choices
    assert (choice.index, choice.text, choice.finish_reason, choice.logprobs) == (0, "echo: hé", "stop", None)
    assert _extra(choice)["prompt_token_ids"] == list("hé".encode())
    assert _extra(reply)["prompt_token_ids"] == list("hé".encode())  # also at the top, as in chat
    assert _extra(choice)["token_ids"] == list(b"echo: h\xc3\xa9")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 9, 12)
    assert server.paths[-1] == "/v1/completions"
    assert server.requests[-1] == {"model": "m", "prompt": "hé"}


def test_prompt_lists_and_token_ids(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="m", prompt=["a", "Rate this: b"])
    assert [c.text for c in reply.choices] == ["echo: a", f"{judge_score('Rate this: b'):.2f}"]
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len("a") + len("Rate this: b")
    assert reply.usage.completion_tokens == sum(len(_extra(c)["token_ids"]) for c in reply.choices)
    ids = client.completions.create(model="m", prompt=[[104, 105], [111]])
    assert [c.text for c in ids.choices] == ["echo: hi", "echo: o"]
    assert [_extra(c)["prompt_token_ids"] for c in ids.choices] == [[104, 105], [111]]


def test_logprobs_and_max_tokens(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="m", prompt="xyz", logprobs=2, max_tokens=6)
    [choice] = reply.choices
    assert (choice.text, choice.finish_reason) == ("echo: ", "length")
    logprobs = choice.logprobs
    assert logprobs is not None
    assert logprobs.tokens == list("echo: ")
    assert logprobs.text_offset == [3, 4, 5, 6, 7, 8]  # counted from the prompt's start
    assert logprobs.token_logprobs is not None
    assert all(lp < 0 for lp in logprobs.token_logprobs)
    assert logprobs.top_logprobs is not None
    assert all(
        len(top) == 2 and top[tok] == lp
        for top, tok, lp in zip(logprobs.top_logprobs, logprobs.tokens, logprobs.token_logprobs, strict=True)
    )


def test_stream_with_usage(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="m", prompt=["one two three", "x"], logprobs=1)
    chunks = list(
        client.completions.create(
            model="m",
            prompt=["one two three", "x"],
            logprobs=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert _extra(chunks[0])["prompt_token_ids"] == list(b"one two three")
    assert all("prompt_token_ids" not in _extra(c) for c in chunks[1:])
    for index, expected in enumerate(plain.choices):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert "".join(c.text for c in mine) == expected.text
        assert len(mine) >= 3
        assert _extra(mine[0])["prompt_token_ids"] == _extra(expected)["prompt_token_ids"]
        assert [i for c in mine for i in _extra(c).get("token_ids", [])] == _extra(expected)["token_ids"]
        assert [c.finish_reason for c in mine][-1] == "stop"
        assert all(c.finish_reason is None for c in mine[:-1])
        streamed = [t for c in mine if c.logprobs for t in c.logprobs.tokens or []]
        offsets = [t for c in mine if c.logprobs for t in c.logprobs.text_offset or []]
        assert expected.logprobs is not None
        assert (streamed, offsets) == (expected.logprobs.tokens, expected.logprobs.text_offset)
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    without = list(client.completions.create(model="m", prompt="x", stream=True))
    assert all(c.usage is None for c in without)


async def test_async_create_stream_and_raw(aclient: openai.AsyncOpenAI) -> None:
    reply = await aclient.completions.create(model="m", prompt="async")
    assert reply.choices[0].text == "echo: async"
    stream = await aclient.completions.create(model="m", prompt="async", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "echo: async"
    raw = await aclient.completions.with_raw_response.create(model="m", prompt="raw")
    assert raw.headers["x-request-id"].startswith("req_mock_")
    assert raw.parse().choices[0].text == "echo: raw"
    async with aclient.completions.with_streaming_response.create(
        model="m", prompt="raw", stream=True
    ) as response:
        texts = [c.choices[0].text async for c in await response.parse() if c.choices]
    assert "".join(texts) == "echo: raw"


def test_bad_prompts_are_400(server: MockOpenAIServer) -> None:
    def status(body: dict[str, Any]) -> int:
        data = json.dumps(body).encode()
        request = urllib.request.Request(server.base_url + "/completions", data=data, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            kinds.append(json.loads(err.read())["error"]["type"])
            err.close()
            return err.code

    kinds: list[str] = []
    before = len(server.requests)
    bad: list[Any] = [None, [], [300], ["a", 1], [[]], {"a": 1}]
    for prompt in bad:
        assert status({"model": "m", "prompt": prompt}) == 400
    assert kinds == ["invalid_request_error"] * 6
    assert len(server.requests) == before  # malformed bodies are not recorded
    assert status({"model": "m", "prompt": "ok"}) == 200


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_stream_assembles_to_plain_reply(client: openai.OpenAI, prompts: list[str]) -> None:
    plain = client.completions.create(model="m", prompt=prompts)
    chunks = list(client.completions.create(model="m", prompt=prompts, stream=True))
    for expected in plain.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == expected.index]
        asked = {"messages": [{"role": "user", "content": prompts[expected.index]}]}
        assert "".join(c.text for c in mine) == expected.text == default_responder(asked)
