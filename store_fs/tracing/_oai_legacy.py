"""Legacy Completions (``POST /completions``): prompt text in, text out.

As AgentOps records them: each prompt string is ``gen_ai.prompt.N.content`` (no role),
each choice's text ``gen_ai.completion.N.content``. vLLM's token ids and OpenAI's
``logprobs`` (tokens and their log probabilities) are kept when the server returns them.
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
    header_attrs,
    plain,
    token_ids,
    usage_attrs,
)

__all__ = ["TextChunks", "text_request_attrs", "text_response_attrs"]


def text_request_attrs(body: Mapping[str, Any]) -> Attrs:
    attrs = common_request_attrs(body, "completion", "text_completion")
    prompt = body.get("prompt")
    # A list of strings is a batch of prompts; a list of ints is one pre-tokenised prompt.
    prompts = prompt if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) else [prompt]
    for i, text in enumerate(prompts):
        if text is not None:
            attrs[f"gen_ai.prompt.{i}.content"] = as_text(text)
    if token_ids(prompt) is not None:
        attrs["prompt_token_ids"] = prompt
    return attrs


def _logprobs(attrs: Attrs, choice: Any) -> None:
    logprobs = plain(field(choice, "logprobs"))
    if isinstance(logprobs, Mapping) and logprobs.get("tokens"):
        attrs["logprobs.content"] = as_text(logprobs)


def text_response_attrs(result: Any) -> Attrs:
    """Attributes of a ``Completion``; {} for anything else."""
    choices = field(result, "choices")
    if not isinstance(choices, list):
        return {}
    attrs: Attrs = {}
    header_attrs(attrs, result)
    for position, choice in enumerate(choices):
        index = field(choice, "index")
        prefix = f"gen_ai.completion.{index if isinstance(index, int) else position}"
        text, reason = field(choice, "text"), field(choice, "finish_reason")
        if isinstance(text, str):
            attrs[f"{prefix}.content"] = text
        if isinstance(reason, str):
            attrs[f"{prefix}.finish_reason"] = reason
    usage_attrs(attrs, field(result, "usage"), "prompt_tokens", "completion_tokens")
    prompt_ids = token_ids(extra(result).get("prompt_token_ids"))
    if prompt_ids is not None:
        attrs["prompt_token_ids"] = prompt_ids
    if choices:
        prompt_ids = token_ids(extra(choices[0]).get("prompt_token_ids"))
        if prompt_ids is not None:
            attrs["prompt_token_ids"] = prompt_ids
        response_ids = token_ids(extra(choices[0]).get("token_ids"))
        if response_ids is not None:
            attrs["response_token_ids"] = response_ids
        _logprobs(attrs, choices[0])
    return attrs


class TextChunks:
    """Folds streamed ``Completion`` chunks into the attributes of the whole completion."""

    def __init__(self) -> None:
        self.head: Attrs = {}
        self.usage: Attrs = {}
        self.texts: dict[int, list[str]] = {}
        self.reasons: dict[int, str] = {}
        self.response_ids: list[int] | None = None
        self.prompt_ids: list[int] | None = None

    def failure(self) -> str | None:
        return None  # its errors are raised by the SDK

    def add(self, chunk: Any) -> bool:
        """Fold one chunk in; True when it carried generated text.

        Token ids as vLLM streams them (and the mock server): the prompt's on the first chunk
        of a choice (``choices[i].prompt_token_ids``, and at the top level for the first
        prompt), the reply's with each piece (``choices[i].token_ids``); the first prompt's
        and the first choice's are kept, as for a whole completion.
        """
        if not self.head:
            header_attrs(self.head, chunk)
        if field(chunk, "usage") is not None:
            usage_attrs(self.usage, chunk.usage, "prompt_tokens", "completion_tokens")
        if self.prompt_ids is None:
            self.prompt_ids = token_ids(extra(chunk).get("prompt_token_ids"))
        produced = False
        for choice in field(chunk, "choices") or ():
            index = field(choice, "index")
            index = index if isinstance(index, int) else 0
            text, reason = field(choice, "text"), field(choice, "finish_reason")
            if isinstance(text, str) and text:
                self.texts.setdefault(index, []).append(text)
                produced = True
            if isinstance(reason, str):
                self.reasons[index] = reason
            if index == 0:
                self._first_choice_ids(choice)
        return produced

    def _first_choice_ids(self, choice: Any) -> None:
        if self.prompt_ids is None:
            self.prompt_ids = token_ids(extra(choice).get("prompt_token_ids"))
        ids = token_ids(extra(choice).get("token_ids"))
        if ids is not None:
            self.response_ids = [*(self.response_ids or []), *ids]

    def result(self) -> Attrs:
        attrs: Attrs = {**self.head, **self.usage}
        for index in sorted({*self.texts, *self.reasons}):
            if index in self.texts:
                attrs[f"gen_ai.completion.{index}.content"] = "".join(self.texts[index])
            if index in self.reasons:
                attrs[f"gen_ai.completion.{index}.finish_reason"] = self.reasons[index]
        if self.prompt_ids is not None:
            attrs["prompt_token_ids"] = self.prompt_ids
        if self.response_ids is not None:
            attrs["response_token_ids"] = self.response_ids
        return attrs
