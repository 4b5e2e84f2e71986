"""Rewards the data views read from upstream's reward formats: odd values, end to end through ``agl data``.

A reward that is NaN or an infinity (AgentOps' JSON text can hold one: Python's json reads
``NaN``) is no reward, in JSON Lines and Parquet alike, so ``ended`` says ``no_reward``. A
reward dimension stored as text holding a number (a non-Python OTLP exporter, ``agl spans
add``) is read as that number, as upstream's pydantic ``RewardDimension`` reads it.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl
from datasets_helpers import make_rollout

from store_fs import FileStore, Span
from store_fs.rewards import ANNOTATION_SPAN_NAME, find_final_reward, get_reward_value


def _store_with_rewards(root: Path, rewards: list[dict[str, Any]]) -> list[str]:
    """One succeeded rollout (two LLM calls) per entry; its last span an annotation with those attributes."""

    async def seed() -> list[str]:
        store = FileStore(root)
        ids = []
        for attributes in rewards:
            rid = await make_rollout(store, reward=None, end=None)
            (attempt,) = await store.query_attempts(rid)
            span = Span.from_attributes(
                attributes=attributes,
                rollout_id=rid,
                attempt_id=attempt.attempt_id,
                sequence_id=100,
                name=ANNOTATION_SPAN_NAME,
                start_time=time.time() + 1,
                end_time=time.time() + 1,
            )
            await store.add_many_spans([span])
            await store.update_attempt(rid, attempt.attempt_id, status="succeeded")
            ids.append(rid)
        store.close()
        return ids

    return asyncio.run(seed())


NAN_TEXT = {"agentops.task.output": '{"type": "reward", "value": NaN}'}
INF_TEXT = {"agentops.task.output": '{"type": "reward", "value": -Infinity}'}


def test_a_non_finite_reward_is_no_reward_in_json_lines_and_parquet(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids = _store_with_rewards(root, [NAN_TEXT, INF_TEXT])
    agl = Agl(root, tmp_path)
    for view in ("triplets", "messages", "rollouts"):
        rows = agl.ok("data", view, "--ended", "any").lines()
        assert {r["rollout_id"] for r in rows} == set(ids)
        assert {(r["final_reward"], r["ended"]) for r in rows} == {(None, "no_reward")}, view
    triplets = agl.ok("data", "triplets", "--ended", "any").lines()
    assert {t["reward"] for t in triplets} == {None}
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "t.parquet"
    agl.ok("data", "triplets", "--ended", "any", "-o", str(out))
    table = pq.read_table(out).select(["final_reward", "reward", "ended"]).to_pylist()
    assert len(table) == 4
    assert all(row == {"final_reward": None, "reward": None, "ended": "no_reward"} for row in table)


@pytest.mark.parametrize(
    "attributes",
    [
        NAN_TEXT,
        INF_TEXT,
        {"agentlightning.reward.0.name": "p", "agentlightning.reward.0.value": "nan"},
        {"agentlightning.reward.0.name": "p", "agentlightning.reward.0.value": float("nan")},
        {"reward": float("-inf")},
        {"reward": "Infinity"},
    ],
)
def test_non_finite_values_are_no_reward_in_every_format(attributes: dict[str, Any]) -> None:
    span = Span.from_attributes(attributes=attributes, rollout_id="ro-1", attempt_id="at-1", sequence_id=1)
    span = span.model_copy(update={"name": ANNOTATION_SPAN_NAME})
    assert get_reward_value(span) is None
    earlier = Span.from_attributes(
        attributes={"agentlightning.reward.0.name": "p", "agentlightning.reward.0.value": 0.25},
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=0,
    )
    # The last reward span's value is no reward: never an earlier span's (found in review: a
    # NaN final reward made an intermediate 0.25 the rollout's final reward).
    assert find_final_reward([earlier, span]) is None
    assert find_final_reward([span, earlier]) == 0.25


def test_a_last_reward_of_nan_is_no_reward_not_the_one_before(tmp_path: Path) -> None:
    """Through the data views and the report too: an earlier 0.8, then a NaN reward."""
    root = tmp_path / "store"

    async def seed() -> str:
        store = FileStore(root)
        rid = await make_rollout(store, reward=0.8, end=None)
        (attempt,) = await store.query_attempts(rid)
        span = Span.from_attributes(
            attributes=dict(NAN_TEXT),
            rollout_id=rid,
            attempt_id=attempt.attempt_id,
            sequence_id=200,  # after make_rollout's reward (100)
            name=ANNOTATION_SPAN_NAME,
            start_time=time.time() + 2,
            end_time=time.time() + 2,
        )
        await store.add_many_spans([span])
        await store.update_attempt(rid, attempt.attempt_id, status="succeeded")
        assert find_final_reward(list(await store.query_spans(rid))) is None
        store.close()
        return rid

    rid = asyncio.run(seed())
    agl = Agl(root, tmp_path)
    for view in ("triplets", "messages", "rollouts"):
        rows = agl.ok("data", view, "--ended", "any").lines()
        assert {(r["rollout_id"], r["final_reward"], r["ended"]) for r in rows} == {(rid, None, "no_reward")}
    agl.ok("report", "-o", str(tmp_path / "r.html"))
    page = (tmp_path / "r.html").read_text()
    assert '"reward":0.8' not in page.replace(" ", "")


def test_a_reward_stored_as_text_is_read_as_its_number(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (rid,) = _store_with_rewards(
        root, [{"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": "0.5"}]
    )
    agl = Agl(root, tmp_path)
    rows = agl.ok("data", "triplets").lines()
    assert [(r["rollout_id"], r["final_reward"], r["ended"]) for r in rows] == [(rid, 0.5, "succeeded")] * 2
    assert [r["reward"] for r in rows] == [None, 0.5]  # the reward follows the second call


TEXT_VALUES = ["0.5", " -2 ", "1e3", "+.5", "7", "high", "", "true", "0x10", "\uff11", "nan", "inf"]


@pytest.mark.upstream
@pytest.mark.parametrize("text", TEXT_VALUES)
def test_text_reward_values_read_as_upstream_reads_them(text: str) -> None:
    pytest.importorskip("agentlightning")
    import importlib

    from agentlightning.types import Span as UpstreamSpan

    upstream_rewards = importlib.import_module("agentlightning.emitter.reward")
    spec = Span.from_attributes(
        attributes={"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": text},
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=1,
        name=ANNOTATION_SPAN_NAME,
    )
    try:
        expected = upstream_rewards.get_reward_value(UpstreamSpan.model_validate(spec.model_dump()))
    except ValueError:  # pydantic's ValidationError: upstream cannot read the text as a number
        expected = None
    if expected is not None and not math.isfinite(expected):
        expected = None  # agl reads no reward from a non-finite value (upstream returns it)
    assert get_reward_value(spec) == expected


@pytest.mark.upstream
@pytest.mark.parametrize("value", [True, False, 1, 0.25], ids=["true", "false", "int", "float"])
def test_a_legacy_reward_attribute_reads_as_upstream_reads_it(value: Any) -> None:
    """A v0.2 ``reward`` attribute holding a bool read as no reward, where upstream (and agl, in
    the AgentOps format) reads True as 1.0 (found by an adversarial pass)."""
    pytest.importorskip("agentlightning")
    import importlib

    from agentlightning.types import Span as UpstreamSpan

    upstream_rewards = importlib.import_module("agentlightning.emitter.reward")
    span = Span.from_attributes(
        attributes={"reward": value},
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=1,
        name=ANNOTATION_SPAN_NAME,
    )
    expected = upstream_rewards.get_reward_value(UpstreamSpan.model_validate(span.model_dump()))
    assert get_reward_value(span) == float(expected)
