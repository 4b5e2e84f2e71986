"""Filtering, sorting and pagination with upstream's semantics (docs/behaviour.md §6.1-§6.3).

A filter is a mapping ``field -> {"exact"|"within"|"contains": value}`` plus the
reserved keys ``_aggregate`` (``"and"``/``"or"``) and ``_must`` (conditions that
always hold). Every operator contributes one boolean to a single pool reduced
by the aggregate.

Deliberate deviation: upstream reduces an *empty* pool under ``"or"`` to "no
match", so ``query_spans(filter_logic="or")`` without conditions returns nothing.
Here an empty pool always matches; only the conditions given narrow the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

__all__ = ["build_filter", "check_page_args", "has_conditions", "matches", "paginate", "sort_items"]

T = TypeVar("T", bound=BaseModel)
Logic = Literal["and", "or"]

_OPS = ("exact", "within", "contains")


def _op_holds(op: str, expected: Any, actual: Any) -> bool:
    if op == "exact":
        return bool(actual == expected)
    if op == "within":
        try:
            return actual in expected
        except TypeError:
            return False
    if op == "contains":
        if actual is None:
            return False
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        try:
            return expected in actual
        except TypeError:
            return False
    raise ValueError(f"unknown filter operator {op!r}")


def _conditions(filters: Mapping[str, Any]) -> Iterable[tuple[str, str, Any]]:
    for field, spec in filters.items():
        if field.startswith("_"):
            continue
        for op, expected in spec.items():
            if op not in _OPS:
                raise ValueError(f"unknown filter operator {op!r}")
            if expected is not None:
                yield field, op, expected


def matches(item: BaseModel, filters: Mapping[str, Any] | None) -> bool:
    """Whether ``item`` satisfies ``filters`` (None or empty: everything matches)."""
    if not filters:
        return True
    must = filters.get("_must") or {}
    for field, op, expected in _conditions(must):
        if not _op_holds(op, expected, getattr(item, field, None)):
            return False
    pool = [_op_holds(op, exp, getattr(item, field, None)) for field, op, exp in _conditions(filters)]
    if not pool:
        return True
    return any(pool) if filters.get("_aggregate", "and") == "or" else all(pool)


def has_conditions(filters: Mapping[str, Any] | None) -> bool:
    """Whether ``filters`` can reject anything (``matches`` is then worth calling per item)."""
    if not filters:
        return False
    must = filters.get("_must") or {}
    return any(True for _ in _conditions(filters)) or any(True for _ in _conditions(must))


def build_filter(logic: Logic, **conditions: tuple[str, Any] | None) -> dict[str, Any]:
    """``build_filter("and", status=("within", [...]))``: None conditions are dropped."""
    if logic not in ("and", "or"):
        raise ValueError(f"filter_logic must be 'and' or 'or', not {logic!r}")
    out: dict[str, Any] = {"_aggregate": logic}
    for key, cond in conditions.items():
        if cond is None or cond[1] is None:
            continue
        field = key.split("__")[0]
        out.setdefault(field, {})[cond[0]] = cond[1]
    return out


def _none_substitute(field: str, values: Sequence[Any]) -> Any:
    if field.endswith("_time"):
        return math.inf
    sample = next((v for v in values if v is not None), None)
    if sample is None or isinstance(sample, str):
        return ""
    if isinstance(sample, (bool, int)):
        return 0
    if isinstance(sample, float):
        return 0.0
    raise ValueError(f"cannot sort by {field!r}: values of type {type(sample).__name__} may be None")


def sort_items(
    items: list[T], sort_by: str | None, sort_order: str, model: type[BaseModel] | None = None
) -> list[T]:
    """Stable sort by a model field; ``None`` sorts as +inf for ``*_time`` fields, else as 0/""."""
    if sort_order not in ("asc", "desc"):
        raise ValueError(f"sort_order must be 'asc' or 'desc', not {sort_order!r}")
    if sort_by is None or not items:
        return items
    fields = (model or type(items[0])).model_fields
    if sort_by not in fields:
        raise ValueError(f"Invalid sort_by: {sort_by}, allowed fields are: {', '.join(fields)}")
    values = [getattr(i, sort_by) for i in items]
    if any(v is None for v in values):
        filler = _none_substitute(sort_by, values)
        key: Callable[[T], Any] = lambda i: filler if getattr(i, sort_by) is None else getattr(i, sort_by)  # noqa: E731
    else:
        key = lambda i: getattr(i, sort_by)  # noqa: E731
    try:
        return sorted(items, key=key, reverse=sort_order == "desc")
    except TypeError:
        raise ValueError(
            f"cannot sort by {sort_by}: its values (objects, mixed types) have no order"
        ) from None


def check_page_args(limit: int, offset: int) -> None:
    if limit < -1:
        raise ValueError("Limit must be greater than 0 or -1 for no limit")
    if offset < 0:
        raise ValueError("Offset must be non-negative")


def paginate(items: Sequence[T], limit: int, offset: int) -> list[T]:
    """``limit=-1`` means no limit; ``limit=0`` yields nothing (``total`` is still counted by the caller)."""
    check_page_args(limit, offset)
    if limit == -1:
        return list(items[offset:])
    return list(items[offset : offset + limit])
