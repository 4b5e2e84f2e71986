"""A prompt search written against upstream Agent-lightning 0.3's API, on an agl FileStore.

This is the shape of upstream's "write your first algorithm" tutorial: an algorithm publishes
prompt templates as resources, enqueues a task for each, waits, reads the spans back and keeps
the template whose rollout earned the highest reward; a runner executes an ``@agl.rollout``
agent that asks an LLM and lets an LLM judge score the answer. Everything below is upstream's
API (``import agentlightning as agl``) except ONE line, in ``make_store``: the store is a
directory (``FileStore``) instead of ``agl.LightningStoreClient(...)`` or
``agl.InMemoryLightningStore()``. See docs/migrating.md.

Needs upstream installed (``pip install -e '.[upstream]'``). Modes, sharing the directory:

    python examples/upstream_first_algorithm.py runner   # terminal 1: upstream's runner
    python examples/upstream_first_algorithm.py algo     # terminal 2: the algorithm
    python examples/upstream_first_algorithm.py demo     # upstream's Trainer runs both

Offline by default: without OPENAI_API_KEY a local OpenAI-compatible stand-in (127.0.0.1)
answers and its "judge" gives deterministic scores. With a key the real API is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from typing import Any

# Upstream's import pulls in LiteLLM, which otherwise spends seconds trying to download its model
# price list (this example runs offline).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import agentlightning as agl
from openai import AsyncOpenAI

from store_fs import FileStore

CANDIDATES = [
    "You are a helpful assistant. {any_question}",
    "You are a knowledgeable AI. {any_question}",
    "You are a friendly chatbot. {any_question}",
]
QUESTION = "How many r's are in strawberry?"


def make_store(path: str) -> agl.LightningStore:
    return FileStore(path)  # the one line that differs from upstream: a directory, no server


# -- the agent ---------------------------------------------------------------------------------


def _llm() -> tuple[AsyncOpenAI, str]:
    client = AsyncOpenAI(base_url=os.environ.get("OPENAI_BASE_URL"), max_retries=1)
    return client, os.environ.get("AGL_MODEL", "gpt-4.1-nano")


def _score(text: str) -> float:
    found = re.search(r"\d+(?:\.\d+)?", text)
    return min(max(float(found.group()), 0.0), 1.0) if found else 0.0


@agl.rollout
async def prompt_agent(task: str, prompt_template: agl.PromptTemplate) -> float:
    """Answer with the candidate prompt; an LLM judge's score is the reward."""
    client, model = _llm()
    async with client:
        question = prompt_template.format(any_question=task)
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}]
        )
        answer = reply.choices[0].message.content or ""
        agl.emit_message(f"answer: {answer[:80]}")
        verdict = await client.chat.completions.create(
            model=model,
            messages=[
                {
                    "role": "user",
                    "content": f"Score the answer from 0 to 1; reply with the number.\n"
                    f"Question: {task}\nAnswer: {answer}\nScore:",
                }
            ],
        )
    return _score(verdict.choices[0].message.content or "")


# -- the algorithm -----------------------------------------------------------------------------


async def _finished(store: agl.LightningStore, rollout_id: str) -> agl.Rollout:
    for _ in range(1200):
        done = await store.wait_for_rollouts(rollout_ids=[rollout_id], timeout=0.1)
        if done:
            return done[0]
        await asyncio.sleep(0.1)
    raise TimeoutError(f"rollout {rollout_id} did not finish: is a runner running?")


@agl.algo
async def best_prompt_search(*, store: agl.LightningStore) -> None:
    """Try every candidate template; print the one with the highest final reward."""
    scores: list[tuple[float, str]] = []
    for template in CANDIDATES:
        published = await store.add_resources(
            {"main_prompt": agl.PromptTemplate(template=template, engine="f-string")}
        )
        rollout = await store.enqueue_rollout(
            input=QUESTION, mode="train", resources_id=published.resources_id
        )
        print(f"[Algo] {rollout.rollout_id} queued with '{template}'", flush=True)
        finished = await _finished(store, rollout.rollout_id)
        spans = await store.query_spans(rollout.rollout_id)
        reward = agl.find_final_reward(spans)
        names = ", ".join(span.name for span in spans)
        print(f"[Algo] {rollout.rollout_id} {finished.status}: reward {reward} (spans: {names})", flush=True)
        if reward is not None:
            scores.append((reward, template))
    if not scores:
        raise RuntimeError("no rollout produced a reward")
    reward, template = max(scores)
    print(f"[Algo] Best prompt: '{template}' with reward {reward}", flush=True)


# -- entry points ------------------------------------------------------------------------------


async def run_runner(store: agl.LightningStore) -> None:
    runner = agl.LitAgentRunner(tracer=agl.OtelTracer(), poll_interval=0.5)
    with runner.run_context(agent=prompt_agent, store=store):
        await runner.iter()


def run_demo(store: agl.LightningStore, runners: int) -> None:
    # Runner processes open the directory themselves: upstream's store server is not needed
    # (managed_store=False). Leave the strategy out to run them through that server instead.
    trainer = agl.Trainer(
        algorithm=best_prompt_search,
        runner=agl.LitAgentRunner(tracer=agl.OtelTracer(), poll_interval=0.2),
        store=store,
        strategy=agl.ClientServerExecutionStrategy(n_runners=runners, managed_store=False),
    )
    trainer.fit(prompt_agent)


def offline_llm() -> Any:
    """Without an API key: start the local stand-in and point the OpenAI client at it."""
    if os.environ.get("OPENAI_API_KEY"):
        return None
    from store_fs.testing.mock_openai import MockOpenAIServer

    server = MockOpenAIServer().__enter__()
    os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-offline", AGL_MODEL="mock-gpt")
    print(f"[LLM] OFFLINE STAND-IN: no OPENAI_API_KEY, using the local mock at {server.base_url}", flush=True)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="Prompt search on upstream's API over a FileStore.")
    parser.add_argument("mode", choices=["runner", "algo", "demo"])
    parser.add_argument("--store", default=os.environ.get("AGL_STORE", "runs/upstream-first-algorithm"))
    parser.add_argument("--runners", type=int, default=2, help="demo: runner processes")
    args = parser.parse_args()
    server = offline_llm()
    try:
        store = make_store(args.store)
        if args.mode == "runner":
            asyncio.run(run_runner(store))
        elif args.mode == "algo":
            best_prompt_search.set_store(store)
            asyncio.run(best_prompt_search.run())
        else:
            run_demo(store, args.runners)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
