"""agl complete / fail / heartbeat / attempts update: the runner reports on its attempt."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from store_fs.errors import ExitCode

from . import output
from .exit_codes import CliError
from .inputs import read_object
from .params import AttemptArg, AttemptStatus, RolloutArg
from .state import CliState, require_rollout, run
from .tables import ATTEMPT_COLUMNS

attempts_app = typer.Typer(
    help="""Inspect and update attempts (a rollout's tries, one per dequeue).

\b
Examples:
  agl attempts list ro-0123456789ab
  agl attempts update ro-0123456789ab latest --status running
  agl attempts list "$RID" | jq -c '{sequence_id, status}'
""",
    no_args_is_help=True,
)


def _update(cli: CliState, rollout_id: str, attempt_id: str, **fields: Any) -> None:
    store = cli.open_store()
    attempt = run(store.update_attempt(rollout_id, attempt_id, **fields))
    cli.out.emit_json(attempt)


def complete(ctx: typer.Context, rollout_id: RolloutArg, attempt_id: AttemptArg = "latest") -> None:
    """Mark an attempt succeeded (the runner's commit).

    \b
    agl complete "$RID" "$AID"
    """
    _update(CliState.of(ctx), rollout_id, attempt_id, status="succeeded")


def fail(
    ctx: typer.Context,
    rollout_id: RolloutArg,
    attempt_id: AttemptArg = "latest",
    error: Annotated[
        str | None,
        typer.Option(
            help='Error message: the attempt\'s metadata becomes {"error": MESSAGE}, as a runner '
            "reports a failure."
        ),
    ] = None,
) -> None:
    """Mark an attempt failed; the rollout is retried if its config allows.

    \b
    agl fail "$RID" "$AID" --error "agent crashed: $?"
    """
    fields: dict[str, Any] = {"status": "failed"}
    if error is not None:
        fields["metadata"] = {"error": error}
    _update(CliState.of(ctx), rollout_id, attempt_id, **fields)


def heartbeat(ctx: typer.Context, rollout_id: RolloutArg, attempt_id: AttemptArg) -> None:
    """Tell the store an attempt is alive. Exits 13 if it was cancelled or expired: stop working on it.

    \b
    while agl heartbeat "$RID" "$AID"; do sleep 10; done &
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    if not run(store.heartbeat(rollout_id, attempt_id)):
        output.info(
            f"attempt {attempt_id} of {rollout_id} is no longer live (finished, cancelled or expired)"
        )
        raise typer.Exit(ExitCode.ATTEMPT_LOST)


@attempts_app.command("update")
def update(
    ctx: typer.Context,
    rollout_id: RolloutArg,
    attempt_id: AttemptArg,
    status: Annotated[AttemptStatus | None, typer.Option(help="The attempt's new status.")] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id")] = None,
    metadata: Annotated[str | None, typer.Option(help="Replace metadata: a JSON object, or @FILE.")] = None,
) -> None:
    """Overwrite fields of an attempt (the rollout's status follows its latest attempt).

    Nothing to change (no option given) is an error.

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
    if not fields:
        raise CliError("nothing to update: give --status, --worker-id or --metadata")
    _update(CliState.of(ctx), rollout_id, attempt_id, **fields)


@attempts_app.command("list")
def list_attempts(ctx: typer.Context, rollout_id: RolloutArg) -> None:
    """All attempts of a rollout, oldest first.

    \b
    agl attempts list "$RID" | jq -c '{sequence_id, status}'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    require_rollout(store, rollout_id)
    result = run(store.query_attempts(rollout_id))
    cli.out.emit_records(list(result), ATTEMPT_COLUMNS)
