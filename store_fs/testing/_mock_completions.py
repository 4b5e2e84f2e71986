"""``POST /v1/completions`` (the legacy text completions API) for the mock OpenAI server.

``prompt`` may be a string, a list of strings, a list of token ids or a list of such lists; each
prompt gets one choice (``index`` = its position), answered by the responder as a one-message
chat. Token ids are UTF-8 bytes, so id prompts must hold values 0-255. As vLLM does, each choice
carries ``prompt_token_ids`` (the prompt's ids as given or encoded, no chat template) and
``token_ids``; when streaming, a choice's first chunk carries its ``prompt_token_ids`` and every
chunk its ``token_ids``. As in chat replies, the top level (the first chunk's, when streaming)
also carries ``prompt_token_ids``: the first prompt's. ``echo``, ``suffix``, ``n`` and
``best_of`` are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from store_fs.testing._mock_http import DONE_FRAME, BadRequest, JsonReply, StreamReply, sse_frame
from store_fs.testing._mock_reply import Context, Reply, Turn, answer
from store_fs.testing._mock_text import pieces, token_ids, token_logprobs, usage


@dataclass(frozen=True)
class _Prompt:
    text: str
    ids: list[int]


def _prompt(value: Any) -> _Prompt | None:
    if isinstance(value, str):
        return _Prompt(value, token_ids(value))
    if isinstance(value, list) and value and all(isinstance(i, int) and 0 <= i <= 255 for i in value):
        return _Prompt(bytes(value).decode("utf-8", errors="replace"), list(value))
    return None


def _prompts(body: dict[str, Any]) -> list[_Prompt]:
    prompt = body.get("prompt")
    single = _prompt(prompt)
    if single is not None:
        return [single]
    many = [_prompt(p) for p in prompt] if isinstance(prompt, list) and prompt else [None]
    if any(p is None for p in many):
        raise BadRequest("'prompt' must be a string, token ids (0-255), or a non-empty list of either")
    return [p for p in many if p is not None]


def check(body: dict[str, Any]) -> None:
    """Raise :class:`BadRequest` unless ``body`` holds a usable ``prompt``."""
    _prompts(body)


def handle(body: dict[str, Any], ctx: Context) -> JsonReply | StreamReply:
    """Answer one completions request (the responder may raise; the caller maps that to 500)."""
    prompts = _prompts(body)
    replies = [
        answer(
            Turn({**body, "messages": [{"role": "user", "content": p.text}]}, limit=body.get("max_tokens")),
            ctx.responder,
        )
        for p in prompts
    ]
    head = {
        "id": ctx.new_id("cmpl-mock-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": ctx.model_of(body),
        "system_fingerprint": "fp_mock",
    }
    top = body.get("logprobs")
    top = top if isinstance(top, int) and not isinstance(top, bool) and top >= 0 else None
    total = usage(sum(len(p.ids) for p in prompts), sum(len(r.completion_ids) for r in replies))
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        events = _chunks(prompts, replies, head, top, total if include_usage else None)
        return StreamReply(frame for part in (map(sse_frame, events), [DONE_FRAME]) for frame in part)
    choices = [
        {
            "index": i,
            "text": r.completion,
            "finish_reason": r.finish_reason,
            "logprobs": _logprobs(r.completion, top, len(p.text)),
            "token_ids": r.completion_ids,
            "prompt_token_ids": p.ids,
        }
        for i, (p, r) in enumerate(zip(prompts, replies, strict=True))
    ]
    return JsonReply(200, {**head, "choices": choices, "usage": total, "prompt_token_ids": prompts[0].ids})


def _logprobs(text: str, top: int | None, offset: int) -> dict[str, Any] | None:
    """Completions-style logprobs; ``text_offset`` counts characters from the prompt's start."""
    if top is None:
        return None
    entries = token_logprobs(text, top)
    offsets = [offset + n for n, char in enumerate(text) for _ in char.encode("utf-8")]
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def _chunks(
    prompts: list[_Prompt],
    replies: list[Reply],
    head: dict[str, Any],
    top: int | None,
    total: dict[str, int] | None,
) -> Iterator[dict[str, Any]]:
    for index, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        offset = len(prompt.text)
        for n, piece in enumerate(pieces(reply.completion)):
            choice: dict[str, Any] = {
                "index": index,
                "text": piece,
                "finish_reason": None,
                "logprobs": _logprobs(piece, top, offset),
                "token_ids": token_ids(piece),
            }
            chunk = {**head, "choices": [choice]}
            if n == 0:
                choice["prompt_token_ids"] = prompt.ids
                if index == 0:
                    chunk["prompt_token_ids"] = prompt.ids
            offset += len(piece)
            yield chunk
        yield {
            **head,
            "choices": [{"index": index, "text": "", "finish_reason": reply.finish_reason, "logprobs": None}],
        }
    if total is not None:
        yield {**head, "choices": [], "usage": total}
