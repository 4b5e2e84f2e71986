"""Reading rollouts into the report's compact rows, through the public store API.

A report of a big store must not hold every record and span in memory: each rollout is
reduced, as soon as it is read, to a :class:`RolloutRow` (status, times, final reward, span
and LLM-call counts, and its attempts as :class:`AttemptRow`). Rows are small, picklable
and independent of the models, so they can be made by worker processes and merged by the
caller. This module defines the rows as the public API gives them (:func:`scan_rollout`: a
record read, a span read and, when retried, an attempts query); the report reads most rollouts
faster, straight from their files, into the same rows (:mod:`store_fs.report.report_fastscan`),
and comes here for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store_fs.models import Attempt, AttemptedRollout, Rollout, Span
from store_fs.rewards import find_final_reward

if TYPE_CHECKING:
    from store_fs._disk.check import Problem
    from store_fs.store import FileStore

__all__ = [
    "AttemptRow",
    "RolloutRow",
    "SpanDigest",
    "check_alone",
    "digest_spans",
    "is_llm_span",
    "llm_details",
    "scan_page",
    "scan_rollout",
    "set_verdict_times",
]

_INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
_MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model")


@dataclass(slots=True)
class AttemptRow:
    """One attempt as the report needs it."""

    rollout_id: str
    sequence_id: int
    attempt_id: str
    worker_id: str | None
    status: str
    start_time: float
    end_time: float | None
    last_heartbeat_time: float | None
    error: str | None
    #: For an attempt the reaper expired (timeout, unresponsive): about when that was decided (the
    #: next attempt's start, or the rollout's end). The record keeps no end time for it.
    verdict_time: float | None = None

    @property
    def last_seen(self) -> float:
        """When the attempt was last known to be doing something."""
        return self.end_time or self.last_heartbeat_time or self.start_time


@dataclass(slots=True)
class RolloutRow:
    """One rollout as the report needs it: no input, no spans, only what is counted or drawn."""

    rollout_id: str
    status: str
    mode: str | None
    resources_id: str | None
    start_time: float
    end_time: float | None
    reward: float | None = None
    spans: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    attempts: list[AttemptRow] = field(default_factory=list)

    @property
    def finish_time(self) -> float | None:
        """When the rollout reached a final status (None while it has not)."""
        return self.end_time if self.status in ("succeeded", "failed", "cancelled") else None


@dataclass(slots=True)
class SpanDigest:
    reward: float | None = None
    spans: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def _int_attr(attributes: dict[str, Any], keys: Sequence[str]) -> int | None:
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


def is_llm_span(span: Span) -> bool:
    """A span of an LLM call: OpenTelemetry's ``gen_ai.*`` conventions, or a chat completion name."""
    attributes = span.attributes
    return any(k in attributes for k in _MODEL_KEYS) or "chat.completion" in span.name


def llm_details(span: Span) -> tuple[str | None, int | None, int | None]:
    """(model, input tokens, output tokens) of an LLM span, each None when not recorded."""
    model = next((str(span.attributes[k]) for k in _MODEL_KEYS if k in span.attributes), None)
    return model, _int_attr(span.attributes, _INPUT_TOKENS), _int_attr(span.attributes, _OUTPUT_TOKENS)


def digest_spans(spans: Sequence[Span]) -> SpanDigest:
    """The final reward (docs/behaviour.md §11.2) and the counts of a rollout's spans."""
    digest = SpanDigest(reward=find_final_reward(spans), spans=len(spans))
    for span in spans:
        if is_llm_span(span):
            _model, tokens_in, tokens_out = llm_details(span)
            digest.llm_calls += 1
            digest.input_tokens += tokens_in or 0
            digest.output_tokens += tokens_out or 0
    return digest


def _error_of(attempt: Attempt) -> str | None:
    """The error message a runner or ``agl fail --error`` kept in the attempt's metadata."""
    metadata = attempt.metadata
    if isinstance(metadata, dict):
        error = metadata.get("error")
        if error is not None:
            return str(error)
    return None


def attempt_row(attempt: Attempt) -> AttemptRow:
    return AttemptRow(
        rollout_id=attempt.rollout_id,
        sequence_id=attempt.sequence_id,
        attempt_id=attempt.attempt_id,
        worker_id=attempt.worker_id,
        status=attempt.status,
        start_time=attempt.start_time,
        end_time=attempt.end_time,
        last_heartbeat_time=attempt.last_heartbeat_time,
        error=_error_of(attempt),
    )


def set_verdict_times(row: RolloutRow) -> None:
    """Give each attempt the reaper expired without an end time its :attr:`AttemptRow.verdict_time`."""
    for i, attempt in enumerate(row.attempts):
        if attempt.status in ("timeout", "unresponsive") and attempt.end_time is None:
            following = row.attempts[i + 1].start_time if i + 1 < len(row.attempts) else row.end_time
            attempt.verdict_time = following


async def scan_rollout(store: FileStore, rollout: Rollout | AttemptedRollout) -> RolloutRow:
    """The row of one rollout: its attempts (all of them only when it was retried) and spans."""
    row = RolloutRow(
        rollout_id=rollout.rollout_id,
        status=rollout.status,
        mode=rollout.mode,
        resources_id=rollout.resources_id,
        start_time=rollout.start_time,
        end_time=rollout.end_time,
    )
    if not isinstance(rollout, AttemptedRollout):
        return row  # never dequeued: no attempts, no spans
    latest = rollout.attempt
    attempts = [latest] if latest.sequence_id == 1 else list(await store.query_attempts(rollout.rollout_id))
    row.attempts = [attempt_row(a) for a in attempts]
    set_verdict_times(row)
    spans = list(await store.query_spans(rollout.rollout_id))
    digest = digest_spans(spans)
    # The latest attempt's reward (see _span_digest.digest_attempts), its spans' counts all.
    row.reward = find_final_reward([s for s in spans if s.attempt_id == latest.attempt_id])
    row.spans = digest.spans
    row.llm_calls = digest.llm_calls
    row.input_tokens = digest.input_tokens
    row.output_tokens = digest.output_tokens
    return row


async def scan_page(store: FileStore, offset: int, limit: int) -> list[RolloutRow]:
    """Rows of the rollouts ``offset .. offset+limit`` in the store's default order (oldest first;
    ``limit=-1``: to the end)."""
    page = await store.query_rollouts(limit=limit, offset=offset)
    return [await scan_rollout(store, rollout) for rollout in page.items]


def check_alone(root: str) -> list[Problem]:
    """``FileStore.check()`` through a store of its own (in a worker process, beside the pages)."""
    from store_fs.store import FileStore

    store = FileStore(Path(root), create=False)
    try:
        return store.check()
    finally:
        store.close()
