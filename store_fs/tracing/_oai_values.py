"""Shared attribute builders for the OpenAI instrumentation: values to span attributes.

Everything here turns request bodies (plain JSON-ready dicts, as the SDK sends them) and
response objects (pydantic models of the ``openai`` package, or dicts) into the flat
attribute shape of AgentOps 0.4.21, which upstream Agent-lightning's adapters read
(docs/tracing-attributes.md lists every key). Functions never raise on odd input: a value
of an unexpected type is skipped, never guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Attrs = dict[str, Any]

# AgentOps 0.4.21 records only these request parameters under ``gen_ai.request.*`` (upstream's
# triplets copy that group into their metadata, so an extra key here would show up there).
_REQUEST_PARAMS = ("max_tokens", "temperature", "top_p", "frequency_penalty", "presence_penalty")


def plain(obj: Any) -> Any:
    """Pydantic models, mappings and sequences to JSON-ready data (None fields left out)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True, warnings=False)
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def as_text(value: Any) -> str:
    """Strings unchanged; anything else as compact JSON text."""
    return value if isinstance(value, str) else json.dumps(plain(value), default=str, ensure_ascii=False)


def number(value: Any) -> bool:
    """A real number: not None, not a bool, not one of openai's NOT_GIVEN / Omit sentinels."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` otherwise (None when absent)."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def extra(obj: Any) -> Mapping[str, Any]:
    """Fields a server sent beyond OpenAI's schema (vLLM's token ids live there)."""
    if isinstance(obj, Mapping):
        return obj
    found = getattr(obj, "model_extra", None)
    return found if isinstance(found, Mapping) else {}


def token_ids(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def common_request_attrs(body: Mapping[str, Any], request_type: str, operation: str) -> Attrs:
    """Model, sampling parameters and streaming flag of any of the three generation APIs."""
    attrs: Attrs = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": "openai",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.type": request_type,
        "gen_ai.request.streaming": body.get("stream") is True,
    }
    if isinstance(body.get("model"), str):
        attrs["gen_ai.request.model"] = body["model"]
    for key in _REQUEST_PARAMS:
        if number(body.get(key)):
            attrs[f"gen_ai.request.{key}"] = body[key]
    return attrs


def tool_call_attrs(attrs: Attrs, prefix: str, calls: Any, *, with_type: bool = True) -> None:
    """``<prefix>.tool_calls.M.{id,type,name,arguments}`` from OpenAI's chat tool-call list
    (``type`` only ``with_type``: AgentOps leaves it out of prompt messages)."""
    if not isinstance(calls, list | tuple):
        return
    for j, call in enumerate(calls):
        function = field(call, "function") or field(call, "custom") or {}
        values = {
            "id": field(call, "id"),
            "type": (field(call, "type") or "function") if with_type else None,
            "name": field(function, "name"),
            "arguments": field(function, "arguments") or field(function, "input"),
        }
        for key, value in values.items():
            if isinstance(value, str):
                attrs[f"{prefix}.tool_calls.{j}.{key}"] = value


def prompt_message_attrs(attrs: Attrs, prefix: str, message: Any) -> None:
    """One chat message as ``<prefix>.{role,content,tool_call_id,tool_calls.M.{id,name,arguments}}``.

    List content (multi-part) is JSON text, as AgentOps records it; an assistant message's
    tool calls are flattened per call; a tool result keeps its ``tool_call_id``.
    """
    message = plain(message)
    if not isinstance(message, Mapping):
        if message is not None:
            attrs[f"{prefix}.content"] = as_text(message)
        return
    if isinstance(message.get("role"), str):
        attrs[f"{prefix}.role"] = message["role"]
    if message.get("content") is not None:
        attrs[f"{prefix}.content"] = as_text(message["content"])
    if isinstance(message.get("tool_call_id"), str):
        attrs[f"{prefix}.tool_call_id"] = message["tool_call_id"]
    tool_call_attrs(attrs, prefix, message.get("tool_calls"), with_type=False)
    legacy_call = message.get("function_call")
    if isinstance(legacy_call, Mapping):  # the pre-tools API: one call, no id
        tool_call_attrs(attrs, prefix, [{"function": legacy_call}], with_type=False)


def function_attrs(attrs: Attrs, index: int, spec: Any) -> None:
    """``gen_ai.request.functions.N.{name,description,parameters}`` (parameters as JSON text)."""
    spec = plain(spec)
    if not isinstance(spec, Mapping):
        return
    prefix = f"gen_ai.request.functions.{index}"
    if isinstance(spec.get("name"), str):
        attrs[f"{prefix}.name"] = spec["name"]
    if isinstance(spec.get("description"), str):
        attrs[f"{prefix}.description"] = spec["description"]
    if spec.get("parameters") is not None:
        attrs[f"{prefix}.parameters"] = json.dumps(spec["parameters"], ensure_ascii=False)


def response_format_attrs(attrs: Attrs, response_format: Any) -> None:
    """The requested structured output (``json_schema`` / ``json_object``) as JSON text."""
    response_format = plain(response_format)
    if isinstance(response_format, Mapping) and isinstance(response_format.get("type"), str):
        attrs["gen_ai.request.response_format"] = as_text(response_format)
        if response_format["type"] != "text":
            attrs["gen_ai.output.type"] = "json"


def usage_attrs(attrs: Attrs, usage: Any, prompt_key: str, completion_key: str) -> None:
    """Token counts under AgentOps' names and the GenAI semantic-convention names."""
    if usage is None:
        return
    prompt, completion = field(usage, prompt_key), field(usage, completion_key)
    total = field(usage, "total_tokens")
    if number(prompt):
        attrs["gen_ai.usage.prompt_tokens"] = attrs["gen_ai.usage.input_tokens"] = prompt
    if number(completion):
        attrs["gen_ai.usage.completion_tokens"] = attrs["gen_ai.usage.output_tokens"] = completion
    if number(total):
        attrs["gen_ai.usage.total_tokens"] = total
    details = field(usage, "completion_tokens_details") or field(usage, "output_tokens_details")
    reasoning = field(details, "reasoning_tokens")
    if number(reasoning):
        attrs["gen_ai.usage.reasoning_tokens"] = reasoning


def header_attrs(attrs: Attrs, obj: Any) -> None:
    """Response id, model and fingerprint (completions, chunks, Responses objects)."""
    for name, key in (
        ("id", "gen_ai.response.id"),
        ("model", "gen_ai.response.model"),
        ("system_fingerprint", "gen_ai.openai.system_fingerprint"),
    ):
        value = field(obj, name)
        if isinstance(value, str) and value:
            attrs[key] = value


def logprob_attrs(attrs: Attrs, content: Any) -> None:
    """Per-token log probabilities of the first choice, as upstream reads them (JSON text)."""
    content = plain(content)
    if isinstance(content, list) and content:
        attrs["logprobs.content"] = json.dumps(content, ensure_ascii=False)
