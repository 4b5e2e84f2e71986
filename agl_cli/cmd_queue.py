"""agl enqueue / dequeue / wait: the algorithm's and the runner's side of the queue."""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Annotated, Any

import orjson
import typer

from store_fs.errors import ExitCode

from . import output
from .exit_codes import CliError
from .inputs import read_lines, read_object, read_value
from .params import MAX_COUNT, Mode, RetryOn, RolloutArgs, seconds, values
from .progress import Progress
from .state import CliState, run
from .tables import ROLLOUT_COLUMNS

# Big inputs are enqueued in chunks of this many, so a progress bar can move.
ENQUEUE_CHUNK = 500


def _config(
    max_attempts: int | None, timeout: float | None, unresponsive: float | None, retry_on: list[str]
) -> Any:
    from store_fs import RolloutConfig

    if max_attempts is None and timeout is None and unresponsive is None and not retry_on:
        return None
    return RolloutConfig.model_validate(
        {
            "max_attempts": max_attempts or 1,
            "timeout_seconds": timeout,
            "unresponsive_seconds": unresponsive,
            "retry_condition": retry_on,
        }
    )


def _derived_key(value: Any, mode: str | None, resources_id: str | None) -> str:
    body = orjson.dumps(
        {"input": value, "mode": mode, "resources_id": resources_id}, option=orjson.OPT_SORT_KEYS
    )
    return "input-sha256:" + hashlib.sha256(body).hexdigest()


def enqueue(
    ctx: typer.Context,
    input: Annotated[
        str | None,
        typer.Argument(
            help="Task input as JSON, or @FILE. Omit (or '-') to read one input per line of stdin."
        ),
    ] = None,
    mode: Annotated[Mode | None, typer.Option(help="The rollout's mode.")] = None,
    resources_id: Annotated[
        str | None, typer.Option("--resources-id", help="Resources snapshot (default: the latest).")
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option("--max-attempts", min=1, max=MAX_COUNT, help="Attempts allowed in all.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(parser=seconds, metavar="SECONDS", help="Seconds an attempt may run before timing out."),
    ] = None,
    unresponsive: Annotated[
        float | None,
        typer.Option(
            parser=seconds,
            metavar="SECONDS",
            help="Seconds without a heartbeat before an attempt is unresponsive.",
        ),
    ] = None,
    retry_on: Annotated[
        list[RetryOn] | None,
        typer.Option("--retry-on", help="Attempt outcome that allows a retry (repeatable)."),
    ] = None,
    metadata: Annotated[str | None, typer.Option(help="Metadata as a JSON object, or @FILE.")] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Idempotency key: enqueueing the same key again returns the same rollout."),
    ] = None,
    idempotent: Annotated[
        bool, typer.Option(help="Derive each rollout's key from its input, mode and resources id.")
    ] = False,
) -> None:
    """Queue rollouts for runners to pick up.

    \b
    agl enqueue '{"question": "What is 2+2?"}' --mode train
    agl enqueue @task.json --max-attempts 3 --retry-on failed --retry-on timeout
    jq -c '.[]' tasks.json | agl enqueue --idempotent      # one rollout per line
    """
    cli = CliState.of(ctx)
    from store_fs import EnqueueRolloutRequest

    store = cli.open_store()
    config = _config(max_attempts, timeout, unresponsive, values(retry_on) or [])
    meta = read_object(metadata, "--metadata")
    if key is not None and idempotent:
        raise CliError("--key and --idempotent exclude each other")
    inputs = _inputs(input, cli.quiet)  # parse everything before changing anything
    if key is not None and len(inputs) != 1:
        raise CliError("--key names one rollout; use --idempotent for many")
    requests = [
        EnqueueRolloutRequest(input=v, mode=mode, resources_id=resources_id, config=config, metadata=meta)
        for v in inputs
    ]
    keys = None
    if key is not None:
        keys = [key]
    elif idempotent:
        keys = [_derived_key(v, mode, resources_id) for v in inputs]
    rollouts: list[Any] = []
    try:
        _enqueue(store, requests, keys, cli.quiet, rollouts)
    except BaseException as err:
        if rollouts or isinstance(err, KeyboardInterrupt):
            _say_what_was_queued(cli, rollouts, len(requests))
        raise
    if len(rollouts) == 1 and cli.out.machine:
        cli.out.emit_json(rollouts[0])
    else:
        cli.out.emit_records(rollouts, ROLLOUT_COLUMNS)
    output.info(f"queued {len(rollouts)} rollout(s)")


def _say_what_was_queued(cli: CliState, rollouts: list[Any], wanted: int) -> None:
    """Print the rollouts queued before a stop (a failure, Ctrl-C), so the caller learns which
    inputs are queued; and that the chunk being queued then may be, in part."""
    if rollouts:
        cli.out.emit_records(rollouts, ROLLOUT_COLUMNS)
    in_flight = min(ENQUEUE_CHUNK, wanted - len(rollouts))
    said = f"stopped after queueing {len(rollouts)} of {wanted} rollout(s)"
    if rollouts:
        said += " (printed)"
    if in_flight:
        said += f"; up to {in_flight} more may have been queued as it stopped"
        said += " (--idempotent queues an input once)"
    output.problem(said)


def _inputs(arg: str | None, quiet: bool) -> list[Any]:
    """The task inputs: the argument's one value, or one per line of stdin (at least one)."""
    if arg is not None and arg != "-":
        return [read_value(arg, "input")]
    if sys.stdin.isatty():
        raise CliError("no input: pass a JSON argument, @FILE, or JSON lines on stdin")
    with Progress("lines read", quiet=quiet) as bar:
        inputs = []
        for _, value in read_lines("-"):
            inputs.append(value)
            bar.advance()
    if not inputs:
        raise CliError("no input: stdin held no JSON lines")
    return inputs


