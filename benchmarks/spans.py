"""Realistic span payloads shared by the benchmarks.

A span is built from a plain dict so that each store under test validates it
with its own model class (ours or upstream's): both accept the same JSON.
"""

from __future__ import annotations

import time
from typing import Any

_PROMPT = (
    "You are a careful assistant that answers questions about a SQL database. "
    "Think step by step, write the query, check it against the schema and answer concisely. "
) * 5
_COMPLETION = (
    "SELECT c.name, COUNT(o.id) AS orders FROM customers c JOIN orders o ON o.customer_id = c.id "
    "WHERE o.created_at >= '2024-01-01' GROUP BY c.name ORDER BY orders DESC LIMIT 10; "
) * 4


def span_attributes(i: int) -> dict[str, Any]:
    """Attributes shaped like an LLM-call span from an OpenTelemetry instrumentation (~2.3 KB)."""
    return {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "Qwen/Qwen2.5-7B-Instruct",
        "gen_ai.response.model": "Qwen/Qwen2.5-7B-Instruct",
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.max_tokens": 1024,
        "gen_ai.usage.prompt_tokens": 412 + i % 50,
        "gen_ai.usage.completion_tokens": 96 + i % 17,
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": _PROMPT,
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": f"Question {i}: which customers ordered most since January?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": _COMPLETION,
        "gen_ai.completion.0.finish_reason": "stop",
        "llm.request.type": "chat",
        "agentlightning.operation": "llm_call",
        "http.status_code": 200,
        "token_ids.prompt": list(range(i, i + 24)),
    }


def span_dict(rollout_id: str, attempt_id: str, seq: int, *, small: bool = False) -> dict[str, Any]:
    """One span as upstream's JSON shape; ``small`` swaps the attributes for a few bytes."""
    trace_id, span_id = f"{seq:032x}", f"{seq:016x}"
    now = time.time()
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": seq,
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_id": None,
        "name": "openai.chat",
        "status": {"status_code": "OK", "description": None},
        "attributes": {"i": seq} if small else span_attributes(seq),
        "events": [],
        "links": [],
        "start_time": now,
        "end_time": now + 0.5,
        "context": {"trace_id": trace_id, "span_id": span_id, "is_remote": False, "trace_state": {}},
        "parent": None,
        "resource": {"attributes": {"service.name": "bench"}, "schema_url": ""},
    }
