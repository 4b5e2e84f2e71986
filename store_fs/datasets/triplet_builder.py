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
   ``gen_ai.response.*``), ``response_id`` and ``agent_name``. The four nested groups come from a
   plan made once per attribute key shape (:mod:`~store_fs.datasets._call_shapes`).

Where upstream's adapter would fail (no root at all, an attribute shaped so that it cannot be
unflattened) :class:`TripletError` is raised. Where upstream's result depends on chance, agl
chooses: parents missing from the spans become roots in the order they are first met (upstream:
set order). Repair may move a span under one of its own descendants, as upstream's does: that
subtree is then cut off and its calls are not read.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, Final, TypeVar

from store_fs.datasets._call_shapes import call_groups
from store_fs.datasets._row_rewards import reward_of
from store_fs.datasets._span_rows import SpanRow
from store_fs.datasets.flat_attributes import AttributeShapeError
from store_fs.models import Span

__all__ = ["LLM_CALL_PATTERN", "TripletError", "build_triplets", "triplets_of_rows"]

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
_T = TypeVar("_T")
_UNREAD: Final[Any] = object()  # a node's reward not read yet
_NO_ATTRIBUTES: Final[Mapping[str, Any]] = {}


class TripletError(ValueError):
    """The spans cannot be turned into triplets (upstream's adapter raises on them too)."""


class _Node:
    """A span (or a virtual parent) in the tree, with its children in order."""

    __slots__ = ("_reward", "attributes", "children", "end", "id", "name", "start", "virtual")

    def __init__(
        self,
        id: str,
        name: str,
        attributes: Mapping[str, Any],
        start: float | None,
        end: float | None,
        virtual: bool = False,
    ) -> None:
        self.id = id
        self.name = name
        self.attributes = attributes
        self.start = start
        self.end = end
        self.virtual = virtual
        self.children: list[_Node] = []
        self._reward: float | None = _UNREAD

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
        if self._reward is _UNREAD:
            self._reward = None if self.virtual else reward_of(self.name, self.attributes)
        return self._reward

    def is_reward(self) -> bool:
        if self.reward() is not None:
            return True
        return self.name == _OPERATION and self.attributes.get(_OPERATION_NAME) == _REWARD_OPERATION


def _virtual(node_id: str, kids: list[_Node]) -> _Node:
    starts = [k.start for k in kids if k.start is not None]
    ends = [k.end for k in kids if k.end is not None]
    if not starts or not ends:
        raise TripletError(f"cannot place the missing parent span {node_id}: its children have no times")
    return _Node(node_id, VIRTUAL_SPAN_NAME, _NO_ATTRIBUTES, min(starts), max(ends), virtual=True)


def _tree(rows: Sequence[SpanRow]) -> _Node:
    by_id = {row[0]: row for row in rows}  # a repeated id: the last copy, as upstream
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    for row in rows:
        if row[1] is None:
            roots.append(row[0])
        else:
            children.setdefault(row[1], []).append(row[0])
    roots += [parent for parent in children if parent not in by_id]

    visiting: set[str] = set()

    def build(node_id: str) -> _Node | None:
        if node_id in visiting:
            return None  # a cycle of parent ids
        visiting.add(node_id)
        kids = [n for n in map(build, children.get(node_id, ())) if n is not None]
        visiting.discard(node_id)
        row = by_id.get(node_id)
        node = _virtual(node_id, kids) if row is None else _Node(row[0], row[2], row[3], row[4], row[5])
        node.children = kids
        return node

    nodes = [n for n in map(build, roots) if n is not None]
    if not nodes:
        raise TripletError("no root span found in the trace")
    if len(nodes) == 1:
        return nodes[0]
    top = _Node(VIRTUAL_ROOT, VIRTUAL_ROOT, _NO_ATTRIBUTES, nodes[0].start, nodes[-1].end, virtual=True)
    top.children = nodes
    return top


def _tightest(nodes: list[_Node], node: _Node, moving: _Node) -> _Node | None:
    """The node of ``nodes`` (``node``'s walk) other than ``node`` and ``moving`` that encloses
    ``moving`` in time most tightly and strictly (the first one met, on ties), if any. It may be
    one of ``moving``'s own descendants: upstream then moves ``moving`` under it, which cuts that
    subtree off the tree.

    Times are compared as upstream compares them, in the same order, so a missing end time
    raises ``TypeError`` exactly where upstream's repair does."""
    i_start, i_end = moving.start, moving.end
    best: _Node | None = None
    best_delta = math.inf
    for candidate in nodes:
        if candidate.id == moving.id or candidate is node:
            continue
        o_start, o_end = candidate.start, candidate.end
        if o_start <= i_start and o_end >= i_end:  # type: ignore[operator]
            delta = o_end - i_end + i_start - o_start  # type: ignore[operator]
            if 0 < delta < best_delta:
                best, best_delta = candidate, delta
    return best


