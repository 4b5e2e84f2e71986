"""A store for the report tests with every kind of outcome, and what the report should say of it.

``build_rich_store`` makes, under a fake clock, through the public API: three resource versions,
three workers, successes with rewards, failures with error messages, a retry, a timeout, an
unresponsive attempt, a cancelled, a queued and a running rollout, LLM spans with model and
token counts, and one corrupt span line for ``check()`` to find. ``Expected`` holds the numbers
as the builder chose them; the tests also recompute them from the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from store_fs import FakeClock, FileStore, PromptTemplate, RolloutConfig, Span, TraceStatus
from store_fs.rewards import reward_span

START = 1_700_000_000.0
TEMPLATES = (
    "Answer: {q}",
    "Answer briefly: {q}",
    "Answer briefly and exactly: {q}",
)
WORKERS = ("w-a", "w-b", "w-c")
MODEL = "gpt-test"
BAD_ANSWER = "ValueError: bad answer"
RATE_LIMIT = "RateLimitError: slow down"


@dataclass
class Expected:
    """What the builder made, by construction."""

    version_ids: list[str] = field(default_factory=list)
    rewards_by_version: dict[str, list[float]] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, message) -> attempts
    retried: str = ""
    timed_out: str = ""
    unresponsive: str = ""
    best: str = ""
    worst: str = ""
    corrupt_span_file: str = ""


class _Builder:
    def __init__(self, root: Path) -> None:
        self.clock = FakeClock(START)
        self.store = FileStore(root, clock=self.clock, scan_debounce_seconds=0, claim_grace_seconds=5)
        self.expected = Expected()
        self.turn = 0

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.advance(seconds)

    def worker(self) -> str:
        self.turn += 1
        return WORKERS[self.turn % len(WORKERS)]

    async def spans(self, rollout_id: str, attempt_id: str, reward: float | None, i: int) -> None:
        """An agent span with an LLM call inside it, then the reward (if any)."""
        store = self.store
        t0 = self.clock.time()
        seq = await store.get_next_span_sequence_id(rollout_id, attempt_id)
        agent = Span.from_attributes(
            attributes={"agent": "report-test"},
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=seq,
            name="agent.run",
            start_time=t0,
            end_time=t0 + 0.9,
        )
        llm = Span.from_attributes(
            attributes={
                "gen_ai.request.model": MODEL,
                "gen_ai.response.model": MODEL,
                "gen_ai.usage.input_tokens": 100 + i,
                "gen_ai.usage.output_tokens": 20 + i,
            },
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=seq + 1,
            name="openai.chat.completion",
            trace_id=agent.trace_id,
            parent_id=agent.span_id,
            start_time=t0 + 0.1,
            end_time=t0 + 0.6,
            status=TraceStatus(status_code="OK"),
        )
        await store.add_many_spans([agent, llm])
        if reward is not None:
            seq = await store.get_next_span_sequence_id(rollout_id, attempt_id)
            span = reward_span(
                reward, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq, now=t0 + 0.95
            )
            await store.add_span(span)

    async def run_one(self, resources_id: str, outcomes: list[tuple[str, float | None, str | None]]) -> str:
        """One rollout whose attempts end as ``outcomes`` says: (status, reward, error) each."""
        config = RolloutConfig(max_attempts=len(outcomes), retry_condition=["failed"])
        rollout = await self.store.enqueue_rollout(
            input={"q": "2+2?"}, resources_id=resources_id, config=config
        )
        for status, reward, error in outcomes:
            self.tick(0.5)
            attempted = await self.store.dequeue_rollout(worker_id=self.worker())
            assert attempted is not None
            assert attempted.rollout_id == rollout.rollout_id
            aid = attempted.attempt.attempt_id
            self.tick(0.2)
            await self.spans(rollout.rollout_id, aid, reward, self.turn)
            self.tick(1.0 + 0.1 * self.turn)
            metadata = {"error": error} if error else None
            await self.store.update_attempt(rollout.rollout_id, aid, status=status, metadata=metadata)  # type: ignore[arg-type]
            if status != "succeeded":
                key = ("failed", error or "")
                self.expected.failures[key] = self.expected.failures.get(key, 0) + 1
        final_reward = outcomes[-1][1]
        if final_reward is not None:
            self.expected.rewards_by_version[resources_id].append(final_reward)
        return rollout.rollout_id

    async def expire(self, config: RolloutConfig, worker: str) -> str:
        """A rollout whose only attempt the reaper expires (timeout or unresponsive)."""
        rollout = await self.store.enqueue_rollout(input={"q": "slow"}, config=config)
        attempted = await self.store.dequeue_rollout(worker_id=worker)
        assert attempted is not None
        assert attempted.rollout_id == rollout.rollout_id
        self.tick(30)
        self.store.reap()
        return rollout.rollout_id

    async def build(self) -> Expected:
        store, exp = self.store, self.expected
        for template in TEMPLATES:
            update = await store.add_resources(
                {"main_prompt": PromptTemplate(template=template, engine="f-string")}
            )
            exp.version_ids.append(update.resources_id)
            exp.rewards_by_version[update.resources_id] = []
            self.tick()
        v1, v2, v3 = exp.version_ids
        for reward in (0.2, 0.3, 0.4, 0.1):
            await self.run_one(v1, [("succeeded", reward, None)])
        for reward in (0.6, 0.7, 0.8):
            await self.run_one(v2, [("succeeded", reward, None)])
        await self.run_one(v2, [("failed", None, BAD_ANSWER)])
        exp.best = await self.run_one(v3, [("succeeded", 0.95, None)])
        for reward in (0.9, 0.5):
            await self.run_one(v3, [("succeeded", reward, None)])
        exp.retried = await self.run_one(v3, [("failed", None, RATE_LIMIT), ("succeeded", 0.85, None)])
        await self.run_one(v3, [("failed", None, BAD_ANSWER)])
        exp.worst = await self.run_one(v1, [("succeeded", 0.05, None)])
        exp.timed_out = await self.expire(RolloutConfig(timeout_seconds=5), "w-c")
        exp.unresponsive = await self.expire(RolloutConfig(unresponsive_seconds=5), "w-b")
        exp.failures[("timeout", "")] = 1
        exp.failures[("unresponsive", "")] = 1
        cancelled = await store.enqueue_rollout(input={"q": "never"})
        await store.cancel_rollout(cancelled.rollout_id)
        exp.failures[("cancelled", "")] = 1
        await store.enqueue_rollout(input={"q": "later"})  # stays queued
        self.tick()
        running = await store.dequeue_rollout(worker_id="w-a")
        assert running is not None
        await self.spans(running.rollout_id, running.attempt.attempt_id, None, 99)
        self.tick()
        exp.corrupt_span_file = self._corrupt_one_span_file(exp.best)
        rollouts = await store.query_rollouts()
        exp.by_status = {}
        for rollout in rollouts:
            exp.by_status[rollout.status] = exp.by_status.get(rollout.status, 0) + 1
        return exp

    def _corrupt_one_span_file(self, rollout_id: str) -> str:
        """A complete line that does not parse, appended to a rollout's span file."""
        path = next((self.store.root / "rollouts").glob(f"*/{rollout_id}/attempts/*/spans.*.jsonl"))
        with open(path, "ab") as f:
            f.write(b'{"not a span": \n')
        return str(path)


def build_rich_store(root: Path) -> tuple[FileStore, Expected]:
    builder = _Builder(root)
    expected = asyncio.run(builder.build())
    return builder.store, expected
