"""Flattened span attributes (``gen_ai.prompt.0.role``) back into nested dicts and lists.

Two readings exist upstream and the data views need both, each exactly:

* :func:`unflatten_prefix` is how ``TracerTraceToTriplet`` reads a group of attributes: every key
  under ``prefix.`` becomes a path in one tree, and a dict whose keys are exactly ``"0"`` ..
  ``"n-1"`` becomes a list.
* :func:`group_prefix` is how ``TraceToMessages`` reads one: a level whose keys start with a
  number becomes a list ordered by that number (keys without a number at that level are dropped),
  any other level a dict, recursively.

A key equal to the prefix itself cannot be placed in a tree: :func:`unflatten_prefix` raises
:class:`AttributeShapeError` for it, as upstream does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["AttributeShapeError", "Groups", "group_prefix", "unflatten_prefix"]


class AttributeShapeError(ValueError):
    """The attributes cannot be read the way the adapter reads them (upstream raises too)."""


def unflatten_prefix(attributes: Mapping[str, Any], prefix: str) -> dict[str, Any] | list[Any]:
    """The attributes under ``prefix.`` as one nested value (``{}`` when there are none)."""
    dotted = prefix + "."
    cut = len(dotted)
    root: dict[str, Any] = {}
    for key, value in attributes.items():
        if not key.startswith(dotted):
            if key == prefix:
                raise AttributeShapeError(f"an attribute is named exactly {prefix!r}")
            continue
        parts = key[cut:].split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return _listify(root)


class Groups:
    """Every ``<namespace>.<group>.*`` tree of a span's attributes, built in one pass:
    :meth:`get` gives what ``unflatten_prefix(attributes, "<namespace>.<group>")`` would."""

    def __init__(self, attributes: Mapping[str, Any], namespace: str) -> None:
        dotted = namespace + "."
        cut = len(dotted)
        self._trees: dict[str, dict[str, Any]] = {}
        self._bad: set[str] = set()
        for key, value in attributes.items():
            if not key.startswith(dotted):
                continue
            parts = key[cut:].split(".")
            if len(parts) == 1:
                self._bad.add(parts[0])  # named exactly like the group
                continue
            node = self._trees.setdefault(parts[0], {})
            for part in parts[1:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[parts[-1]] = value

    def get(self, group: str) -> dict[str, Any] | list[Any]:
        if group in self._bad:
            raise AttributeShapeError(f"an attribute is named exactly like the group {group!r}")
        tree = self._trees.pop(group, None)  # each group is read once
        return {} if tree is None else _listify(tree)


def _listify(node: dict[str, Any]) -> dict[str, Any] | list[Any]:
    # Only the dicts built above can turn into lists: attribute values are scalars or lists of
    # scalars (docs/behaviour.md §1.6), so their lists hold nothing to convert.
    for key, value in node.items():
        if type(value) is dict:
            node[key] = _listify(value)
    if node and all(k.isdigit() for k in node):
        try:
            indices = sorted(int(k) for k in node)
        except ValueError:  # a digit int() does not read ("²")
            raise AttributeShapeError(f"list indices {sorted(node)} are not all numbers") from None
        if indices == list(range(len(indices))):
            try:
                return [node[str(i)] for i in range(len(indices))]
            except KeyError:  # "01" and "1": numbered, yet not 0..n-1 as written
                raise AttributeShapeError(f"ambiguous list indices {sorted(node)}") from None
    return node


def group_prefix(attributes: Mapping[str, Any], prefix: str) -> dict[str, Any] | list[Any]:
    """The attributes under ``prefix.``, grouped level by level (``{}`` when there are none)."""
    cut = len(prefix) + 1
    relevant = {key[cut:]: value for key, value in attributes.items() if key.startswith(prefix + ".")}
    return _group(relevant)


def _group(relevant: dict[str, Any]) -> dict[str, Any] | list[Any]:
    if any(key.split(".", 1)[0].isdigit() for key in relevant):
        by_index: dict[int, dict[str, Any]] = {}
        for key, value in relevant.items():
            head, _, rest = key.partition(".")
            if not head.isdigit():
                continue
            try:
                index = int(head)
            except ValueError:  # a digit int() does not read ("²")
                raise AttributeShapeError(f"index {head!r} is not a number") from None
            by_index.setdefault(index, {})[rest] = value
        return [_group(by_index[i]) for i in sorted(by_index)]
    result: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in relevant.items():
        head, dot, rest = key.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            result[key] = value
    for head, sub in nested.items():
        result[head] = _group(sub)
    return result
