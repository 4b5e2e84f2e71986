"""agl run MODULE:FUNCTION: runner processes for an agent, from the shell."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Annotated, Any, Literal

import typer

from . import output
from .exit_codes import CliError
from .params import interval_seconds
from .state import CliState

TracerName = Literal["otel", "agentops"]


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
    except (TypeError, ValueError):  # a relative or empty name: '../x', '.x'
        raise CliError(f"{module_name!r} is not a module name (dotted names, like pkg.agents)") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{module_name} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if isinstance(obj, types.ModuleType):
        raise CliError(f"{spec} is a module, not a function or an agent")
    return obj


def _check_agent(spec: str, obj: Any) -> None:
    """Refuse, here, an object no runner can use: else every runner process dies on it with a
    traceback, and again after each restart."""
    from store_fs.agent import as_agent

    try:
        as_agent(obj)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise CliError(f"{spec} cannot be run: {err}") from None


def _make_tracer(name: str) -> Any:
    if name == "otel":
        return None  # the runner's default
    if name == "agentops":
        from store_fs.tracing.agentops_tracer import AgentOpsTracer

        return AgentOpsTracer()
    raise CliError("--tracer must be otel or agentops")


def run(
    ctx: typer.Context,
    agent: Annotated[
        str, typer.Argument(help="The agent: MODULE:FUNCTION (an @rollout function or a LitAgent).")
    ],
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, max=1024, help="Runner processes to start.")
    ] = 1,
    max_parallel: Annotated[
        int, typer.Option("--max-parallel", min=1, max=1024, help="Rollouts at once per runner.")
    ] = 1,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            parser=interval_seconds,
            metavar="SECONDS",
            help="Seconds between polls of an empty queue.",
        ),
    ] = 1.0,
    tracer: Annotated[TracerName, typer.Option(help="otel (default) or agentops.")] = "otel",
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts", min=0, max=1_000_000, help="Restart runners that crash, this many times in all."
        ),
    ] = 0,
    heartbeat_seconds: Annotated[
        float,
        typer.Option(
            "--heartbeat-seconds",
            parser=interval_seconds,
            metavar="SECONDS",
            help="Seconds between heartbeats of each attempt and runner.",
        ),
    ] = 10.0,
) -> None:
    """Start runner processes that execute AGENT on the store's queue until Ctrl-C.

    The store may be a directory or an `agl store` URL (--store http://127.0.0.1:4747).
    A store that does not answer (at start-up or later) is retried until it does; each
    runner says so once when the outage starts and once when it ends.
    Ctrl-C (or SIGTERM) stops the runners: they take no more work, cancel their agents and
    report the attempts in flight failed ("runner interrupted"), so each rollout's retry
    rule applies, and exit within 10 s. A second Ctrl-C exits at once.

    \b
    AGL_STORE=runs/exp1 agl run examples.apo_custom_algorithm:apo_rollout --workers 4
    """
    cli = CliState.of(ctx)
    from store_fs.runner_pool import RunnerPool, check_runner_store

    if heartbeat_seconds <= 0:
        raise CliError("--heartbeat-seconds must be positive")
    tracer_obj = _make_tracer(tracer)
    agent_obj = load_agent(agent)
    _check_agent(agent, agent_obj)
    store = cli.store_location()
    check_runner_store(store)  # fail now, not in every child
    pool = RunnerPool(
        store,
        agent_obj,
        n_runners=workers,
        tracer=tracer_obj,
        runner_kwargs={
            "max_parallel": max_parallel,
            "poll_interval": poll_interval,
            "heartbeat_seconds": heartbeat_seconds,
        },
        max_restarts=max_restarts,
    )
    pool.start()
    output.info(f"{workers} runner(s) for {agent} on {store}; Ctrl-C to stop")
    pool.wait()
    output.info("runners stopped")
    if pool.failed:
        why = "; ".join(pool.failures) or "a runner exited with an error or had to be terminated"
        output.problem(f"{why} (--max-restarts restarts runners that die)")
        raise typer.Exit(1)
