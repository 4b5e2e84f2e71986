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

``--loop`` runs the loop benchmark of ``compare.py`` (``--n`` rollouts enqueued at once; 4
runner processes dequeue, add 5 spans one call each, complete; the algorithm waits for all)
over HTTP, three ways, interleaved: ``agl store`` through upstream 0.3's client
(``agl-http``), ``agl store`` through agl's client (``agl-own``), and upstream's own
``agl store`` (its LightningStoreServer over InMemoryLightningStore) through upstream's
client (``up-http``). Unlike ``compare.py``'s loop, the clock starts only once every runner
has opened its store and made one request: importing upstream's package takes 3-60 s of a
busy 2-core machine, and a runner still importing must not count against the store. Printed:
rollouts per second, and CPU milliseconds per rollout of the server, the runners together and
the algorithm, medians, with each figure's ratio to ``up-http``. ``--workers N`` adds
``agl-http-wN`` and ``agl-own-wN``: the same with ``agl store --workers N`` (the server's CPU
is then its worker processes' together).

Usage::

    python benchmarks/bench_http.py                              # this checkout, n=2000, 3 rounds
    python benchmarks/bench_http.py --tree new=. --tree old=/tmp/old-checkout --reps 5
    python benchmarks/bench_http.py --layer --reps 3
    python benchmarks/bench_http.py --loop --n 1000 --reps 3
    python benchmarks/bench_http.py --loop --n 1000 --reps 3 --workers 2
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
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]  # the harness, and this checkout's store_fs

LOOP_BACKENDS = ("agl-http", "agl-own", "up-http")
LOOP_BASELINE = "up-http"
LOOP_RUNNERS = 4
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


def server_cpu_seconds(pid: int) -> float:
    """A server's CPU: its own and its live children's (``agl store --workers``)."""
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children)


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


# -- --loop ------------------------------------------------------------------------------
def _loop_runner(spec: str, index: int, ready: Any, go: Any, stop: Any, results: Any) -> None:
    """A runner process: open the store, make one request, say so, then run until ``stop``."""
    import workloads
    from backends import close_store, open_spec, span_model

    async def body() -> int:
        store = open_spec(spec)
        try:
            await store.statistics()  # the client's session is up: start-up is behind us
            ready.put(index)
            await asyncio.to_thread(go.wait, 600)
            done: int = await workloads._runner(store, f"runner-{index}", stop.is_set, span_model(spec))
            return done
        finally:
            await close_store(store)

    try:
        results.put(asyncio.run(body()))
    except BaseException as err:  # report, never leave the parent waiting
        results.put(f"runner {index}: {err!r}")
        raise


async def _loop_once(name: str, n: int, base: Path) -> dict[str, float]:
    """One loop of ``n`` rollouts on a fresh deployment of backend ``name``."""
    import multiprocessing

    import workloads
    from backends import BACKENDS, close_store, deployed

    ctx = multiprocessing.get_context("spawn")
    with deployed(BACKENDS[name], base) as dep:
        assert dep.spec is not None
        assert dep.server is not None
        ready, results, go, stop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
        procs = [
            ctx.Process(target=_loop_runner, args=(dep.spec, i, ready, go, stop, results))
            for i in range(LOOP_RUNNERS)
        ]
        for proc in procs:
            proc.start()
        store = dep.open()
        try:
            await store.statistics()
            for _ in procs:
                await asyncio.to_thread(ready.get, True, 600)
            pids = [dep.server.proc.pid] + [p.pid for p in procs if p.pid is not None]
            server0 = server_cpu_seconds(dep.server.proc.pid)
            cpu0, algo0, start = [cpu_seconds(p) for p in pids], time.process_time(), time.perf_counter()
            go.set()
            remaining = set(await workloads._fill(store, n))
            while remaining:
                remaining -= {r.rollout_id for r in await workloads._wait_some(store, sorted(remaining))}
            elapsed = time.perf_counter() - start
            cpu1, algo = [cpu_seconds(p) for p in pids], time.process_time() - algo0
            cpu0[0], cpu1[0] = server0, server_cpu_seconds(dep.server.proc.pid)
        finally:
            stop.set()
            counts = [await asyncio.to_thread(results.get, True, 600) for _ in procs]
            for proc in procs:
                proc.join(30)
            await close_store(store)
    if any(isinstance(c, str) for c in counts) or sum(counts) != n:
        raise RuntimeError(f"{name}: runners reported {counts}, not {n} rollouts in all")
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "rollouts/s": n / elapsed,
        "server ms/rollout": used[0] / n * 1000,
        "runners ms/rollout": sum(used[1:]) / n * 1000,
        "algorithm ms/rollout": algo / n * 1000,
    }


def run_loops(n: int, reps: int, workers: int = 1) -> dict[str, dict[str, float]]:
    """Every backend once a round, the order rotated each round; the medians. With
    ``workers`` > 1, also ``agl-http`` and ``agl-own`` served by that many processes."""
    names = list(LOOP_BACKENDS)
    if workers > 1:
        from backends import BACKENDS, with_workers

        names[2:2] = [with_workers(BACKENDS[name], workers).name for name in ("agl-http", "agl-own")]
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="agl-bench-http-") as tmp:
        for rep in range(reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                result = asyncio.run(_loop_once(name, n, Path(tmp)))
                rounds[name].append(result)
                shown = ", ".join(f"{k} {v:.1f}" for k, v in result.items())
                print(f"round {rep + 1} {name}: {shown} (load {os.getloadavg()[0]:.1f})", flush=True)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
    base = medians[LOOP_BASELINE]
    print(f"\nthe loop over HTTP: {n} rollouts, {LOOP_RUNNERS} runner processes, medians of {reps} rounds")
    print("(ratio to up-http: how many times faster, or how many times less CPU a rollout)")
    for name, values in medians.items():
        cells = []
        for key, value in values.items():
            better = value / base[key] if key == "rollouts/s" else base[key] / value if value else 0.0
            cells.append(f"{key} {value:.1f}" + ("" if name == LOOP_BASELINE else f" ({better:.2f}x)"))
        print(f"  {name:12} " + ", ".join(cells))
    return medians


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--n", type=int, default=2000, help="requests per loop")
    parser.add_argument("--reps", type=int, default=3, help="rounds (medians are reported)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR", help="a checkout to run")
    parser.add_argument("--layer", action="store_true", help="the HTTP layer alone, ours against uvicorn")
    parser.add_argument("--loop", action="store_true", help="the loop benchmark, three ways (see above)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--workers", type=int, default=1, help="--loop: also agl store --workers N (agl-http-wN, agl-own-wN)"
    )
    opts = parser.parse_args()
    if opts.loop:
        medians = run_loops(opts.n, opts.reps, opts.workers)
        if opts.json:
            opts.json.write_text(json.dumps({"n": opts.n, "reps": opts.reps, "medians": medians}))
        return
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
