"""Deterministic JSON values that satisfy a JSON schema, for the mock server's structured replies.

Covers what structured outputs and function tools use: ``type`` (single or list), ``properties``
(every property is filled, required or not), ``items``/``minItems``/``maxItems``, ``enum``,
``const``, ``anyOf``/``oneOf`` (first option, preferring non-null), ``allOf`` (merged), local
``$ref`` into ``$defs``/``definitions``, ``format`` (date-time, date, time, email, uri, uuid),
``minLength``/``maxLength`` and numeric bounds. ``pattern`` and ``multipleOf`` are not honoured.
Strings are the given ``text``; numbers and booleans derive from a score in [0, 1]: ``text``
itself when it is such a number (the default responder's judge reply, so a structured judge's
"score" field equals the plain-text judge's answer), else :func:`score_of` of ``text``.
"""

from __future__ import annotations

from typing import Any

from store_fs.testing._mock_text import score_of

_MAX_DEPTH = 4  # past this, optional branches and arrays stay empty so recursive schemas terminate
_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/mock",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example_value(schema: Any, text: str) -> Any:
    """A JSON value valid for ``schema`` (within the subset above), a pure function of its inputs."""
    return _Example(schema if isinstance(schema, dict) else {}, text).value(schema, 0)


class _Example:
    def __init__(self, root: dict[str, Any], text: str) -> None:
        self.root = root
        self.text = text
        self.score = _score(text)

    def value(self, schema: Any, depth: int) -> Any:
        schema = self._resolve(schema)
        if not isinstance(schema, dict):
            return self.text  # `true` or an unknown schema: anything goes
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self._pick(schema[key], depth), depth)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                resolved = self._resolve(part)
                merged.update(resolved if isinstance(resolved, dict) else {})
            return self.value(merged, depth)
        return self._typed(schema, _type_of(schema), depth)

    def _typed(self, schema: dict[str, Any], kind: str, depth: int) -> Any:
        if kind == "object":
            properties = schema.get("properties")
            if not isinstance(properties, dict):
                return {}
            return {name: self.value(sub, depth + 1) for name, sub in properties.items()}
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return int(_clamp(round(self.score * 100), schema, 1))
        if kind == "number":
            return _clamp(self.score, schema, 0.01)
        if kind == "boolean":
            return self.score >= 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low, high = schema.get("minItems"), schema.get("maxItems")
        count = low if isinstance(low, int) else 0
        if depth < _MAX_DEPTH:
            count = max(count, 1)
        if isinstance(high, int):
            count = min(count, high)
        return [self.value(schema.get("items", {}), depth + 1) for _ in range(count)]

    def _string(self, schema: dict[str, Any]) -> str:
        text = _FORMATS.get(str(schema.get("format")), self.text)
        low, high = schema.get("minLength"), schema.get("maxLength")
        if isinstance(high, int) and len(text) > high:
            text = text[:high]
        if isinstance(low, int) and len(text) < low:
            text += "x" * (low - len(text))
        return text

    def _pick(self, options: list[Any], depth: int) -> Any:
        resolved = [self._resolve(o) for o in options]
        nulls = [o for o in resolved if isinstance(o, dict) and o.get("type") == "null"]
        others = [o for o in resolved if not (isinstance(o, dict) and o.get("type") == "null")]
        if nulls and (depth >= _MAX_DEPTH or not others):
            return nulls[0]
        return others[0] if others else resolved[0]

    def _resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
            schema = {**self._lookup(schema["$ref"]), **{k: v for k, v in schema.items() if k != "$ref"}}
            seen += 1
        return schema

    def _lookup(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        for part in ref.removeprefix("#").strip("/").split("/") if ref != "#" else []:
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return score_of(text)
    return value if 0 <= value <= 1 else score_of(text)


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _clamp(value: float, schema: dict[str, Any], step: float) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = schema["exclusiveMinimum"] + step
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = schema["exclusiveMaximum"] - step
    if isinstance(high, int | float):
        value = min(value, high)
    if isinstance(low, int | float):
        value = max(value, low)
    return value
