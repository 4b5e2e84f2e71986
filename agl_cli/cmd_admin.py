"""agl init / workers / stats / check / export."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from store_fs.errors import ExitCode

from . import completion, output
from .exit_codes import CliError
from .params import Durability, StatusFilter, seconds, values
from .progress import Progress
from .state import CliState, check_directories, check_store_path, run
from .tables import WORKER_COLUMNS

if TYPE_CHECKING:
    from store_fs import FileStore

workers_app = typer.Typer(
    help="""Inspect workers (runners, as the store sees them).

\b
Examples:
  agl workers list
  agl workers list | jq -r 'select(.status=="busy") | .worker_id'
""",
    no_args_is_help=True,
)


def init(
    ctx: typer.Context,
    path: Annotated[
        str | None, typer.Argument(help="Directory of the store (default: --store or runs/default).")
    ] = None,
    durability: Annotated[
        Durability | None,
        typer.Option(
            help="What every process does before a call returns: 'process' survives kill -9 of "
            "any process, 'fsync' also power loss (slower: each write waits for the disk). "
            "Recorded in the store, so runners, 'agl store' and every command follow it; "
            "given for an existing store, changes it. [default for a new store: process]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a store (safe to run again on an existing one), or change its durability.

    \b
    agl init runs/exp1 && export AGL_STORE=runs/exp1
    agl init runs/exp1 --durability fsync    # survive power loss too

    Processes that have the store open keep their durability until they open it again.
    """
    cli = CliState.of(ctx)
    from store_fs import FileStore, StoreNotFoundError, init_store

    if path is not None and not path.strip():
        raise CliError("the store's path is empty")
    target = Path(path) if path is not None else cli.store_path()
    check_store_path(target)
    before: str | None = None
    try:  # an existing store must be sound: a newer format, or damage, is not "ready"
        existing = FileStore(target, create=False)
        check_directories(existing)
        before = existing.durability
    except StoreNotFoundError:
        pass
    root = init_store(target, durability=durability)
    now = durability or before or "process"
    change = f", was {before}: processes that have it open keep {before} until they open it again"
    output.info(f"store ready at {root} (durability: {now}{change if before not in (None, now) else ''})")


@workers_app.command("list")
def list_workers(ctx: typer.Context) -> None:
    """Workers with their status, current rollout and last heartbeat.

    \b
    agl workers list | jq -r 'select(.status=="busy") | .worker_id'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    cli.out.emit_records(list(run(store.query_workers(sort_by="worker_id"))), WORKER_COLUMNS)


def stats(ctx: typer.Context) -> None:
    """Counts of rollouts, attempts, spans, resources and workers.

    \b
    agl stats | jq .total_rollouts
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    cli.out.emit_json(run(store.statistics()))


def check(
    ctx: typer.Context,
    fix: Annotated[bool, typer.Option(help="Repair what is safe to repair.")] = False,
    grace: Annotated[
        float | None,
        typer.Option(
            parser=seconds,
            metavar="SECONDS",
            help="Pass over what an enqueue in flight leaves (a queue token without its rollout, a "
            "rollout directory without a revision) while younger than this (default: the claim "
            "grace, 30 s); 0 after a crash.",
        ),
    ] = None,
) -> None:
    """Look for torn span lines, orphan tokens, temp files, stale rollout.json links, rollout index
    gaps, corrupt records, resources and worker log lines, misplaced files and span counters.

    Exits 7 if problems remain (after --fix: those it could not repair). Prefer a quiet store
    for --fix; after a crash, with nothing running, add --grace 0.

    \b
    agl check || agl check --fix
    agl check --fix --grace 0      # after a power cut: nothing is in flight
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    with Progress("checking" + (" and fixing" if fix else ""), quiet=cli.quiet, ticking=True):
        problems = store.check(fix=fix, grace=grace)
    for problem in problems:
        if cli.out.machine:
            cli.out.emit_line(
                {"kind": problem.kind, "path": problem.path, "detail": problem.detail, "fixed": problem.fixed}
            )
        else:
            output.info(str(problem))
    left = [p for p in problems if not p.fixed]
    output.info(f"{len(problems)} problem(s), {len(problems) - len(left)} fixed")
    if left:
        raise typer.Exit(ExitCode.CORRUPT)


def compact(
    ctx: typer.Context,
    idle: Annotated[
        float,
        typer.Option(
            parser=seconds,
            metavar="SECONDS",
            help="Take logs written from other hosts once untouched this long (their writers may be alive).",
        ),
    ] = 3600.0,
    wait: Annotated[
        float,
        typer.Option(parser=seconds, metavar="SECONDS", help="Wait this long for the maintenance lock."),
    ] = 0.0,
) -> None:
    """Merge the logs of exited processes into segments: a store written by thousands of
    one-shot agl calls keeps a handful of files, and readers open only those.

    Compacts the rollout index, the change feed and the worker logs. Logs of processes still
    running are left alone (on this host by pid; from other hosts, until untouched for --idle).
    Runners and readers may keep working. Runs under the maintenance lock (exit 6 if a repair,
    a prune or another compaction holds it). Readers also compact by themselves when they meet
    more than 32 per-writer index logs. Also writes the rollout index snapshot, so that a
    fresh process listing one status reads that status only. Prints a JSON summary.

    \b
    agl compact
    agl compact --wait 60 --idle 600
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    with Progress("log directories compacted", quiet=cli.quiet) as bar:

        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.advance(done - bar.done)

        report = store.compact(idle_seconds=idle, wait=wait, progress=advance)
    cli.out.emit_json(
        {
            "directories": report.directories,
            "segments": report.segments,
            "absorbed": report.absorbed,
            "removed": report.removed,
            "bytes": report.bytes,
            "torn_lines_quarantined": report.torn,
            "quarantine": report.quarantine,
            "index_snapshot": report.snapshot,
        }
    )
    absorbed = f"absorbed {report.absorbed} log(s) into {report.segments} segment(s)"
    output.info(f"{absorbed}, removed {report.removed}")


