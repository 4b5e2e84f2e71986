"""Training triplets from one attempt's spans, as upstream's ``TracerTraceToTriplet`` builds them.

Upstream's algorithms read ``query_spans(rollout_id, "latest")`` and give the spans to
``TracerTraceToTriplet()`` (default settings). :func:`build_triplets` gives the same result
(``prompt``, ``response``, ``reward``, ``metadata`` of each triplet, in the same order) without
upstream's package, on plain span objects:

1. **Tree.** Spans hang under their ``parent_id``. A parent that is not among the spans becomes
   a virtual node spanning its children; several roots hang under one ``virtual-root``.
2. **Repair.** Going down while a node has a single child, the first node with several
   children has each child moved under the node that encloses it most tightly in time (a
   span reported outside its agent's span goes back under it).
3. **LLM calls.** Depth first: a span whose name matches ``openai\\.chat\\.completion`` is a
   call unless it is under a reward span, repeats a response id already taken, or (without
   a response id) is under another call. Its agent is the nearest enclosing span that names one
   (``agent.name`` and upstream's other agent attributes), else ``"*"``.
4. **Rewards.** All spans by start time: a reward span goes to the latest call that ended at
   or before it started and has no reward yet (upstream's "first occurrence" rule).
5. **Triplet.** ``prompt``: ``token_ids``, ``raw_content`` (the ``gen_ai.prompt`` messages)
   and ``image_urls``; ``response``: ``token_ids``, ``raw_content`` (``gen_ai.completion``) and
   ``logprobs`` when recorded; ``metadata``: ``request``/``response`` (``gen_ai.request.*`` /
   ``gen_ai.response.*``), ``response_id`` and ``agent_name``.

Where upstream's adapter would fail (no root at all, an attribute shaped so that it cannot be
unflattened) :class:`TripletError` is raised. Two choices are agl's where upstream's result
depends on chance or on a crash: parents missing from the spans become roots in the order they
are first met (upstream: set order), and repair never moves a node under its own descendant
(upstream then recurses forever).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from store_fs.datasets.flat_attributes import AttributeShapeError, Groups, unflatten_prefix
from store_fs.models import Span
from store_fs.rewards import get_reward_value

__all__ = ["LLM_CALL_PATTERN", "TripletError", "build_triplets"]

log = logging.getLogger(__name__)

LLM_CALL_PATTERN = r"openai\.chat\.completion"
VIRTUAL_ROOT = "virtual-root"
VIRTUAL_SPAN_NAME = "agentlightning.virtual"
_OPERATION = "agentlightning.operation"
_OPERATION_NAME = "agentlightning.operation.name"
_REWARD_OPERATION = "agentlightning.reward"
_RESPONSE_ID_KEYS = ("gen_ai.response.id", "agentlightning.operation.output.id")
_PROMPT_ID_KEYS = ("prompt_token_ids", "agentlightning.operation.output.prompt_token_ids")
_RESPONSE_TOKEN_KEYS = (
    "response_token_ids",
    "agentlightning.operation.output.response_token_ids.0",
    "agentlightning.operation.output.choices.0.token_ids",
    "agentlightning.operation.output.choices.0.provider_specific_fields.token_ids",
)


class TripletError(ValueError):
    """The spans cannot be turned into triplets (upstream's adapter raises on them too)."""


@dataclass(eq=False)
class _Node:
    id: str
    name: str
    attributes: Mapping[str, Any]
    start: float | None
    end: float | None
    span: Span | None = None  # None: a virtual node
    children: list[_Node] = field(default_factory=list)
    _reward: float | bool | None = False  # False: not computed yet

    def walk(self) -> list[_Node]:
        """This node and its descendants, depth first (upstream's ``traverse``)."""
        out: list[_Node] = []
        stack = [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def reward(self) -> float | None:
        if self._reward is False:
            self._reward = (
                None
                if self.span is None or not _may_hold_reward(self.attributes)
                else get_reward_value(self.span)
            )
        return self._reward

    def is_reward(self) -> bool:
        if self.reward() is not None:
            return True
        return self.name == _OPERATION and self.attributes.get(_OPERATION_NAME) == _REWARD_OPERATION


_REWARD_KEYS = ("agentlightning.reward.", "agentops.task.output", "agentops.entity.output", "reward")


def _may_hold_reward(attributes: Mapping[str, Any]) -> bool:
    """False when no attribute could carry a reward (most spans): skips the full reading."""
    return any(key.startswith(_REWARD_KEYS) for key in attributes)


def _leaf(span: Span) -> _Node:
    return _Node(span.span_id, span.name, span.attributes, span.start_time, span.end_time, span)


def _tree(spans: Sequence[Span]) -> _Node:
    by_id = {span.span_id: span for span in spans}  # a repeated id: the last copy, as upstream
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for span in spans:
        if span.parent_id is None:
            roots.append(span.span_id)
        else:
            children.setdefault(span.parent_id, []).append(span.span_id)
    roots += [parent for parent in children if parent not in by_id]

    visiting: set[str] = set()

    def build(node_id: str) -> _Node | None:
        if node_id in visiting:
            return None  # a cycle of parent ids
        visiting.add(node_id)
        kids = [n for n in map(build, children.get(node_id, ())) if n is not None]
        visiting.discard(node_id)
        span = by_id.get(node_id)
        if span is not None:
            node = _leaf(span)
        else:
            starts = [k.start for k in kids if k.start is not None]
            ends = [k.end for k in kids if k.end is not None]
            if not starts or not ends:
                raise TripletError(
                    f"cannot place the missing parent span {node_id}: its children have no times"
                )
            node = _Node(node_id, VIRTUAL_SPAN_NAME, {}, min(starts), max(ends))
        node.children = kids
        return node

    nodes = [n for n in map(build, roots) if n is not None]
    if not nodes:
        raise TripletError("no root span found in the trace")
    if len(nodes) == 1:
        return nodes[0]
    return _Node(VIRTUAL_ROOT, VIRTUAL_ROOT, {}, nodes[0].start, nodes[-1].end, children=nodes)


def _encloses(outer: _Node, inner: _Node) -> float | None:
    """How much longer ``outer`` is than ``inner`` if it strictly encloses it in time, else None."""
    o_start, o_end, i_start, i_end = outer.start, outer.end, inner.start, inner.end
    if o_start is None or o_end is None or i_start is None or i_end is None:
        return None
    if o_start <= i_start and o_end >= i_end:
        delta = o_end - i_end + i_start - o_start
        return delta if delta > 0 else None
    return None


def _repair(top: _Node) -> None:
    node = top
    while len(node.children) == 1:
        node = node.children[0]
    for moving in list(node.children):
        if len(node.children) == 1:
            break
        own = {id(n) for n in moving.walk()}
        best: _Node | None = None
        best_delta = math.inf
        for candidate in node.walk():
            if candidate is node or id(candidate) in own or candidate.id == moving.id:
                continue
            delta = _encloses(candidate, moving)
            if delta is not None and delta < best_delta:
                best, best_delta = candidate, delta
        if best is not None:
            node.children.remove(moving)
            best.children.append(moving)


def _first_string(attributes: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    for key in keys:
        if key in attributes:
            value = attributes[key]
            if isinstance(value, str):
                return value
            log.debug("attribute %s is not a string: %r", key, value)
    return None


def _agent_name(node: _Node) -> Any:
    """The agent a span names, if any (upstream's list of framework conventions)."""
    attributes = node.attributes
    if attributes.get("agent.name") is not None:
        return attributes["agent.name"]
    if attributes.get("agentops.span.kind") == "agent" and attributes.get("operation.name") is not None:
        return attributes["operation.name"]
    for key in ("recipient_agent_type", "langchain.chain.type", "executor.id"):
        if attributes.get(key) is not None:
            return attributes[key]
    if (
        attributes.get("type") == "agent"
        and attributes.get("agentlightning.operation.input.name") is not None
    ):
        return attributes["agentlightning.operation.input.name"]
    if node.name.startswith("langchain.Chain.") and attributes.get("lc_name") is not None:
        return attributes["lc_name"]
    return None


@dataclass
class _Search:
    pattern: re.Pattern[str]
    response_ids: set[str] = field(default_factory=set)
    calls: list[tuple[_Node, Any]] = field(default_factory=list)

    def visit(self, node: _Node, agent: Any, in_reward: bool, in_call: bool) -> None:
        if agent is not None and not in_reward and self.pattern.search(node.name):
            response_id = _first_string(node.attributes, _RESPONSE_ID_KEYS)
            fresh = response_id is None or response_id not in self.response_ids
            if fresh and not (response_id is None and in_call):
                self.calls.append((node, agent))
                if response_id is not None:
                    self.response_ids.add(response_id)
                in_call = True
        named = _agent_name(node)
        if named is not None:
            agent = named
        in_reward = in_reward or node.is_reward()
        for child in node.children:
            self.visit(child, agent, in_reward, in_call)


def _match_rewards(root: _Node, calls: list[_Node]) -> dict[int, float]:
    """Reward of each call (by node identity) under the first-occurrence rule."""
    call_ids = {c.id for c in calls}
    timeline = sorted(root.walk(), key=lambda n: n.start)  # type: ignore[arg-type, return-value]
    open_calls: list[tuple[_Node, Any]] = []
    rewards: dict[str, float] = {}
    for node in timeline:
        if node.id in call_ids:
            open_calls.append((node, node.end))
        value = node.reward()
        if value is None:
            continue
        for call, end in reversed(open_calls):
            if end > node.start or call.id in rewards:
                continue
            rewards[call.id] = value
            break
    return {id(c): rewards[c.id] for c in calls if c.id in rewards}


def _token_ids(attributes: Mapping[str, Any], keys: Iterable[str]) -> list[int]:
    for key in keys:
        if key in attributes:
            value = attributes[key]
            if isinstance(value, list | tuple) and all(map(isinstance, value, repeat(int))):
                return list(value)
            log.debug("attribute %s is not a list of integers", key)
    return []


def _first(groups: Groups, group: str, attributes: Mapping[str, Any], fallback: str) -> Any:
    """The ``gen_ai.<group>`` attributes unflattened, else those under ``fallback`` (another
    tracer's names), else None: the first of the two that is not empty, as upstream reads them."""
    return groups.get(group) or unflatten_prefix(attributes, fallback) or None


def _image_urls(raw: Any) -> list[str]:
    if isinstance(raw, list):
        messages = raw
    elif isinstance(raw, dict):
        numbered = sorted((k for k in raw if isinstance(k, str) and k.isdigit()), key=int)
        messages = [raw[k] for k in numbered] if numbered else [raw]
    else:
        return []
    return [url for message in messages for url in _message_image_urls(message)]


def _message_image_urls(message: Any) -> list[str]:
    if not isinstance(message, dict) or "content" not in message:
        return []
    content = message["content"]
    if isinstance(content, str):
        if content.lstrip(" \t\n\r")[:1] != "[":
            return []  # JSON text that is not a list holds no image part: skip parsing it
        try:
            content = json.loads(content)
        except ValueError:
            return []
    urls = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict) and "url" in image:
                urls.append(image["url"])
    return urls


def _triplet(node: _Node, agent: Any) -> dict[str, Any]:
    attributes = node.attributes
    groups = Groups(attributes, "gen_ai")
    request = _first(groups, "request", attributes, "agentlightning.operation.input")
    response = _first(groups, "response", attributes, "agentlightning.operation.output")
    if isinstance(request, dict):
        request.pop("messages", None)
    if isinstance(response, dict):
        for key in ("choices", "prompt_token_ids", "response_token_ids"):
            response.pop(key, None)
    prompt_raw = _first(groups, "prompt", attributes, "agentlightning.operation.input.messages")
    completion_raw = _first(groups, "completion", attributes, "agentlightning.operation.output.choices")
    answer: dict[str, Any] = {
        "token_ids": _token_ids(attributes, _RESPONSE_TOKEN_KEYS),
        "raw_content": completion_raw,
    }
    logprobs = attributes.get("logprobs.content")
    if isinstance(logprobs, str):
        try:
            answer["logprobs"] = json.loads(logprobs)
        except ValueError as err:
            raise TripletError(f"logprobs.content of span {node.id} is not JSON") from err
    return {
        "prompt": {
            "token_ids": _token_ids(attributes, _PROMPT_ID_KEYS),
            "raw_content": prompt_raw,
            "image_urls": _image_urls(prompt_raw),
        },
        "response": answer,
        "reward": None,
        "metadata": {
            "request": request,
            "response": response,
            "response_id": _first_string(attributes, _RESPONSE_ID_KEYS),
            "agent_name": agent,
        },
    }


def build_triplets(
    spans: Sequence[Span], *, llm_call_pattern: str = LLM_CALL_PATTERN
) -> list[dict[str, Any]]:
    """The triplets of one attempt's spans (given in ``query_spans`` order), in call order.

    Each is ``{"prompt", "response", "reward", "metadata"}``, equal to upstream's
    ``Triplet.model_dump()``. No spans give no triplets.
    """
    if not spans:
        return []
    if any(s.start_time is None for s in spans):
        raise TripletError("a span has no start time")
    try:
        root = _tree(spans)
        _repair(root)
        search = _Search(re.compile(llm_call_pattern))
        search.visit(root, "*", False, False)
        calls = [node for node, _agent in search.calls]
        rewards = _match_rewards(root, calls)
        out = []
        for node, agent in search.calls:
            triplet = _triplet(node, agent)
            triplet["reward"] = rewards.get(id(node))
            out.append(triplet)
        return out
    except AttributeShapeError as err:
        raise TripletError(str(err)) from err
