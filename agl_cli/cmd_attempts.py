"""agl complete / fail / heartbeat / attempts update: the runner reports on its attempt."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from . import output
from .errors import EXIT_LOST
from .inputs import read_object
from .state import open_store, require_rollout, run

attempts_app = typer.Typer(help="Inspect and update attempts.", no_args_is_help=True)

RolloutArg = Annotated[str, typer.Argument(help="Rollout id (ro-...).")]
AttemptArg = Annotated[str, typer.Argument(help="Attempt id (at-...), or 'latest'.")]


def _update(rollout_id: str, attempt_id: str, **fields: Any) -> None:
    store = open_store()
    attempt = run(store.update_attempt(rollout_id, attempt_id, **fields))
    output.emit_json(attempt)


def complete(rollout_id: RolloutArg, attempt_id: AttemptArg = "latest") -> None:
    """Mark an attempt succeeded (the runner's commit).

    \b
    agl complete "$RID" "$AID"
    """
    _update(rollout_id, attempt_id, status="succeeded")


def fail(
    rollout_id: RolloutArg,
    attempt_id: AttemptArg = "latest",
    error: Annotated[str | None, typer.Option(help="Error message, kept in the attempt's metadata.")] = None,
) -> None:
    """Mark an attempt failed; the rollout is retried if its config allows.

    \b
    agl fail "$RID" "$AID" --error "agent crashed: $?"
    """
    fields: dict[str, Any] = {"status": "failed"}
    if error is not None:
        fields["metadata"] = {"error": error}
    _update(rollout_id, attempt_id, **fields)


def heartbeat(rollout_id: RolloutArg, attempt_id: AttemptArg) -> None:
    """Tell the store an attempt is alive. Exits 13 if it was cancelled or expired: stop working on it.

    \b
    while agl heartbeat "$RID" "$AID"; do sleep 10; done &
    """
    store = open_store()
    if not run(store.heartbeat(rollout_id, attempt_id)):
        output.info(f"attempt {attempt_id} of {rollout_id} is no longer live (cancelled or expired)")
        raise typer.Exit(EXIT_LOST)


@attempts_app.command("update")
def update(
    rollout_id: RolloutArg,
    attempt_id: AttemptArg,
    status: Annotated[
        str | None, typer.Option(help="preparing, running, succeeded, failed, timeout or unresponsive.")
    ] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id")] = None,
    metadata: Annotated[str | None, typer.Option(help="Replace metadata: a JSON object, or @FILE.")] = None,
) -> None:
    """Overwrite fields of an attempt (the rollout's status follows its latest attempt).

    \b
    agl attempts update "$RID" latest --status running
    """
    fields: dict[str, Any] = {}
    if status is not None:
        fields["status"] = status
    if worker_id is not None:
        fields["worker_id"] = worker_id
    if metadata is not None:
        fields["metadata"] = read_object(metadata, "--metadata")
    _update(rollout_id, attempt_id, **fields)


@attempts_app.command("list")
def list_attempts(rollout_id: RolloutArg) -> None:
    """All attempts of a rollout, oldest first.

    \b
    agl attempts list "$RID" | jq -c '{sequence_id, status}'
    """
    store = open_store()
    require_rollout(store, rollout_id)
    result = run(store.query_attempts(rollout_id))
    output.emit_records(
        list(result),
        [("sequence_id", 4), ("attempt_id", 11), ("status", 12), ("worker_id", 16), ("start_time", 18)],
    )
