"""agl data triplets|messages|rollouts (training data out of a store) and agl prune."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from store_fs.errors import ExitCode

from . import completion, output
from .exit_codes import CliError
from .params import MAX_COUNT, RolloutStatus, StatusFilter, seconds, values
from .state import CliState, run

if TYPE_CHECKING:
    from store_fs.datasets import RolloutFilter

data_app = typer.Typer(
    help="""Training data out of a store, as JSON Lines (or Parquet): one view at a time.

\b
  triplets   one row per LLM call: prompt, response (token ids), reward, metadata
  messages   one row per rollout: its chat transcripts (OpenAI fine-tuning format)
  rollouts   one row per rollout: the rollout, its attempts and spans (agl export)

Rows come from the latest attempt of each rollout, as upstream's algorithms read it; every row
carries rollout_id, attempt_id, resources_id, mode, final_reward and ended (how the rollout
ended). Only rollouts that succeeded (with or without a reward) unless --ended says otherwise.

\b
Examples:
  agl data triplets > triplets.jsonl
  agl data triplets --since 1d --ended any -o train.parquet
  agl data messages --cursor sft.cursor >> sft.jsonl      # only what finished since last time
  agl data triplets --follow --redact 'sk-[A-Za-z0-9]+' | my-trainer
""",
    no_args_is_help=True,
)


class EndedChoice(enum.StrEnum):
    succeeded = "succeeded"
    no_reward = "no_reward"
    failed = "failed"
    timeout = "timeout"
    unresponsive = "unresponsive"
    cancelled = "cancelled"
    any = "any"


class ModeChoice(enum.StrEnum):
    train = "train"
    val = "val"
    test = "test"


Ended = Annotated[
    list[EndedChoice] | None,
    typer.Option(
        "--ended",
        help="How the rollout ended (repeatable; 'any' takes every rollout, finished or not) "
        "[default: succeeded, no_reward].",
        show_choices=True,
    ),
]
Resources = Annotated[
    list[str] | None, typer.Option("--resources-id", help="Rollouts run with these resources (repeatable).")
]
Rollouts = Annotated[
    list[str] | None,
    typer.Option(
        "--rollout", help="Only these rollouts (repeatable).", autocompletion=completion.rollout_ids
    ),
]
Modes = Annotated[list[ModeChoice] | None, typer.Option("--mode", help="train, val or test (repeatable).")]
Since = Annotated[
    str | None,
    typer.Option(
        help="Finished at or after: seconds since the epoch, an age (30m, 12h, 7d) or an ISO date "
        "(2026-12-01, 20261201, 2026-12-01T08:00; UTC unless it names an offset)."
    ),
]
Until = Annotated[str | None, typer.Option(help="Finished before (same forms as --since).")]
Redact = Annotated[
    list[str] | None,
    typer.Option(
        "--redact", metavar="REGEX", help="Mask matches in every text field but the rows' ids (repeatable)."
    ),
]
OutputFile = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Write to this file instead of stdout (.parquet: Parquet), published whole (a FIFO or "
        "device: written into as a stream).",
    ),
]
CursorFile = Annotated[
    Path | None,
    typer.Option(
        "--cursor",
        metavar="FILE",
        help="Only rollouts finished since this cursor (all, if it does not exist yet); saved after.",
    ),
]
Follow = Annotated[
    bool, typer.Option("--follow", "-f", help="Keep writing rollouts as they finish, until Ctrl-C.")
]
IdleTimeout = Annotated[
    float | None,
    typer.Option(
        parser=seconds,
        metavar="SECONDS",
        help="With --follow: stop after this many seconds with nothing new.",
    ),
]


def _time(text: str | None, option: str) -> float | None:
    from store_fs.datasets import parse_time

    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as err:
        raise CliError(f"{option}: {err}") from None


def _filter(
    status: list[Any] | None,
    resources_id: list[str] | None,
    rollout: list[str] | None,
    mode: list[ModeChoice] | None,
    since: str | None,
    until: str | None,
    ended: list[EndedChoice] | None,
    *,
    default_endings: Any,
    until_option: str = "--until",
) -> RolloutFilter:
    from store_fs.datasets import RolloutFilter

    chosen = values(ended)
    endings = default_endings if chosen is None else (None if "any" in chosen else chosen)
    return RolloutFilter.of(
        status_in=values(status),  # type: ignore[arg-type]
        resources_id_in=resources_id,
        rollout_id_in=rollout,
        mode_in=values(mode),  # type: ignore[arg-type]
        since=_time(since, "--since"),
        until=_time(until, until_option),
        endings=endings,  # type: ignore[arg-type]
    )


def _check_file_arg(option: str, path: Path | None, *, parent_must_exist: bool) -> None:
    """Refuse a path that cannot be a file before anything is read: the error would otherwise
    come at the end, naming a temporary file."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"{option} {path} is a directory, not a file")
    parent = path.parent
    if parent_must_exist and not parent.is_dir():
        raise CliError(f"{option} {path}: {parent} is not a directory")


