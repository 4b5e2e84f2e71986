"""RunnerPool: the one runner supervisor (``agl run`` and ``Trainer``), with real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from proc_helpers import alive

from store_fs import FileStore, PromptTemplate
from store_fs.runner_pool import RunnerPool


def echo_agent(task: object, prompt_template: PromptTemplate) -> float:
    return 1.0


def test_runners_complete_work_and_stop_when_asked(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")

    async def enqueue() -> list[str]:
        await store.add_resources({"prompt": PromptTemplate(template="{q}", engine="f-string")})
        return [(await store.enqueue_rollout(input=i)).rollout_id for i in range(4)]

    ids = asyncio.run(enqueue())
    pool = RunnerPool(str(store.root), echo_agent, n_runners=2, runner_kwargs={"poll_interval": 0.05})
    with pool:
        done = asyncio.run(store.wait_for_rollouts(rollout_ids=ids, timeout=30))
    assert [r.status for r in done] == ["succeeded"] * 4
    assert not pool.failed


def test_a_crashing_runner_is_restarted_as_often_as_allowed(tmp_path: Path) -> None:
    # An argument the runner does not take makes every runner process exit with an error.
    pool = RunnerPool(
        str(tmp_path / "store"), echo_agent, n_runners=1, runner_kwargs={"no_such_option": 1}, max_restarts=2
    )
    started = time.monotonic()
    pool.start()
    pool.wait()
    assert pool.restarts_left == 0
    assert pool.failed
    assert len(pool.failures) == 1
    assert "not restarted" in pool.failures[0]
    assert time.monotonic() - started < 60


def test_stopping_from_a_condition(tmp_path: Path) -> None:
    pool = RunnerPool(str(tmp_path / "store"), echo_agent, runner_kwargs={"poll_interval": 0.05})
    pool.start()
    deadline = time.monotonic() + 1.0
    pool.wait(until=lambda: time.monotonic() > deadline)
    assert pool.stopping
    assert not pool.failed


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"n_runners": 0}, "n_runners"), ({"max_restarts": -1}, "max_restarts")]
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunnerPool("runs/x", echo_agent, **kwargs)


def _agl_run(
    store: Path, agent: str, *options: str, path: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``agl run`` (the agent's module found on ``path``,
    default this directory)."""
    import os
    import sys

    where = str(path or Path(__file__).parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([where, os.environ.get("PYTHONPATH", "")]))
    agl = str(Path(sys.executable).with_name("agl"))
    return [agl, "--store", str(store), "run", agent, *options], env


