"""The ``agl`` command: every store operation from the shell.

This module assembles the command groups, reads the global options into ``ctx.obj``
(:class:`agl_cli.state.CliState`) and owns the one place where an invocation ends:
:func:`run_cli` turns every outcome into an exit code (see :mod:`agl_cli.exit_codes`), so no
input ends in a traceback. Global options may come anywhere on the line
(:mod:`agl_cli.argv` moves them to the front before click parses).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Annotated, Any

import typer

from store_fs.errors import ExitCode
from store_fs.output_targets import remove_unpublished

from . import (
    cmd_admin,
    cmd_attempts,
    cmd_data,
    cmd_doctor,
    cmd_events,
    cmd_queue,
    cmd_report,
    cmd_rollouts,
    cmd_run,
    cmd_server,
    cmd_spans,
)
from .argv import hoist_globals, undecodable
from .cmd_resources import resources_app
from .exit_codes import exit_codes_help, report
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
  agl rollouts list --watch          # follow the loop live (Ctrl-C to stop)

Output is JSON (one document) or JSON lines when piped or with --json, a table on a terminal
(colour unless NO_COLOR is set); messages go to stderr.

The global options (--store, --json, --quiet, --verbose) may come anywhere on the line, and
each has an environment variable (AGL_STORE, AGL_JSON, AGL_QUIET, AGL_VERBOSE; 1/0, true/false,
yes/no): an option on the line wins over the variable, which wins over the default.

Shell completion (commands, options, statuses, rollout and attempt ids from the store):
agl --install-completion.

Exit codes: """ + exit_codes_help()

app = typer.Typer(
    name="agl", help=HELP, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None
)

_TRUE = ("1", "true", "t", "yes", "y", "on")


@app.callback()
def _options(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            "-s",
            envvar="AGL_STORE",
            metavar="DIR",
            help="Store directory (agl run also takes an agl store URL) [default: runs/default].",
        ),
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", envvar="AGL_JSON", help="JSON output even on a terminal.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", envvar="AGL_QUIET", help="No messages on stderr, only errors.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", envvar="AGL_VERBOSE", help="Log what the store does; tracebacks of errors."
        ),
    ] = False,
) -> None:
    ctx.obj = CliState(store=store, json=json, quiet=quiet, verbose=verbose)
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
app.command("reward", context_settings={"ignore_unknown_options": True})(cmd_spans.reward)  # -1 is a reward
app.command("stats")(cmd_admin.stats)
app.command("check")(cmd_admin.check)
app.command("compact")(cmd_admin.compact)
app.command("export")(cmd_admin.export)
app.command("events")(cmd_events.events)
app.command("run")(cmd_run.run)
app.command("store")(cmd_server.store)
app.command("doctor")(cmd_doctor.doctor)
app.command("report")(cmd_report.report)
app.command("prune")(cmd_data.prune)
app.add_typer(cmd_rollouts.rollouts_app, name="rollouts")
app.add_typer(cmd_attempts.attempts_app, name="attempts")
app.add_typer(cmd_spans.spans_app, name="spans")
app.add_typer(resources_app, name="resources")
app.add_typer(cmd_admin.workers_app, name="workers")
app.add_typer(cmd_data.data_app, name="data")


@functools.cache
def cli_command() -> Any:
    """The click command of the app, built once per process (typer builds it from the
    signatures, ~30 ms; a process that forks per invocation, like the fuzz test's, reuses it)."""
    command = typer.main.get_command(app)
    _say_when_interrupted(command)
    return command


def _say_when_interrupted(command: Any) -> None:
    """Make every command's callback turn Ctrl-C (or SIGTERM) into ``typer.Abort``, which
    :func:`run_cli` reports in one line. Typer itself turns a KeyboardInterrupt into a silent
    exit 130, so an interrupted command said nothing of it. A command that handles the
    interruption itself (a watch, a follower) still does."""
    callback = command.callback
    if callback is not None:

        @functools.wraps(callback)
        def aborting(*args: Any, **kwargs: Any) -> Any:
            try:
                return callback(*args, **kwargs)
            except KeyboardInterrupt:
                raise typer.Abort() from None

        command.callback = aborting
    for sub in getattr(command, "commands", {}).values():
        _say_when_interrupted(sub)


def run_cli(args: Sequence[str]) -> int:
    """Run one invocation; every outcome is an exit code, every failure one line on stderr."""
    from typer._click.exceptions import NoArgsIsHelpError

    bad = undecodable(args)
    if bad is not None:
        sys.stderr.write(f"agl: argument {bad[0]} is not valid UTF-8: {bad[1]}\n")
        return ExitCode.BAD_INPUT
    bad_store = undecodable([os.environ.get("AGL_STORE", "")])
    if bad_store is not None:  # refused as the same path given on the line is
        sys.stderr.write(f"agl: AGL_STORE is not valid UTF-8: {bad_store[1]}\n")
        return ExitCode.BAD_INPUT
    command = cli_command()
    hoisted = hoist_globals(args, command)
    verbose = hoisted.verbose or os.environ.get("AGL_VERBOSE", "").strip().lower() in _TRUE
    if hoisted.missing_value is not None:
        sys.stderr.write(f"agl: option '{hoisted.missing_value}' requires an argument (see 'agl --help')\n")
        return ExitCode.USAGE
    try:
        result = command.main(args=hoisted.args, prog_name="agl", standalone_mode=False)
    except NoArgsIsHelpError as err:  # `agl` or `agl rollouts` alone: help, as gh and kubectl do
        try:
            sys.stdout.write(err.ctx.get_help() + "\n")
            sys.stdout.flush()
        except OSError as failed:  # stdout full or closed: one line, as for any other output
            return report(failed, verbose)
        return ExitCode.OK
    except typer.Exit as done:
        return done.exit_code
    except (KeyboardInterrupt, typer.Abort):
        sys.stderr.write("agl: interrupted\n")
        return ExitCode.INTERRUPTED
    except Exception as err:
        return report(err, verbose)
    finally:
        # An interruption between a temporary output file's making and the `try` that removes
        # it (or inside its publication) would leave it beside its target for good.
        remove_unpublished()
    return result if isinstance(result, int) else ExitCode.OK


def _stop_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """The console script. SIGTERM (a service manager's or ``kill``'s stop) ends a command as
    Ctrl-C does, through its clean-up: a file being written is not left half-made beside its
    target, a cursor is saved. ``agl run`` and ``agl store`` take it over for their own graceful
    stops; a handler someone else installed is left alone."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    _standard_streams_open()
    sys.exit(run_cli(sys.argv[1:]))


def _standard_streams_open() -> None:
    """Give a standard stream the process was started without (``agl stats >&-``) /dev/null.
    Python leaves ``sys.stdout`` None then, and a command ended in "unexpected AttributeError"
    after doing its work (an enqueue stored its rollout first); and the free descriptor would be
    the next file opened, whose bytes a print would then write into."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - the process's own
