"""A rollout's span digest read straight from its span files, without building span objects.

:func:`digest_attempts` gives what ``digest_spans(query_spans(rollout_id))`` gives
(:mod:`store_fs.report.report_scan`): the final reward (docs/behaviour.md §11.2), the number of
spans, of LLM calls and their input and output tokens. It follows the store's reading rules
(:mod:`store_fs._disk.span_log`): attempts in the record's order, an attempt's ``spans.*.jsonl``
files in name order, the bytes after a file's last newline left out (a write in progress), the
first copy of each ``span_id`` of an attempt kept, a line that does not parse, is not an object
or does not validate skipped (a later copy of its ``span_id`` too). Spans are then in sequence
order, ties in that reading order, so the final reward is the one of the reward span with the
highest sequence id, the later one on a tie.

Every complete line is parsed, and each line is judged valid exactly as the store judges it, by
:func:`store_fs.datasets._span_rows.row_of` (which only builds a span model for lines not in the
canonical shape). The reward and LLM-call rules themselves are the store's own functions
(:func:`~store_fs.rewards.get_reward_value`, :func:`~store_fs.report.report_scan.is_llm_span`),
applied to an object holding the span's name and attributes: they read nothing else. They run
only on lines :func:`may_carry_reward` (the reward rule) or :func:`may_be_llm_call` (the LLM rule)
lets through. That skip is exact: both rules need an attribute key
(``agentlightning.reward.<i>.*``, ``agentops.task.output``, ``agentops.entity.output``,
``reward``, ``gen_ai.response.model``, ``gen_ai.request.model``) or a name containing
``chat.completion``; validation never changes keys or the name; and without a backslash in the
line (an escape could spell a character differently) a key or name of the parsed span is in the
line byte for byte.

The lines that are not good spans are returned as :class:`BadSpanLine` for the report's data
health section, with the reasons ``agl check`` gives.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import ValidationError

from store_fs._disk import codec, fsio
from store_fs.datasets._span_rows import row_of
from store_fs.models import Span
from store_fs.report.report_scan import is_llm_span, llm_details
from store_fs.rewards import reward_reading

__all__ = [
    "BadSpanLine",
    "DigestOfFiles",
    "digest_attempts",
    "invalid_reason",
    "may_be_llm_call",
    "may_carry_reward",
]


def may_carry_reward(line: bytes) -> bool:
    """Whether the line has an escape (which could spell any character) or a part of every key
    the reward rules read; without one its span carries no reward."""
    return (
        b"\\" in line
        or b"agentlightning.reward." in line
        or b'"reward"' in line
        or b"agentops.task.output" in line
        or b"agentops.entity.output" in line
    )


def may_be_llm_call(line: bytes) -> bool:
    """Whether the line has an escape, a model key or ``chat.completion``; without one its span is
    not an LLM call."""
    return (
        b"\\" in line
        or b"gen_ai.request.model" in line
        or b"gen_ai.response.model" in line
        or b"chat.completion" in line
    )


@dataclass(frozen=True, slots=True)
class BadSpanLine:
    """A line ``agl check`` reports as ``corrupt-span`` (``torn`` False) or the bytes after a
    finished attempt's last newline it reports as ``torn-tail`` (``torn`` True)."""

    path: str
    offset: int
    detail: str
    torn: bool = False
    #: The problem's kind when it is not about a line (a span log that is no file).
    kind: str | None = None


@dataclass(slots=True)
class DigestOfFiles:
    """The digest of a rollout's spans, and its bad lines."""

    reward: float | None = None
    spans: int = 0
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    bad: list[BadSpanLine] = field(default_factory=list)
    reward_seq: int | None = None


class _Named:
    """What the reward and LLM rules read of a span: its name and attributes."""

    __slots__ = ("attributes", "name")

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.attributes = attributes


