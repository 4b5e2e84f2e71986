"""agl run MODULE:FUNCTION: runner processes for an agent, from the shell."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Annotated, Any

import typer

from . import output
from .errors import CliError
from .state import store_path


def load_agent(spec: str) -> Any:
    """The object named ``module:attribute`` (the current directory is importable)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"expected MODULE:FUNCTION, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise CliError(f"cannot import {module_name}: {err}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{module_name} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def run(
    agent: Annotated[
        str, typer.Argument(help="The agent: MODULE:FUNCTION (an @rollout function or a LitAgent).")
    ],
    workers: Annotated[int, typer.Option("--workers", "-w", help="Runner processes to start.")] = 1,
    max_parallel: Annotated[int, typer.Option("--max-parallel", help="Rollouts at once per runner.")] = 1,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", help="Seconds between polls of an empty queue.")
    ] = 1.0,
    tracer: Annotated[str, typer.Option(help="otel (default) or agentops.")] = "otel",
) -> None:
    """Start runner processes that execute AGENT on the store's queue until Ctrl-C.

    Ctrl-C (or SIGTERM) stops them cleanly; attempts they were running are left for the
    reaper, which retries them as their rollout's config allows.

    \b
    AGL_STORE=runs/exp1 agl run examples.apo_custom_algorithm:apo_rollout --workers 4
    """
    import multiprocessing as mp
    import signal

    from store_fs.trainer import run_runner_process

    if workers < 1:
        raise CliError("--workers must be at least 1")
    if tracer not in ("otel", "agentops"):
        raise CliError("--tracer must be otel or agentops")
    agent_obj = load_agent(agent)
    store = str(store_path())
    from store_fs import FileStore

    if not store.startswith(("http://", "https://")):
        FileStore(store, create=False)  # fail now, not in every child
    tracer_obj: Any = None
    if tracer == "agentops":
        from store_fs.tracing.agentops_tracer import AgentOpsTracer

        tracer_obj = AgentOpsTracer()
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    kwargs = {"max_parallel": max_parallel, "poll_interval": poll_interval}
    procs = [
        ctx.Process(
            target=run_runner_process,
            args=(store, agent_obj, i, stop, tracer_obj, kwargs),
            name=f"runner-{i}",
        )
        for i in range(workers)
    ]
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for proc in procs:
        proc.start()
    output.info(f"{workers} runner(s) for {agent} on {store}; Ctrl-C to stop")
    try:
        while any(p.is_alive() for p in procs) and not stop.is_set():
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    stop.set()
    for proc in procs:
        proc.join(20)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    output.info("runners stopped")
    if any(p.exitcode != 0 for p in procs):
        raise typer.Exit(1)