def _export_ids(store: FileStore, rollout_ids: list[str], all_: bool, status: list[str] | None) -> list[str]:
    if sum((bool(rollout_ids), all_, status is not None)) != 1:
        raise CliError("name rollouts to export, or give --all or --status (one of the three)")
    if rollout_ids:
        return list(dict.fromkeys(rollout_ids))
    # The store's ids rather than a query's: a query leaves out a rollout whose record is
    # damaged, and a backup made with --all would then look complete.
    return store.rollout_ids(status_in=status)


def export(
    ctx: typer.Context,
    rollout_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Rollout ids (ro-...).", autocompletion=completion.rollout_ids, show_default=False
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Export every rollout.")] = False,
    status: StatusFilter = None,
) -> None:
    """Rollouts with their attempts and spans: one JSON document for one id, else one per line.

    Every named rollout must exist (exit 3 before anything is printed otherwise). A rollout
    whose record is damaged is named on stderr and the others are exported; one whose span
    files are damaged is exported with the spans that could be read and named on stderr. The
    exit code is then 7 (`agl check` says more). A progress bar shows on stderr when it is a
    terminal.

    \b
    agl export "$RID" > "$RID.json"
    agl export --all > store.jsonl
    agl export --status failed --status cancelled | jq -c '{rollout_id, spans: (.spans | length)}'
    """
    cli = CliState.of(ctx)
    from store_fs import CorruptRecordError, RolloutNotFoundError
    from store_fs.exporting import rollout_document, span_damage

    store = cli.open_store()
    wanted = values(status)
    ids = _export_ids(store, rollout_ids or [], all_, wanted)
    for rid in ids if rollout_ids else ():
        if run(store.get_rollout_by_id(rid)) is None:
            raise RolloutNotFoundError(rid)
    one = bool(rollout_ids) and len(ids) == 1
    emit = cli.out.emit_json if one else cli.out.emit_line
    # No bar when the documents themselves go to the terminal.
    exported: list[str] = []
    damaged: list[str] = []
    # Exported without the spans that could not be read: named, so no backup looks complete.
    lacking: list[tuple[str, str]] = []
    with Progress("exported", len(ids), quiet=cli.quiet or sys.stdout.isatty()) as bar:
        for rid in ids:
            try:
                document = run(rollout_document(store, rid))
            except CorruptRecordError as err:
                if one:
                    raise
                output.problem(str(err))
                damaged.append(rid)
                document = None
            # None: removed since it was listed. The status is checked on the record itself:
            # the listing came from the rollout index, which a concurrent update may have passed.
            if document is not None and (wanted is None or document["status"] in wanted):
                for damage in span_damage(store, document):
                    output.problem(f"{rid}: exported without the spans that could not be read: {damage}")
                    lacking.append((rid, damage))
                emit(document)
                exported.append(rid)
            bar.advance()
    if not one:
        output.info(f"exported {len(exported)} rollout(s)")
    _raise_if_incomplete(damaged, lacking)


def _raise_if_incomplete(damaged: list[str], lacking: list[tuple[str, str]]) -> None:
    """Exit 7 when a rollout was not exported (its record is damaged) or was exported without
    spans that could not be read: a backup that missed something must never look complete."""
    if damaged:
        raise CliError(
            f"{len(damaged)} rollout(s) not exported, their records are damaged: {', '.join(damaged[:3])}"
            + (" ..." if len(damaged) > 3 else "")
            + " (`agl check` reports them)",
            ExitCode.CORRUPT,
        )
    if lacking:
        ids = list(dict.fromkeys(rid for rid, _damage in lacking))
        raise CliError(
            f"{len(ids)} rollout(s) exported without spans that could not be read: {', '.join(ids[:3])}"
            + (" ..." if len(ids) > 3 else "")
            + f" ({lacking[0][1]}; `agl check --fix` moves the damage aside)",
            ExitCode.CORRUPT,
        )
