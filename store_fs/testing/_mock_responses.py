"""``POST /v1/responses`` (the Responses API) for the mock OpenAI server: JSON and SSE events.

The request becomes chat messages for the model and the responder: ``instructions`` (a string)
is a leading ``system`` message; ``input`` is a user message when a string, else a list of items
where ``message`` items (or items with a ``role``) keep their role and text, consecutive
``function_call`` items become one assistant message's ``tool_calls``, ``function_call_output``
items become ``tool`` messages, and other item types are skipped. Function ``tools``,
``tool_choice``, ``parallel_tool_calls``, ``text.format`` (``json_schema``/``json_object``),
``max_output_tokens`` and ``include=["message.output_text.logprobs"]`` with ``top_logprobs`` are
honoured; ``previous_response_id`` is echoed but not looked up.

The reply is one ``message`` output item holding one ``output_text`` part, or one
``function_call`` item per tool call. Item ids are hashes of the conversation (``msg_...``,
``fc_...``), response ids count up (``resp_mock_N``). Besides the OpenAI fields the response
carries vLLM-style ``prompt_token_ids`` and ``token_ids`` (UTF-8 bytes of the rendered input and
of the output text or spelled tool calls).
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from store_fs.testing._mock_http import BadRequest, JsonReply, StreamReply, sse_frame
from store_fs.testing._mock_reply import Context, Format, Reply, Tool, Turn, answer
from store_fs.testing._mock_text import chunks_of, pieces, text_of, token_logprobs

_ARGUMENT_PIECE = 8  # characters of tool-call arguments per streamed delta
_LOGPROBS = "message.output_text.logprobs"


def check(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` unless ``input`` is a string or a list of item objects."""
    value = body.get("input")
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BadRequest("'input' must be a string or a list of input items")


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation of a Responses request as chat messages (see the module doc)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
        return messages
    for item in value if isinstance(value, list) else []:
        _add_item(messages, item)
    return messages


def _add_item(messages: list[dict[str, Any]], item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments")},
        }
        last = messages[-1] if messages else None
        if last is not None and last.get("role") == "assistant" and isinstance(last.get("tool_calls"), list):
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        content = output if isinstance(output, str) else text_of(output)
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
    elif kind in (None, "message") and isinstance(item.get("role"), str):
        messages.append({"role": item["role"], "content": text_of(item.get("content"))})


def parse_turn(body: dict[str, Any]) -> Turn:
    """The API-neutral turn of a Responses request (``body`` passed :func:`check`)."""
    tools = tuple(
        Tool(t["name"], t["parameters"] if isinstance(t.get("parameters"), dict) else {})
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)
    )
    return Turn(
        body={**body, "messages": chat_messages(body)},
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel=body.get("parallel_tool_calls") is True,
        format=_format(body.get("text")),
        limit=body.get("max_output_tokens"),
    )


def _tool_choice(choice: Any) -> str | None:
    if choice == "none":
        return "none"
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    return None


def _format(text: Any) -> Format:
    spec = text.get("format") if isinstance(text, dict) else None
    if not isinstance(spec, dict):
        return Format()
    if spec.get("type") == "json_schema":
        schema = spec.get("schema")
        return Format("json_schema", schema if isinstance(schema, dict) else {})
    return Format("json_object") if spec.get("type") == "json_object" else Format()


def handle(body: dict[str, Any], ctx: Context) -> JsonReply | StreamReply:
    """Answer one Responses request (the responder may raise; the caller maps that to 500)."""
    reply = answer(parse_turn(body), ctx.responder)
    include = body.get("include")
    top = body.get("top_logprobs")
    wants = isinstance(include, list) and _LOGPROBS in include
    top_n = (top if isinstance(top, int) and top > 0 else 0) if wants else None
    response = _response(body, ctx, reply, top_n)
    if body.get("stream") is True:
        return StreamReply(sse_frame(e, e["type"]) for e in _events(response, top_n))
    return JsonReply(200, response)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _output(reply: Reply, top: int | None) -> list[dict[str, Any]]:
    if reply.text is None:
        return [
            {
                "id": f"fc_{call.id.removeprefix('call_')}",
                "type": "function_call",
                "call_id": call.id,
                "name": call.name,
                "arguments": call.arguments,
                "status": "completed",
            }
            for call in reply.tool_calls
        ]
    part = {
        "type": "output_text",
        "text": reply.text,
        "annotations": [],
        "logprobs": token_logprobs(reply.text, top) if top is not None else [],
    }
    return [
        {
            "id": f"msg_{_digest(reply.prompt, reply.text)}",
            "type": "message",
            "role": "assistant",
            "status": "incomplete" if reply.finish_reason == "length" else "completed",
            "content": [part],
        }
    ]


def _response(body: dict[str, Any], ctx: Context, reply: Reply, top: int | None) -> dict[str, Any]:
    now = float(int(time.time()))
    cut = reply.finish_reason == "length"
    text = body["text"] if isinstance(body.get("text"), dict) else {}
    prompt, completion = reply.prompt_ids, reply.completion_ids
    return {
        "id": ctx.new_id("resp_mock_"),
        "object": "response",
        "created_at": now,
        "status": "incomplete" if cut else "completed",
        "completed_at": None if cut else now,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": ctx.model_of(body),
        "output": _output(reply, top),
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": body.get("previous_response_id"),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": len(prompt),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(completion),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": len(prompt) + len(completion),
        },
        "prompt_token_ids": prompt,
        "token_ids": completion,
    }


_Event = Callable[..., dict[str, Any]]


def _events(final: dict[str, Any], top: int | None) -> Iterator[dict[str, Any]]:
    """The SSE event sequence of a streamed response; ``sequence_number`` counts from 0."""
    numbers = itertools.count()

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "sequence_number": next(numbers), **fields}

    snapshot = {**final, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    snapshot["incomplete_details"] = None
    yield event("response.created", response=snapshot)
    yield event("response.in_progress", response=snapshot)
    for index, item in enumerate(final["output"]):
        if item["type"] == "message":
            yield from _message_events(event, index, item, top)
        else:
            yield from _call_events(event, index, item)
    yield event(
        "response.completed" if final["status"] == "completed" else "response.incomplete", response=final
    )


def _message_events(
    event: _Event, index: int, item: dict[str, Any], top: int | None
) -> Iterator[dict[str, Any]]:
    part = item["content"][0]
    text, where = part["text"], {"item_id": item["id"], "output_index": index, "content_index": 0}
    yield event(
        "response.output_item.added",
        output_index=index,
        item={**item, "status": "in_progress", "content": []},
    )
    yield event("response.content_part.added", **where, part={**part, "text": "", "logprobs": []})
    for piece in pieces(text) if text else []:
        logprobs = token_logprobs(piece, top) if top is not None else []
        yield event("response.output_text.delta", **where, delta=piece, logprobs=logprobs)
    yield event("response.output_text.done", **where, text=text, logprobs=part["logprobs"])
    yield event("response.content_part.done", **where, part=part)
    yield event("response.output_item.done", output_index=index, item=item)


def _call_events(event: _Event, index: int, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    where = {"item_id": item["id"], "output_index": index}
    yield event(
        "response.output_item.added",
        output_index=index,
        item={**item, "arguments": "", "status": "in_progress"},
    )
    for piece in chunks_of(item["arguments"], _ARGUMENT_PIECE):
        yield event("response.function_call_arguments.delta", **where, delta=piece)
    yield event("response.function_call_arguments.done", **where, arguments=item["arguments"])
    yield event("response.output_item.done", output_index=index, item=item)
