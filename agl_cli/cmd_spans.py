"""agl spans add / list / tail, and agl reward."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from store_fs.errors import ExitCode

from . import completion, output
from .exit_codes import CliError
from .inputs import read_lines
from .params import Limit, RolloutArg, finite, interval_seconds
from .state import CliState, require_rollout, run
from .tables import SPAN_COLUMNS

spans_app = typer.Typer(
    help="""Add, list and follow spans (what an attempt did: LLM calls, tool calls, rewards).

\b
Examples:
  echo '{"name": "tool.call", "attributes": {"tool": "search"}}' | agl spans add "$RID" "$AID"
  agl spans list ro-0123456789ab --name-contains openai
  agl spans tail -f ro-0123456789ab | jq -c '{sequence_id, name}'
""",
    no_args_is_help=True,
)
_SPAN_KEYS = {"rollout_id", "attempt_id", "sequence_id", "trace_id", "span_id", "parent_id", "name"}
_PARTIAL_KEYS = _SPAN_KEYS | {"attributes", "start_time", "end_time", "status"}


def _build_span(store: Any, obj: Any, where: str, rollout_id: str | None, attempt_id: str | None) -> Any:
    from store_fs import Span, TraceStatus

    if not isinstance(obj, dict):
        raise CliError(f"{where}: a span must be a JSON object")
    obj = dict(obj)
    if rollout_id:
        obj.setdefault("rollout_id", rollout_id)
    if attempt_id:
        obj.setdefault("attempt_id", attempt_id)
    if not obj.get("rollout_id") or not obj.get("attempt_id"):
        raise CliError(f"{where}: rollout_id and attempt_id are needed (in the line or as arguments)")
    if obj["attempt_id"] == "latest":
        latest = run(store.get_latest_attempt(obj["rollout_id"]))
        if latest is None:
            raise CliError(f"{where}: rollout {obj['rollout_id']} has no attempt", ExitCode.NOT_FOUND)
        obj["attempt_id"] = latest.attempt_id
    if "resource" in obj and "context" in obj:
        return Span.model_validate(obj)  # a complete span, as upstream writes it
    unknown = set(obj) - _PARTIAL_KEYS
    if unknown:
        raise CliError(f"{where}: unknown span keys {sorted(unknown)} (give a full span or a partial one)")
    status = obj.pop("status", None)
    return Span.from_attributes(
        **{k: v for k, v in obj.items() if k != "attributes"},
        attributes=obj.get("attributes") or {},
        status=TraceStatus.model_validate(status) if status else None,
    )


@spans_app.command("add")
def add(
    ctx: typer.Context,
    rollout_id: Annotated[
        str | None,
        typer.Argument(help="Rollout of spans that do not name one.", autocompletion=completion.rollout_ids),
    ] = None,
    attempt_id: Annotated[
        str | None,
        typer.Argument(
            help="Attempt (or 'latest') of spans that do not name one.", autocompletion=completion.attempt_ids
        ),
    ] = None,
    file: Annotated[str, typer.Option("--file", "-f", help="JSONL file to read ('-': stdin).")] = "-",
) -> None:
    """Store spans read as JSON lines: full upstream spans, or partial ones such as
    {"name": "tool.call", "attributes": {...}}; missing sequence ids are allocated.

    \b
    echo '{"name": "step", "attributes": {"n": 1}}' | agl spans add "$RID" "$AID"
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    lines = list(read_lines(file))
    if not lines:
        raise CliError(f"no spans: {'stdin' if file == '-' else file} held no JSON lines")
    spans = [_build_span(store, obj, f"line {n}", rollout_id, attempt_id) for n, obj in lines]
    for pair in dict.fromkeys((s.rollout_id, s.attempt_id) for s in spans):
        _check_attempt(store, *pair)
    for span in spans:  # allocate only once every line is known to be valid
        if not span.sequence_id:
            span.sequence_id = run(store.get_next_span_sequence_id(span.rollout_id, span.attempt_id))
    stored = run(store.add_many_spans(spans))
    for span in stored:
        if cli.out.machine:
            cli.out.emit_line(span)
    output.info(
        f"stored {len(stored)} span(s)"
        + (f", {len(spans) - len(stored)} duplicate(s)" if len(stored) < len(spans) else "")
    )