def invalid_reason(err: ValidationError) -> str:
    """How ``agl check`` words a line that does not validate as a span."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "line"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"does not validate as a Span: {where}: {first['msg']}{more}"


def _note_reward(digest: DigestOfFiles, seq: int, name: str, attributes: dict[str, Any]) -> None:
    """Keep the reward of a good span that may carry one (same rule as ``find_final_reward``:
    a last reward of NaN or an infinity is no reward)."""
    value = reward_reading(cast(Span, _Named(name, attributes)))
    if value is not None and (digest.reward_seq is None or seq >= digest.reward_seq):
        digest.reward, digest.reward_seq = (value if math.isfinite(value) else None), seq


def _note_llm(digest: DigestOfFiles, name: str, attributes: dict[str, Any]) -> None:
    """Count a good span that may be an LLM call (same rules as ``digest_spans``)."""
    span = cast(Span, _Named(name, attributes))
    if is_llm_span(span):
        _model, tokens_in, tokens_out = llm_details(span)
        digest.llm_calls += 1
        digest.input_tokens += tokens_in or 0
        digest.output_tokens += tokens_out or 0


def _key(span_id: object) -> object:
    # The store's dedup key: the raw span_id; one that cannot be hashed is its own key.
    try:
        hash(span_id)
    except TypeError:
        return object()
    return span_id


def _line(digest: DigestOfFiles, line: bytes, seen: set[object], path: str, at: int) -> None:
    """Judge and count one complete, non-empty line."""
    try:
        obj = codec.loads(line)
    except ValueError as err:
        reason = str(err).splitlines()[0] if line.strip(b"\x00 \t\r") else "NUL or blank bytes"
        digest.bad.append(BadSpanLine(path, at, reason))
        return
    if type(obj) is not dict:
        digest.bad.append(BadSpanLine(path, at, "not a JSON object"))
        return
    span_id = obj.get("span_id")
    key = span_id if type(span_id) is str else _key(span_id)
    if key in seen:
        return
    seen.add(key)
    try:
        seq, row = row_of(obj)
    except ValidationError as err:
        digest.bad.append(BadSpanLine(path, at, invalid_reason(err)))
        return
    digest.spans += 1
    if may_carry_reward(line):
        _note_reward(digest, seq, row[2], row[3])
    if may_be_llm_call(line):
        _note_llm(digest, row[2], row[3])


def _file(digest: DigestOfFiles, path: str, seen: set[object], finished: bool) -> None:
    try:
        data = fsio.read_bytes(path)
    except OSError as err:
        # One span log that cannot be read (a directory in its place, no permission) is named
        # on the page; it aborted the whole report.
        if isinstance(err, (IsADirectoryError, fsio.SpecialFileError)):
            detail, kind = "is not a file: the rollout's readers and writers fail on it", "wrong-file-type"
        else:
            detail, kind = f"cannot be read ({err.strerror or err})", "corrupt-span"
        digest.bad.append(BadSpanLine(path, 0, detail, kind=kind))
        return
    if data is None:
        return
    end = data.rfind(b"\n") + 1
    if finished and end < len(data):
        digest.bad.append(BadSpanLine(path, end, f"{len(data) - end} bytes after the last newline", True))
    if not path.endswith(".jsonl"):
        return  # checked for a torn tail only, as ``agl check`` does; never read as spans
    at = 0
    for line in data[:end].split(b"\n")[:-1]:
        if line:
            _line(digest, line, seen, path, at)
        at += len(line) + 1


def digest_attempts(attempts: Sequence[tuple[str, bool]]) -> DigestOfFiles:
    """The digest of the spans in ``attempts``: (attempt directory, whether the attempt is
    finished) in the record's order. Torn tails are reported for finished attempts only. The
    counts are of every attempt's spans (as ``agl stats`` counts them), the reward is the
    latest attempt's (as ``agl data`` and ``agl prune`` read it: an earlier attempt's reward,
    of a try that failed, is not the rollout's)."""
    digest = DigestOfFiles()
    for i, (directory, finished) in enumerate(attempts):
        if i == len(attempts) - 1:
            digest.reward = digest.reward_seq = None
        try:
            names = sorted(n for n in os.listdir(directory) if n.startswith("spans."))
        except (FileNotFoundError, NotADirectoryError):
            continue
        seen: set[object] = set()
        for name in names:
            _file(digest, f"{directory}/{name}", seen, finished)
    return digest
