"""Chat Completions (``POST /chat/completions``): request, response and stream attributes.

Covers ``create``, ``parse`` (structured outputs) and the ``stream`` helper, which all send
the same body; the span sees the body as the SDK sends it, so ``parse``'s pydantic
``response_format`` has already become its JSON schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from store_fs.tracing._oai_values import (
    Attrs,
    common_request_attrs,
    extra,
    field,
    function_attrs,
    header_attrs,
    logprob_attrs,
    plain,
    prompt_message_attrs,
    response_format_attrs,
    token_ids,
    tool_call_attrs,
    usage_attrs,
)

__all__ = ["ChatChunks", "chat_request_attrs", "chat_response_attrs"]


def chat_request_attrs(body: Mapping[str, Any]) -> Attrs:
    attrs = common_request_attrs(body, "chat", "chat")
    messages = body.get("messages")
    if isinstance(messages, list | tuple):
        for i, message in enumerate(messages):
            prompt_message_attrs(attrs, f"gen_ai.prompt.{i}", message)
    specs: list[Any] = []
    for tool in body.get("tools") or ():  # function tools; custom tools keep name/description
        tool = plain(tool)
        if isinstance(tool, Mapping):
            specs.append(tool.get("function") or tool.get("custom"))
    specs.extend(body.get("functions") or ())  # the pre-tools API
    for i, spec in enumerate(specs):
        function_attrs(attrs, i, spec)
    response_format_attrs(attrs, body.get("response_format"))
    return attrs


def _choice_attrs(attrs: Attrs, choice: Any, position: int) -> None:
    index = field(choice, "index")
    prefix = f"gen_ai.completion.{index if isinstance(index, int) else position}"
    reason = field(choice, "finish_reason")
    if isinstance(reason, str):
        attrs[f"{prefix}.finish_reason"] = reason
    message = plain(field(choice, "message"))
    if not isinstance(message, Mapping):
        return
    for key in ("role", "content", "refusal"):
        if isinstance(message.get(key), str):
            attrs[f"{prefix}.{key}"] = message[key]
    tool_call_attrs(attrs, prefix, message.get("tool_calls"))
    legacy_call = message.get("function_call")
    if isinstance(legacy_call, Mapping):
        tool_call_attrs(attrs, prefix, [{"type": "function", "function": legacy_call}])


def chat_response_attrs(result: Any) -> Attrs:
    """Attributes of a ``ChatCompletion`` (or ``ParsedChatCompletion``); {} for anything else."""
    choices = field(result, "choices")
    if not isinstance(choices, list):
        return {}
    attrs: Attrs = {}
    header_attrs(attrs, result)
    for position, choice in enumerate(choices):
        _choice_attrs(attrs, choice, position)
    usage_attrs(attrs, field(result, "usage"), "prompt_tokens", "completion_tokens")
    prompt_ids = token_ids(extra(result).get("prompt_token_ids"))
    if prompt_ids is not None:
        attrs["prompt_token_ids"] = prompt_ids
    if choices:
        response_ids = token_ids(extra(choices[0]).get("token_ids"))
        if response_ids is not None:
            attrs["response_token_ids"] = response_ids
        logprob_attrs(attrs, field(field(choices[0], "logprobs"), "content"))
    return attrs


class _Choice:
    """One choice of a streamed completion, assembled from its deltas."""

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add_call(self, delta: Any) -> None:
        index = field(delta, "index")
        slot = self.calls.setdefault(
            index if isinstance(index, int) else len(self.calls),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        slot["id"] = field(delta, "id") or slot["id"]
        function = field(delta, "function")
        if function is not None:  # the name comes whole in one delta, the arguments in pieces
            slot["function"]["name"] += field(function, "name") or ""
            slot["function"]["arguments"] += field(function, "arguments") or ""

    def attrs(self, attrs: Attrs, prefix: str) -> None:
        attrs[f"{prefix}.role"] = self.role
        if self.content:
            attrs[f"{prefix}.content"] = "".join(self.content)
        if self.refusal:
            attrs[f"{prefix}.refusal"] = "".join(self.refusal)
        tool_call_attrs(attrs, prefix, [call for _, call in sorted(self.calls.items())])
        if self.finish_reason is not None:
            attrs[f"{prefix}.finish_reason"] = self.finish_reason


class ChatChunks:
    """Folds ``ChatCompletionChunk`` objects into the attributes of the equivalent completion."""

    def __init__(self) -> None:
        self.head: Attrs = {}
        self.usage: Attrs = {}
        self.choices: dict[int, _Choice] = {}
        self.prompt_ids: list[int] | None = None
        self.response_ids: list[int] | None = None
        self.logprobs: list[Any] = []

    def failure(self) -> str | None:
        return None  # its errors are raised by the SDK

    def add(self, chunk: Any) -> bool:
        """Fold one chunk in; True when it carried generated text or a tool call."""
        if not self.head:
            header_attrs(self.head, chunk)
        if field(chunk, "usage") is not None:
            usage_attrs(self.usage, chunk.usage, "prompt_tokens", "completion_tokens")
        if self.prompt_ids is None:
            self.prompt_ids = token_ids(extra(chunk).get("prompt_token_ids"))
        produced = False
        for choice in field(chunk, "choices") or ():
            produced = self._add_choice(choice) or produced
        return produced

    def _add_choice(self, choice: Any) -> bool:
        index = field(choice, "index")
        index = index if isinstance(index, int) else 0
        state = self.choices.setdefault(index, _Choice())
        delta = field(choice, "delta")
        role, content, refusal = field(delta, "role"), field(delta, "content"), field(delta, "refusal")
        state.role = role if isinstance(role, str) else state.role
        if isinstance(content, str) and content:
            state.content.append(content)
        if isinstance(refusal, str) and refusal:
            state.refusal.append(refusal)
        calls = field(delta, "tool_calls") or ()
        for call in calls:
            state.add_call(call)
        legacy_call = field(delta, "function_call")
        if legacy_call is not None:
            state.add_call({"index": 0, "function": legacy_call})
        reason = field(choice, "finish_reason")
        if isinstance(reason, str):
            state.finish_reason = reason
        if index == 0:
            self._first_choice_extras(choice)
        return bool(content) or bool(calls) or legacy_call is not None

    def _first_choice_extras(self, choice: Any) -> None:
        ids = token_ids(extra(choice).get("token_ids"))
        if ids is not None:
            self.response_ids = [*(self.response_ids or []), *ids]
        logprobs = plain(field(field(choice, "logprobs"), "content"))
        if isinstance(logprobs, list):
            self.logprobs.extend(logprobs)

    def result(self) -> Attrs:
        attrs: Attrs = {**self.head, **self.usage}
        for index, state in sorted(self.choices.items()):
            state.attrs(attrs, f"gen_ai.completion.{index}")
        if self.prompt_ids is not None:
            attrs["prompt_token_ids"] = self.prompt_ids
        if self.response_ids is not None:
            attrs["response_token_ids"] = self.response_ids
        logprob_attrs(attrs, self.logprobs)
        return attrs
