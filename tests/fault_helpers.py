"""Faults for the runner tests: stores whose calls fail or lag, FileStore writes that fail,
agents that emit rewards or get stuck, and a runner driven in the test's own loop.

Agents here are module-level so ``agl run fault_helpers:NAME`` (with ``tests/`` on
``PYTHONPATH``) can load them in runner processes.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import inspect
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from store_fs import PromptTemplate, RemoteStoreError
from store_fs._disk import fsio
from store_fs.agent import rollout
from store_fs.emitter import emit_message, emit_reward
from store_fs.models import NamedResources, Span
from store_fs.rewards import get_reward_value
from store_fs.runner import LitAgentRunner
from store_fs.tracing.tracer import OtelTracer

PROMPT: NamedResources = {"main_prompt": PromptTemplate(template="Q: {any_question}", engine="f-string")}
SPAN_METHODS = (
    "get_next_span_sequence_id",
    "get_many_span_sequence_ids",
    "add_span",
    "add_many_spans",
    "export_otlp",
)
BODY = "agentlightning.message.body"
# The calls a runner makes to the store after the agent returned (and to look for work).
STORE_CALLS = (
    "update_attempt",
    "heartbeat",
    "get_rollout_by_id",
    "get_latest_attempt",
    "dequeue_rollout",
    "dequeue_many_rollouts",  # what agl's runner dequeues with
    "update_worker",
    *SPAN_METHODS,
)


def eio(name: str) -> Exception:
    return OSError(errno.EIO, f"injected I/O error in {name}")


def unreachable(name: str) -> Exception:
    """What the HTTP client raises when the server cannot be reached."""
    return RemoteStoreError(f"POST /{name}: ConnectError: [Errno 111] Connection refused")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FaultyStore:
    """A store whose chosen async methods lag (random delays) or fail (``fault`` says how).

    ``fault(name, args)`` returns the exception to raise for this call, or None to let it
    through; everything else is the wrapped store's.
    """

    def __init__(
        self,
        inner: Any,
        *,
        methods: Iterable[str] = SPAN_METHODS,
        max_delay: float = 0.0,
        seed: int | None = None,
        fault: Callable[[str, tuple[Any, ...]], Exception | None] | None = None,
    ) -> None:
        self.inner = inner
        self.methods = set(methods)
        self.max_delay = max_delay
        self.rng = random.Random(seed)
        self.fault = fault
        self.calls: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.methods or not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if self.max_delay:
                await asyncio.sleep(self.rng.uniform(0, self.max_delay))
            err = self.fault(name, args) if self.fault is not None else None
            if err is not None:
                self.failures[name] += 1
                raise err
            return await attr(*args, **kwargs)

        return call


class DiskFaults:
    """Every FileStore write in this process (append, rename, link, create) raises EIO while
    ``failing`` is set; reads are untouched."""

    NAMES = (
        "append",
        "move",
        "publish",
        "publish_link",
        "publish_symlink",
        "create_exclusive",
        "create_empty",
        "make_dirs",
        "open_making_dirs",
    )
    # Record revisions are staged, linked and renamed onto rollout.json through fsio.Staged.
    STAGED = ("__init__", "link", "rename_onto")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = False
        self.injected = 0
        for name in self.NAMES:
            monkeypatch.setattr(fsio, name, self._wrap(getattr(fsio, name)))
        for name in self.STAGED:
            monkeypatch.setattr(fsio.Staged, name, self._wrap(getattr(fsio.Staged, name)))

    def _wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.failing:
                self.injected += 1
                raise OSError(errno.EIO, f"injected I/O error in fsio.{func.__name__}")
            return func(*args, **kwargs)

        return wrapper


class Outage:
    """Makes a FaultyStore's calls fail while ``down``; a hook starts the outage when the agent
    is done, so its outcome is computed during the outage."""

    def __init__(self, seconds: float, error: Callable[[str], Exception] = eio) -> None:
        self.down = False
        self.seconds = seconds
        self.error = error

    def fault(self, name: str, args: tuple[Any, ...]) -> Exception | None:
        return self.error(name) if self.down else None

    async def on_trace_end(self, **kwargs: Any) -> None:
        self.down = True
        asyncio.get_running_loop().call_later(self.seconds, self.end)

    def end(self) -> None:
        self.down = False


class FileHook:
    """A hook that appends the name of each hook called to a file: it works in runner processes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _note(self, name: str) -> None:
        with open(self.path, "a") as out:
            out.write(name + "\n")

    async def on_rollout_start(self, **kwargs: Any) -> None:
        self._note("on_rollout_start")

    async def on_trace_start(self, **kwargs: Any) -> None:
        self._note("on_trace_start")

    def on_trace_end(self, **kwargs: Any) -> None:  # sync hooks are called too
        self._note("on_trace_end")

    async def on_rollout_end(self, **kwargs: Any) -> None:
        self._note("on_rollout_end")


