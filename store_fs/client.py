"""``LightningStoreClient``: the :class:`~store_fs.lightning_store.LightningStore` API over HTTP.

It talks to ``agl store`` (:mod:`store_fs.server`) and raises the same exceptions as
:class:`~store_fs.store.FileStore`: 404 → the store's not-found error (``RolloutNotFoundError`` ...), 409 →
``ConflictError``, 400 → ``InvalidIdError`` or ``ValueError``, 422 → ``ValueError``;
other failures raise :class:`RemoteStoreError`. Getters return None for unknown ids.

Retries happen only for connection errors (see :mod:`store_fs._transport`): a request
that never reached the server is retried for every call; one whose answer was lost only
for calls that are safe to repeat (reads, updates, span uploads, and enqueues, which
always carry an idempotency key). Dequeue, start_rollout, start_attempt, add_resources
and sequence-id allocation are never re-sent once sent.
Unlike upstream's client, ``wait_for_rollouts`` accepts any timeout.

It also works against upstream's own server: ``heartbeat`` finds out once (405) that the
server has no heartbeat route and falls back to ``update_attempt(last_heartbeat_time=...)``,
reading cancellation from the statuses (:func:`store_fs.retrying.heartbeat_by_update`);
``add_many_spans`` sends up to :data:`SPAN_BATCH` spans a request to agl's ``POST /spans/batch``
and, on a server without that route, finds that out once and sends one ``add_span`` a span.
``export_otlp`` sends spans the OTLP way (the tracer's ``span_transport="otlp"``).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter

from store_fs._disk import codec
from store_fs._disk.ids import check_name_id
from store_fs._transport import Transport
from store_fs.errors import InvalidIdError, NotFoundError, RemoteStoreError, UnstorableValueError
from store_fs.lightning_store import LightningStore
from store_fs.models import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    FilterLogic,
    LightningStoreCapabilities,
    LightningStoreStatistics,
    NamedResources,
    PaginatedResult,
    ResourcesUpdate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    SortOrder,
    Span,
    TaskInput,
    Unset,
    Worker,
    WorkerStatus,
)
from store_fs.retrying import heartbeat_by_update

__all__ = ["LightningStoreClient", "RemoteStoreError"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
_ROLLOUTS: TypeAdapter[list[Rollout]] = TypeAdapter(list[Rollout])
_NAMED: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)
# Spans per POST /spans/batch request: a bounded body, however many spans a caller hands over.
SPAN_BATCH = 500


def _refuse_non_finite(values: Any, what: str = "the rollout's input, config or metadata") -> None:
    """What the store refuses in process, refused here too: a model's JSON dump would turn NaN
    and infinities into ``null``, and keys JSON writes alike (``1`` and ``"1"``) into one, a
    value the caller never gave, before the request is sent (codec.unstorable_reason)."""
    reason = codec.unstorable_reason(values)
    if reason is not None:
        raise UnstorableValueError(what, reason)


def _look_once(timeout: float) -> float:
    """A finite wait timeout as FileStore takes it: NaN and anything <= 0 are one look (0)."""
    return timeout if timeout > 0 else 0.0  # NaN > 0 is False


def _seg(value: str, kind: str) -> str:
    """One percent-encoded path segment; dot segments are encoded too, or URL normalisation
    would drop them and the request would reach another route instead of being refused. An
    id FileStore refuses (empty, a separator, ...) is refused here too, as FileStore refuses it:
    an empty one made another route's URL (a 404 taken for a server without that route)."""
    check_name_id(kind, value)
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


# Words that follow /resources/ or /workers/ in a route of their own (GET /resources/latest,
# POST /workers/search): an id spelled so is sent with its first letter percent-encoded, which
# the server matches as an id and decodes (upstream's client reaches the other route).
_ROUTE_WORDS = frozenset({"latest", "search"})


def _id_seg(value: str, kind: str) -> str:
    """:func:`_seg` for a caller-chosen id (resources, worker) that may spell a route word."""
    if value in _ROUTE_WORDS:
        return f"%{ord(value[0]):02X}{value[1:]}"
    return _seg(value, kind)


def _rollout(data: Any) -> Rollout | AttemptedRollout:
    return AttemptedRollout.model_validate(data) if "attempt" in data else Rollout.model_validate(data)