def _refuse_inside_a_store(option: str, path: Path | None) -> None:
    """A file agl writes may not take the name of one a store keeps (found by a pass: a cursor
    saved as a resources version hid every published resource)."""
    from store_fs.output_targets import store_owner

    owner = None if path is None else store_owner(path)
    if owner is not None:
        raise CliError(f"{option} {path}: it belongs to the store at {owner} (write beside it)")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (an existing one, or one path made the same)."""
    try:
        return a.samefile(b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _export(
    ctx: typer.Context,
    view: str,
    flt: RolloutFilter,
    out: Path | None,
    redact: list[str] | None,
    cursor: Path | None,
    follow: bool,
    idle_timeout: float | None,
) -> None:
    from store_fs.datasets import export_view

    cli = CliState.of(ctx)
    store = cli.open_store()
    if follow and out is not None:
        raise CliError("--follow writes to stdout; leave out --output")
    _check_file_arg("--output", out, parent_must_exist=True)
    _check_file_arg("--cursor", cursor, parent_must_exist=False)  # saving makes its directory
    _refuse_inside_a_store("--cursor", cursor)
    if cursor is not None and cursor.exists() and not cursor.is_file():
        # /dev/null, a FIFO: read as a cursor it fails, and saving would replace it by a file.
        raise CliError(f"--cursor {cursor} is not a regular file (a cursor is saved by replacing it)")
    if out is not None and cursor is not None and _same_file(out, cursor):
        # The cursor, saved after the rows, replaced them, and said they were delivered.
        raise CliError(f"--output and --cursor name the same file ({out}): the rows would be lost")
    if follow:
        output.info(f"following finished rollouts ({view}); Ctrl-C to stop")
    counts = run(
        export_view(
            store,
            view,  # type: ignore[arg-type]
            flt,
            output=out if out is not None else sys.stdout.buffer,
            redact=redact or (),
            cursor=cursor,
            follow=follow,
            idle_timeout=idle_timeout,
        )
    )
    where = f" to {out}" if out is not None else ""
    skipped = f"; {len(counts.skipped)} rollout(s) skipped (--verbose says why)" if counts.skipped else ""
    output.info(f"wrote {counts.rows} {view} row(s) from {counts.rollouts} rollout(s){where}{skipped}")
    if counts.damaged:  # rows without them must not pass for the whole view in a script
        ids = [rollout_id for rollout_id, _why in counts.damaged]
        raise CliError(
            f"{len(ids)} rollout(s) left out, their spans are damaged: {', '.join(ids[:3])}"
            + (" ..." if len(ids) > 3 else "")
            + f" ({counts.damaged[0][1]}; `agl check --fix` moves the damage aside)",
            ExitCode.CORRUPT,
        )


def _view_command(view: str) -> Any:
    def command(
        ctx: typer.Context,
        status: StatusFilter = None,
        resources_id: Resources = None,
        rollout: Rollouts = None,
        mode: Modes = None,
        since: Since = None,
        until: Until = None,
        ended: Ended = None,
        redact: Redact = None,
        out: OutputFile = None,
        cursor: CursorFile = None,
        follow: Follow = False,
        idle_timeout: IdleTimeout = None,
    ) -> None:
        from store_fs.datasets import DEFAULT_ENDINGS, Redactor

        flt = _filter(
            status, resources_id, rollout, mode, since, until, ended, default_endings=DEFAULT_ENDINGS
        )
        try:
            Redactor(redact or ())
        except ValueError as err:
            raise CliError(str(err)) from None
        if out is not None and out.suffix == ".parquet":
            _require_pyarrow()
        _export(ctx, view, flt, out, redact, cursor, follow, idle_timeout)

    command.__doc__ = _DOCS[view]
    return command


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise CliError("writing Parquet needs pyarrow: pip install 'agl[parquet]'") from None


_DOCS = {
    "triplets": """One row per LLM call of each rollout's latest attempt, as upstream's
    TracerTraceToTriplet builds them: prompt, response (token ids where recorded), reward,
    metadata, and step (0, 1, ...), plus the rollout's ids, final_reward and ended.

    \b
    agl data triplets | jq -c '{rollout_id, step, reward, n: (.response.token_ids | length)}'
    agl data triplets --ended any -o all.parquet
    """,
    "messages": """One row per rollout: conversations, its chat transcripts as upstream's
    TraceToMessages builds them ({messages, tools} per LLM call, the OpenAI fine-tuning format).

    \b
    agl data messages | jq -c '.conversations[-1]' > sft.jsonl
    """,
    "rollouts": """One row per rollout: the rollout with all its attempts and spans (as agl
    export), plus final_reward and ended.

    \b
    agl data rollouts --ended failed --ended timeout --since 1d | jq -r .rollout_id
    """,
}

for _view in ("triplets", "messages", "rollouts"):
    data_app.command(_view)(_view_command(_view))


def _report_prune(cli: CliState, report: Any) -> None:
    for item in report.rollouts:
        cli.out.emit_line(
            {
                "rollout_id": item.rollout_id,
                "status": item.status,
                "resources_id": item.resources_id,
                "end_time": item.end_time,
                "bytes": item.bytes,
            }
        )
    for line in report.recovered:
        output.info(f"finished an interrupted prune: {line}")
    for rollout_id, why in report.kept:
        output.info(f"kept {rollout_id}: {why}")
    verb = "would remove" if report.dry_run else "removed"
    archived = f"; archived in {report.archive}" if report.archive and not report.dry_run else ""
    output.info(f"{verb} {len(report.rollouts)} rollout(s), {report.bytes / 1e6:.2f} MB{archived}")


# prune's own words for the filters it shares with agl data: there they select rows to print,
# here what is removed, with other defaults (a pass found the shared help wrong for prune).
PruneStatus = Annotated[
    list[RolloutStatus] | None,
    typer.Option(
        "--status",
        help="Remove only rollouts in this status (repeatable; finished ones only).",
        show_choices=True,
    ),
]
PruneEnded = Annotated[
    list[EndedChoice] | None,
    typer.Option(
        "--ended",
        help="Remove only rollouts that ended so (repeatable) [default: any ending; unfinished "
        "rollouts are never removed].",
        show_choices=True,
    ),
]


def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Rollouts that finished before this: an age (7d, 12h) or a time (ISO date, epoch)."
        ),
    ] = None,
    status: PruneStatus = None,
    keep_last: Annotated[
        int | None,
        typer.Option(min=0, max=MAX_COUNT, help="Keep the newest N finished rollouts of each resources id."),
    ] = None,
    resources_id: Resources = None,
    rollout: Rollouts = None,
    ended: PruneEnded = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed, and its size.")
    ] = False,
    archive: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Keep a tar of what is removed (tar -xf FILE -C STORE puts it back). Its directory "
            "must exist and be writable (checked before anything is removed); FILE must not exist.",
        ),
    ] = None,
) -> None:
    """Remove finished rollouts for good: their records, spans and index entries.

    Only finished rollouts (succeeded, failed, cancelled) with no live attempt are removed;
    queued and running ones never are. Give at least one of --older-than, --status,
    --keep-last, --ended or --rollout; all given must hold. Runs under the maintenance lock
    (exit 6 if a repair or another prune holds it); runners may keep working meanwhile. Prints
    each removed rollout (JSON lines) and the total on stderr.

    \b
    agl prune --older-than 7d --dry-run
    agl prune --status failed --status cancelled --archive failed.tar
    agl prune --keep-last 1000 --older-than 1d
    """
    from store_fs.prune import prune_store

    if not any((older_than, status, keep_last is not None, ended, rollout)):
        raise CliError("say what to remove: --older-than, --status, --keep-last, --ended or --rollout")
    _refuse_inside_a_store("--archive", archive)
    if archive is not None and archive.exists():
        raise CliError(f"--archive {archive}: the file exists (an archive is never overwritten)")
    if archive is not None and not archive.absolute().parent.is_dir():
        raise CliError(f"--archive {archive}: no directory {archive.absolute().parent}")
    flt = _filter(
        status,
        resources_id,
        rollout,
        None,
        None,
        older_than,
        ended,
        default_endings=None,
        until_option="--older-than",
    )
    cli = CliState.of(ctx)
    store = cli.open_store()
    report = prune_store(store, flt, keep_last=keep_last, dry_run=dry_run, archive=archive)
    _report_prune(cli, report)
