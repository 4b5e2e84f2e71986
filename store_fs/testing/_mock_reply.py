"""The mock server's "model": what it answers to one conversation, whatever API asked.

Every API module turns its request into a :class:`Turn` (chat-shaped messages plus tools, tool
choice, output format and token limit) and renders the :class:`Reply` in its own wire format.

Decision, in order:

1. Tool calls: when the turn offers function tools, ``tool_choice`` is not ``"none"`` and the last
   message is not a ``tool`` result, the reply calls the forced tool (``tool_choice`` naming one),
   else every offered tool when ``parallel_tool_calls`` is explicitly true, else the first tool.
   Arguments are :func:`example_value` of the tool's parameter schema with the last user message
   as the text; the responder is not consulted. Call ids are deterministic too (see :class:`ToolCall`).
2. Otherwise the responder's text, shaped by the output format: a JSON schema gives
   ``json.dumps(example_value(schema, text))``, JSON mode gives ``{"text": text}``.
3. The token limit truncates the text (never tool calls): ``finish_reason`` ``"length"``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from store_fs.testing._mock_schema import example_value
from store_fs.testing._mock_text import call_text, render_messages, text_of, token_ids, truncate

Responder = Callable[[dict[str, Any]], str]
"""Maps a chat-completion request body (``messages`` and all) to the assistant's reply text."""

NewId = Callable[[str], str]
"""Returns a fresh id with the given prefix (``"call_mock_"`` -> ``"call_mock_7"``)."""


@dataclass(frozen=True)
class Context:
    """What an API module needs from the server: the responder, the default model and fresh ids."""

    responder: Responder
    model: str
    new_id: NewId

    def model_of(self, body: dict[str, Any]) -> str:
        """The request's ``model`` when it names one, else the server's default."""
        model = body.get("model")
        return model if isinstance(model, str) and model else self.model


@dataclass(frozen=True)
class Tool:
    """A function tool offered to the model, in any API's spelling."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Format:
    """The requested output format: ``kind`` is ``"text"``, ``"json_object"`` or ``"json_schema"``."""

    kind: str = "text"
    schema: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One model call, API-neutral. ``body`` is what the responder receives (chat-shaped)."""

    body: dict[str, Any]
    tools: tuple[Tool, ...] = ()
    tool_choice: str | None = None
    """``"none"``, ``None`` (let the model pick) or the name of the forced tool."""
    parallel: bool = False
    format: Format = Format()
    limit: Any = None

    @property
    def messages(self) -> list[Any]:
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []


@dataclass(frozen=True)
class ToolCall:
    """One call the model makes; ``id`` (the chat ``tool_calls[].id`` / responses ``call_id``) is
    ``"call_"`` and 24 hex digits of a hash of the conversation, the call's position and content."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """What the model says: ``text`` (None when it calls tools) or ``tool_calls``."""

    text: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    """``"stop"``, ``"length"`` (truncated by the limit) or ``"tool_calls"``."""
    prompt: str
    """The rendered conversation whose bytes are the prompt tokens."""

    @property
    def completion(self) -> str:
        """The generated text in token space: the text, or the tool calls spelled by :func:`call_text`."""
        if self.text is not None:
            return self.text
        return "".join(call_text(c.name, c.arguments) for c in self.tool_calls)

    @property
    def prompt_ids(self) -> list[int]:
        return token_ids(self.prompt)

    @property
    def completion_ids(self) -> list[int]:
        return token_ids(self.completion)


def last_user_text(messages: list[Any]) -> str:
    """The text of the last ``user`` message ("" if none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


def answer(turn: Turn, responder: Responder) -> Reply:
    """The reply to ``turn`` (see the module doc); the responder may raise, and that propagates."""
    prompt = render_messages(turn.messages)
    calls = _choose_tools(turn)
    if calls:
        text = last_user_text(turn.messages)
        made = tuple(_call(prompt, i, t, text) for i, t in enumerate(calls))
        return Reply(None, made, "tool_calls", prompt)
    text = responder(turn.body)
    if turn.format.kind == "json_schema":
        text = json.dumps(example_value(turn.format.schema, text), ensure_ascii=False)
    elif turn.format.kind == "json_object":
        text = json.dumps({"text": text}, ensure_ascii=False)
    text, cut = truncate(text, turn.limit)
    return Reply(text, (), "length" if cut else "stop", prompt)


def _call(prompt: str, index: int, tool: Tool, text: str) -> ToolCall:
    value = example_value(tool.parameters, text)
    # Arguments are always a JSON object, even for a tool declared without (object) parameters.
    arguments = json.dumps(value if isinstance(value, dict) else {}, ensure_ascii=False)
    # A function of the conversation, so two runs of one agent see the same ids in their prompts.
    digest = hashlib.sha256(f"{prompt}\0{index}\0{tool.name}\0{arguments}".encode()).hexdigest()
    return ToolCall(f"call_{digest[:24]}", tool.name, arguments)


def _choose_tools(turn: Turn) -> list[Tool]:
    if not turn.tools or turn.tool_choice == "none":
        return []
    last = turn.messages[-1] if turn.messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        return []
    if turn.tool_choice is not None:
        return [t for t in turn.tools if t.name == turn.tool_choice][:1]
    return list(turn.tools) if turn.parallel else [turn.tools[0]]
