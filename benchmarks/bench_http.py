#!/usr/bin/env python
"""Request loops against ``agl store``: client throughput and the server's CPU per request.

Two loops through one httpx keep-alive connection (the way ``store_fs.client`` talks):
``--n`` times ``GET /v1/agl/health`` and ``--n`` times ``POST /v1/agl/spans`` (one span
each, to one attempt). Reported per loop: requests per second as the client saw them
(on a small machine mostly the client's own cost: httpx takes ~1 ms a request) and the
server process's CPU microseconds per request (user + system, from ``/proc``), which
says what the server costs whatever else runs on the machine. Medians of ``--reps``
rounds, each on a fresh store and server; with several ``--tree`` the rounds interleave.

``--layer`` measures the HTTP layer alone instead: a handler that answers at once,
behind ``store_fs.server.http`` (``ours``) and, if installed, behind uvicorn with
httptools and with h11 (``uvicorn-httptools``, ``uvicorn-h11``), so the framing and
connection code is all that differs.

Usage::

    python benchmarks/bench_http.py                              # this checkout, n=2000, 3 rounds
    python benchmarks/bench_http.py --tree new=. --tree old=/tmp/old-checkout --reps 5
    python benchmarks/bench_http.py --layer --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")

# The servers of --layer: each prints its port on stdout, then serves until killed.
LAYER_OURS = """
import asyncio
from store_fs.server.http import HttpServer, Response
async def handler(request):
    return Response(200 if request.method == "GET" else 201, b'{"status":"ok"}')
async def main():
    server = HttpServer(handler, lambda status, detail: Response(status, detail.encode()))
    await server.start("127.0.0.1", 0)
    print(server.sockets[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
LAYER_UVICORN = """
import asyncio, socket, sys
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    status = 200 if scope["method"] == "GET" else 201
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]; probe.close()
config = uvicorn.Config(app, host="127.0.0.1", port=port, http=sys.argv[1], loop="asyncio",
                        log_level="warning", access_log=False, lifespan="off")
server = uvicorn.Server(config)
async def main():
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    print(port, flush=True)
    await task
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def span(rollout_id: str, attempt_id: str, i: int) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id, "attempt_id": attempt_id, "sequence_id": i + 1,
        "trace_id": f"{i:032x}", "span_id": f"{i:016x}", "parent_id": None, "name": "s",
        "status": {"status_code": "OK"}, "attributes": {"k": i}, "events": [], "links": [],
        "start_time": 1.0, "end_time": 2.0, "context": None, "parent": None,
        "resource": {"attributes": {}, "schema_url": ""},
    }  # fmt: skip


async def loops(url: str, pid: int, n: int, *, store: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url) as client:
        rid = aid = "-"
        if store:
            started = (await client.post("/v1/agl/rollouts", json={"input": 1})).json()
            rid, aid = started["rollout_id"], started["attempt"]["attempt_id"]
        for _ in range(50):
            await client.get("/v1/agl/health")
        for name in ("health", "spans"):
            cpu, t0 = cpu_seconds(pid), time.perf_counter()
            for i in range(n):
                if name == "health":
                    reply = await client.get("/v1/agl/health")
                else:
                    reply = await client.post("/v1/agl/spans", json=span(rid, aid, i))
                assert reply.status_code in (200, 201), reply.text
            out[f"{name} req/s"] = n / (time.perf_counter() - t0)
            out[f"{name} server us/req"] = (cpu_seconds(pid) - cpu) / n * 1e6
    return out


def run_store(tree: Path, n: int) -> dict[str, float]:
    """One round against ``agl store`` run from ``tree`` (its store_fs and agl_cli first on the path)."""
    env = dict(os.environ, PYTHONPATH=str(tree), LITELLM_LOCAL_MODEL_COST_MAP="True")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        agl = [sys.executable, "-c", "from agl_cli.main import main; main()"]
        command = [*agl, "--store", f"{tmp}/store", "store", "--port", "0", "--log-level", "WARNING"]
        with log.open("wb") as sink:
            proc = subprocess.Popen(command, stdout=sink, stderr=sink, env=env, cwd=tmp)
        try:
            deadline = time.monotonic() + 30
            while not (found := LISTENING.search(log.read_text(errors="replace"))):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text(errors="replace")[-2000:])
                time.sleep(0.02)
            return asyncio.run(loops(f"http://127.0.0.1:{found.group(1)}", proc.pid, n, store=True))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def run_layer(kind: str, n: int) -> dict[str, float]:
    """One round against the HTTP layer alone (see the module docstring)."""
    script, args = (LAYER_OURS, []) if kind == "ours" else (LAYER_UVICORN, [kind.split("-", 1)[1]])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=env, cwd="/")
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return asyncio.run(loops(f"http://127.0.0.1:{port}", proc.pid, n, store=False))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--n", type=int, default=2000, help="requests per loop")
    parser.add_argument("--reps", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR", help="a checkout to run")
    parser.add_argument("--layer", action="store_true", help="the HTTP layer alone, ours against uvicorn")
    parser.add_argument("--json", type=Path, help="write the results here too")
    opts = parser.parse_args()
    if opts.layer:
        subjects: list[tuple[str, Any]] = [("ours", "ours")]
        try:
            import uvicorn  # noqa: F401
        except ImportError:
            print("uvicorn is not installed: measuring ours only", file=sys.stderr)
        else:
            subjects += [("uvicorn-httptools", "uvicorn-httptools"), ("uvicorn-h11", "uvicorn-h11")]
    else:
        trees = opts.tree or [f"this={ROOT}"]
        subjects = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in trees]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in subjects}
    for rep in range(opts.reps):
        for name, subject in subjects:
            result = run_layer(subject, opts.n) if opts.layer else run_store(subject, opts.n)
            rounds[name].append(result)
            shown = ", ".join(f"{k} {v:.0f}" for k, v in result.items())
            print(f"round {rep + 1} {name}: {shown}", flush=True)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
    print(f"\nmedians of {opts.reps} rounds, n={opts.n}:")
    for name, values in medians.items():
        print(f"  {name:18} " + ", ".join(f"{k} {v:.0f}" for k, v in values.items()))
    if opts.json:
        results = {"n": opts.n, "reps": opts.reps, "rounds": rounds, "medians": medians}
        opts.json.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
