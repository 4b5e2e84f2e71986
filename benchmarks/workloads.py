"""The workloads, each run against one fresh :class:`~backends.Deployment`.

Every workload returns a dict whose ``"value"`` is the headline figure (its unit
is in :data:`UNITS`) plus extras worth keeping in the raw JSON. Runners are
separate processes (``multiprocessing`` spawn) for every backend but ``up-mem``,
whose runners are tasks of this process. Timings use ``time.perf_counter``,
which is ``CLOCK_MONOTONIC`` on Linux and therefore comparable across processes.

Span sequence ids are numbered by the benchmark itself (one attempt per rollout)
rather than fetched with ``get_next_span_sequence_id``: the workloads measure
the stores, not a tracer's round trips.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from backends import ROOT, Deployment, close_store, open_spec, peak_rss_kb, span_model
from spans import span_dict

UNITS = {
    "enqueue": "ops/s",
    "dequeue x1": "ops/s",
    "dequeue x4": "ops/s",
    "add_span": "spans/s",
    "add_span x4": "spans/s",
    "query_spans": "ms",
    "query_spans cold": "ms",
    "wait wake-up": "ms",
    "loop": "rollouts/s",
    "runner start-up": "ms",
}
LOWER_IS_BETTER = {"ms"}

QUERY_SPANS = 1000
LOOP_SPANS = 5
IDLE_POLL = 0.005  # a runner with nothing to do asks again after 5 ms
READY_TIMEOUT = 300.0  # how long child processes may take to start (import, open the store)
WAIT_POLL = 0.1  # upstream's client refuses wait_for_rollouts timeouts above 0.1 s
ALGO_POLL = 0.05  # an algorithm polling for finished rollouts asks every 50 ms (upstream's APO: 2 s)

_CTX = multiprocessing.get_context("spawn")


async def _fill(store: Any, n: int) -> list[str]:
    """Enqueue ``n`` rollouts in batches; their ids."""
    if type(store).__module__.startswith("store_fs"):
        from store_fs import EnqueueRolloutRequest

        request: Any = EnqueueRolloutRequest
    else:
        from agentlightning.types import EnqueueRolloutRequest as upstream_request

        request = upstream_request
    ids: list[str] = []
    for first in range(0, n, 250):
        batch = [request(input={"question": f"task {i}"}) for i in range(first, min(n, first + 250))]
        ids += [r.rollout_id for r in await store.enqueue_many_rollouts(batch)]
    return ids


def _children(target: Callable[..., None], spec: str, count: int, *args: Any) -> tuple[list[Any], Any, Any]:
    """Start ``count`` processes running ``target(spec, index, go, stop, ready, results, *args)``.

    A child that waits for ``go`` first puts its index on ``ready`` (see :func:`_go_when_ready`).
    Callers must keep the returned events alive until the children are done: a
    collected ``multiprocessing`` event unlinks its semaphore, and a child still
    starting up then fails to attach to it.
    """
    go, stop, ready, results = _CTX.Event(), _CTX.Event(), _CTX.Queue(), _CTX.Queue()
    procs = [
        _CTX.Process(target=target, args=(spec, i, go, stop, ready, results, *args)) for i in range(count)
    ]
    for proc in procs:
        proc.start()
    return procs, (go, stop, ready), results


async def _go_when_ready(go: Any, ready: Any, procs: list[Any], results: Any) -> None:
    """Set ``go`` once every child in ``procs`` is ready: the clock must not count an interpreter
    start (importing upstream's client takes seconds on a busy machine). A child that dies first
    ends the measurement with its error, at once."""
    waiting, deadline = len(procs), time.monotonic() + READY_TIMEOUT
    while waiting:
        try:
            await asyncio.to_thread(ready.get, True, 0.5)
            waiting -= 1
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode is not None]
        if dead or time.monotonic() > deadline:
            try:
                reason = results.get_nowait()
            except queue.Empty:
                reason = f"exit code {dead[0].exitcode}" if dead else f"not ready in {READY_TIMEOUT:.0f} s"
            for proc in procs:
                proc.kill()
            raise RuntimeError(f"a child did not start: {reason}")
    go.set()


def _collect(procs: list[Any], results: Any, count: int, timeout: float = 600) -> list[Any]:
    try:
        out = [results.get(timeout=timeout) for _ in range(count)]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [r for r in out if isinstance(r, str)]
    if errors:
        raise RuntimeError(errors[0])
    return out


def _child_main(body: Callable[[Any], Awaitable[Any]], spec: str, index: int, results: Any) -> None:
    async def run() -> Any:
        store = open_spec(spec)
        try:
            return await body(store)
        finally:
            await close_store(store)

    try:
        results.put(asyncio.run(run()))
    except BaseException as err:  # report, never leave the parent waiting
        results.put(f"child {index}: {err!r}")
        raise


# -- enqueue ----------------------------------------------------------------------------
async def enqueue(dep: Deployment, n: int) -> dict[str, Any]:
    store = dep.open()
    try:
        start = time.perf_counter()
        for i in range(n):
            await store.enqueue_rollout(input={"question": f"task {i}"})
        return {"value": n / (time.perf_counter() - start)}
    finally:
        await close_store(store)


# -- dequeue ----------------------------------------------------------------------------
async def _drain(store: Any, worker: str, go: Callable[[], Awaitable[object]]) -> tuple[float, float, int]:
    await go()
    start, got = time.perf_counter(), 0
    while await store.dequeue_rollout(worker_id=worker) is not None:
        got += 1
    return start, time.perf_counter(), got


def _dequeue_child(spec: str, index: int, go: Any, stop: Any, ready: Any, results: Any) -> None:
    async def started() -> None:
        ready.put(index)  # the store is open: the clock may start
        await asyncio.to_thread(go.wait, READY_TIMEOUT + 60)

    _child_main(lambda store: _drain(store, f"runner-{index}", started), spec, index, results)


async def dequeue(dep: Deployment, n: int, procs: int) -> dict[str, Any]:
    store = dep.open()
    try:
        await _fill(store, n)
        if dep.spec is None:
            event = asyncio.Event()
            tasks = [asyncio.create_task(_drain(store, f"runner-{i}", event.wait)) for i in range(procs)]
            await asyncio.sleep(0)
            event.set()
            spans = await asyncio.gather(*tasks)
        else:
            children, (go, _stop, ready), results = _children(_dequeue_child, dep.spec, procs)
            await _go_when_ready(go, ready, children, results)
            spans = await asyncio.to_thread(_collect, children, results, procs)
        got = sum(s[2] for s in spans)
        if got != n:
            raise RuntimeError(f"dequeued {got} of {n}")
        return {"value": n / (max(s[1] for s in spans) - min(s[0] for s in spans))}
    finally:
        await close_store(store)


# -- spans ------------------------------------------------------------------------------
async def add_span(dep: Deployment, n: int) -> dict[str, Any]:
    store = dep.open()
    try:
        attempted = await store.start_rollout(input={"question": "spans"})
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        model = span_model(dep.spec)
        spans = [model.model_validate(span_dict(rid, aid, seq)) for seq in range(1, n + 1)]
        start = time.perf_counter()
        for span in spans:
            await store.add_span(span)
        return {"value": n / (time.perf_counter() - start)}
    finally:
        await close_store(store)


async def _add_spans(
    store: Any, spec: str | None, rid: str, aid: str, n: int, go: Callable[[], Awaitable[object]]
) -> tuple[float, float, int]:
    """Add ``n`` spans to one attempt, one ``add_span`` call each, once ``go`` returns."""
    model = span_model(spec)
    spans = [model.model_validate(span_dict(rid, aid, seq)) for seq in range(1, n + 1)]
    await go()
    start = time.perf_counter()
    for span in spans:
        await store.add_span(span)
    return start, time.perf_counter(), n


def _add_span_child(
    spec: str, index: int, go: Any, ready: Any, results: Any, rid: str, aid: str, n: int
) -> None:
    async def started() -> None:
        ready.put(index)  # the store is open and the spans are built: the clock may start
        await asyncio.to_thread(go.wait, READY_TIMEOUT + 60)

    _child_main(lambda store: _add_spans(store, spec, rid, aid, n, started), spec, index, results)


async def add_span_writers(dep: Deployment, n: int, procs: int) -> dict[str, Any]:
    """``procs`` writers at once (processes, or tasks for the in-process store), each adding
    ``n // procs`` spans one by one to its own attempt, as runners do: spans per second, from
    the first writer's start to the last one's end."""
    store = dep.open()
    try:
        each = n // procs
        attempts = []
        for _ in range(procs):
            attempted = await store.start_rollout(input={"question": "spans"})
            attempts.append((attempted.rollout_id, attempted.attempt.attempt_id))
        if dep.spec is None:
            event = asyncio.Event()
            tasks = [
                asyncio.create_task(_add_spans(store, None, r, a, each, event.wait)) for r, a in attempts
            ]
            await asyncio.sleep(0)
            event.set()
            spans = await asyncio.gather(*tasks)
        else:
            go, ready, results = _CTX.Event(), _CTX.Queue(), _CTX.Queue()
            children = [
                _CTX.Process(target=_add_span_child, args=(dep.spec, i, go, ready, results, r, a, each))
                for i, (r, a) in enumerate(attempts)
            ]
            for child in children:
                child.start()
            for _ in children:  # every writer started, not a guess at how long that takes
                await asyncio.to_thread(ready.get, True, 120)
            go.set()
            spans = await asyncio.to_thread(_collect, children, results, procs)
        return {"value": sum(s[2] for s in spans) / (max(s[1] for s in spans) - min(s[0] for s in spans))}
    finally:
        await close_store(store)


async def _timed_queries(store: Any, rid: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        result = await store.query_spans(rid)
        times.append((time.perf_counter() - start) * 1000)
        if len(result) != QUERY_SPANS:
            raise RuntimeError(f"query_spans returned {len(result)} spans, not {QUERY_SPANS}")
    return times


def _query_child(spec: str, index: int, go: Any, stop: Any, ready: Any, results: Any, rid: str) -> None:
    _child_main(lambda store: _timed_queries(store, rid, 2), spec, index, results)


async def query_spans(dep: Deployment, queries: int) -> dict[str, Any]:
    """Median of repeated queries by one reader, and the first query of a fresh process."""
    store = dep.open()
    try:
        attempted = await store.start_rollout(input={"question": "spans"})
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        model = span_model(dep.spec)
        for first in range(1, QUERY_SPANS + 1, 100):
            await store.add_many_spans(
                [model.model_validate(span_dict(rid, aid, s)) for s in range(first, first + 100)]
            )
        out: dict[str, Any] = {}
        if dep.spec is not None:
            children, _events, results = _children(_query_child, dep.spec, 1, rid)
            (first_two,) = await asyncio.to_thread(_collect, children, results, 1)
            out["cold_ms"] = first_two[0]
            reader = open_spec(dep.spec)  # a separate reader, as a trainer would be
        else:
            reader = store
        try:
            out["value"] = statistics.median(await _timed_queries(reader, rid, queries))
        finally:
            if reader is not store:
                await close_store(reader)
        return out
    finally:
        await close_store(store)


# -- wait wake-up -----------------------------------------------------------------------
async def _wait_done(store: Any, rid: str) -> float:
    """Wait until ``rid`` finishes; the perf_counter time it was seen finished."""
    while True:
        done = await store.wait_for_rollouts(rollout_ids=[rid], timeout=WAIT_POLL)
        if done:
            return time.perf_counter()


async def _complete(store: Any, rid: str, aid: str) -> tuple[float, float]:
    start = time.perf_counter()
    await store.update_attempt(rid, aid, status="succeeded")
    return start, time.perf_counter()


def _complete_child(spec: str, index: int, go: Any, stop: Any, ready: Any, results: Any, jobs: Any) -> None:
    """Complete each (rollout, attempt) from ``jobs`` as it arrives; report the times."""

    async def body(store: Any) -> int:
        while (job := await asyncio.to_thread(jobs.get)) is not None:
            results.put(await _complete(store, *job))
        return 0

    _child_main(body, spec, index, results)


async def wake_up(dep: Deployment, samples: int) -> dict[str, Any]:
    """From the end of a completing ``update_attempt`` (another process) to the waiter's return.

    Over HTTP the server can wake the waiter before the completer has read its own
    reply, so that figure is clipped at 0; ``from_call_start_ms`` (from the start of
    the completing call, so including the write) is kept as well.
    """
    store = dep.open()
    latencies: list[float] = []
    from_start: list[float] = []  # from the start of the completing call instead
    try:
        jobs = _CTX.Queue()
        if dep.spec is not None:
            children, _events, results = _children(_complete_child, dep.spec, 1, jobs)
        for _ in range(samples):
            attempted = await store.start_rollout(input={"question": "wake"})
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            waiter = asyncio.create_task(_wait_done(store, rid))
            await asyncio.sleep(0.03)  # the waiter is asleep in wait_for_rollouts
            if dep.spec is None:
                started, written = await _complete(store, rid, aid)
            else:
                jobs.put((rid, aid))
                started, written = await asyncio.to_thread(results.get, True, 60)
            seen = await waiter
            latencies.append(max(0.0, seen - written) * 1000)
            from_start.append((seen - started) * 1000)
        if dep.spec is not None:
            jobs.put(None)
            await asyncio.to_thread(_collect, children, results, 1)
        return {
            "value": statistics.median(latencies),
            "max_ms": max(latencies),
            "from_call_start_ms": statistics.median(from_start),
        }
    finally:
        await close_store(store)


# -- the full loop ----------------------------------------------------------------------
async def _wait_some(store: Any, rollout_ids: list[str]) -> list[Any]:
    """The finished rollouts among ``rollout_ids``, each backend waiting its best way.

    FileStore blocks in ``wait_for_rollouts`` until all are finished (woken by file
    events; the timeout only bounds one call). Upstream's client refuses timeouts
    above 0.1 s, and its server waits with one coroutine per id, so for the
    others the algorithm polls as upstream's own algorithms do (APO: timeout 0,
    then sleep), at a tighter interval than theirs.
    """
    if type(store).__module__.startswith("store_fs"):
        return list(await store.wait_for_rollouts(rollout_ids=rollout_ids, timeout=1.0))
    done = await store.wait_for_rollouts(rollout_ids=rollout_ids, timeout=0.0)
    if len(done) < len(rollout_ids):
        await asyncio.sleep(ALGO_POLL)
    return list(done)


async def _runner(store: Any, worker: str, stop: Callable[[], bool], model: Any) -> int:
    done = 0
    while True:
        attempted = await store.dequeue_rollout(worker_id=worker)
        if attempted is None:
            if stop():
                return done
            await asyncio.sleep(IDLE_POLL)
            continue
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        for seq in range(1, LOOP_SPANS + 1):
            await store.add_span(model.model_validate(span_dict(rid, aid, seq)))
        await store.update_attempt(rid, aid, status="succeeded")
        done += 1


def _runner_child(spec: str, index: int, go: Any, stop: Any, ready: Any, results: Any) -> None:
    async def body(store: Any) -> tuple[int, int | None]:
        model = span_model(spec)
        ready.put(index)  # the store is open and the span model imported: the clock may start
        await asyncio.to_thread(go.wait, READY_TIMEOUT + 60)
        done = await _runner(store, f"runner-{index}", stop.is_set, model)
        return done, peak_rss_kb()

    _child_main(body, spec, index, results)


async def loop(dep: Deployment, n: int, runners: int) -> dict[str, Any]:
    """Enqueue ``n`` rollouts at once; runners dequeue, add spans, complete; wait for all."""
    store = dep.open()
    try:
        if dep.spec is None:
            stopping = False
            tasks = [
                asyncio.create_task(_runner(store, f"runner-{i}", lambda: stopping, span_model(None)))
                for i in range(runners)
            ]
        else:
            children, (go, stop, ready), results = _children(_runner_child, dep.spec, runners)
            await _go_when_ready(go, ready, children, results)
        start, cpu = time.perf_counter(), time.process_time()
        remaining = set(await _fill(store, n))
        while remaining:
            remaining -= {r.rollout_id for r in await _wait_some(store, sorted(remaining))}
        elapsed = time.perf_counter() - start
        # CPU of this process: the algorithm's (and for up-mem, everything's) share of the machine.
        cpu = time.process_time() - cpu
        out: dict[str, Any] = {"value": n / elapsed, "seconds": elapsed, "algorithm_cpu_seconds": cpu}
        if dep.spec is None:
            stopping = True
            counts = await asyncio.gather(*tasks)
            out["peak_rss_kb"] = {"all-in-one": peak_rss_kb()}
        else:
            stop.set()
            reports = await asyncio.to_thread(_collect, children, results, runners)
            counts = [r[0] for r in reports]
            out["peak_rss_kb"] = {"runner": max(r[1] for r in reports)}
            if dep.server is not None:
                out["peak_rss_kb"]["server"] = dep.server.peak_rss_kb()
                out["server_start_ms"] = dep.server.started_in * 1000
        if sum(counts) != n:
            raise RuntimeError(f"runners completed {sum(counts)} of {n}")
        return out
    finally:
        await close_store(store)


# -- start-up ---------------------------------------------------------------------------
_STARTUP = {
    "fs": "from store_fs import FileStore\nstore = FileStore({target!r}, create=False)",
    "http": (
        "from agentlightning.store.client_server import LightningStoreClient\n"
        "store = LightningStoreClient({target!r})"
    ),
    "aglc": "from store_fs.client import LightningStoreClient\nstore = LightningStoreClient({target!r})",
    "memory": (
        "from agentlightning.store.memory import InMemoryLightningStore\nstore = InMemoryLightningStore()"
    ),
}


async def startup(dep: Deployment, _: int) -> dict[str, Any]:
    """A fresh interpreter: import the store, open it, dequeue once (empty queue), exit."""
    kind = dep.backend.kind
    target = "" if dep.spec is None else dep.spec.split(":", 2)[-1] if kind == "fs" else dep.spec[5:]
    probe = "aglc" if dep.spec is not None and dep.spec.startswith("aglc:") else kind  # whose client
    code = (
        "import asyncio\n"
        + _STARTUP[probe].format(target=target)
        + "\nasyncio.run(store.dequeue_rollout(worker_id='probe'))\n"
        + ("asyncio.run(store.close())\n" if kind == "http" else "")
        # The peak resident set of this interpreter (see backends.peak_rss_kb), for the parent.
        + "print([l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1])\n"
    )
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"start-up probe failed: {proc.stderr[-800:]}")
    return {"value": elapsed * 1000, "peak_rss_kb": int(proc.stdout.split()[-1])}
