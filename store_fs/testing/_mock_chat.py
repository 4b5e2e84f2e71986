"""``POST /v1/chat/completions`` for the mock OpenAI server: JSON and SSE chunk replies.

Besides the OpenAI fields, replies carry vLLM-style token ids: ``prompt_token_ids`` (top level;
on the first chunk when streaming) and ``choices[i].token_ids`` (per chunk when streaming).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from store_fs.testing._mock_http import DONE_FRAME, BadRequest, JsonReply, StreamReply, sse_frame
from store_fs.testing._mock_reply import Context, Format, Reply, Tool, ToolCall, Turn, answer
from store_fs.testing._mock_text import (
    CALL_END,
    call_opening,
    chunks_of,
    pieces,
    token_ids,
    token_logprobs,
    usage,
)

_ARGUMENT_PIECE = 8  # characters of tool-call arguments per streamed delta


def check(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` unless ``body`` is a chat request (it has a ``messages`` list)."""
    if not isinstance(body.get("messages"), list):
        raise BadRequest("'messages' must be a list")


def parse_turn(body: dict[str, Any]) -> Turn:
    """The API-neutral turn of a chat request (``body`` passed :func:`check`)."""
    tools = tuple(
        Tool(fn["name"], _dict(fn.get("parameters")))
        for t in body.get("tools") or []
        if isinstance(t, dict)
        and t.get("type", "function") == "function"
        and isinstance(fn := t.get("function"), dict)
        and isinstance(fn.get("name"), str)
    )
    return Turn(
        body=body,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel=body.get("parallel_tool_calls") is True,
        format=_format(body.get("response_format")),
        limit=body.get("max_completion_tokens") or body.get("max_tokens"),
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _tool_choice(choice: Any) -> str | None:
    if choice == "none":
        return "none"
    if isinstance(choice, dict) and isinstance(fn := choice.get("function"), dict):
        name = fn.get("name")
        return name if isinstance(name, str) else None
    return None


def _format(response_format: Any) -> Format:
    if not isinstance(response_format, dict):
        return Format()
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return Format("json_schema", schema if isinstance(schema, dict) else {})
    return Format("json_object") if kind == "json_object" else Format()


def handle(body: dict[str, Any], ctx: Context) -> JsonReply | StreamReply:
    """Answer one chat-completions request (the responder may raise; the caller maps that to 500)."""
    turn = parse_turn(body)
    reply = answer(turn, ctx.responder)
    head = {
        "id": ctx.new_id("chatcmpl-mock-"),
        "created": int(time.time()),
        "model": ctx.model_of(body),
        "system_fingerprint": "fp_mock",
    }
    top = _top_logprobs(body)
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = _chunks(reply, head, top, include_usage)
        return StreamReply(frame for part in (map(sse_frame, events), [DONE_FRAME]) for frame in part)
    return JsonReply(200, _completion(reply, head, top))


def _top_logprobs(body: dict[str, Any]) -> int | None:
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    return top if isinstance(top, int) and top > 0 else 0


def _logprobs(text: str, top: int | None) -> dict[str, Any] | None:
    return None if top is None else {"content": token_logprobs(text, top), "refusal": None}


def _wire_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _completion(reply: Reply, head: dict[str, Any], top: int | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
    if reply.tool_calls:
        message["tool_calls"] = [_wire_call(c) for c in reply.tool_calls]
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": reply.finish_reason,
        "logprobs": _logprobs(reply.completion, top),
        "token_ids": reply.completion_ids,
    }
    return {
        **head,
        "object": "chat.completion",
        "choices": [choice],
        "usage": usage(len(reply.prompt_ids), len(reply.completion_ids)),
        "prompt_token_ids": reply.prompt_ids,
    }


def _deltas(reply: Reply) -> Iterator[tuple[dict[str, Any], str]]:
    """``(delta, its text in token space)`` pairs whose texts concatenate to ``reply.completion``."""
    if reply.text is not None:
        if reply.text:
            yield from (({"content": piece}, piece) for piece in pieces(reply.text))
        return
    for index, call in enumerate(reply.tool_calls):
        # As OpenAI streams them: id, type and name first (empty arguments), then argument pieces.
        opening = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield {"tool_calls": [opening]}, call_opening(call.name)
        parts = chunks_of(call.arguments, _ARGUMENT_PIECE)
        for n, part in enumerate(parts):
            closing = CALL_END if n == len(parts) - 1 else ""
            yield {"tool_calls": [{"index": index, "function": {"arguments": part}}]}, part + closing


def _chunks(
    reply: Reply, head: dict[str, Any], top: int | None, include_usage: bool
) -> Iterator[dict[str, Any]]:
    base = {**head, "object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], text: str | None, finish: str | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        if text is not None:
            choice["token_ids"] = token_ids(text)
            choice["logprobs"] = _logprobs(text, top)
        return {**base, "choices": [choice]}

    # As vLLM does with return_token_ids: prompt ids on the first chunk, reply ids per delta.
    first = chunk({"role": "assistant", "content": "" if reply.text is not None else None}, "")
    first["choices"][0]["logprobs"] = None
    yield {**first, "prompt_token_ids": reply.prompt_ids}
    for delta, text in _deltas(reply):
        yield chunk(delta, text)
    yield chunk({}, None, reply.finish_reason)
    if include_usage:
        yield {**base, "choices": [], "usage": usage(len(reply.prompt_ids), len(reply.completion_ids))}
