"""Helpers for the end-to-end tests of the ``agl`` command (tests/test_cli.py).

Every call runs the installed console script in a subprocess, with stdout and stderr
captured separately (so stdout is a pipe: agl prints JSON / JSONL) and a timeout: a fresh
interpreter each time, or (``Agl(..., warm=...)``, for modules of many short calls) a forked
child of one interpreter that has already imported what ``agl`` imports.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALL_TIMEOUT = 30.0

# Keys every upstream-compatible record must carry (upstream Agent-lightning's field names).
ROLLOUT_KEYS = {"rollout_id", "input", "start_time", "end_time", "mode", "resources_id", "status", "config"}
ATTEMPT_KEYS = {"rollout_id", "attempt_id", "sequence_id", "start_time", "end_time", "status", "worker_id"}
SPAN_KEYS = {
    "rollout_id",
    "attempt_id",
    "sequence_id",
    "trace_id",
    "span_id",
    "parent_id",
    "name",
    "status",
    "attributes",
    "start_time",
    "end_time",
    "context",
    "resource",
}


@dataclass(frozen=True)
class Ids:
    done: str  # a succeeded rollout with spans
    running: str  # a rollout whose attempt is running
    attempt: str  # that attempt
    queued: str
    resources: str


async def _seed(root: Path) -> Ids:
    from store_fs import FileStore, PromptTemplate, Span

    store = FileStore(root)
    update = await store.add_resources({"main_prompt": PromptTemplate(template="Q: {q}", engine="f-string")})
    done = await store.enqueue_rollout(input={"q": "done"})
    first = await store.dequeue_rollout(worker_id="w1")
    assert first is not None
    await store.add_span(
        Span.from_attributes(
            rollout_id=done.rollout_id,
            attempt_id=first.attempt.attempt_id,
            sequence_id=1,
            name="step",
            attributes={},
        )
    )
    await store.update_attempt(done.rollout_id, first.attempt.attempt_id, status="succeeded")
    running = await store.enqueue_rollout(input={"q": "running"})
    second = await store.dequeue_rollout(worker_id="w2")
    assert second is not None
    await store.update_attempt(running.rollout_id, second.attempt.attempt_id, status="running")
    queued = await store.enqueue_rollout(input={"q": "queued"})
    store.close()
    return Ids(
        done.rollout_id, running.rollout_id, second.attempt.attempt_id, queued.rollout_id, update.resources_id
    )


def seed_store(root: Path) -> Ids:
    """A store at ``root`` (made in-process: quicker than a dozen agl calls) holding resources,
    a succeeded rollout with a span, a rollout whose attempt is running, and a queued one."""
    return asyncio.run(_seed(root))


def agl_executable() -> str:
    """The installed ``agl`` console script of the environment running the tests (else PATH's).

    Upstream's package installs a command of the same name; the test command installs ours last,
    and this check makes a mix-up fail loudly instead of as dozens of confusing errors.
    """
    beside = Path(sys.executable).parent / "agl"
    found = str(beside) if beside.exists() else shutil.which("agl")
    assert found, "the agl command is not installed"
    text = Path(found).read_text(errors="replace")
    assert "agl_cli" in text, f"{found} is not agl_cli's command (upstream's agl installed over it?)"
    return found


AGL = agl_executable()


def agl_env(store: Path | None, **extra: str) -> dict[str, str]:
    """The environment for an agl call: AGL_STORE set, wide columns, no network for LiteLLM."""
    env = dict(os.environ)
    env.pop("AGL_STORE", None)
    if store is not None:
        env["AGL_STORE"] = str(store)
    env["COLUMNS"] = "200"
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.update(extra)
    return env


@dataclass
class Result:
    args: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:  # shown by pytest when an assertion on a Result fails
        return (
            f"agl {' '.join(self.args)} -> exit {self.code} in {self.seconds:.2f}s\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )

    def json(self) -> Any:
        """stdout as one JSON document."""
        return json.loads(self.stdout)

    def lines(self) -> list[Any]:
        """stdout as JSON lines (every non-empty line must parse)."""
        return json_lines(self.stdout)


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class WarmAgl:
    """Runs ``agl`` invocations as forked children of one warm interpreter that has imported
    what ``agl`` imports (tests/cli_fuzz_driver.py ``--serve``): each child executes the
    installed console script with its own argv, stdin, stdout, stderr, environment and working
    directory, and exits with its exit code; only the ~0.4 s of imports is saved.
    tests/test_cli_fuzz.py requires a sample of such runs to equal runs of the real executable.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(_DRIVER), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "AGL_SCRIPT": AGL},
        )

    def run(
        self, args: Sequence[str], *, stdin: str, env: Mapping[str, str], cwd: Path, timeout: float
    ) -> Result:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        spec = {"args": list(args), "env": dict(env), "stdin": stdin, "timeout": timeout, "cwd": str(cwd)}
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"the warm agl driver exited (code {self.proc.poll()})"
        got = json.loads(reply)
        if got["code"] is None:
            raise subprocess.TimeoutExpired([AGL, *args], timeout)
        return Result(list(args), got["code"], got["stdout"], got["stderr"], got["seconds"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            assert self.proc.stdout is not None
            self.proc.stdout.close()


class Agl:
    """Runs agl against one store directory: the real executable each time, or, given ``warm``,
    the same script in a forked child of a warm interpreter (for modules of many short calls)."""

    def __init__(self, store: Path, cwd: Path, *, warm: WarmAgl | None = None) -> None:
        self.store = store
        self.cwd = cwd
        self.env = agl_env(store)
        self.warm = warm

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = CALL_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        if self.warm is not None:
            return self.warm.run(
                args,
                stdin=input if input is not None else "",
                env=env if env is not None else self.env,
                cwd=self.cwd,
                timeout=timeout,
            )
        start = time.monotonic()
        proc = subprocess.run(
            [AGL, *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=dict(env) if env is not None else self.env,
            timeout=timeout,
        )
        return Result(list(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def ok(self, *args: str, input: str | None = None, timeout: float = CALL_TIMEOUT) -> Result:
        """Run and require exit 0, a clean stderr (no traceback) and JSON-parsable stdout."""
        res = self(*args, input=input, timeout=timeout)
        assert res.code == 0, str(res)
        assert "Traceback" not in res.stderr, str(res)
        res.lines()  # every stdout line is JSON (a pretty document would fail here)
        return res

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [AGL, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env=dict(env) if env is not None else self.env,
        )

    def enqueue(self, value: Any, *options: str) -> dict[str, Any]:
        rollout: dict[str, Any] = self.ok("enqueue", json.dumps(value), *options).json()
        return rollout

    def dequeue(self, worker: str = "w1") -> dict[str, Any]:
        attempted: dict[str, Any] = self.ok("dequeue", "--worker-id", worker).json()
        return attempted


def assert_error(res: Result, code: int | Sequence[int], *needles: str) -> None:
    """A failure as documented: the exit code, one ``agl: ...`` line on stderr, nothing on stdout."""
    codes = [code] if isinstance(code, int) else list(code)
    assert res.code in codes, str(res)
    assert res.stdout == "", str(res)
    assert "Traceback" not in res.stderr, str(res)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, str(res)
    assert lines[0].startswith("agl: "), str(res)
    for needle in needles:
        assert needle in lines[0], str(res)


def _operational(rel: Path) -> bool:
    """Files a process may write without changing the store's data: the change feed (events/)
    and each host's clock probe (locks/clock.<host>, store_fs/_disk/server_clock.py)."""
    top = rel.parts[0] if rel.parts else ""
    return top == "events" or (top == "locks" and len(rel.parts) == 2 and rel.name.startswith("clock."))


def snapshot(store: Path) -> dict[str, bytes]:
    """Every file under the store with its contents, ignoring operational files (see above)."""
    out: dict[str, bytes] = {}
    for path in sorted(store.rglob("*")):
        rel = path.relative_to(store)
        if _operational(rel):
            continue
        if path.is_file():
            out[rel.as_posix()] = path.read_bytes()
        elif path.is_dir():
            out[rel.as_posix() + "/"] = b""
    return out


def diff_snapshots(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    changes = [f"+ {p}" for p in sorted(after.keys() - before.keys())]
    changes += [f"- {p}" for p in sorted(before.keys() - after.keys())]
    changes += [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return changes


class OnTty:
    """agl with stdout (and, with ``stderr_too``, stderr) on a pseudo-terminal of ``columns``
    columns; stderr otherwise goes to a pipe. With ``stdout_file``, stdout goes to that file
    and stderr to the terminal. Stopped by :meth:`finish` (or :meth:`kill`)."""

    def __init__(
        self,
        agl: Agl,
        *args: str,
        env: Mapping[str, str] | None = None,
        stderr_too: bool = False,
        columns: int = 200,
        stdout_file: Path | None = None,
    ) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        sink = stdout_file.open("wb") if stdout_file is not None else None
        try:
            self.proc = subprocess.Popen(
                [AGL, *args],
                stdin=subprocess.DEVNULL,
                stdout=slave if sink is None else sink,
                stderr=slave if stderr_too or sink is not None else subprocess.PIPE,
                cwd=agl.cwd,
                env=dict(env) if env is not None else {**agl.env, "COLUMNS": str(columns)},
            )
        finally:
            os.close(slave)
            if sink is not None:
                sink.close()
        self.chunks: list[bytes] = []
        self.closed = False

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False once the terminal is closed."""
        if self.closed:
            return False
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.chunks.append(chunk)
        return True

    def read_until(self, needle: str, timeout: float = CALL_TIMEOUT) -> str:
        """Everything printed so far, once it contains ``needle`` (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            assert time.monotonic() < deadline, f"{needle!r} never appeared; got:\n{self.text}"
            if not self._read(0.1) and needle not in self.text:
                raise AssertionError(f"agl closed the terminal without {needle!r}; got:\n{self.text}")
        return self.text

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = CALL_TIMEOUT) -> tuple[int, str, str]:
        """Wait for the exit: (code, the terminal's text, stderr when it was a pipe)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self._read(0.1):
                pass  # until the terminal closes: the process (and anything it started) exited
            _, err = self.proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            os.close(self.master)
        return self.proc.returncode, self.text, (err or b"").decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_on_tty(agl: Agl, *args: str, **options: Any) -> tuple[int, str, str]:
    """Run agl to the end on a pseudo-terminal (see :class:`OnTty`)."""
    return OnTty(agl, *args, **options).finish()


_DRIVER = Path(__file__).with_name("cli_fuzz_driver.py")


def run_driver(sandbox: Path, specs: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """Run ``specs`` (each ``{"args", "env", "stdin", "timeout"}``) through tests/cli_fuzz_driver.py:
    the installed ``agl`` script in forked children of one warm interpreter, in ``sandbox``
    (its docstring says why, and tests/test_cli_fuzz.py checks the results match real runs).
    Returns one ``{"code", "seconds", "stdout", "stderr", "changes"}`` per spec."""
    specs_path, results_path = work / "specs.json", work / "results.json"
    specs_path.write_text(json.dumps(specs))
    proc = subprocess.run(
        [sys.executable, str(_DRIVER), str(sandbox), str(specs_path), str(results_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "AGL_SCRIPT": AGL},
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(results_path.read_text())
    return results


async def finished_rollouts(root: Path, *, runs: int = 1) -> list[str]:
    """``runs`` rollouts, each dequeued by worker w1 and succeeded; their ids."""
    from store_fs import FileStore

    store = FileStore(root)
    try:
        ids = []
        for i in range(runs):
            rollout = await store.enqueue_rollout(input=f"q{i}")
            attempted = await store.dequeue_rollout(worker_id="w1")
            assert attempted is not None
            assert attempted.rollout_id == rollout.rollout_id
            await store.update_attempt(rollout.rollout_id, attempted.attempt.attempt_id, status="succeeded")
            ids.append(rollout.rollout_id)
        return ids
    finally:
        store.close()
