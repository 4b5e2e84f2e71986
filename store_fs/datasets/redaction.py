"""``--redact REGEX``: masking text in exported rows.

A :class:`Redactor` replaces every match of any of its patterns with ``[REDACTED]`` in every
string of a row: values at any depth, in dicts and lists, including strings that hold JSON
(prompts, tool arguments) since the match is on the text as written. Keys (field and attribute
names) are left alone, and so are numbers, token ids included: a token id list cannot be
redacted without the tokenizer, so exports that must not leak a secret should be checked for
its tokens too (or leave ``token_ids`` out of the training data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "Redactor"]

MASK = "[REDACTED]"


class Redactor:
    """Masks matches of ``patterns`` (Python regular expressions) in every string of a value."""

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as err:
                raise ValueError(f"--redact {pattern!r} is not a regular expression: {err}") from None
        # Applied one after the other (not joined into one alternation, where a pattern's
        # inline flags such as "(?i)" would no longer stand at the start).
        self._regexes = compiled

    def __bool__(self) -> bool:
        return bool(self._regexes)

    def text(self, value: str) -> str:
        for regex in self._regexes:
            value = regex.sub(MASK, value)
        return value

    def apply(self, value: Any) -> Any:
        """``value`` with every string masked (a new structure; the input is left as it is)."""
        if not self._regexes:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self._walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(item) for item in value]
        return value