@spans_app.command("list")
def list_spans(
    ctx: typer.Context,
    rollout_id: RolloutArg,
    attempt: Annotated[
        str | None,
        typer.Option(help="Only this attempt (or 'latest').", autocompletion=completion.attempt_ids),
    ] = None,
    name_contains: Annotated[
        str | None, typer.Option("--name-contains", help="Substring of the name.")
    ] = None,
    limit: Limit = -1,
) -> None:
    """Spans of a rollout in sequence order (JSONL when piped).

    \b
    agl spans list "$RID" | jq -c '{sequence_id, name}'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    if attempt is not None and attempt != "latest":
        _check_attempt(store, rollout_id, attempt)
    else:
        require_rollout(store, rollout_id)
    result = run(store.query_spans(rollout_id, attempt, name_contains=name_contains, limit=limit))
    cli.out.emit_records(list(result), SPAN_COLUMNS)


def _check_attempt(store: Any, rollout_id: str, attempt_id: str) -> None:
    require_rollout(store, rollout_id)
    if not any(a.attempt_id == attempt_id for a in run(store.query_attempts(rollout_id))):
        from store_fs import AttemptNotFoundError

        raise AttemptNotFoundError(rollout_id, attempt_id)


@spans_app.command("tail")
def tail(
    ctx: typer.Context,
    rollout_id: RolloutArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new spans until the rollout ends.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", parser=interval_seconds, metavar="SECONDS", help="Seconds between looks."),
    ] = 0.2,
) -> None:
    """Print a rollout's spans, and with -f new ones as they arrive (JSONL).

    \b
    agl spans tail -f "$RID" | jq -c '{sequence_id, name}'
    """
    cli = CliState.of(ctx)
    store = cli.open_store()
    require_rollout(store, rollout_id)
    seen: set[tuple[str, str]] = set()
    try:
        while True:
            finished = require_rollout(store, rollout_id).status in ("succeeded", "failed", "cancelled")
            for span in run(store.query_spans(rollout_id)):
                key = (span.attempt_id, span.span_id)
                if key not in seen:
                    seen.add(key)
                    cli.out.emit_line(span)
            if not follow or finished:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def reward(
    ctx: typer.Context,
    rollout_id: RolloutArg,
    value: Annotated[
        float,
        typer.Argument(
            parser=finite, metavar="VALUE", help="A finite number (the final reward if it is the last)."
        ),
    ],
    attempt_id: Annotated[
        str, typer.Option("--attempt", help="Attempt id, or 'latest'.", autocompletion=completion.attempt_ids)
    ] = "latest",
) -> None:
    """Record a reward as upstream's annotation span, so algorithms read it unchanged.

    \b
    agl reward "$RID" 0.85 --attempt "$AID"
    agl reward "$RID" -1 --attempt "$AID"
    """
    if rollout_id.startswith("-"):  # this command takes unknown options as arguments (for -1)
        raise CliError(f"no such option: {rollout_id} (see 'agl reward --help')", ExitCode.USAGE)
    cli = CliState.of(ctx)
    from store_fs.rewards import reward_span

    store = cli.open_store()
    if attempt_id == "latest":
        latest = run(store.get_latest_attempt(rollout_id))
        if latest is None:
            require_rollout(store, rollout_id)
            raise CliError(f"rollout {rollout_id} has no attempt", ExitCode.NOT_FOUND)
        attempt_id = latest.attempt_id
    _check_attempt(store, rollout_id, attempt_id)
    seq = run(store.get_next_span_sequence_id(rollout_id, attempt_id))
    span = run(
        store.add_span(reward_span(value, rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=seq))
    )
    if span is not None and cli.out.machine:
        cli.out.emit_line(span)
    output.info(f"reward {value} recorded for {rollout_id}")
