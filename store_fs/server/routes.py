"""The v1 REST endpoints (docs/behaviour.md §9.2): one handler per route, each a thin call into the store.

Handlers parse and validate the request, call the store, and return ``(status, payload)``;
errors propagate as exceptions that :mod:`store_fs.server.app` maps to status codes.
The handlers keep nothing between requests: the store directory is the only state.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel

from store_fs import json_input
from store_fs.lightning_store import LightningStore
from store_fs.models import Attempt, ResourcesUpdate, Rollout, Span, Worker
from store_fs.server.http import Request
from store_fs.server.schemas import (
    LIST_PARAMS,
    NAMED_RESOURCES,
    AttemptQuery,
    AttemptUpdateBody,
    BadRequest,
    DequeueBody,
    EnqueueBody,
    NextSequenceBody,
    ResourcesQuery,
    RolloutQuery,
    RolloutUpdateBody,
    SpanBatchBody,
    SpanQuery,
    StartAttemptBody,
    StartRolloutBody,
    WaitBody,
    WorkerQuery,
    WorkerUpdateBody,
    check_page,
    optional_or_unset,
    required_or_unset,
)

__all__ = ["PREFIX", "Call", "Route", "StoreApi"]

PREFIX = "/v1/agl"
M = TypeVar("M", bound=BaseModel)
Result = tuple[int, Any]


def _is_json_media_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type, parameters such as ``charset`` aside."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@dataclass
class Call:
    """One request as the handlers see it: the request, its path parameters, the store."""

    request: Request
    params: dict[str, str]
    store: LightningStore

    def json(self) -> Any:
        """The JSON body, None when absent (validators then answer 422 where a body is required).
        Bad JSON is a 400."""
        body = self.request.body
        if not body.strip():
            return None
        content_type = self.request.headers.get("content-type")
        if content_type is not None and not _is_json_media_type(content_type):
            # A browser sends text/plain, form and multipart posts to any site without asking
            # first: refusing them keeps a web page from writing to a token-less local store.
            raise BadRequest(f"Content-Type {content_type!r} is not JSON: send application/json", status=415)
        try:
            return json_input.loads_exact(body)
        except json_input.DecodeError as err:
            raise BadRequest(f"invalid JSON body: {err}") from None

    def body(self, model: type[M], *, required: bool = True) -> M:
        """The body validated as ``model`` (pydantic errors become 422); null/absent → defaults."""
        data = self.json()
        return model.model_validate({} if data is None and not required else data)

    def query(self, model: type[M]) -> M:
        """The query string validated as ``model``; list fields collect repeated keys."""
        data: dict[str, Any] = {}
        for key, value in self.request.query:
            if key in LIST_PARAMS:
                data.setdefault(key, []).append(value)
            else:
                data[key] = value
        return model.model_validate(data)


def _decode_params(raw: dict[str, str]) -> dict[str, str]:
    """Percent-decoded path parameters. Bytes that are not UTF-8 are refused rather than replaced
    by U+FFFD, which would make different ids name one record."""
    try:
        return {key: unquote(value, errors="strict") for key, value in raw.items()}
    except UnicodeDecodeError:
        raise BadRequest("a path parameter is not UTF-8 once percent-decoded") from None


Handler = Callable[[Call], Awaitable[Result]]


# A method of the store protocol, named as ``LightningStore.<name>`` so mypy checks the name.
StoreMethod = Callable[..., Any]


@dataclass(frozen=True)
class Route:
    """One REST route, and the :class:`LightningStore` methods a client implements with it.

    Every store method is served by some route and every route but ``/health`` serves a
    method (``tests/test_store_contract.py``); ``capabilities`` is answered by the client itself.
    """

    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    serves: tuple[StoreMethod, ...]


def _compile(template: str) -> re.Pattern[str]:
    # Parameters match one raw path segment; it is percent-decoded after matching.
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


def _page(result: Any) -> dict[str, Any]:
    return {
        "items": list(result.items),
        "limit": result.limit,
        "offset": result.offset,
        "total": result.total,
    }


class StoreApi:
    """Routes ``/v1/agl/...`` requests to a store."""

    def __init__(self, store: LightningStore) -> None:
        self.store = store
        ls = LightningStore
        table: list[tuple[str, str, Handler, tuple[StoreMethod, ...]]] = [
            # Literal routes come before parameterised ones, as upstream registers them.
            ("GET", "/health", self.health, ()),
            (
                "POST",
                "/queues/rollouts/enqueue",
                self.enqueue,
                (ls.enqueue_rollout, ls.enqueue_many_rollouts),
            ),
            (
                "POST",
                "/queues/rollouts/dequeue",
                self.dequeue,
                (ls.dequeue_rollout, ls.dequeue_many_rollouts),
            ),
            ("POST", "/rollouts", self.start_rollout, (ls.start_rollout,)),
            ("GET", "/rollouts", self.query_rollouts, (ls.query_rollouts,)),
            ("POST", "/rollouts/search", self.search_rollouts, (ls.query_rollouts,)),
            ("GET", "/rollouts/{rollout_id}", self.get_rollout, (ls.get_rollout_by_id,)),
            ("POST", "/rollouts/{rollout_id}", self.update_rollout, (ls.update_rollout, ls.cancel_rollout)),
            ("POST", "/rollouts/{rollout_id}/attempts", self.start_attempt, (ls.start_attempt,)),
            ("GET", "/rollouts/{rollout_id}/attempts", self.query_attempts, (ls.query_attempts,)),
            ("POST", "/rollouts/{rollout_id}/attempts/search", self.search_attempts, (ls.query_attempts,)),
            ("GET", "/rollouts/{rollout_id}/attempts/latest", self.latest_attempt, (ls.get_latest_attempt,)),
            (
                "POST",
                "/rollouts/{rollout_id}/attempts/{attempt_id}",
                self.update_attempt,
                (ls.update_attempt,),
            ),
            (
                "POST",
                "/rollouts/{rollout_id}/attempts/{attempt_id}/heartbeat",
                self.heartbeat,
                (ls.heartbeat,),
            ),
            ("GET", "/workers", self.query_workers, (ls.query_workers,)),
            ("POST", "/workers/search", self.search_workers, (ls.query_workers,)),
            ("GET", "/workers/{worker_id}", self.get_worker, (ls.get_worker_by_id,)),
            ("POST", "/workers/{worker_id}", self.update_worker, (ls.update_worker,)),
            ("GET", "/statistics", self.statistics, (ls.statistics,)),
            ("GET", "/resources", self.query_resources, (ls.query_resources,)),
            ("POST", "/resources", self.add_resources, (ls.add_resources,)),
            ("GET", "/resources/latest", self.latest_resources, (ls.get_latest_resources,)),
            ("POST", "/resources/{resources_id}", self.update_resources, (ls.update_resources,)),
            ("GET", "/resources/{resources_id}", self.get_resources, (ls.get_resources_by_id,)),
            ("POST", "/spans", self.add_span, (ls.add_span, ls.add_many_spans, ls.add_otel_span)),
            ("POST", "/spans/batch", self.add_spans, (ls.add_many_spans,)),  # agl addition
            ("GET", "/spans", self.query_spans_get, (ls.query_spans,)),
            ("POST", "/spans/search", self.search_spans, (ls.query_spans,)),
            (
                "POST",
                "/spans/next",
                self.next_sequence_id,
                (ls.get_next_span_sequence_id, ls.get_many_span_sequence_ids),
            ),
            ("POST", "/waits/rollouts", self.wait_for_rollouts, (ls.wait_for_rollouts,)),
        ]
        self.routes = [Route(m, t, _compile(PREFIX + t), h, serves) for m, t, h, serves in table]
        # Handlers whose store call reads or writes one rollout's (or worker's, or resource
        # snapshot's) few files: cheap enough to run on the server's HTTP loop (see app.py).
        self.inline: frozenset[Handler] = frozenset(
            {
                self.add_span,
                self.update_attempt,
                self.heartbeat,
                self.get_rollout,
                self.update_rollout,
                self.latest_attempt,
                self.next_sequence_id,
                self.get_worker,
                self.update_worker,
                self.get_resources,
                self.latest_resources,
            }
        )
        # Routes without parameters, by (method, path): a dict look-up instead of trying each pattern
        # in turn. Only those no earlier route would take first, so the answer is the same.
        self._literal: dict[tuple[str, str], Handler] = {}
        for i, route in enumerate(self.routes):
            path = PREFIX + route.template
            earlier = any(r.method == route.method and r.pattern.match(path) for r in self.routes[:i])
            if "{" not in route.template and not earlier:
                self._literal[(route.method, path)] = route.handler

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | Literal[False] | None:
        """The handler and decoded path parameters; False if only the method is wrong; None if no route."""
        literal = self._literal.get((method, path))
        if literal is not None:
            return literal, {}
        path_known = False
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method == method:
                return route.handler, _decode_params(found.groupdict())
            path_known = True
        return False if path_known else None

    # -- queue and rollouts ---------------------------------------------------------
    async def health(self, call: Call) -> Result:
        return 200, {"status": "ok"}

    async def enqueue(self, call: Call) -> Result:
        """Per-item ``idempotency_key`` wins over the ``Idempotency-Key`` header (``<key>#<index>``
        for the i-th item of a batch; the key itself for a single item)."""
        items = call.body(EnqueueBody).rollouts
        header = call.request.header("idempotency-key").strip()
        keys: list[str | None] = [
            item.idempotency_key
            if item.idempotency_key is not None
            else (header if len(items) == 1 else f"{header}#{i}")
            if header
            else None
            for i, item in enumerate(items)
        ]
        requests = [item.request() for item in items]
        store = call.store
        if not items:
            return 201, []
        if len(items) == 1:
            r = requests[0]
            one = await store.enqueue_rollout(
                r.input, r.mode, r.resources_id, r.config, r.metadata, idempotency_key=keys[0]
            )
            return 201, [one]
        if all(k is None for k in keys):
            return 201, list(await store.enqueue_many_rollouts(requests))
        # Keyed items; in a batch that mixes both, each unkeyed item gets a fresh random key,
        # which no retry repeats: a new rollout, as without a key. One call, in order, which
        # checks every item before storing any (one call per item stored those before a
        # refused one, under a 400).
        given = [k if k is not None else f"agl-unkeyed-{secrets.token_hex(16)}" for k in keys]
        return 201, list(await store.enqueue_many_rollouts(requests, idempotency_keys=given))

    async def dequeue(self, call: Call) -> Result:
        body = call.body(DequeueBody, required=False)
        if body.limit <= 0:
            return 200, []
        if body.limit == 1:
            one = await call.store.dequeue_rollout(worker_id=body.worker_id)
            return 200, [one] if one is not None else []
        return 200, list(await call.store.dequeue_many_rollouts(limit=body.limit, worker_id=body.worker_id))

    async def start_rollout(self, call: Call) -> Result:
        b = call.body(StartRolloutBody)
        return 201, await call.store.start_rollout(
            b.input, b.mode, b.resources_id, b.config, b.metadata, worker_id=b.worker_id
        )

    async def _rollouts(self, q: RolloutQuery) -> Result:
        # An absent list filter is None (no filter); an empty list filters everything out.
        check_page(q, Rollout)
        result = await self.store.query_rollouts(
            status_in=q.status_in,
            rollout_id_in=q.rollout_id_in,
            rollout_id_contains=q.rollout_id_contains,
            filter_logic=q.filter_logic,  # type: ignore[arg-type]  # checked by check_page
            sort_by=q.sort_by,
            sort_order=q.sort_order,  # type: ignore[arg-type]
            limit=q.limit,
            offset=q.offset,
        )
        return 200, _page(result)

    async def query_rollouts(self, call: Call) -> Result:
        return await self._rollouts(call.query(RolloutQuery))

    async def search_rollouts(self, call: Call) -> Result:
        return await self._rollouts(call.body(RolloutQuery))

    async def get_rollout(self, call: Call) -> Result:
        return 200, await call.store.get_rollout_by_id(call.params["rollout_id"])

    async def update_rollout(self, call: Call) -> Result:
        b = call.body(RolloutUpdateBody)
        return 200, await call.store.update_rollout(
            call.params["rollout_id"],
            input=optional_or_unset(b, "input"),
            mode=optional_or_unset(b, "mode"),
            resources_id=optional_or_unset(b, "resources_id"),
            status=required_or_unset(b, "status"),
            config=required_or_unset(b, "config"),
            metadata=optional_or_unset(b, "metadata"),
        )

    # -- attempts -------------------------------------------------------------------
    async def start_attempt(self, call: Call) -> Result:
        b = call.body(StartAttemptBody, required=False)
        return 201, await call.store.start_attempt(call.params["rollout_id"], worker_id=b.worker_id)

    async def _attempts(self, rollout_id: str, q: AttemptQuery) -> Result:
        check_page(q, Attempt)
        result = await self.store.query_attempts(
            rollout_id,
            sort_by=q.sort_by,
            sort_order=q.sort_order,  # type: ignore[arg-type]  # checked by check_page
            limit=q.limit,
            offset=q.offset,
        )
        return 200, _page(result)

    async def query_attempts(self, call: Call) -> Result:
        return await self._attempts(call.params["rollout_id"], call.query(AttemptQuery))

    async def search_attempts(self, call: Call) -> Result:
        return await self._attempts(call.params["rollout_id"], call.body(AttemptQuery))

    async def latest_attempt(self, call: Call) -> Result:
        return 200, await call.store.get_latest_attempt(call.params["rollout_id"])

    async def update_attempt(self, call: Call) -> Result:
        b = call.body(AttemptUpdateBody)
        return 200, await call.store.update_attempt(
            call.params["rollout_id"],
            call.params["attempt_id"],
            status=required_or_unset(b, "status"),
            worker_id=required_or_unset(b, "worker_id"),
            last_heartbeat_time=required_or_unset(b, "last_heartbeat_time"),
            metadata=required_or_unset(b, "metadata"),
        )

    async def heartbeat(self, call: Call) -> Result:
        """agl extension: ``{"alive": false}`` tells the runner the attempt is no longer its own."""
        alive = await call.store.heartbeat(call.params["rollout_id"], call.params["attempt_id"])
        return 200, {"alive": alive}

    # -- workers and statistics -------------------------------------------------------
    async def _workers(self, q: WorkerQuery) -> Result:
        check_page(q, Worker)
        result = await self.store.query_workers(
            status_in=q.status_in,
            worker_id_contains=q.worker_id_contains,
            filter_logic=q.filter_logic,  # type: ignore[arg-type]  # checked by check_page
            sort_by=q.sort_by,
            sort_order=q.sort_order,  # type: ignore[arg-type]
            limit=q.limit,
            offset=q.offset,
        )
        return 200, _page(result)

    async def query_workers(self, call: Call) -> Result:
        return await self._workers(call.query(WorkerQuery))

    async def search_workers(self, call: Call) -> Result:
        return await self._workers(call.body(WorkerQuery))

    async def get_worker(self, call: Call) -> Result:
        return 200, await call.store.get_worker_by_id(call.params["worker_id"])

    async def update_worker(self, call: Call) -> Result:
        b = call.body(WorkerUpdateBody, required=False)
        stats = required_or_unset(b, "heartbeat_stats")
        return 200, await call.store.update_worker(call.params["worker_id"], stats)

    async def statistics(self, call: Call) -> Result:
        return 200, dict(await call.store.statistics())

    # -- resources ------------------------------------------------------------------
    async def query_resources(self, call: Call) -> Result:
        q = call.query(ResourcesQuery)
        check_page(q, ResourcesUpdate)
        result = await call.store.query_resources(
            resources_id=q.resources_id,
            resources_id_contains=q.resources_id_contains,
            sort_by=q.sort_by,
            sort_order=q.sort_order,  # type: ignore[arg-type]  # checked by check_page
            limit=q.limit,
            offset=q.offset,
        )
        return 200, _page(result)

    async def add_resources(self, call: Call) -> Result:
        return 201, await call.store.add_resources(NAMED_RESOURCES.validate_python(call.json()))

    async def latest_resources(self, call: Call) -> Result:
        return 200, await call.store.get_latest_resources()

    async def update_resources(self, call: Call) -> Result:
        resources = NAMED_RESOURCES.validate_python(call.json())
        return 200, await call.store.update_resources(call.params["resources_id"], resources)

    async def get_resources(self, call: Call) -> Result:
        return 200, await call.store.get_resources_by_id(call.params["resources_id"])

    # -- spans and waiting ----------------------------------------------------------
    async def add_span(self, call: Call) -> Result:
        # A duplicate span_id is stored once; the repeat (e.g. a client retry) gets null.
        return 201, await call.store.add_span(call.body(Span))

    async def add_spans(self, call: Call) -> Result:
        """agl addition: ``{"spans": [Span, ...]}`` stored by ``add_many_spans`` (in order, by attempt);
        the answer lists the spans stored, without the duplicates. Safe to repeat: a retried batch
        stores nothing twice."""
        return 201, list(await call.store.add_many_spans(call.body(SpanBatchBody).spans))

    async def _spans(self, q: SpanQuery) -> Result:
        check_page(q, Span)
        result = await self.store.query_spans(
            q.rollout_id,
            q.attempt_id,
            trace_id=q.trace_id,
            trace_id_contains=q.trace_id_contains,
            span_id=q.span_id,
            span_id_contains=q.span_id_contains,
            parent_id=q.parent_id,
            parent_id_contains=q.parent_id_contains,
            name=q.name,
            name_contains=q.name_contains,
            filter_logic=q.filter_logic,  # type: ignore[arg-type]  # checked by check_page
            limit=q.limit,
            offset=q.offset,
            sort_by=q.sort_by,
            sort_order=q.sort_order,  # type: ignore[arg-type]
        )
        return 200, _page(result)

    async def query_spans_get(self, call: Call) -> Result:
        return await self._spans(call.query(SpanQuery))

    async def search_spans(self, call: Call) -> Result:
        return await self._spans(call.body(SpanQuery))

    async def next_sequence_id(self, call: Call) -> Result:
        b = call.body(NextSequenceBody)
        return 200, {"sequence_id": await call.store.get_next_span_sequence_id(b.rollout_id, b.attempt_id)}

    async def wait_for_rollouts(self, call: Call) -> Result:
        # The body's timeout is honoured as given (upstream's client caps it at 0.1 s; ours does not).
        b = call.body(WaitBody)
        return 200, await call.store.wait_for_rollouts(rollout_ids=b.rollout_ids, timeout=b.timeout)