def quick_runner(**kwargs: Any) -> LitAgentRunner:
    """A runner with test-sized intervals and no OpenAI instrumentation."""
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("heartbeat_seconds", 0.1)
    kwargs.setdefault("interval_jitter", 0.0)
    kwargs.setdefault("retry_cap_seconds", 0.5)
    tracer = kwargs.pop("tracer", None) or OtelTracer(instrument_openai=False)
    return LitAgentRunner(tracer=tracer, **kwargs)


async def drain_queue(runner: LitAgentRunner, agent: Any, store: Any, n: int, timeout: float = 60) -> None:
    """Run ``n`` rollouts of the queue with ``runner``, then return."""
    runner.max_rollouts = n
    with runner.run_context(agent=agent, store=store):
        await asyncio.wait_for(runner.iter(), timeout)


async def wait_for_status(store: Any, rollout_id: str, statuses: Iterable[str], timeout: float = 20) -> str:
    """Poll until the rollout's status is one of ``statuses``; returns it (or fails the test)."""
    wanted = set(statuses)
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        got = await store.get_rollout_by_id(rollout_id)
        status = got.status if got is not None else None
        if status in wanted:
            return str(status)
        await asyncio.sleep(0.05)
    raise AssertionError(f"rollout {rollout_id} still {status}, not {sorted(wanted)}, after {timeout} s")


def rewards_of(spans: Iterable[Span]) -> list[float]:
    """The reward values of the spans, in the order given."""
    return [value for value in (get_reward_value(s) for s in spans) if value is not None]


@contextmanager
def captured(logger_name: str = "store_fs") -> Iterator[list[str]]:
    """The messages logged under ``logger_name`` while the block runs."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- agents ----------------------------------------------------------------------------------
# A task is {"rewards": [...], "pauses": [...]}: emit each reward, then pause that long.


@rollout
async def emits_rewards(task: Any, prompt_template: PromptTemplate) -> None:
    for reward, pause in zip(task["rewards"], task["pauses"], strict=True):
        emit_reward(reward)
        if pause:
            await asyncio.sleep(pause)


@rollout
def emits_rewards_sync(task: Any, prompt_template: PromptTemplate) -> None:
    for reward, pause in zip(task["rewards"], task["pauses"], strict=True):
        emit_reward(reward)
        if pause:
            time.sleep(pause)


@rollout
async def numbered_messages(task: Any, prompt_template: PromptTemplate) -> float:
    """Emits ``task["n"]`` messages "m0", "m1", ... ``task["pause"]`` s apart, returns reward 1.0."""
    for i in range(task["n"]):
        emit_message(f"m{i}")
        await asyncio.sleep(task["pause"])
    return 1.0


@rollout
async def stuck_async(task: Any, prompt_template: PromptTemplate) -> float:
    emit_message("started")
    await asyncio.sleep(3600)
    return 1.0


@rollout
def stuck_sync(task: Any, prompt_template: PromptTemplate) -> float:
    emit_message("started")
    time.sleep(3600)  # a blocking call: no signal or cancellation reaches it
    return 1.0


@rollout
def exits_at_once(task: Any, prompt_template: PromptTemplate) -> None:
    """An agent whose runner process dies with exit code 3 (tests/test_runner_pool.py)."""
    import os

    os._exit(3)


@rollout
async def starts_a_subprocess(task: Any, prompt_template: PromptTemplate) -> float:
    """Start ``sleep 600``, write its pid to the file named by ``task``, and wait for good: an
    agent whose tool process outlives it unless the runner's supervisor ends it."""
    import os
    import subprocess
    from pathlib import Path

    tool = subprocess.Popen(["sleep", "600"])
    Path(task + ".tmp").write_text(str(tool.pid))
    os.replace(task + ".tmp", task)
    await asyncio.sleep(3600)
    return 1.0
