"""The Responses API (``POST /responses``): ``create``, ``parse`` and ``stream``.

The Responses API has no chat messages of its own shape, so its span uses the chat shape
upstream's adapters read: ``instructions`` become a leading ``system`` prompt message,
input items become prompt messages (a run of ``function_call`` items is one assistant
message with ``tool_calls``, a ``function_call_output`` is a ``tool`` message with its
``tool_call_id``), and the output is completion 0: the joined output text, the function
calls as ``tool_calls`` (id = ``call_id``), a chat-style ``finish_reason``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from store_fs.tracing._oai_values import (
    Attrs,
    as_text,
    common_request_attrs,
    extra,
    field,
    function_attrs,
    header_attrs,
    plain,
    prompt_message_attrs,
    response_format_attrs,
    token_ids,
    tool_call_attrs,
    usage_attrs,
)

__all__ = ["ResponseEvents", "responses_request_attrs", "responses_response_attrs"]

_TEXT_PARTS = ("input_text", "output_text", "text")


def _as_chat_call(item: Mapping[str, Any]) -> dict[str, Any]:
    function = {"name": item.get("name"), "arguments": item.get("arguments")}
    return {"id": item.get("call_id") or item.get("id"), "type": "function", "function": function}


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request as chat messages (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in plain(items) or ():
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type", "message")
        if kind == "function_call":
            last = messages[-1] if messages else None
            if last is None or last.get("role") != "assistant" or "tool_calls" not in last:
                last = {"role": "assistant", "tool_calls": []}
                messages.append(last)
            last["tool_calls"].append(_as_chat_call(item))
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")}
            )
        elif kind == "message":
            messages.append({"role": item.get("role"), "content": item.get("content")})
    return messages


def responses_request_attrs(body: Mapping[str, Any]) -> Attrs:
    attrs = common_request_attrs(body, "chat", "chat")
    for i, message in enumerate(_messages(body)):
        prompt_message_attrs(attrs, f"gen_ai.prompt.{i}", message)
    functions = [
        t for t in plain(body.get("tools")) or () if isinstance(t, Mapping) and t.get("type") == "function"
    ]
    for i, spec in enumerate(functions):
        function_attrs(attrs, i, spec)
    text = body.get("text")
    if isinstance(text, Mapping):
        response_format_attrs(attrs, text.get("format"))
    return attrs


def _collect(output: list[Any]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Output text, refusal text and function calls (as chat tool calls) of output items."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in plain(output):
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "function_call":
            calls.append(_as_chat_call(item))
            continue
        parts = item.get("content") if item.get("type") == "message" else None
        for part in parts or ():
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in _TEXT_PARTS:
                texts.append(str(part.get("text", "")))
            elif kind == "refusal":
                refusals.append(str(part.get("refusal", "")))
    return texts, refusals, calls


def _output_attrs(attrs: Attrs, output: list[Any], status: Any) -> None:
    texts, refusals, calls = _collect(output)
    prefix = "gen_ai.completion.0"
    attrs[f"{prefix}.role"] = "assistant"
    if texts:
        attrs[f"{prefix}.content"] = "".join(texts)
    if refusals:
        attrs[f"{prefix}.refusal"] = "".join(refusals)
    tool_call_attrs(attrs, prefix, calls)
    # Chat's finish reasons: a reply that calls tools ends with "tool_calls", a complete one "stop".
    reason = "tool_calls" if calls else "stop" if status == "completed" else status
    if isinstance(reason, str):
        attrs[f"{prefix}.finish_reason"] = reason


def responses_response_attrs(result: Any) -> Attrs:
    """Attributes of a ``Response`` (or ``ParsedResponse``); {} for anything else."""
    output = field(result, "output")
    if not isinstance(output, list):
        return {}
    attrs: Attrs = {}
    header_attrs(attrs, result)
    _output_attrs(attrs, output, field(result, "status"))
    usage_attrs(attrs, field(result, "usage"), "input_tokens", "output_tokens")
    for source, key in (("prompt_token_ids", "prompt_token_ids"), ("token_ids", "response_token_ids")):
        ids = token_ids(extra(result).get(source))  # vLLM-style servers (and the mock) send them
        if ids is not None:
            attrs[key] = ids
    return attrs


class ResponseEvents:
    """Folds Responses stream events into the attributes of the final ``Response``.

    The terminal event (``response.completed`` / ``.incomplete`` / ``.failed``) carries the
    whole response; until one arrives (a stream closed early), the deltas and finished output
    items seen so far stand in for it.
    """

    def __init__(self) -> None:
        self.head: Attrs = {}
        self.final: Any = None
        self.text: list[str] = []
        self.items: list[Any] = []
        self.error: str | None = None

    def failure(self) -> str | None:
        return self.error

    def add(self, event: Any) -> bool:
        """Fold one event in; True when it carried generated text or tool-call arguments."""
        kind = field(event, "type")
        response = field(event, "response")
        if kind == "error":  # the SDK yields it rather than raising: the call failed all the same
            self.error = _error_text(event)
        if response is not None:
            header_attrs(self.head, response)
            if kind in ("response.completed", "response.incomplete", "response.failed"):
                self.final = response
            if kind == "response.failed":
                self.error = _error_text(field(response, "error"))
        if kind == "response.output_text.delta":
            self.text.append(as_text(field(event, "delta") or ""))
        elif kind == "response.output_item.done":
            self.items.append(field(event, "item"))
        return isinstance(kind, str) and kind.endswith(".delta")

    def result(self) -> Attrs:
        if self.final is not None:
            return {**self.head, **responses_response_attrs(self.final)}
        attrs: Attrs = dict(self.head)
        calls = [item for item in plain(self.items) if isinstance(item, Mapping)]
        calls = [item for item in calls if item.get("type") == "function_call"]
        text = [{"type": "message", "content": [{"type": "output_text", "text": "".join(self.text)}]}]
        _output_attrs(attrs, [*(text if self.text else []), *calls], None)
        return attrs


def _error_text(error: Any) -> str:
    """``code: message`` of an error event or a failed response's ``error``."""
    code, message = field(error, "code"), field(error, "message")
    return f"{code or 'error'}: {message or 'no message'}"
