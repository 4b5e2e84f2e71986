"""Request bodies and query parameters of the v1 REST API (docs/behaviour.md §9.2/§9.3).

Field names and defaults follow upstream's wire format. ``sort_order`` and
``filter_logic`` are plain strings here so that a bad value is the documented 400
(checked by :func:`check_page`) rather than a 422.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from store_fs.models import (
    UNSET,
    AttemptStatus,
    EnqueueRolloutRequest,
    NamedResources,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    Span,
    TaskInput,
    WorkerStatus,
)

__all__ = [
    "LIST_PARAMS",
    "NAMED_RESOURCES",
    "AttemptQuery",
    "AttemptUpdateBody",
    "BadRequest",
    "DequeueBody",
    "EnqueueBody",
    "EnqueueItem",
    "NextSequenceBody",
    "ResourcesQuery",
    "RolloutQuery",
    "RolloutUpdateBody",
    "SpanBatchBody",
    "SpanQuery",
    "StartAttemptBody",
    "StartRolloutBody",
    "WaitBody",
    "WorkerQuery",
    "WorkerUpdateBody",
    "check_page",
    "optional_or_unset",
    "required_or_unset",
]

NAMED_RESOURCES: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)


class BadRequest(Exception):
    """The caller's mistake, found before the store is called: answered ``status`` (400 unless
    said) with ``detail``."""

    def __init__(self, detail: str, *, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class EnqueueItem(EnqueueRolloutRequest):
    """An enqueue request plus agl's optional per-item idempotency key."""

    idempotency_key: str | None = None

    def request(self) -> EnqueueRolloutRequest:
        return EnqueueRolloutRequest(
            input=self.input,
            mode=self.mode,
            resources_id=self.resources_id,
            config=self.config,
            metadata=self.metadata,
        )


class EnqueueBody(BaseModel):
    rollouts: list[EnqueueItem]


class SpanBatchBody(BaseModel):
    """agl addition (``POST /spans/batch``): many spans in one request, stored as ``add_many_spans``."""

    spans: list[Span]


class DequeueBody(BaseModel):
    limit: int = 1
    worker_id: str | None = None


class StartRolloutBody(BaseModel):
    input: TaskInput
    mode: RolloutMode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None
    worker_id: str | None = None


class StartAttemptBody(BaseModel):
    worker_id: str | None = None


class RolloutUpdateBody(BaseModel):
    """Absent keys mean "leave unchanged" (see ``model_fields_set``)."""

    input: TaskInput = None
    mode: RolloutMode | None = None
    resources_id: str | None = None
    status: RolloutStatus | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


class AttemptUpdateBody(BaseModel):
    status: AttemptStatus | None = None
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] | None = None


class WorkerUpdateBody(BaseModel):
    heartbeat_stats: dict[str, Any] | None = None


class NextSequenceBody(BaseModel):
    rollout_id: str
    attempt_id: str


class WaitBody(BaseModel):
    rollout_ids: list[str]
    timeout: float | None = None


class _Page(BaseModel):
    limit: int = -1
    offset: int = 0
    sort_by: str | None = None
    sort_order: str = "asc"


class RolloutQuery(_Page):
    status_in: list[RolloutStatus] | None = None
    rollout_id_in: list[str] | None = None
    rollout_id_contains: str | None = None
    filter_logic: str = "and"


class AttemptQuery(_Page):
    sort_by: str | None = "sequence_id"


class ResourcesQuery(_Page):
    resources_id: str | None = None
    resources_id_contains: str | None = None


class WorkerQuery(_Page):
    status_in: list[WorkerStatus] | None = None
    worker_id_contains: str | None = None
    filter_logic: str = "and"


class SpanQuery(_Page):
    rollout_id: str
    attempt_id: str | None = None
    trace_id: str | None = None
    trace_id_contains: str | None = None
    span_id: str | None = None
    span_id_contains: str | None = None
    parent_id: str | None = None
    parent_id_contains: str | None = None
    name: str | None = None
    name_contains: str | None = None
    filter_logic: str = "and"
    sort_by: str | None = "sequence_id"


# Query-string keys that may repeat and always form a list.
LIST_PARAMS = frozenset({"status_in", "rollout_id_in"})


# A page's limit and offset as JSON holds them: the page echoes its limit, and a limit or offset
# of 2**64 (upstream answers it) failed to encode after the query ran. No store reaches them.
_MAX_PAGE = 2**63 - 1


def check_page(query: _Page, target: type[BaseModel]) -> None:
    """Upstream's 400 checks of list/search requests, made before the store is called; a
    limit or offset past 64 bits is taken as the largest one (no store holds that many)."""
    query.limit, query.offset = min(query.limit, _MAX_PAGE), min(query.offset, _MAX_PAGE)
    if query.sort_by is not None and query.sort_by not in target.model_fields:
        allowed = ", ".join(target.model_fields)
        raise BadRequest(f"Invalid sort_by: {query.sort_by}, allowed fields are: {allowed}")
    if query.sort_order not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort_order: {query.sort_order}, allowed values are: asc, desc")
    if query.limit == 0 or query.limit < -1:
        raise BadRequest("Limit must be greater than 0 or -1 for no limit")
    if query.offset < 0:
        raise BadRequest("Offset must be greater than or equal to 0")
    logic = getattr(query, "filter_logic", "and")
    if logic not in ("and", "or"):
        raise BadRequest(f"Invalid filter_logic: {logic}, allowed values are: and, or")


def required_or_unset(body: BaseModel, name: str) -> Any:
    """The field's value when the key was sent (explicit null is a 400), else ``UNSET``."""
    if name not in body.model_fields_set:
        return UNSET
    value = getattr(body, name)
    if value is None:
        raise BadRequest(f"{name} is invalid; it cannot be a null value.")
    return value


def optional_or_unset(body: BaseModel, name: str) -> Any:
    """The field's value (null allowed) when the key was sent, else ``UNSET``."""
    return getattr(body, name) if name in body.model_fields_set else UNSET
