"""Helpers for the end-to-end tests of the ``agl`` command (tests/test_cli.py).

Every call runs the installed console script in a subprocess, with stdout and stderr
captured separately (so stdout is a pipe: agl prints JSON / JSONL) and a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
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


class Agl:
    """Runs agl against one store directory."""

    def __init__(self, store: Path, cwd: Path) -> None:
        self.store = store
        self.cwd = cwd
        self.env = agl_env(store)

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = CALL_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Result:
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

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [AGL, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env=self.env,
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


def snapshot(store: Path) -> dict[str, bytes]:
    """Every file under the store with its contents, ignoring the event log (events/)."""
    out: dict[str, bytes] = {}
    for path in sorted(store.rglob("*")):
        rel = path.relative_to(store)
        if rel.parts and rel.parts[0] == "events":
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
