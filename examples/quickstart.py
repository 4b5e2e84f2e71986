"""A whole training loop on a directory store, offline, in one command.

An algorithm publishes a prompt template, enqueues tasks and waits; two runner
processes dequeue them, record a span and a reward each, and complete. Then the
algorithm reads the rewards back. Run it twice: the store under runs/ keeps
everything from the first run.

    python examples/quickstart.py [--store runs/quickstart] [--tasks 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time

from store_fs import FileStore, PromptTemplate, Span


def reward_span(rollout_id: str, attempt_id: str, sequence_id: int, value: float) -> Span:
    # Upstream's reward format: an annotation span with agentlightning.reward.<i>.name/value.
    return Span.from_attributes(
        attributes={"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": value},
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        name="agentlightning.annotation",
    )


async def runner(root: str, worker_id: str, stop_after: float) -> None:
    store = FileStore(root)
    deadline = time.monotonic() + stop_after
    while time.monotonic() < deadline:
        attempted = await store.dequeue_rollout(worker_id=worker_id)
        if attempted is None:
            await asyncio.sleep(0.05)
            continue
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        resources = await store.get_resources_by_id(attempted.resources_id or "")
        template = resources.resources["main_prompt"] if resources else None
        assert isinstance(template, PromptTemplate)
        prompt = template.format(any_question=attempted.input)
        seq = await store.get_next_span_sequence_id(rid, aid)
        call = Span.from_attributes(
            attributes={"gen_ai.prompt.0.content": prompt, "gen_ai.completion.0.content": "42"},
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq,
            name="openai.chat.completion",
        )
        await store.add_span(call)
        score = round(len(prompt) % 7 / 7, 3)  # a stand-in for an LLM judge
        await store.add_span(reward_span(rid, aid, await store.get_next_span_sequence_id(rid, aid), score))
        await store.update_attempt(rid, aid, status="succeeded")
        print(f"[{worker_id}] {rid} done, reward {score}", flush=True)


def run_runner(root: str, worker_id: str, stop_after: float) -> None:
    asyncio.run(runner(root, worker_id, stop_after))


async def algorithm(root: str, tasks: int) -> None:
    store = FileStore(root)
    resources = await store.add_resources(
        {"main_prompt": PromptTemplate(template="Answer briefly: {any_question}", engine="f-string")}
    )
    print(f"[Algo] published prompt template {resources.resources_id}")
    queued = [await store.enqueue_rollout(input=f"question {i}", mode="train") for i in range(tasks)]
    print(f"[Algo] queued {', '.join(r.rollout_id for r in queued)}")
    finished = await store.wait_for_rollouts(rollout_ids=[r.rollout_id for r in queued], timeout=60)
    for rollout in finished:
        spans = await store.query_spans(rollout.rollout_id)
        reward = spans[-1].attributes.get("agentlightning.reward.0.value")
        print(f"[Algo] {rollout.rollout_id} {rollout.status}: {len(spans)} spans, final reward {reward}")
    print(f"[Algo] {len(finished)}/{tasks} rollouts finished; store at {root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="runs/quickstart")
    parser.add_argument("--tasks", type=int, default=8)
    args = parser.parse_args()
    FileStore(args.store)  # create it before the runners start
    ctx = mp.get_context("spawn")
    runners = [ctx.Process(target=run_runner, args=(args.store, f"Worker-{i}", 20.0)) for i in range(2)]
    for p in runners:
        p.start()
    try:
        asyncio.run(algorithm(args.store, args.tasks))
    finally:
        for p in runners:
            p.terminate()
            p.join(5)


if __name__ == "__main__":
    main()
