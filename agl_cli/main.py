"""The ``agl`` command: every store operation from the shell.

This module assembles the command groups and owns the one mapping from errors
to exit codes (see :mod:`agl_cli.exit_codes`).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from store_fs.errors import ExitCode

from . import cmd_admin, cmd_attempts, cmd_queue, cmd_rollouts, cmd_run, cmd_server, cmd_spans
from .cmd_resources import resources_app
from .exit_codes import exit_code_for, exit_codes_help, one_line
from .state import CliState

HELP = """Drive, inspect and repair an Agent-lightning training loop kept in a directory.

\b
A whole loop from the shell:
  agl init runs/exp1 && export AGL_STORE=runs/exp1
  agl resources add --template "Answer briefly: {any_question}"
  RID=$(agl enqueue '"What is 2+2?"' --mode train | jq -r .rollout_id)
  # a runner:
  R=$(agl dequeue --worker-id w1 --wait 30); AID=$(jq -r .attempt.attempt_id <<<"$R")
  agl reward "$RID" 0.9 --attempt "$AID" && agl complete "$RID" "$AID"
  # the algorithm:
  agl wait "$RID" --timeout 60 && agl spans list "$RID" | jq -c '{sequence_id, name}'

Output is JSON (one document) or JSON lines when piped or with --json, a table on a terminal.
Exit codes: """ + exit_codes_help()

app = typer.Typer(
    name="agl", help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)


@app.callback()
def _options(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option("--store", "-s", envvar="AGL_STORE", help="Store directory [default: runs/default]."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="JSON output even on a terminal.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what the store does (stderr).")
    ] = False,
) -> None:
    ctx.obj = CliState(store=store, json=json)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


app.command("init")(cmd_admin.init)
app.command("enqueue")(cmd_queue.enqueue)
app.command("dequeue")(cmd_queue.dequeue)
app.command("wait")(cmd_queue.wait)
app.command("complete")(cmd_attempts.complete)
app.command("fail")(cmd_attempts.fail)
app.command("heartbeat")(cmd_attempts.heartbeat)
app.command("reward")(cmd_spans.reward)
app.command("stats")(cmd_admin.stats)
app.command("check")(cmd_admin.check)
app.command("export")(cmd_admin.export)
app.command("run")(cmd_run.run)
app.command("store")(cmd_server.store)
app.add_typer(cmd_rollouts.rollouts_app, name="rollouts")
app.add_typer(cmd_attempts.attempts_app, name="attempts")
app.add_typer(cmd_spans.spans_app, name="spans")
app.add_typer(resources_app, name="resources")
app.add_typer(cmd_admin.workers_app, name="workers")


def main() -> None:
    """Run the app; expected errors become one line on stderr and a documented exit code."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except Exception as err:
        if isinstance(err, typer.Abort):
            sys.exit(ExitCode.INTERRUPTED)
        show = getattr(err, "show", None)
        if callable(show) and isinstance(getattr(err, "exit_code", None), int):  # usage errors
            show()
            sys.exit(err.exit_code)  # type: ignore[attr-defined]
        code = exit_code_for(err)
        if code is None:
            raise
        sys.stderr.write(f"agl: {one_line(err)}\n")
        sys.exit(code)