def _repair(top: _Node) -> None:
    node = top
    while len(node.children) == 1:
        node = node.children[0]
    nodes: list[_Node] | None = None  # node's walk, until a move changes it
    for moving in list(node.children):
        if len(node.children) == 1:
            break
        if nodes is None:
            nodes = node.walk()
        best = _tightest(nodes, node, moving)
        if best is not None:
            node.children.remove(moving)
            best.children.append(moving)
            nodes = None


def _first_string(attributes: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    for key in keys:
        if key in attributes:
            value = attributes[key]
            if isinstance(value, str):
                return value
            log.debug("attribute %s is not a string: %r", key, value)
    return None


# Every attribute _agent_name reads (but ``lc_name``, read only under a LangChain span name).
_AGENT_KEYS: Final = frozenset(
    {
        "agent.name",
        "agentops.span.kind",
        "recipient_agent_type",
        "langchain.chain.type",
        "executor.id",
        "type",
    }
)


def _agent_name(node: _Node) -> Any:
    """The agent a span names, if any (upstream's list of framework conventions)."""
    attributes = node.attributes
    if attributes.keys().isdisjoint(_AGENT_KEYS) and not node.name.startswith("langchain.Chain."):
        return None  # most spans: none of the keys below
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


class _Search:
    """The LLM calls under a node, depth first, each with its agent (upstream's call search)."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.search = pattern.search
        self.response_ids: set[str] = set()
        self.calls: list[tuple[_Node, Any]] = []

    def visit(self, node: _Node, agent: Any, in_reward: bool, in_call: bool) -> None:
        if agent is not None and not in_reward and self.search(node.name):
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


def _start(node: _Node) -> float:
    return node.start  # type: ignore[return-value]  # every span has one (checked first)


def _match_rewards(root: _Node, calls: list[_Node]) -> dict[int, float]:
    """Reward of each call (by node identity) under the first-occurrence rule."""
    call_ids = {c.id for c in calls}
    open_calls: list[tuple[_Node, Any]] = []
    rewards: dict[str, float] = {}
    for node in sorted(root.walk(), key=_start):
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
    request, response, prompt_raw, completion_raw = call_groups(attributes)
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


def _comparing_times(step: Callable[..., _T], *args: Any) -> _T:
    """``step(*args)``, where a missing end time compared with a time (``TypeError``, as in
    upstream's adapter, which then fails too) is a :class:`TripletError`."""
    try:
        return step(*args)
    except TypeError as err:
        raise TripletError(f"span times cannot be compared: {err}") from err


def _row(span: Span) -> SpanRow:
    return span.span_id, span.parent_id, span.name, span.attributes, span.start_time, span.end_time


def build_triplets(
    spans: Sequence[Span], *, llm_call_pattern: str = LLM_CALL_PATTERN
) -> list[dict[str, Any]]:
    """The triplets of one attempt's spans (given in ``query_spans`` order), in call order.

    Each is ``{"prompt", "response", "reward", "metadata"}``, equal to upstream's
    ``Triplet.model_dump()``. No spans give no triplets.
    """
    return triplets_of_rows([_row(span) for span in spans], llm_call_pattern=llm_call_pattern)


def triplets_of_rows(
    rows: Sequence[SpanRow], *, llm_call_pattern: str = LLM_CALL_PATTERN
) -> list[dict[str, Any]]:
    """:func:`build_triplets` of the spans these rows stand for (same order, same result)."""
    if not rows:
        return []
    if any(row[4] is None for row in rows):
        raise TripletError("a span has no start time")
    try:
        root = _tree(rows)
        _comparing_times(_repair, root)
        search = _Search(re.compile(llm_call_pattern))
        search.visit(root, "*", False, False)
        rewards = _comparing_times(_match_rewards, root, [node for node, _agent in search.calls])
        out = []
        for node, agent in search.calls:
            triplet = _triplet(node, agent)
            triplet["reward"] = rewards.get(id(node))
            out.append(triplet)
        return out
    except AttributeShapeError as err:
        raise TripletError(str(err)) from err
    except RecursionError:  # upstream's adapter walks the tree recursively too, and fails alike
        raise TripletError("the spans nest too deep to walk their tree") from None