def test_agl_run_says_which_runners_died_and_why_it_exits_1(tmp_path: Path) -> None:
    import subprocess

    store = tmp_path / "store"

    async def prepare() -> None:
        fs = FileStore(store)
        try:
            await fs.add_resources({"main_prompt": PromptTemplate(template="Q", engine="f-string")})
            for i in range(2):
                await fs.enqueue_rollout(input=i)
        finally:
            fs.close()

    asyncio.run(prepare())
    args, env = _agl_run(store, "fault_helpers:exits_at_once", "--workers", "2", "--poll-interval", "0.1")
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("exited with code 3: not restarted") == 4, done.stderr  # logged, then summed up
    assert done.stderr.splitlines()[-1].startswith("agl: runner agl-runner-"), done.stderr
    assert "--max-restarts" in done.stderr.splitlines()[-1]


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _parent(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_runners_stop_when_agl_run_is_killed(tmp_path: Path) -> None:
    """After kill -9 of ``agl run`` its runner processes lived on as orphans and kept taking
    work for good (found by an adversarial pass). They notice their parent is gone and stop."""
    import signal
    import subprocess

    store = tmp_path / "store"
    fs = FileStore(store)
    asyncio.run(fs.add_resources({"prompt": PromptTemplate(template="{q}", engine="f-string")}))
    args, env = _agl_run(store, "test_runner_pool:echo_agent", "--workers", "2", "--poll-interval", "0.1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runners: set[int] = set()
    try:
        rid = asyncio.run(fs.enqueue_rollout(input=1)).rollout_id
        done = asyncio.run(fs.wait_for_rollouts(rollout_ids=[rid], timeout=60))  # the runners are up
        assert [r.status for r in done] == ["succeeded"]
        runners = {pid for pid in _children(proc.pid) if "agl-runner" in _cmdline(pid) or _is_python(pid)}
        assert runners
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert all(_gone(pid, timeout=30) for pid in runners)
    finally:
        _kill_all(proc, runners)
        fs.close()


def _pid_in(path: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never written"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_an_agents_subprocesses_end_with_its_runner(tmp_path: Path) -> None:
    """A process an agent started (a tool, a sandbox) lived on after its runner was killed, and
    after ``agl run`` stopped on SIGTERM (noted in review). Each runner leads its own process
    group, which the pool ends once the runner is gone: killed, or stopped."""
    import os
    import signal
    import subprocess

    store = tmp_path / "store"
    fs = FileStore(store)
    asyncio.run(fs.add_resources({"prompt": PromptTemplate(template="{q}", engine="f-string")}))
    args, env = _agl_run(
        store,
        "fault_helpers:starts_a_subprocess",
        "--workers",
        "1",
        "--max-restarts",
        "1",
        "--poll-interval",
        "0.1",
    )
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools: list[int] = []
    try:
        asyncio.run(fs.enqueue_rollout(input=str(tmp_path / "first.pid")))
        tools.append(_pid_in(tmp_path / "first.pid"))
        runner = _parent(tools[0])
        assert runner in _children(proc.pid)
        os.kill(runner, signal.SIGKILL)
        assert _gone(tools[0]), "the killed runner's tool process lived on"

        asyncio.run(fs.enqueue_rollout(input=str(tmp_path / "second.pid")))
        tools.append(_pid_in(tmp_path / "second.pid"))  # the restarted runner's
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert _gone(tools[1]), "the tool process lived on after agl run stopped"
    finally:
        _kill_all(proc, tools)
        fs.close()


def _kill_all(proc: Any, pids: Iterable[int]) -> None:
    """Stop ``agl run`` (``proc``) and whichever of ``pids`` a failed test left alive."""
    import os
    import signal

    proc.kill()
    proc.wait(10)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_an_agents_subprocesses_end_when_agl_runs_group_is_killed(tmp_path: Path) -> None:
    """``kill -9 -PGID`` of ``agl run`` (a CI job cancelled, a supervisor's killasgroup) no longer
    reached the runners' groups, and nothing ended their agents' tools (found in review). An
    orphaned runner ends what is left of its own group as it exits."""
    import os
    import signal
    import subprocess

    store = tmp_path / "store"
    fs = FileStore(store)
    asyncio.run(fs.add_resources({"prompt": PromptTemplate(template="{q}", engine="f-string")}))
    args, env = _agl_run(
        store, "fault_helpers:starts_a_subprocess", "--workers", "1", "--poll-interval", "0.1"
    )
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    tools: list[int] = []
    try:
        asyncio.run(fs.enqueue_rollout(input=str(tmp_path / "tool.pid")))
        tools.append(_pid_in(tmp_path / "tool.pid"))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert _gone(tools[0], timeout=20), "the tool process lived on"
    finally:
        _kill_all(proc, tools)
        fs.close()


def _cmdline(pid: int) -> str:
    try:
        return (
            (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _is_python(pid: int) -> bool:
    return "python" in _cmdline(pid)


def test_agl_run_refuses_an_agent_no_runner_can_use_before_starting_any(tmp_path: Path) -> None:
    """Every runner process died on such an agent with a traceback, again after each restart
    (found by an adversarial pass). One line, exit 4, no runner started."""
    import subprocess

    (tmp_path / "bad_agents.py").write_text("def only_task(task):\n    return 1.0\n\nNUMBER = 42\n")
    FileStore(tmp_path / "store").close()
    for name, why in (
        ("only_task", "takes neither 'llm' nor 'prompt_template'"),
        ("NUMBER", "is not an agent"),
    ):
        args, env = _agl_run(tmp_path / "store", f"bad_agents:{name}", "--workers", "2", path=tmp_path)
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 4, done.stderr
        [line] = done.stderr.splitlines()
        assert line.startswith(f"agl: bad_agents:{name} cannot be run: "), line
        assert why in done.stderr
        assert "Traceback" not in done.stderr


def test_only_a_runner_a_pool_started_watches_its_parent() -> None:
    """A runner started from a shell (run_runner_process without parent_pid, as
    examples/apo_custom_algorithm.py does) stopped as soon as its launcher exited (found in
    review); one started by a pool stops when the pool's process is gone."""
    import multiprocessing
    import os

    from store_fs.runner_pool import _StopEvent, _StopOnSignal

    shared = multiprocessing.get_context("spawn").Event()
    assert not _StopEvent(shared, _StopOnSignal(), None).is_set()
    assert not _StopEvent(shared, _StopOnSignal(), os.getppid()).is_set()
    assert _StopEvent(shared, _StopOnSignal(), os.getpid()).is_set()  # not our parent: "gone"


def test_ctrl_c_while_runners_import_the_agent_stops_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole foreground group) while the runners were still
    importing a slow agent module (torch, say) ended each with a KeyboardInterrupt traceback, and
    ``agl run`` exited 1 ("a runner exited with an error"). Found by an adversarial pass; the
    runners now hold the signal until their handlers are set, then stop as on any stop."""
    import os
    import signal
    import subprocess

    (tmp_path / "slow_agent.py").write_text(
        "import os, signal, time\n"
        "from store_fs.agent import rollout\n"
        "blocked = sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
        "with open('imported.' + str(os.getpid()), 'w') as f:\n"
        "    f.write(repr(blocked))\n"
        "time.sleep(2)  # a heavy import\n"
        "@rollout\n"
        "def agent(task, prompt_template):\n"
        "    return 1.0\n"
    )
    store = tmp_path / "store"
    FileStore(store).close()
    args, env = _agl_run(store, "slow_agent:agent", "--workers", "2", path=tmp_path)
    proc = subprocess.Popen(
        args, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        # agl run imports the agent once to check it, then each runner does: all three are in.
        while len(list(tmp_path.glob("imported.*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(list(tmp_path.glob("imported.*"))) == 3
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "Traceback" not in err, err
    assert proc.returncode == 0, err
    assert "runners stopped" in err
    # The module ran with no signal blocked: what it starts (a process, a thread) must not
    # inherit a block that the pool's spawn holds until the runner's handlers are set (review).
    assert [p.read_text() for p in tmp_path.glob("imported.*")] == ["[]"] * 3
