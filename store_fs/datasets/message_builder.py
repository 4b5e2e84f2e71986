"""Chat transcripts from one attempt's spans, as upstream's ``TraceToMessages`` builds them.

For every span that carries ``gen_ai.prompt.*``, ``gen_ai.completion.*``, ``gen_ai.request.*``
or ``gen_ai.response.*`` attributes (an LLM call), in span order, one ``{"messages", "tools"}``
object in the OpenAI fine-tuning format:

* ``messages``: the prompt's messages (``{"role", "content"}``, ``tool_call_id`` for tool
  results), then each ``assistant`` completion. A prompt message of the assistant with
  ``tool_calls`` becomes ``{"role": "assistant", "content": null, "tool_calls": [...]}``. A
  completion gets ``tool_calls`` from the call's child spans that carry ``tool.*`` attributes
  (``tool.name``, ``tool.parameters``, ``tool.call.id``, ``tool.call.type``).
* ``tools``: the request's ``gen_ai.request.functions`` as function tools, else null.

One deviation: spans stored by agl's tracer before it flattened a prompt message's
``tool_calls`` into ``tool_calls.<i>.id/name/arguments`` attributes (as upstream's tracers do)
hold them as the JSON text of OpenAI's list (``[{"id", "type", "function": {...}}]``);
upstream's adapter fails on that text (it indexes the string), agl's reads both. Anything
else upstream's adapter refuses (a message without a role, a tool result without
``tool_call_id``, attributes that are not numbered where a list is expected) raises
:class:`MessagesError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from store_fs.datasets.flat_attributes import AttributeShapeError, group_prefix
from store_fs.models import Span

__all__ = ["MessagesError", "build_messages"]

_SIMPLE_ROLES = ("system", "user", "developer")


class MessagesError(ValueError):
    """The spans cannot be turned into chat messages (upstream's adapter raises on them too)."""


def _is_content(value: Any) -> bool:
    return isinstance(value, str | list)


def _prompt_message(message: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or "role" not in message:
        raise MessagesError(f"a prompt message has no role: {message!r}")
    role = message["role"]
    if role == "assistant" and "tool_calls" in message:
        return {"role": "assistant", "content": None, "tool_calls": _prompt_tool_calls(message["tool_calls"])}
    content = message.get("content", "")
    tool_call_id = message.get("tool_call_id")
    if role in _SIMPLE_ROLES and _is_content(content):
        return {"content": content, "role": role}
    if role == "assistant" and (content is None or _is_content(content)):
        return {"role": "assistant", "content": content}
    if role == "tool" and _is_content(content) and isinstance(tool_call_id, str):
        return {"content": content, "role": "tool", "tool_call_id": tool_call_id}
    raise MessagesError(f"not a chat message upstream accepts: role {role!r}, content {content!r}")


def _prompt_tool_calls(calls: Any) -> list[dict[str, Any]]:
    try:
        if isinstance(calls, str):  # agl's tracer: OpenAI's own list, as JSON text
            return [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"],
                    },
                }
                for call in json.loads(calls)
            ]
        return [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            for call in calls
        ]
    except (ValueError, KeyError, TypeError) as err:
        raise MessagesError(f"tool_calls of a prompt message cannot be read: {err}") from None


def _completion_messages(completion: list[Any], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for choice in completion:
        if not isinstance(choice, dict) or choice.get("role") != "assistant":
            continue
        message: dict[str, Any] = {"role": "assistant", "content": choice.get("content")}
        if tools:
            try:
                message["tool_calls"] = [
                    {
                        "id": tool["call"]["id"],
                        "type": tool["call"]["type"],
                        "function": {"name": tool["name"], "arguments": tool["parameters"]},
                    }
                    for tool in tools
                ]
            except (KeyError, TypeError) as err:
                raise MessagesError(f"a tool span lacks {err}") from None
        out.append(message)
    return out


def _functions(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "functions" not in request:
        return None
    try:
        return [
            {
                "type": "function",
                "function": {
                    "name": fn["name"],
                    "description": fn.get("description", ""),
                    "parameters": json.loads(fn["parameters"])
                    if isinstance(fn["parameters"], str)
                    else fn["parameters"],
                },
            }
            for fn in request["functions"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise MessagesError(f"gen_ai.request.functions cannot be read: {err}") from None


def _grouped(attributes: Mapping[str, Any], prefix: str, kind: type) -> Any:
    value = group_prefix(attributes, prefix) or kind()
    if not isinstance(value, kind):
        raise MessagesError(f"{prefix} attributes are not a {kind.__name__}")
    return value


def _tool_calls_under(span: Span, children: Mapping[str, list[Span]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for child in children.get(span.span_id, ()):
        call = group_prefix(child.attributes, "tool")
        if not isinstance(call, dict):
            raise MessagesError(f"tool attributes of span {child.span_id} are not a dict")
        if call:
            out.append(call)
    return out


def build_messages(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """One ``{"messages", "tools"}`` per LLM call among ``spans``, in span order."""
    children: dict[str, list[Span]] = {}
    for span in spans:
        if span.parent_id is not None:
            children.setdefault(span.parent_id, []).append(span)
    out: list[dict[str, Any]] = []
    try:
        for span in spans:
            attributes = span.attributes
            prompt = _grouped(attributes, "gen_ai.prompt", list)
            completion = _grouped(attributes, "gen_ai.completion", list)
            request = _grouped(attributes, "gen_ai.request", dict)
            response = _grouped(attributes, "gen_ai.response", dict)
            if not (prompt or completion or request or response):
                continue
            tools = _tool_calls_under(span, children)
            messages = [_prompt_message(m) for m in prompt]
            messages += _completion_messages(completion, tools)
            out.append({"messages": messages, "tools": _functions(request)})
    except AttributeShapeError as err:
        raise MessagesError(str(err)) from err
    return out
