"""Runs many invocations of the installed ``agl`` script, each in a forked child of one warm
interpreter (used by tests/test_cli_fuzz.py).

    python tests/cli_fuzz_driver.py SANDBOX SPECS.json RESULTS.json
    python tests/cli_fuzz_driver.py --serve    # one JSON spec per stdin line, one result per line

The second form serves the CLI tests' ``Agl(..., warm=...)`` (tests/cli_helpers.py): each spec
names its working directory (``cwd``) and no files are compared.

Why a fork server: a fresh ``agl`` process spends ~0.4 s importing pydantic, typer and the
store before it looks at its arguments, so a thousand invocations would take minutes on CI's
two cores. This driver imports the same modules once, then for each invocation forks a child
that executes the installed console script itself (``runpy.run_path`` on the file ``pip``
wrote, under ``__main__``, exactly as its shebang would) with the invocation's argv, stdin,
stdout, stderr, environment and working directory. What differs from an ``exec`` of the
script is only that modules are already imported; tests/test_cli_fuzz.py runs a sample of the
same invocations through the real executable and requires identical results.

Each child runs in its own process group, which the driver kills when the invocation ends or
times out (a hang), so nothing a child started outlives it. After each invocation the driver
compares the sandbox's files (sizes and modification times) with how they were before, so a
write anywhere in it (the store, the working directory, HOME, TMPDIR) is attributed to the
invocation that made it.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What `agl` commands import when they run; loaded once here so that children start warm.
WARM_MODULES = (
    "agl_cli.main",
    "store_fs",
    "store_fs.store",
    "store_fs.exporting",
    "store_fs.live",
    "store_fs.rewards",
    "store_fs.runner_pool",
    "store_fs.server",
    "pydantic",
    "orjson",
    "watchfiles",
)

Fingerprint = dict[str, tuple[int, int]]


def _operational(rel: str) -> bool:
    """Per-process files that are not data (the rule of cli_helpers.snapshot): the change feed
    and the clock probes, with the modification times of their directories."""
    parts = rel.split("/")
    if "events" in parts[:2]:
        return True
    return "locks" in parts[:2] and (parts[-1] == "locks" or parts[-1].startswith("clock."))


def fingerprint(root: Path) -> Fingerprint:
    """Every path under ``root`` with its size and modification time (directories too)."""
    found: Fingerprint = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if _operational(rel):
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            found[rel] = (st.st_size if not os.path.isdir(path) else 0, st.st_mtime_ns)
    return found


def changes(before: Fingerprint, after: Fingerprint) -> list[str]:
    out = [f"+ {p}" for p in sorted(after.keys() - before.keys())]
    out += [f"- {p}" for p in sorted(before.keys() - after.keys())]
    out += [f"~ {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return out


def _child(script: str, spec: dict[str, Any], sandbox: Path, fds: tuple[int, int, int]) -> None:
    """In the forked child: become the invocation, run the script, never return."""
    code = 70  # EX_SOFTWARE: the script raised past SystemExit (it never should)
    try:
        os.setpgid(0, 0)
        os.chdir(sandbox)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.environ.clear()
        os.environ.update(spec["env"])
        sys.argv = [script, *spec["args"]]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _wait(pid: int, timeout: float) -> tuple[int | None, float]:
    """(exit code or None on timeout, seconds); the child's process group is killed either way."""
    start = time.monotonic()
    status: int | None = None
    exited = os.pidfd_open(pid)  # readable once the child exits
    try:
        if select.select([exited], [], [], timeout)[0]:
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(exited)
    seconds = time.monotonic() - start
    try:
        os.killpg(pid, signal.SIGKILL)  # a hang, or anything the invocation left running
    except ProcessLookupError:
        pass
    if status is None:
        os.waitpid(pid, 0)
    return status, seconds


def run_one(script: str, spec: dict[str, Any], sandbox: Path, scratch: Path) -> dict[str, Any]:
    stdin_path = scratch / "stdin"
    stdin_path.write_bytes(spec["stdin"].encode("utf-8", "surrogateescape") if spec["stdin"] else b"")
    with (
        open(stdin_path if spec["stdin"] is not None else os.devnull, "rb") as stdin,
        open(scratch / "stdout", "w+b") as out,
        open(scratch / "stderr", "w+b") as err,
    ):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(script, spec, sandbox, (stdin.fileno(), out.fileno(), err.fileno()))
        code, seconds = _wait(pid, spec["timeout"])
        out.seek(0)
        err.seek(0)
        return {
            "code": code,
            "seconds": seconds,
            "stdout": out.read().decode("utf-8", "backslashreplace"),
            "stderr": err.read().decode("utf-8", "backslashreplace"),
        }


def _warm_up() -> str:
    """Import what every invocation needs, once; the script to run."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    importlib.import_module("agl_cli.main").cli_command()  # the click command, built once
    return os.environ["AGL_SCRIPT"]


def serve() -> None:
    """Answer specs from stdin, one JSON line each, until stdin closes."""
    script = _warm_up()
    with tempfile.TemporaryDirectory(prefix="agl-warm-io-") as scratch:
        for line in sys.stdin:
            spec = json.loads(line)
            # Only the children's fds 0-2 are redirected (in _child): the replies go out here.
            sys.stdout.write(json.dumps(run_one(script, spec, Path(spec["cwd"]), Path(scratch))) + "\n")
            sys.stdout.flush()


def main(sandbox: Path, specs_path: Path, results_path: Path) -> None:
    script = _warm_up()
    specs = json.loads(specs_path.read_text())
    results = []
    baseline = fingerprint(sandbox)
    with tempfile.TemporaryDirectory(prefix="agl-fuzz-io-") as scratch:
        for spec in specs:
            result = run_one(script, spec, sandbox, Path(scratch))
            now = fingerprint(sandbox)
            result["changes"] = changes(baseline, now)
            baseline = now  # each change is blamed on the invocation that made it, once
            results.append(result)
    results_path.write_text(json.dumps(results))


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