def _enqueue(
    store: Any, requests: list[Any], keys: list[str] | None, quiet: bool, rollouts: list[Any]
) -> None:
    """Enqueue in chunks (one call for small inputs), with a progress bar on a terminal, adding
    the rollouts of each chunk to ``rollouts`` as it is queued."""
    with Progress("enqueued", len(requests), quiet=quiet) as bar:
        for start in range(0, len(requests), ENQUEUE_CHUNK):
            chunk = requests[start : start + ENQUEUE_CHUNK]
            chunk_keys = None if keys is None else keys[start : start + ENQUEUE_CHUNK]
            rollouts.extend(run(store.enqueue_many_rollouts(chunk, idempotency_keys=chunk_keys)))
            bar.advance(len(chunk))


def dequeue(
    ctx: typer.Context,
    worker_id: Annotated[str | None, typer.Option("--worker-id", help="Worker claiming the rollout.")] = None,
    wait: Annotated[
        float,
        typer.Option(
            parser=seconds, metavar="SECONDS", help="Seconds to wait for work if the queue is empty."
        ),
    ] = 0.0,
) -> None:
    """Claim the oldest queued rollout and start an attempt on it.

    Prints the rollout with its new attempt (`.attempt.attempt_id`). Exits 10 when the queue
    stays empty.

    \b
    R=$(agl dequeue --worker-id w1 --wait 30) || exit 0
    RID=$(jq -r .rollout_id <<<"$R"); AID=$(jq -r .attempt.attempt_id <<<"$R")
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        attempted = run(store.dequeue_rollout(worker_id=worker_id))
        if attempted is not None:
            try:
                cli.out.emit_json(attempted)
            except OSError:
                # The claim is made: say which, or the attempt waits for a runner that never
                # learned of it (for good, without a timeout).
                output.problem(
                    f"claimed attempt {attempted.attempt.attempt_id} of {attempted.rollout_id}, "
                    "but it could not be printed: complete or fail it"
                )
                raise
            return
        if time.monotonic() >= deadline:
            output.info("queue is empty")
            raise typer.Exit(ExitCode.QUEUE_EMPTY)
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))


def wait(
    ctx: typer.Context,
    rollout_ids: RolloutArgs,
    timeout: Annotated[
        float | None,
        typer.Option(parser=seconds, metavar="SECONDS", help="Give up after this long (default: never)."),
    ] = None,
) -> None:
    """Wait until rollouts finish ('-': read their ids from stdin); print them; exit 0 only if all
    succeeded.

    Exits 11 if the timeout passed first, 12 if all finished but some failed or were cancelled;
    0 at once when '-' reads no id (a filter that matched nothing).

    \b
    agl wait ro-0123456789ab ro-ba9876543210 --timeout 600
    agl rollouts list --status queuing | jq -r .rollout_id | agl wait -
    """
    cli = CliState.of(ctx)
    ids = list(rollout_ids)
    if "-" in ids and ids != ["-"]:
        raise CliError("'-' reads the rollout ids from stdin: give it alone")
    if ids == ["-"]:
        ids = _ids_from_stdin()
        if not ids:  # as a filter's empty output: every one of none has finished
            output.info("no rollout ids on stdin: nothing to wait for")
            return
    store = cli.open_store()
    for rid in dict.fromkeys(ids):
        if run(store.get_rollout_by_id(rid)) is None:
            raise CliError(f"unknown rollout {rid}", ExitCode.NOT_FOUND)
    finished = run(_wait_with_progress(store, ids, timeout, cli.quiet))
    cli.out.emit_records(finished, ROLLOUT_COLUMNS)
    unique = set(ids)
    if len({r.rollout_id for r in finished}) < len(unique):
        output.info(f"{len(unique) - len({r.rollout_id for r in finished})} rollout(s) not finished")
        raise typer.Exit(ExitCode.WAIT_TIMED_OUT)
    if any(r.status != "succeeded" for r in finished):
        raise typer.Exit(ExitCode.NOT_ALL_SUCCEEDED)


def _ids_from_stdin() -> list[str]:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CliError(f"stdin is not UTF-8 text (byte {err.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


async def _wait_with_progress(
    store: Any, ids: list[str], timeout: float | None, quiet: bool = False
) -> list[Any]:
    """Wait in short slices so a terminal can show progress. A rollout seen finished is kept,
    and not asked for again: one removed meanwhile (``agl prune``) would drop out of a later
    answer, and the wait would never see every rollout finished."""
    bar = Progress("finished", len(set(ids)), quiet=quiet)
    if not bar.enabled:
        result: list[Any] = await store.wait_for_rollouts(rollout_ids=ids, timeout=timeout)
        return result
    start = time.monotonic()
    finished: dict[str, Any] = {}
    with bar:
        while True:
            remaining = None if timeout is None else timeout - (time.monotonic() - start)
            step = 1.0 if remaining is None else max(min(1.0, remaining), 0.0)
            waiting = list(dict.fromkeys(i for i in ids if i not in finished))
            for rollout in await store.wait_for_rollouts(rollout_ids=waiting, timeout=step):
                finished.setdefault(rollout.rollout_id, rollout)
            bar.advance(len(finished) - bar.done)
            if bar.done == bar.total or (remaining is not None and remaining <= 0):
                return [finished[i] for i in ids if i in finished]
