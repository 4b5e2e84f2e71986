"""Rollouts with LLM-call spans made through the store API, for the data-view and prune tests.

A rollout made here has one attempt with ``calls`` chat-completion spans shaped like the tracer's
(``gen_ai.*`` attributes, token ids) under an agent span, and a reward span when ``reward`` is
given; it ends as ``end`` says (an attempt status, ``cancelled``, or ``None`` to leave it running).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

from store_fs import FileStore, Span, TraceStatus
from store_fs.models import OtelResource, SpanContext
from store_fs.rewards import reward_span


def _span(
    rollout_id: str, attempt_id: str, seq: int, name: str, attributes: dict[str, Any], parent: str | None
) -> Span:
    trace_id, span_id = "ab" * 16, secrets.token_hex(8)
    now = time.time() + seq * 0.001
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent,
        name=name,
        status=TraceStatus(status_code="OK"),
        attributes=attributes,
        events=[],
        links=[],
        start_time=now,
        end_time=now + 0.0005,
        context=SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_state={}),
        parent=None,
        resource=OtelResource(attributes={}, schema_url=""),
    )


def llm_attributes(question: str, answer: str, call: int) -> dict[str, Any]:
    return {
        "gen_ai.request.model": "mock-gpt",
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": question,
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": answer,
        "gen_ai.response.id": f"chatcmpl-{secrets.token_hex(4)}-{call}",
        "prompt_token_ids": list(question.encode()),
        "response_token_ids": list(answer.encode()),
    }


async def make_rollout(
    store: FileStore,
    *,
    question: str = "what is 2+2?",
    calls: int = 2,
    reward: float | None = 1.0,
    end: str | None = "succeeded",
    resources_id: str | None = None,
    mode: Any = "train",
    idempotency_key: str | None = None,
) -> str:
    """A rollout with one attempt and spans; returns its id."""
    rollout = await store.enqueue_rollout(
        input={"q": question}, mode=mode, resources_id=resources_id, idempotency_key=idempotency_key
    )
    rid = rollout.rollout_id
    attempted = await store.start_attempt(rid, worker_id="w-test")
    aid = attempted.attempt.attempt_id
    agent = _span(rid, aid, 1, "agent.run", {"agent.name": "solver"}, None)
    spans = [agent]
    for call in range(calls):
        attributes = llm_attributes(f"{question} (call {call})", f"answer {call}", call)
        spans.append(_span(rid, aid, 2 + call, "openai.chat.completion", attributes, agent.span_id))
    spans[0] = spans[0].model_copy(update={"end_time": (spans[-1].end_time or 0.0) + 0.001})
    if reward is not None:
        spans.append(
            reward_span(reward, rollout_id=rid, attempt_id=aid, sequence_id=100, now=time.time() + 1)
        )
    await store.add_many_spans(spans)
    if end == "cancelled":
        await store.cancel_rollout(rid)
    elif end is not None:
        await store.update_attempt(rid, aid, status=end)  # type: ignore[arg-type]
    return rid


def store_with_one_rollout(root: Path) -> None:
    """A store at ``root`` holding one finished rollout of :func:`make_rollout`."""

    async def seed() -> None:
        store = FileStore(root)
        await make_rollout(store)
        store.close()

    asyncio.run(seed())
