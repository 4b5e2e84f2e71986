"""The runner with real processes: an ``agl store`` SIGKILLed and restarted mid-rollout, a
15 s outage, SIGINT / SIGTERM (once and twice) to ``agl run`` with async and sync agents,
and hooks handed to runner processes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import AGL
from fault_helpers import (
    BODY,
    PROMPT,
    FileHook,
    captured,
    free_port,
    numbered_messages,
    quick_runner,
    wait_for_status,
)
from server_helpers import ServerProcess

from store_fs import FileStore, RolloutConfig
from store_fs.client import LightningStoreClient
from store_fs.rewards import find_final_reward
from store_fs.runner_pool import run_runner_process

TESTS = Path(__file__).resolve().parent


async def _wait_running(store: Any, rollout_id: str, timeout: float = 30) -> None:
    await wait_for_status(store, rollout_id, ["running"], timeout)


def test_runner_survives_a_store_down_at_start_a_server_killed_mid_rollout_and_a_15_s_outage(
    tmp_path: Path,
) -> None:
    FileStore(tmp_path / "store")
    server = ServerProcess(tmp_path / "store", tmp_path / "server.log", port=free_port())

    async def scenario() -> tuple[list[str], Any, Any]:
        client = LightningStoreClient(server.url, retry_delays=(0.2, 0.5))
        # Two slots: while the first attempt waits to deliver its spans and outcome, the runner
        # is idle, its dequeue failing for the whole outage.
        runner = quick_runner(max_parallel=2, retry_cap_seconds=1.0, heartbeat_seconds=0.3)
        with captured() as lines, runner.run_context(agent=numbered_messages, store=client):
            work = asyncio.create_task(runner.iter())  # before the server is up: it says so, and waits
            await asyncio.sleep(1.5)
            assert [line for line in lines if "is unreachable" in line], lines
            await asyncio.to_thread(server.start)
            await client.add_resources(PROMPT)
            first = await client.enqueue_rollout(input={"n": 20, "pause": 0.1})
            await _wait_running(client, first.rollout_id)
            assert server.proc is not None
            server.proc.kill()  # SIGKILL, mid-rollout
            server.proc.wait()
            await asyncio.sleep(15)  # the agent finishes during the outage
            await asyncio.to_thread(server.start)  # the same port
            await wait_for_status(client, first.rollout_id, ["succeeded", "failed"], 30)
            second = await client.enqueue_rollout(input={"n": 2, "pause": 0.0})
            await wait_for_status(client, second.rollout_id, ["succeeded", "failed"], 30)
            assert not work.done()  # the same runner, still going
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        results = (
            await client.get_rollout_by_id(first.rollout_id),
            await client.get_rollout_by_id(second.rollout_id),
        )
        await client.close()
        return lines, *results

    try:
        lines, first, second = asyncio.run(scenario())
    finally:
        server.stop()
    assert (first.status, second.status) == ("succeeded", "succeeded")
    store = FileStore(tmp_path / "store")
    spans = list(asyncio.run(store.query_spans(first.rollout_id)))
    bodies = [s.attributes.get(BODY) for s in spans if s.name == "agentlightning.message"]
    assert bodies == [f"m{i}" for i in range(20)]  # every span, once, in emission order
    assert find_final_reward(spans) == 1.0
    assert spans[-1].name == "agentlightning.annotation"
    # Each outage (down at start, then killed) is logged when it starts and when it ends, not
    # per try (there were dozens of tries).
    starts = [line for line in lines if "is unreachable" in line]
    assert 2 <= len(starts) <= 4, starts
    assert len([line for line in lines if "answers again" in line]) == len(starts)


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    log: Path
    store: FileStore
    rollout_id: str


def _agl_run(location: str, agent: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    env.pop("AGL_STORE_TOKEN", None)
    command = [AGL, "--store", location, "run", f"fault_helpers:{agent}", "--poll-interval", "0.1"]
    with log.open("wb") as sink:
        # A session of its own, so the test can signal the whole group as a terminal's Ctrl-C does.
        return subprocess.Popen(
            [*command, "--heartbeat-seconds", "0.5"],
            stdout=sink,
            stderr=sink,
            env=env,
            start_new_session=True,
        )


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def launched() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    _stop_all(procs)


def _launch(base: Path, name: str, agent: str, location: str, store: FileStore, procs: list[Any]) -> Launched:
    async def enqueue() -> str:
        await store.add_resources(PROMPT)
        config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
        return (await store.enqueue_rollout(input="x", config=config)).rollout_id

    rollout_id = asyncio.run(enqueue())
    proc = _agl_run(location, agent, base / f"{name}.log")
    procs.append(proc)
    return Launched(proc, base / f"{name}.log", store, rollout_id)


def _signal(run: Launched, sig: signal.Signals) -> None:
    if sig == signal.SIGINT:
        os.killpg(run.proc.pid, sig)  # Ctrl-C in a terminal: the whole process group
    else:
        run.proc.send_signal(sig)  # `kill PID`: the `agl run` process only


def _exit_times(runs: list[Launched], timeout: float) -> dict[str, float]:
    """When each process exited (``time.monotonic()``), watching all of them at once."""
    exited: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(exited) < len(runs) and time.monotonic() < deadline:
        for run in runs:
            if run.rollout_id not in exited and run.proc.poll() is not None:
                exited[run.rollout_id] = time.monotonic()
        time.sleep(0.02)
    assert len(exited) == len(runs), "a runner did not exit"
    return exited


def test_sigint_and_sigterm_settle_the_attempt_in_flight_and_exit_within_10_s_a_second_ctrl_c_at_once(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    FileStore(tmp_path / "served")
    cases = [
        ("url-sync-sigint", "stuck_sync", signal.SIGINT),
        ("dir-async-sigint", "stuck_async", signal.SIGINT),
        ("dir-sync-sigterm", "stuck_sync", signal.SIGTERM),
        ("dir-async-sigterm", "stuck_async", signal.SIGTERM),
    ]
    FileStore(tmp_path / "twice")
    server = ServerProcess(tmp_path / "served", tmp_path / "server.log")
    doomed = ServerProcess(tmp_path / "twice", tmp_path / "twice-server.log")
    with server, doomed:
        runs = []
        for name, agent, sig in cases:
            if name.startswith("url"):  # `agl --store http://... run` takes a URL
                location, store = server.url, FileStore(tmp_path / "served")
            else:
                location, store = str(tmp_path / name), FileStore(tmp_path / name)
            runs.append((_launch(tmp_path, name, agent, location, store, launched), sig))
        # A fifth runner gets Ctrl-C twice. Its server dies first, so the first stop would take
        # the whole grace period trying to report: only the second Ctrl-C explains a quick exit.
        twice = _launch(tmp_path, "twice", "stuck_sync", doomed.url, FileStore(tmp_path / "twice"), launched)
        for run in [run for run, _ in runs] + [twice]:
            asyncio.run(_wait_running(run.store, run.rollout_id, timeout=60))
        assert doomed.proc is not None
        doomed.proc.kill()
        doomed.proc.wait()
        os.killpg(twice.proc.pid, signal.SIGINT)
        signalled = {}
        for run, sig in runs:
            _signal(run, sig)
            signalled[run.rollout_id] = time.monotonic()
        time.sleep(0.5)
        os.killpg(twice.proc.pid, signal.SIGINT)
        signalled[twice.rollout_id] = time.monotonic()
        exited = _exit_times([run for run, _ in runs] + [twice], timeout=30)
    for run, _ in runs:
        took = exited[run.rollout_id] - signalled[run.rollout_id]
        log = run.log.read_text(errors="replace")
        assert run.proc.returncode == 0, log
        assert took < 10, f"{run.log.name}: exited {took:.1f} s after the signal\n{log}"
        assert "Traceback" not in log, log
        attempts = list(asyncio.run(run.store.query_attempts(run.rollout_id)))
        assert [a.status for a in attempts] == ["failed"], log
        assert attempts[0].metadata == {"error": "runner interrupted"}
        rollout = asyncio.run(run.store.get_rollout_by_id(run.rollout_id))
        assert rollout is not None
        assert rollout.status == "requeuing"  # the retry rule applied
    twice_log = twice.log.read_text(errors="replace")
    assert exited[twice.rollout_id] - signalled[twice.rollout_id] < 2, twice_log
    assert twice.proc.returncode == 130, twice_log  # interrupted: the runners were killed, not stopped


def test_runner_processes_take_hooks_from_runner_kwargs(tmp_path: Path) -> None:
    # Trainer(hooks=...) and RunnerPool hand hooks to run_runner_process in runner_kwargs.
    # (Run in a thread here: the same body, without a process start.)
    store = FileStore(tmp_path / "store")

    async def enqueue() -> str:
        await store.add_resources(PROMPT)
        return (await store.enqueue_rollout(input={"n": 1, "pause": 0.0})).rollout_id

    rollout_id = asyncio.run(enqueue())
    notes = tmp_path / "hooks.txt"
    stop = threading.Event()
    kwargs = {"poll_interval": 0.05, "hooks": [FileHook(str(notes))]}
    body = threading.Thread(
        target=run_runner_process, args=(str(store.root), numbered_messages, 0, stop, None, kwargs)
    )
    body.start()
    try:
        asyncio.run(wait_for_status(store, rollout_id, ["succeeded", "failed"], 30))
    finally:
        stop.set()
        body.join(15)
    assert not body.is_alive()
    expected = ["on_rollout_start", "on_trace_start", "on_trace_end", "on_rollout_end"]
    assert notes.read_text().split() == expected


@pytest.mark.stress
def test_stress_repeated_server_kills_lose_no_span(tmp_path: Path) -> None:
    """Many concurrent attempts while the server is SIGKILLed and restarted again and again."""
    FileStore(tmp_path / "store")
    server = ServerProcess(tmp_path / "store", tmp_path / "server.log")
    rng = random.Random(11)
    n_rollouts, n_spans = 30, 10

    async def scenario() -> list[str]:
        client = LightningStoreClient(server.url, retry_delays=(0.2,))
        await client.add_resources(PROMPT)
        # An attempt whose dequeue answer was lost with the server is retried once unresponsive.
        config = RolloutConfig(unresponsive_seconds=8, max_attempts=5, retry_condition=["unresponsive"])
        task = {"n": n_spans, "pause": 0.05}
        ids = [
            (await client.enqueue_rollout(input=task, config=config)).rollout_id for _ in range(n_rollouts)
        ]
        runner = quick_runner(max_parallel=4, retry_cap_seconds=1.0, heartbeat_seconds=0.5)
        with runner.run_context(agent=numbered_messages, store=client):
            work = asyncio.create_task(runner.iter())
            for _ in range(6):
                await asyncio.sleep(rng.uniform(1.0, 3.0))
                assert server.proc is not None
                server.proc.kill()
                server.proc.wait()
                await asyncio.sleep(rng.uniform(0.5, 3.0))
                await asyncio.to_thread(server.start)
            for rid in ids:
                await wait_for_status(client, rid, ["succeeded", "failed"], 120)
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        await client.close()
        return ids

    with server:
        ids = asyncio.run(scenario())
    store = FileStore(tmp_path / "store")
    for rid in ids:
        attempts = list(asyncio.run(store.query_attempts(rid)))
        assert any(a.status == "succeeded" for a in attempts), [a.status for a in attempts]
        for attempt in attempts:
            if attempt.status != "succeeded":
                continue
            spans = list(asyncio.run(store.query_spans(rid, attempt.attempt_id)))
            bodies = [s.attributes.get(BODY) for s in spans if s.name == "agentlightning.message"]
            assert bodies == [f"m{i}" for i in range(n_spans)]
            assert find_final_reward(spans) == 1.0


async def test_dequeue_rollout_over_http_is_none_while_the_server_is_down_as_upstreams() -> None:
    """Upstream's runner dequeues with ``dequeue_rollout`` and ends on an exception there (its
    own client answers None): on agl's client a server restart killed it with a traceback
    (found by an adversarial pass). ``dequeue_many_rollouts`` still raises, for agl's runner."""
    from fault_helpers import free_port

    from store_fs import RemoteStoreError
    from store_fs.client import LightningStoreClient

    async with LightningStoreClient(f"http://127.0.0.1:{free_port()}", retry_delays=(0.05,)) as client:
        assert await client.dequeue_rollout(worker_id="w") is None
        with pytest.raises(RemoteStoreError):
            await client.dequeue_many_rollouts(limit=1, worker_id="w")
