"""store_fs.testing.mock_openai: an OpenAI-compatible server the openai client can talk to offline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from store_fs.testing.mock_openai import MockOpenAIServer, default_responder, judge_score

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> Iterator[MockOpenAIServer]:
    with MockOpenAIServer() as s:
        yield s


@pytest.fixture
def client(server: MockOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as c:
        yield c


def _ask(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def _stream_text(client: openai.OpenAI, text: str, **kwargs: Any) -> tuple[str, list[Any]]:
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}], stream=True, **kwargs
        )
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_completion_shape(client: openai.OpenAI, server: MockOpenAIServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hé"}])
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "m"
    assert reply.created > 0
    choice = reply.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "echo: hé",
        "stop",
    )
    assert reply.model_extra is not None
    assert choice.model_extra is not None
    prompt_ids, reply_ids = reply.model_extra["prompt_token_ids"], choice.model_extra["token_ids"]
    assert bytes(prompt_ids).decode() == "user: hé\n"
    assert bytes(reply_ids).decode() == "echo: hé"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt_ids), len(reply_ids))
    assert reply.usage.total_tokens == len(prompt_ids) + len(reply_ids)
    assert [m.id for m in client.models.list()] == ["mock-gpt"]
    assert server.requests == [{"model": "m", "messages": [{"role": "user", "content": "hé"}]}]


@pytest.mark.parametrize("text", ["hello world", "  spaced   out  ", "unicode ✓ ünïcödé", ""])
def test_stream_text_equals_plain_text(client: openai.OpenAI, text: str) -> None:
    plain = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    streamed, chunks = _stream_text(client, text)
    assert streamed == plain.choices[0].message.content
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks)
    ids = [i for c in chunks if c.choices for i in (c.choices[0].model_extra or {}).get("token_ids", [])]
    assert bytes(ids).decode() == streamed


def test_stream_usage_chunk_only_when_asked(client: openai.OpenAI) -> None:
    _, chunks = _stream_text(client, "hi", stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len("echo: hi")


def test_max_tokens_truncates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "abc"}], max_tokens=4
    )
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("echo", "length")
    streamed, chunks = _stream_text(client, "abc", max_tokens=4)
    assert streamed == "echo"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"


def test_scoring_responder_is_deterministic_and_bounded() -> None:
    prompts = [f"Rate this answer from 0 to 1: candidate {i}" for i in range(30)]
    scores = [float(default_responder(_ask(p))) for p in prompts]
    assert scores == [float(default_responder(_ask(p))) for p in prompts]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(default_responder(_ask(p)) == f"{judge_score(p):.2f}" for p in prompts)
    assert len(set(scores)) > 10  # different texts, different scores
    assert default_responder(_ask("Give a SCORE for: x")) == f"{judge_score('Give a SCORE for: x'):.2f}"
    assert default_responder(_ask("grade it")) == f"{judge_score('grade it'):.2f}"
    assert default_responder(_ask("be accurate")) == "echo: be accurate"  # "rate" only as a word
    assert default_responder({"messages": []}) == "echo: "


def test_scoring_over_http(client: openai.OpenAI) -> None:
    text = "Score this essay: the cat sat."
    replies = {
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert replies == {f"{judge_score(text):.2f}"}


def test_custom_responder_and_failures() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        if body["messages"][-1]["content"] == "boom":
            raise RuntimeError("boom")
        return "fixed"

    with (
        MockOpenAIServer(responder, model="other") as server,
        openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as client,
    ):
        server.fail_next(429, times=2)
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        server.fail_next(500)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert reply.choices[0].message.content == "fixed"
        with pytest.raises(openai.InternalServerError, match="boom"):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "boom"}])
        assert len(server.requests) == 5  # failed ones are recorded too
        assert len(seen) == 2  # injected failures never reach the responder
        assert [m.id for m in client.models.list()] == ["other"]
    with pytest.raises(ValueError, match="status"):
        MockOpenAIServer().fail_next(200)


def test_bad_requests(server: MockOpenAIServer) -> None:
    def post(path: str, data: bytes) -> int:
        req = urllib.request.Request(server.base_url + path, data=data, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            body = json.loads(err.read())
            err.close()
            assert "message" in body["error"]
            return err.code

    assert post("/chat/completions", b"not json") == 400
    assert post("/chat/completions", b'{"model": "m"}') == 400
    assert post("/nope", b"{}") == 404
    assert post("/chat/completions", json.dumps(_ask("x")).encode()) == 200
    assert server.requests == [_ask("x")]


def test_stop_closes_keepalive_connections() -> None:
    server = MockOpenAIServer().start()
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    port = server.port
    with openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as client:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        # The client still holds a keep-alive connection; stop() must not hang on it.
        server.stop()
        server.stop()
        assert not [t for t in threading.enumerate() if t.name.startswith("mock-openai")]
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


def test_module_runs_as_a_script() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "store_fs.testing.mock_openai", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/v1")
        with openai.OpenAI(api_key="sk-mock", base_url=base_url, max_retries=0) as client:
            reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert reply.choices[0].message.content == "echo: ping"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr


def test_every_endpoint_shares_responder_records_and_failures() -> None:
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> str:
        seen.append(body)
        if body["messages"][-1]["content"] == "boom":
            raise RuntimeError("boom")
        return "fixed"

    with (
        MockOpenAIServer(responder) as server,
        openai.OpenAI(api_key="sk-mock", base_url=server.base_url, max_retries=0) as client,
    ):
        assert client.completions.create(model="m", prompt=["p1", "p2"]).choices[1].text == "fixed"
        assert client.responses.create(model="m", input="r", instructions="sys").output_text == "fixed"
        # The responder always sees a chat-shaped body: the request plus its conversation as messages.
        assert [b["messages"] for b in seen] == [
            [{"role": "user", "content": "p1"}],
            [{"role": "user", "content": "p2"}],
            [{"role": "system", "content": "sys"}, {"role": "user", "content": "r"}],
        ]
        assert seen[0]["prompt"] == ["p1", "p2"]
        assert seen[2]["input"] == "r"
        server.fail_next(429, times=2)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="m", prompt="x")
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="m", input="x")
        with pytest.raises(openai.InternalServerError, match="boom"):
            client.responses.create(model="m", input="boom")
        cmpl, resp = "/v1/completions", "/v1/responses"
        assert server.paths == [cmpl, resp, cmpl, resp, resp]
        assert len(server.requests) == len(server.paths)
        assert server.requests[1] == {"model": "m", "input": "r", "instructions": "sys"}


def test_unknown_get_is_404(server: MockOpenAIServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(server.base_url + "/nothing", timeout=5)
    assert caught.value.code == 404
    assert json.loads(caught.value.read())["error"]["type"] == "not_found"
    caught.value.close()
