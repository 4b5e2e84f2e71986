"""One small algorithm, run by upstream Agent-lightning's Trainer twice: once on its own
InMemoryLightningStore, once on a FileStore. The outcomes must be the same: each rollout's
status and attempts, its final reward and its spans, per resource version."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

agl = pytest.importorskip("agentlightning")

from opentelemetry import trace as otel_trace  # noqa: E402

from store_fs import FileStore  # noqa: E402

pytestmark = pytest.mark.upstream

MESSAGE, REWARD = "agentlightning.message", "agentlightning.annotation"
# Upstream's decorator and base class (its package is Any to mypy).
upstream_rollout: Callable[[Callable[..., Any]], Any] = agl.rollout
UpstreamAlgorithm: Any = agl.Algorithm

TEMPLATES = ("Answer: {q}", "Think, then answer: {q}", "{q}")
# "flaky" fails its first attempt and is retried; "broken" fails both of its attempts.
TASKS = ("short", "a longer question", "flaky", "broken")
CONFIG = {"max_attempts": 2, "retry_condition": ["failed"]}

Outcome = tuple[int, str, str, float | None, list[str], list[str]]


@upstream_rollout
def scoring_agent(task: str, prompt_template: Any, rollout: Any) -> float:
    """Deterministic: the reward depends on the prompt and the task; some tasks fail."""
    if task == "broken" or (task == "flaky" and rollout.attempt.sequence_id == 1):
        raise RuntimeError(f"{task} failed")
    prompt = prompt_template.format(q=task)
    agl.emit_message(prompt)
    agl.emit_reward({"length": len(prompt) / 100, "words": float(len(prompt.split()))}, primary_key="length")
    return round(len(prompt) / 50, 3)


class Sweep(UpstreamAlgorithm):  # type: ignore[misc]
    """Publishes each template as a new version of one resource, runs every task on it, and
    records what the store says about each rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[Outcome] = []

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        store = self.get_store()
        for template in TEMPLATES:
            update = await store.update_resources(
                "prompts", {"main_prompt": agl.PromptTemplate(template=template, engine="f-string")}
            )
            config = agl.RolloutConfig(**CONFIG)
            ids = [
                (await store.enqueue_rollout(input=task, mode="train", config=config)).rollout_id
                for task in train_dataset
            ]
            await self._wait(store, ids)
            for task, rollout_id in zip(train_dataset, ids, strict=True):
                self.outcomes.append(await self._outcome(store, update.version, task, rollout_id))

    @staticmethod
    async def _wait(store: Any, ids: list[str]) -> None:
        for _ in range(600):
            if len(await store.wait_for_rollouts(rollout_ids=ids, timeout=0.1)) == len(ids):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("rollouts did not finish")

    @staticmethod
    async def _outcome(store: Any, version: int, task: str, rollout_id: str) -> Outcome:
        rollout = await store.get_rollout_by_id(rollout_id)
        attempts = [a.status for a in await store.query_attempts(rollout_id)]
        spans = list(await store.query_spans(rollout_id))
        reward = agl.find_final_reward(spans)
        return version, task, rollout.status, reward, attempts, [s.name for s in spans]


def fit_on(store: Any) -> list[Outcome]:
    algorithm = Sweep()
    trainer = agl.Trainer(
        algorithm=algorithm,
        runner=agl.LitAgentRunner(tracer=agl.OtelTracer(), poll_interval=0.05),
        n_runners=1,
        store=store,
        strategy={"type": "shm", "main_thread": "algorithm"},
    )
    trainer.fit(scoring_agent, train_dataset=list(TASKS))
    return algorithm.outcomes


def test_the_same_algorithm_has_the_same_outcomes_on_both_stores(tmp_path: Path) -> None:
    saved = otel_trace._TRACER_PROVIDER, otel_trace._TRACER_PROVIDER_SET_ONCE
    try:
        upstream = fit_on(agl.InMemoryLightningStore())
        ours = fit_on(FileStore(tmp_path / "s"))
    finally:
        otel_trace._TRACER_PROVIDER, otel_trace._TRACER_PROVIDER_SET_ONCE = saved
    assert ours == upstream
    # And the comparison compared something: every version, retries, failures, rewards.
    assert [o[0] for o in ours] == [v for v in (1, 2, 3) for _ in TASKS]
    by_task = {o[1]: o for o in ours if o[0] == 1}
    assert by_task["short"][2:5] == ("succeeded", 0.26, ["succeeded"])
    assert by_task["flaky"][2:5] == ("succeeded", 0.26, ["failed", "succeeded"])
    assert by_task["broken"][2:5] == ("failed", None, ["failed", "failed"])
    assert by_task["short"][5] == [MESSAGE, REWARD, REWARD]
    rewards_by_version = {v: [o[3] for o in ours if o[0] == v] for v in (1, 2, 3)}
    assert len({tuple(r) for r in rewards_by_version.values()}) == 3  # the template matters
