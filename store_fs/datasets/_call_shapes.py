"""The four nested attribute groups of an LLM-call span, built from a plan made once per key shape.

A triplet's ``metadata.request``, ``metadata.response``, ``prompt.raw_content`` and
``response.raw_content`` are the call span's ``gen_ai.request|response|prompt|completion``
attributes unflattened (else those of upstream's other tracer, ``agentlightning.operation.*``),
the way :mod:`~store_fs.datasets.flat_attributes` reads them. Everything about the result but the
leaf values (which keys nest where, which levels become lists, which group falls back, which
keys are dropped, which shapes cannot be read) follows from the attribute *keys* and their
order alone: unflattening never looks at a value except to see that it is not a dict, and
attribute values never are (docs/behaviour.md §1.6).

Spans from one tracer repeat a few key shapes over and over, so :func:`call_groups` works the
groups out once per shape, with the reference code of
:mod:`~store_fs.datasets.flat_attributes` run on numbered placeholders instead of values, and
keeps the result as a *plan*: per group, a function from the span's values (in key order) to
fresh containers holding them. Building a call's groups is then one dict look-up and a few
container builds, with no key splitting. The output is the reference's by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, Final

from store_fs.datasets.flat_attributes import AttributeShapeError, Groups, unflatten_prefix

__all__ = ["CallGroups", "call_groups"]

# (request, response, prompt raw content, completion raw content)
CallGroups = tuple[Any, Any, Any, Any]
_Build = Callable[[tuple[Any, ...]], Any]
_Plan = tuple[_Build, _Build, _Build, _Build] | str  # a str: the AttributeShapeError message

_MAX_PLANS: Final = 512  # key shapes remembered; a store has a handful


class _Slot(int):
    """A placeholder for the value at this position of the span's attributes."""


def _reference(attributes: Mapping[str, Any]) -> CallGroups:
    """The four groups as the reference reads them (upstream's order of fallbacks and drops)."""
    groups = Groups(attributes, "gen_ai")

    def first(group: str, fallback: str) -> Any:
        return groups.get(group) or unflatten_prefix(attributes, fallback) or None

    request = first("request", "agentlightning.operation.input")
    response = first("response", "agentlightning.operation.output")
    if isinstance(request, dict):
        request.pop("messages", None)
    if isinstance(response, dict):
        for key in ("choices", "prompt_token_ids", "response_token_ids"):
            response.pop(key, None)
    prompt = first("prompt", "agentlightning.operation.input.messages")
    completion = first("completion", "agentlightning.operation.output.choices")
    return request, response, prompt, completion


def _constant(value: Any) -> _Build:
    return lambda values: value


def _compile(template: Any) -> _Build:
    """A function making fresh containers shaped like ``template``, with its slots filled."""
    if type(template) is _Slot:
        return itemgetter(int(template))
    if template is None:
        return _constant(None)
    children = list(template.values()) if isinstance(template, dict) else template
    parts = [_compile(child) for child in children]
    slots = [int(child) for child in children if type(child) is _Slot]
    flat = len(slots) == len(parts) and len(slots) > 1  # only leaves: one C-level gather
    if isinstance(template, dict):
        keys = tuple(template)
        if flat:
            gather = itemgetter(*slots)
            return lambda values: dict(zip(keys, gather(values), strict=True))
        return lambda values: {key: part(values) for key, part in zip(keys, parts, strict=True)}
    if flat:
        gather = itemgetter(*slots)
        return lambda values: list(gather(values))
    return lambda values: [part(values) for part in parts]


def _plan(keys: tuple[str, ...]) -> _Plan:
    try:
        templates = _reference({key: _Slot(i) for i, key in enumerate(keys)})
    except AttributeShapeError as err:
        return str(err)
    request, response, prompt, completion = (_compile(t) for t in templates)
    return request, response, prompt, completion


_plans: dict[tuple[str, ...], _Plan] = {}


def call_groups(attributes: Mapping[str, Any]) -> CallGroups:
    """(request, response, prompt, completion) of a call span's attributes, each a new nested
    value or None, as the reference builds them; raises :class:`AttributeShapeError` where the
    reference does."""
    keys = tuple(attributes)
    plan = _plans.get(keys)
    if plan is None:
        if len(_plans) >= _MAX_PLANS:
            _plans.clear()
        plan = _plans[keys] = _plan(keys)
    if isinstance(plan, str):
        raise AttributeShapeError(plan)
    values = tuple(attributes.values())
    return plan[0](values), plan[1](values), plan[2](values), plan[3](values)
