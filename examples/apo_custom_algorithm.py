"""Write your first algorithm: search for the best prompt template, on a file store.

An algorithm tries prompt templates one by one: it publishes each as a resource,
queues a task, waits for a runner to finish it, reads the spans and the reward
back, and finally picks the template with the highest reward. Runners execute an
agent that formats the template, asks an LLM, and has an LLM judge score the
answer; the tracer records both chat completions as spans and the returned score
becomes the rollout's final reward.

Modes (the store is a directory shared by all of them, or an `agl store` URL):

    python examples/apo_custom_algorithm.py runner   # terminal 1: run rollouts as they arrive
    python examples/apo_custom_algorithm.py algo     # terminal 2: the prompt search
    python examples/apo_custom_algorithm.py demo     # both in one command

Offline by default: without OPENAI_API_KEY a local OpenAI-compatible stand-in
(127.0.0.1) answers, and its "judge" gives deterministic scores. With a key the
real API is used (model gpt-4.1-nano, or AGL_MODEL).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import re
import sys
import time
from typing import Any

from openai import AsyncOpenAI

from store_fs import PromptTemplate
from store_fs.agent import rollout
from store_fs.lightning_store import open_store
from store_fs.rewards import find_final_reward
from store_fs.runner_pool import RunnerPool, run_runner_process

TEMPLATES = [
    "You are a helpful assistant. {any_question}",
    "You are a knowledgeable AI. {any_question}",
    "You are a friendly chatbot. {any_question}",
]
TASK = "How many r's are in strawberry?"
DEFAULT_STORE = "runs/apo"
REAL_MODEL = "gpt-4.1-nano"


def llm_settings() -> tuple[str | None, str, str]:
    """(base_url, api_key, model): the real API when a key is set, else the offline stand-in."""
    base_url = os.environ.get("AGL_LLM_BASE_URL")
    if base_url:  # the demo's stand-in, handed to runner processes
        return (
            base_url,
            os.environ.get("AGL_LLM_API_KEY", "sk-offline"),
            os.environ.get("AGL_MODEL", "mock-gpt"),
        )
    return (
        os.environ.get("OPENAI_BASE_URL"),
        os.environ["OPENAI_API_KEY"],
        os.environ.get("AGL_MODEL", REAL_MODEL),
    )


def use_offline_llm() -> bool:
    return not os.environ.get("AGL_LLM_BASE_URL") and not os.environ.get("OPENAI_API_KEY")


def start_offline_llm() -> Any:
    """Start the local stand-in and point this process (and its children) at it."""
    from store_fs.testing.mock_openai import MockOpenAIServer

    server = MockOpenAIServer()
    server.__enter__()
    os.environ["AGL_LLM_BASE_URL"] = server.base_url
    os.environ["AGL_LLM_API_KEY"] = "sk-offline"
    print(f"[LLM] OFFLINE STAND-IN: no OPENAI_API_KEY, using the local mock at {server.base_url}", flush=True)
    return server


def parse_score(text: str) -> float:
    match = re.search(r"\d+(?:\.\d+)?", text)
    return min(max(float(match.group()), 0.0), 1.0) if match else 0.0


@rollout
async def apo_rollout(task: str, prompt_template: PromptTemplate) -> float:
    """Answer with the candidate prompt, then let an LLM judge score the answer in [0, 1]."""
    base_url, api_key, model = llm_settings()
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=1)
    prompt = prompt_template.format(any_question=task)
    reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    answer = reply.choices[0].message.content or ""
    judge = await client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": "Rate how well the answer answers the question, as a score between 0 and 1. "
                f"Reply with the number only.\nQuestion: {task}\nAnswer: {answer}\nScore:",
            }
        ],
    )
    return parse_score(judge.choices[0].message.content or "")


async def wait_for(store: Any, rollout_id: str, seconds: float = 60.0) -> Any:
    """Poll like the tutorial (upstream's HTTP client refuses long waits)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        finished = await store.wait_for_rollouts(rollout_ids=[rollout_id], timeout=0.1)
        if finished:
            return finished[0]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"rollout {rollout_id} did not finish in {seconds:.0f}s: is a runner running?")


async def find_best_prompt(
    store: Any, templates: list[str] = TEMPLATES, task: str = TASK
) -> tuple[str, float]:
    """The tutorial's algorithm: try each template, read rewards back, keep the best."""
    results: list[tuple[str, float]] = []
    for template in templates:
        print(f"[Algo] Updating prompt template to: '{template}'", flush=True)
        await store.add_resources({"main_prompt": PromptTemplate(template=template, engine="f-string")})
        queued = await store.enqueue_rollout(input=task, mode="train")
        print(f"[Algo] Queued task {queued.rollout_id}", flush=True)
        finished = await wait_for(store, queued.rollout_id)
        print(f"[Algo] Received result for {queued.rollout_id}: {finished.status}", flush=True)
        if finished.status != "succeeded":
            raise RuntimeError(f"rollout {queued.rollout_id} {finished.status}")
        spans = list(await store.query_spans(queued.rollout_id))
        for span in spans:
            if "chat.completion" in span.name:
                prompt = span.attributes.get("gen_ai.prompt.0.content", "")
                print(f"[Algo]   span #{span.sequence_id} {span.name}: {str(prompt)[:70]!r}", flush=True)
        reward = find_final_reward(spans)
        if reward is None:
            raise RuntimeError(f"rollout {queued.rollout_id} has no reward span")
        print(f"[Algo] Final reward: {reward}", flush=True)
        results.append((template, reward))
    best = max(results, key=lambda pair: pair[1])
    print(f"[Algo] All results: {results}", flush=True)
    print(f"[Algo] Best prompt: '{best[0]}' with reward {best[1]}", flush=True)
    return best


def make_tracer(kind: str) -> Any:
    if kind == "agentops":
        from store_fs.tracing.agentops_tracer import AgentOpsTracer

        return AgentOpsTracer()
    from store_fs.tracing import OtelTracer

    return OtelTracer()


def run_runner(store: str, tracer: str) -> None:
    if use_offline_llm():
        start_offline_llm()
    print(f"[Runner] Worker-0 waiting for rollouts in {store} (Ctrl-C to stop)", flush=True)
    run_runner_process(
        store, apo_rollout, 0, mp.get_context("spawn").Event(), make_tracer(tracer), {"poll_interval": 0.5}
    )


def run_demo(store: str, tracer: str, runners: int) -> tuple[str, float]:
    server = start_offline_llm() if use_offline_llm() else None
    pool = RunnerPool(
        store,
        apo_rollout,
        n_runners=runners,
        tracer=make_tracer(tracer),
        runner_kwargs={"poll_interval": 0.2},
    )
    try:
        with pool:
            return asyncio.run(find_best_prompt(open_store(store)))
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Search for the best prompt template (Agent-lightning tutorial)."
    )
    parser.add_argument("mode", choices=["runner", "algo", "demo"])
    parser.add_argument(
        "--store", default=os.environ.get("AGL_STORE", DEFAULT_STORE), help="directory or URL"
    )
    parser.add_argument("--tracer", choices=["otel", "agentops"], default="otel")
    parser.add_argument("--runners", type=int, default=2, help="runner processes in demo mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("store_fs").setLevel(logging.INFO)
    if args.mode == "runner":
        run_runner(args.store, args.tracer)
    elif args.mode == "algo":
        asyncio.run(find_best_prompt(open_store(args.store)))
    else:
        run_demo(args.store, args.tracer, args.runners)


if __name__ == "__main__":
    sys.exit(main())
