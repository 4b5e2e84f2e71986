"""``build_triplets`` equals upstream's ``TracerTraceToTriplet`` on generated span trees.

The tracer-made runs of ``test_datasets_upstream.py`` cover the common shapes; here hypothesis
makes the uncommon ones: spans out of order, a parent missing from the spans, several roots,
spans reported outside their parent's time (the repair), calls under calls and under reward
spans, repeated response ids, agent names from several conventions, rewards before, between and
after calls, attribute groups in upstream's other naming and shapes the adapter cannot read.
Where upstream's adapter raises, agl's raises :class:`TripletError`. A parent missing from the
spans is at most one id: with several, upstream's order of them is chance (a set's).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_fs import Span
from store_fs.datasets import TripletError, build_triplets
from store_fs.rewards import reward_attributes

agl = pytest.importorskip("agentlightning")
from agentlightning.adapter import TracerTraceToTriplet  # noqa: E402
from agentlightning.types import Span as UpstreamSpan  # noqa: E402

pytestmark = pytest.mark.upstream

NAMES = [
    "openai.chat.completion",
    "agent.run",
    "tool.search",
    "agentlightning.annotation",
    "agentlightning.operation",
]

call_attributes = st.fixed_dictionaries(
    {
        "gen_ai.prompt.0.role": st.just("user"),
        "gen_ai.prompt.0.content": st.sampled_from(
            ["hi", '[{"type": "image_url", "image_url": {"url": "u"}}]']
        ),
        "gen_ai.completion.0.content": st.just("yes"),
        "gen_ai.request.model": st.just("m"),
        "prompt_token_ids": st.lists(st.integers(0, 9), max_size=3),
        "response_token_ids": st.lists(st.integers(0, 9), max_size=3),
    },
    optional={
        "gen_ai.response.id": st.sampled_from(["r1", "r2", "r3"]),
        "gen_ai.response.model": st.just("m"),
        "logprobs.content": st.just('[{"token": "yes", "logprob": -0.1}]'),
    },
)
other_attributes = st.one_of(
    st.just({}),
    st.just({"agent.name": "solver"}),
    st.just({"agentops.span.kind": "agent", "operation.name": "planner"}),
    st.just({"executor.id": "exec"}),
    st.just({"agentlightning.operation.name": "agentlightning.reward"}),
    st.builds(reward_attributes, st.sampled_from([0.0, 0.5, 1.0])),
    st.just(
        {"agentlightning.operation.input.messages.0.role": "user", "agentlightning.operation.output.id": "r9"}
    ),
    st.just({"gen_ai.request": "x"}),  # named like a group: the adapter cannot read it
)

span_spec = st.tuples(
    st.sampled_from(NAMES),
    st.one_of(call_attributes, other_attributes),
    st.one_of(st.none(), st.integers(0, 7), st.just(-1)),  # parent: none, an earlier span, missing
    st.integers(0, 8),  # start
    st.one_of(st.integers(0, 4), st.none()),  # duration; none: the span has no end time
)


def _spans(specs: list[Any]) -> list[Span]:
    spans: list[Span] = []
    for i, (name, attributes, parent, start, duration) in enumerate(specs):
        parent_id = None if parent is None or parent >= i else "missing" if parent == -1 else f"s{parent}"
        span = Span.from_attributes(
            attributes=attributes,
            rollout_id="ro-1",
            attempt_id="at-1",
            sequence_id=i + 1,
            name=name,
            start_time=float(start),
            end_time=None if duration is None else float(start + duration),
        )
        spans.append(span.model_copy(update={"span_id": f"s{i}", "parent_id": parent_id}))
    return spans


def _upstream(spans: list[Span]) -> list[dict[str, Any]] | type[Exception]:
    adapter = TracerTraceToTriplet()
    try:
        triplets = adapter.adapt([UpstreamSpan.model_validate(s.model_dump()) for s in spans])
    except Exception:
        return Exception
    return [t.model_dump() for t in triplets]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(span_spec, min_size=1, max_size=8))
def test_triplets_equal_upstreams_adapter_on_generated_trees(specs: list[Any]) -> None:
    spans = _spans(specs)
    expected = _upstream(spans)
    if expected is Exception:
        with pytest.raises(TripletError):
            build_triplets(spans)
    else:
        assert build_triplets(spans) == expected