class LightningStoreClient(LightningStore):
    """Talk to an agl store server at ``url`` (e.g. ``http://127.0.0.1:4747``).

    Args:
        token: bearer token (default: ``AGL_STORE_TOKEN``).
        timeout: seconds for one request (``wait_for_rollouts`` adds its own timeout).
        retry_delays: sleeps between retries of connection failures (see module docstring).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retry_delays: Sequence[float] = (0.2, 0.5, 1.0, 2.0, 4.0),
    ) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("AGL_STORE_TOKEN") or None
        self._http = Transport(self.url + "/v1/agl", token=token, timeout=timeout, retry_delays=retry_delays)
        self._call = self._http.call
        self._heartbeat_route = True  # until the server shows it has none
        self._batch_route = True  # the same for POST /spans/batch
        self._dequeue_failing = False  # dequeue_rollout's failures are logged once per outage

    def __repr__(self) -> str:
        return f"LightningStoreClient({self.url!r})"

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        # otlp_traces False, though the server takes OTLP at /v1/traces (export_otlp): upstream's
        # tracers read it to point their OTLP exporter at the store, which with current
        # exporters sends to localhost:4318 instead (docs/deviations.md); told False, they
        # store their spans through add_otel_span, which arrives.
        return {"thread_safe": True, "async_safe": True, "zero_copy": True, "otlp_traces": False}

    def otlp_traces_endpoint(self) -> str:
        return self.url + "/v1/traces"

    async def export_otlp(self, body: bytes) -> int:
        """*agl*: POST a serialized OTLP ``ExportTraceServiceRequest`` to the server's trace
        endpoint; returns how many spans the server rejected (its ``partial_success``)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        reply = await self._http.post_bytes(self.otlp_traces_endpoint(), body, "application/x-protobuf")
        response = ExportTraceServiceResponse()
        if reply:
            response.ParseFromString(reply)
        return int(response.partial_success.rejected_spans)

    async def close(self) -> None:
        """Close this event loop's connection pool (the client stays usable)."""
        await self._http.close()

    async def __aenter__(self) -> LightningStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- capabilities and statistics -----------------------------------------------
    async def statistics(self) -> LightningStoreStatistics:
        stats: LightningStoreStatistics = await self._call("GET", "/statistics", idempotent=True)
        return stats

    # -- rollouts ------------------------------------------------------------------
    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        _refuse_non_finite(config)
        body = {
            "input": input,
            "mode": mode,
            "resources_id": resources_id,
            "config": config.model_dump(mode="json") if config else None,
            "metadata": metadata,
            "worker_id": worker_id,
        }
        return AttemptedRollout.model_validate(
            await self._call("POST", "/rollouts", json=body, idempotent=False)
        )

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Rollout:
        request = EnqueueRolloutRequest(
            input=input, mode=mode, resources_id=resources_id, config=config, metadata=metadata
        )
        keys = [idempotency_key] if idempotency_key is not None else None
        return (await self.enqueue_many_rollouts([request], idempotency_keys=keys))[0]

    async def enqueue_many_rollouts(
        self, rollouts: Sequence[EnqueueRolloutRequest], *, idempotency_keys: Sequence[str] | None = None
    ) -> Sequence[Rollout]:
        if idempotency_keys is not None and len(idempotency_keys) != len(rollouts):
            raise ValueError("idempotency_keys must have one key per rollout")
        if not rollouts:
            return []
        _refuse_non_finite(rollouts)
        # Without caller keys, fresh ones make a retried request find the rollouts it made.
        keys = (
            list(idempotency_keys) if idempotency_keys is not None else [uuid.uuid4().hex for _ in rollouts]
        )
        items = [
            # Python values, not JSON mode (which sends bytes as text): the transport's encoder
            # refuses what FileStore refuses.
            {**EnqueueRolloutRequest.model_validate(r).model_dump(), "idempotency_key": k}
            for r, k in zip(rollouts, keys, strict=True)
        ]
        data = await self._call("POST", "/queues/rollouts/enqueue", json={"rollouts": items}, idempotent=True)
        return _ROLLOUTS.validate_python(data)

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        # Like upstream's client, None when the server cannot be reached or fails (logged once
        # per outage): upstream's runner, which dequeues with this, ends on an exception here.
        # dequeue_many_rollouts raises instead (agl's runner uses it, to back off and say the
        # store is unreachable). docs/behaviour.md §9.6.
        try:
            got = await self.dequeue_many_rollouts(limit=1, worker_id=worker_id)
        except RemoteStoreError as err:
            if err.status is not None and err.status < 500:
                raise
            if not self._dequeue_failing:
                self._dequeue_failing = True
                log.warning("dequeue: %s (nothing dequeued until the store answers)", err)
            return None
        if self._dequeue_failing:
            self._dequeue_failing = False
            log.warning("dequeue: the store answers again")
        return got[0] if got else None

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        if limit <= 0:
            return []
        body = {"limit": limit, "worker_id": worker_id}
        data = await self._call("POST", "/queues/rollouts/dequeue", json=body, idempotent=False)
        return [AttemptedRollout.model_validate(d) for d in data]

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        data = await self._call(
            "POST",
            f"/rollouts/{_seg(rollout_id, 'rollout')}/attempts",
            json={"worker_id": worker_id},
            idempotent=False,
        )
        return AttemptedRollout.model_validate(data)

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout | AttemptedRollout]:
        # limit=0 returns an empty page without asking: the REST API refuses 0.
        status_in = status_in if status_in is not None else status
        rollout_id_in = rollout_id_in if rollout_id_in is not None else rollout_ids
        body: dict[str, Any] = {
            "rollout_id_contains": rollout_id_contains,
            "filter_logic": filter_logic,
            "sort_by": sort_by,
            "sort_order": sort_order,
            "limit": limit,
            "offset": offset,
        }
        if status_in is not None:
            body["status_in"] = list(status_in)
        if rollout_id_in is not None:
            body["rollout_id_in"] = list(rollout_id_in)
        data = await self._page("/rollouts/search", body)
        return PaginatedResult(
            items=[_rollout(d) for d in data["items"]],
            limit=data["limit"],
            offset=data["offset"],
            total=data["total"],
        )

    async def _page(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("limit") == 0:
            # The REST API refuses limit=0 (upstream's rule); FileStore answers the total.
            counted: dict[str, Any] = await self._call(
                "POST", path, json={**body, "limit": -1}, idempotent=True
            )
            return {**counted, "items": [], "limit": 0}
        result: dict[str, Any] = await self._call("POST", path, json=body, idempotent=True)
        return result

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | AttemptedRollout | None:
        data = await self._call("GET", f"/rollouts/{_seg(rollout_id, 'rollout')}", idempotent=True)
        return None if data is None else _rollout(data)

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput | Unset = UNSET,
        mode: RolloutMode | Unset | None = UNSET,
        resources_id: str | Unset | None = UNSET,
        status: RolloutStatus | Unset = UNSET,
        config: RolloutConfig | Unset = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> Rollout:
        _refuse_non_finite(config)
        fields = {
            "input": input,
            "mode": mode,
            "resources_id": resources_id,
            "status": status,
            # Upstream's RolloutConfig too (any model: by its field values, as in process).
            "config": config.model_dump(mode="json") if isinstance(config, BaseModel) else config,
            "metadata": metadata,
        }
        body = {k: v for k, v in fields.items() if not isinstance(v, Unset)}
        # Sending a rollout back to the queue is not safe to repeat: a runner may dequeue it
        # between the first request (its answer lost) and the retry, which would queue it again
        # beside the attempt just begun. Every other update sets the same values again.
        requeue = status in ("queuing", "requeuing")
        path = f"/rollouts/{_seg(rollout_id, 'rollout')}"
        data = await self._call("POST", path, json=body, idempotent=not requeue)
        return Rollout.model_validate(data)

    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        return await self.update_rollout(rollout_id, status="cancelled")

    # -- attempts ------------------------------------------------------------------
    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        body = {"sort_by": sort_by, "sort_order": sort_order, "limit": limit, "offset": offset}
        data = await self._page(f"/rollouts/{_seg(rollout_id, 'rollout')}/attempts/search", body)
        return _paginated(data, Attempt)

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        data = await self._call(
            "GET", f"/rollouts/{_seg(rollout_id, 'rollout')}/attempts/latest", idempotent=True
        )
        return None if data is None else Attempt.model_validate(data)

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus | Unset = UNSET,
        worker_id: str | Unset = UNSET,
        last_heartbeat_time: float | Unset = UNSET,
        metadata: dict[str, Any] | Unset | None = UNSET,
    ) -> Attempt:
        # metadata=None is refused by the REST API (a ValueError).
        fields = {
            "status": status,
            "worker_id": worker_id,
            "last_heartbeat_time": last_heartbeat_time,
            "metadata": metadata,
        }
        body = {k: v for k, v in fields.items() if not isinstance(v, Unset)}
        path = f"/rollouts/{_seg(rollout_id, 'rollout')}/attempts/{_seg(attempt_id, 'attempt')}"
        return Attempt.model_validate(await self._call("POST", path, json=body, idempotent=True))

    async def heartbeat(self, rollout_id: str, attempt_id: str) -> bool:
        # A server without the route (upstream's answers 405) is detected once; from then on
        # the heartbeat is an update_attempt(last_heartbeat_time=...) after reading the status.
        if self._heartbeat_route:
            path = f"/rollouts/{_seg(rollout_id, 'rollout')}/attempts/{_seg(attempt_id, 'attempt')}/heartbeat"
            try:
                data = await self._call("POST", path, idempotent=True)
            except (RemoteStoreError, NotFoundError) as err:
                if not _route_missing(err):
                    raise
                if self._heartbeat_route:  # concurrent heartbeats may all have met the 405: say it once
                    self._heartbeat_route = False
                    log.warning(
                        "%s has no heartbeat route (%s): heartbeats become"
                        " update_attempt(last_heartbeat_time) and cancellation is read from the attempt"
                        " and rollout status",
                        self.url,
                        err,
                    )
            else:
                return bool(data["alive"])
        return await heartbeat_by_update(self, rollout_id, attempt_id)

    # -- resources -----------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        _refuse_non_finite(resources, "the resources")
        body = _NAMED.dump_python(_NAMED.validate_python(resources), mode="json")
        return ResourcesUpdate.model_validate(
            await self._call("POST", "/resources", json=body, idempotent=False)
        )

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        _refuse_non_finite(resources, "the resources")
        body = _NAMED.dump_python(_NAMED.validate_python(resources), mode="json")
        data = await self._call(
            "POST", f"/resources/{_id_seg(resources_id, 'resources')}", json=body, idempotent=True
        )
        return ResourcesUpdate.model_validate(data)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        try:  # an id no resources can have is None, as in process ('' is no route to ask)
            check_name_id("resources", resources_id)
        except InvalidIdError:
            return None
        data = await self._call("GET", f"/resources/{_id_seg(resources_id, 'resources')}", idempotent=True)
        return None if data is None else ResourcesUpdate.model_validate(data)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        data = await self._call("GET", "/resources/latest", idempotent=True)
        return None if data is None else ResourcesUpdate.model_validate(data)

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        params = {
            k: v
            for k, v in {
                "resources_id": resources_id,
                "resources_id_contains": resources_id_contains,
                "sort_by": sort_by,
                "sort_order": sort_order,
                "limit": -1 if limit == 0 else limit,
                "offset": offset,
            }.items()
            if v is not None
        }
        data = await self._call("GET", "/resources", params=params, idempotent=True)
        if limit == 0:
            data = {**data, "items": [], "limit": 0}
        return _paginated(data, ResourcesUpdate)

    # -- spans ---------------------------------------------------------------------
    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        body = {"rollout_id": rollout_id, "attempt_id": attempt_id}
        data = await self._call("POST", "/spans/next", json=body, idempotent=False)
        return int(data["sequence_id"])

    async def get_many_span_sequence_ids(
        self, rollout_attempt_ids: Sequence[tuple[str, str]]
    ) -> Sequence[int]:
        return [await self.get_next_span_sequence_id(r, a) for r, a in rollout_attempt_ids]

    async def add_span(self, span: Span) -> Span | None:
        # A span stored by an earlier try whose answer was lost also comes back None.
        data = await self._call("POST", "/spans", json=span.model_dump(mode="json"), idempotent=True)
        return None if data is None else Span.model_validate(data)

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        # One request per SPAN_BATCH spans (agl's /spans/batch); one per span on a server without
        # that route (upstream's), found out once, as for heartbeats.
        stored: list[Span] = []
        for first in range(0, len(spans), SPAN_BATCH):
            chunk = spans[first : first + SPAN_BATCH]
            if self._batch_route:
                body = {"spans": [s.model_dump(mode="json") for s in chunk]}
                try:
                    data = await self._call("POST", "/spans/batch", json=body, idempotent=True)
                except (RemoteStoreError, NotFoundError) as err:
                    if not _route_missing(err):
                        raise
                    self._batch_route = False
                else:
                    stored += [Span.model_validate(d) for d in data]
                    continue
            one_by_one = [await self.add_span(s) for s in chunk]
            stored += [s for s in one_by_one if s is not None]
        return stored

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        if sequence_id is None:
            sequence_id = await self.get_next_span_sequence_id(rollout_id, attempt_id)
        return await self.add_span(
            Span.from_opentelemetry(readable_span, rollout_id, attempt_id, sequence_id)
        )

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: SortOrder = "asc",
    ) -> PaginatedResult[Span]:
        body = {
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "trace_id": trace_id,
            "trace_id_contains": trace_id_contains,
            "span_id": span_id,
            "span_id_contains": span_id_contains,
            "parent_id": parent_id,
            "parent_id_contains": parent_id_contains,
            "name": name,
            "name_contains": name_contains,
            "filter_logic": filter_logic,
            "limit": limit,
            "offset": offset,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        return _paginated(await self._page("/spans/search", body), Span)

    # -- waiting -------------------------------------------------------------------
    async def wait_for_rollouts(
        self, *, rollout_ids: list[str], timeout: float | None = None
    ) -> list[Rollout]:
        # Unlike upstream's client, any timeout is sent as given (upstream caps it at 0.1 s), as
        # FileStore reads it: <= 0 or NaN one look, +inf or None until done. A retry after a lost
        # answer sends the time left, not the whole timeout again.
        ids = list(rollout_ids)
        deadline = None if timeout is None or timeout == math.inf else time.monotonic() + _look_once(timeout)
        margin = self._http.timeout

        def per_try() -> tuple[dict[str, Any], float | None]:
            if deadline is None:
                return {"rollout_ids": ids, "timeout": None}, None
            left = max(deadline - time.monotonic(), 0.0)
            return {"rollout_ids": ids, "timeout": left}, left + margin

        def time_left() -> bool:
            return deadline is None or time.monotonic() < deadline

        data = await self._call(
            "POST", "/waits/rollouts", idempotent=True, per_try=per_try, time_left=time_left
        )
        return _ROLLOUTS.validate_python(data)

    # -- workers -------------------------------------------------------------------
    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: FilterLogic = "and",
        sort_by: str | None = None,
        sort_order: SortOrder = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        body: dict[str, Any] = {
            "worker_id_contains": worker_id_contains,
            "filter_logic": filter_logic,
            "sort_by": sort_by,
            "sort_order": sort_order,
            "limit": limit,
            "offset": offset,
        }
        if status_in is not None:
            body["status_in"] = list(status_in)
        return _paginated(await self._page("/workers/search", body), Worker)

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        data = await self._call("GET", f"/workers/{_id_seg(worker_id, 'worker')}", idempotent=True)
        return None if data is None else Worker.model_validate(data)

    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] | Unset = UNSET) -> Worker:
        if heartbeat_stats is None:
            raise TypeError("heartbeat_stats must be a dict when given, not None")
        body = None if isinstance(heartbeat_stats, Unset) else {"heartbeat_stats": heartbeat_stats}
        data = await self._call(
            "POST", f"/workers/{_id_seg(worker_id, 'worker')}", json=body, idempotent=True
        )
        return Worker.model_validate(data)


def _route_missing(err: Exception) -> bool:
    """The server has no such route: 405, or a 404 that is not one of the store's own
    not-found errors (a web framework's bare "Not Found")."""
    if isinstance(err, RemoteStoreError):
        return err.status == 405
    return type(err) is NotFoundError and str(err) == "Not Found"


def _paginated(data: dict[str, Any], model: type[M]) -> PaginatedResult[M]:
    return PaginatedResult(
        items=[model.model_validate(d) for d in data["items"]],
        limit=data["limit"],
        offset=data["offset"],
        total=data["total"],
    )
