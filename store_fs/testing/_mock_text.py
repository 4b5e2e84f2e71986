"""The mock OpenAI server's "tokenizer": text extraction, byte tokens, stream deltas, logprobs, usage.

One token is one UTF-8 byte, so token ids are byte values (0-255) and every count is a byte count;
this is what makes ``usage`` equal the lengths of the vLLM-style ``token_ids`` lists the server adds.
Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


def score_of(text: str) -> float:
    """A stable pseudo-score in [0, 1] with two decimals, from a SHA-256 of ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 101 / 100


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or the joined text parts of a part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in TEXT_PART_TYPES
        )
    return ""


CALL_END = ">"


def call_opening(name: str) -> str:
    """The start of a spelled tool call, up to its arguments (see :func:`call_text`)."""
    return f"<call {name} "


def call_text(name: str, arguments: str) -> str:
    """How one tool call is "spelled" in token space (prompt rendering and reply token ids)."""
    return call_opening(name) + arguments + CALL_END


def render_messages(messages: Iterable[Any]) -> str:
    """A byte-level chat template: ``"<role>: <text>\\n"`` per message, tool calls spelled inline.

    Messages that are not dicts are skipped; an assistant message's ``tool_calls`` follow its text.
    """
    lines = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        calls = "".join(
            call_text(str(fn.get("name", "")), str(fn.get("arguments", "")))
            for call in message.get("tool_calls") or []
            if isinstance(call, dict) and isinstance(fn := call.get("function"), dict)
        )
        lines.append(f"{message.get('role', '')}: {text_of(message.get('content'))}{calls}\n")
    return "".join(lines)


def token_ids(text: str) -> list[int]:
    """The token ids of ``text``: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def pieces(text: str) -> list[str]:
    """Word-sized deltas whose concatenation is exactly ``text`` (``[""]`` for empty text)."""
    return re.findall(r"\s*\S+\s*|\s+", text) or [""]


def chunks_of(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters (``[""]`` for empty text)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def truncate(text: str, limit: Any) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` tokens (bytes) when ``limit`` is a positive int, never
    splitting a character; the flag says whether anything was cut."""
    encoded = text.encode("utf-8")
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(encoded):
        return encoded[:limit].decode("utf-8", errors="ignore"), True
    return text, False


def _token(byte: int) -> str:
    # A lone byte of a multi-byte character is not text; spell it the way OpenAI spells byte tokens.
    return chr(byte) if byte < 0x80 else f"bytes:\\x{byte:02x}"


def _logprob(byte: int) -> float:
    return -((byte * 7) % 20 + 1) / 40


def token_logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """Chat-style logprob entries, one per token of ``text``.

    Each entry is ``{"token", "bytes", "logprob", "top_logprobs"}``; ``top_logprobs`` holds ``top``
    alternatives, the first being the sampled token itself, each less likely than the one before.
    Values depend only on the byte, so a streamed reply's entries equal the non-streamed ones.
    """
    entries = []
    for byte in text.encode("utf-8"):
        logprob = _logprob(byte)
        alternatives = [(byte + k) % 0x80 if k else byte for k in range(max(top, 0))]
        entries.append(
            {
                "token": _token(byte),
                "bytes": [byte],
                "logprob": logprob,
                "top_logprobs": [
                    {"token": _token(alt), "bytes": [alt], "logprob": logprob - k}
                    for k, alt in enumerate(alternatives)
                ],
            }
        )
    return entries


def usage(prompt: int, completion: int) -> dict[str, int]:
    """A chat/completions ``usage`` object."""
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
