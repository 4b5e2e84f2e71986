"""``--redact REGEX``: masking text in exported rows.

A :class:`Redactor` replaces every match of any of its patterns with ``[REDACTED]`` in every
string of a row: values at any depth, in dicts and lists, including strings that hold JSON
(prompts, tool arguments) since the match is on the text as written. Keys (field and attribute
names) are left alone, and so are numbers, token ids included: a token id list cannot be
redacted without the tokenizer, so exports that must not leak a secret should be checked for
its tokens too (or leave ``token_ids`` out of the training data).

A row of a data view is masked by :meth:`Redactor.row`, which leaves the row's identity alone
(:data:`ROW_IDENTITY`): ``rollout_id``, ``attempt_id``, ``resources_id``, ``mode``, ``ended``,
``step`` and a ``rollouts`` row's ``status``, and in a ``rollouts`` row the ids of its attempts
and spans. They are the store's ids and enumerations, never text a user wrote, and a reader
tells rows apart by them ("for each rollout_id, the newest rows count"): a pattern such as a hex
secret's, masking them, would merge every rollout's rows into one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["MASK", "ROW_IDENTITY", "Redactor"]

MASK = "[REDACTED]"

# What is kept as it is: a key mapped to None keeps its whole value; to a mapping, the value (a
# dict, or each dict of a list) is masked but for the keys that mapping names.
_IdentitySpec = Mapping[str, "_IdentitySpec | None"]
_SPAN_CONTEXT: Final[_IdentitySpec] = {"trace_id": None, "span_id": None}
ROW_IDENTITY: Final[_IdentitySpec] = {
    "rollout_id": None,
    "attempt_id": None,
    "resources_id": None,
    "mode": None,
    "ended": None,
    "step": None,
    "status": None,  # a rollouts row: the rollout's status
    "attempts": {"rollout_id": None, "attempt_id": None, "sequence_id": None, "status": None},
    "spans": {
        "rollout_id": None,
        "attempt_id": None,
        "sequence_id": None,
        "trace_id": None,
        "span_id": None,
        "parent_id": None,
        "context": _SPAN_CONTEXT,
        "parent": _SPAN_CONTEXT,
    },
}


class Redactor:
    """Masks matches of ``patterns`` (Python regular expressions) in every string of a value."""

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as err:
                raise ValueError(f"--redact {pattern!r} is not a regular expression: {err}") from None
            if compiled[-1].fullmatch(""):
                # Matching nothing at all, it would mask between every two characters.
                raise ValueError(f"--redact {pattern!r} matches empty text: give what to mask")
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

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A data view's ``row`` with every string masked but its identity (:data:`ROW_IDENTITY`)."""
        if not self._regexes:
            return row
        masked: dict[str, Any] = self._keeping(row, ROW_IDENTITY)
        return masked

    def _keeping(self, value: Any, spec: _IdentitySpec) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key not in spec:
                    out[key] = self._walk(item)
                else:
                    inner = spec[key]
                    out[key] = item if inner is None else self._keeping(item, inner)
            return out
        if isinstance(value, list | tuple):
            return [self._keeping(item, spec) for item in value]
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self._walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(item) for item in value]
        return value
