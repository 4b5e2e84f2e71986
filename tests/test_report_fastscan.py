"""The report's fast reading (store_fs.report.report_fastscan) against the public API path.

Each rollout's row, read straight from its files, must equal the row ``scan_rollout`` makes through
``get_rollout_by_id``, ``query_attempts`` and ``query_spans`` (``digest_spans`` over the spans);
and the span lines it finds bad must be the ``corrupt-span`` and ``torn-tail`` problems
``check()`` reports. Hypothesis writes span files line by line (good spans in and out of the
canonical shape, keys spelled with escapes, rewards in every format, LLM calls with odd token
counts, duplicated span ids, lines that do not parse or validate, blank lines, torn tails, several
writers' files, retried rollouts); other tests use real writer processes, unreadable records,
and the queue problems of the quick check.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_fs import FileStore, RolloutConfig, Span
from store_fs.report._span_digest import may_be_llm_call, may_carry_reward
from store_fs.report.report_fastscan import FastScan, buckets, scan_buckets
from store_fs.report.report_health import quick_check
from store_fs.report.report_scan import RolloutRow, scan_page, scan_rollout
from store_fs.rewards import ANNOTATION_SPAN_NAME

ROOT = Path(__file__).resolve().parent.parent
SPAN_KINDS = ("corrupt-span", "torn-tail")

NAMES = st.sampled_from(
    ["agent.run", "openai.chat.completion", ANNOTATION_SPAN_NAME, "my chat.completion call", "tool", "reward"]
)
KEYS = st.sampled_from(
    [
        "agentlightning.reward.0.value",
        "agentlightning.reward.0.name",
        "agentlightning.reward.1.value",
        "agentlightning.reward.x.value",
        "reward",
        "agentops.task.output",
        "agentops.entity.output",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "agent",
        "note",
    ]
)
VALUES = st.one_of(
    st.floats(-10, 1000, allow_nan=False, width=32),
    st.integers(-5, 500),
    st.booleans(),
    st.text(max_size=3),
    st.just('{"type": "reward", "value": 0.25}'),
    st.lists(st.integers(0, 9), max_size=2),
)
REWARDS = st.floats(0, 1, width=32)
GARBAGE = st.sampled_from(
    [
        b"{not json",
        b"\x00\x00\x00",
        b"   ",
        b"[1, 2]",
        b'"text"',
        b"{}",
        b'{"span_id": ["a"]}',
        b'{"span_id": "s1", "name": 3}',
        b'{"span_id": 7}',
        b"",
    ]
)
# How a good span's line is written: as the store writes it, or otherwise (still valid, or not).
VARIANTS = st.sampled_from(["canonical", "canonical", "int_times", "escaped", "reordered", "bad_sequence"])


@st.composite
def span_lines(draw: st.DrawFn, rollout_id: str) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(GARBAGE)
    attributes = draw(
        st.one_of(
            st.builds(
                lambda v: {"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": v},
                REWARDS,
            ),
            st.builds(
                lambda i, o: {
                    "gen_ai.request.model": "m",
                    "gen_ai.usage.input_tokens": i,
                    "gen_ai.usage.output_tokens": o,
                },
                VALUES,
                VALUES,
            ),
            st.dictionaries(KEYS, VALUES, max_size=4),
        )
    )
    span = Span.from_attributes(
        attributes=attributes,
        rollout_id=rollout_id,
        attempt_id="at-00000000",  # replaced below by the attempt's id
        sequence_id=draw(st.integers(1, 3)),  # ties are common
        name=draw(NAMES),
        span_id=draw(st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6", "s7"])),  # so are duplicates
        start_time=1.0,
        end_time=2.0,
    )
    obj: dict[str, Any] = span.model_dump(mode="json")
    variant = draw(VARIANTS)
    if variant == "int_times":
        obj["start_time"], obj["end_time"] = 1, 2
    elif variant == "reordered":
        obj = dict(reversed(list(obj.items())))
    elif variant == "bad_sequence":
        obj["sequence_id"] = "first"
    line = orjson.dumps(obj)
    if variant == "escaped":
        line = line.replace(b'"gen_ai.', b'"gen_ai\\u002e').replace(
            b"agentlightning.", b"agentlightning\\u002e"
        )
        line = line.replace(b"chat.completion", b"chat\\u002ecompletion")
    return line


@st.composite
def attempt_files(draw: st.DrawFn, rollout_id: str) -> list[bytes]:
    """The span files of one attempt (one per writer): lines, and maybe a torn tail."""
    files = []
    for _writer in range(draw(st.integers(1, 2))):
        lines = draw(st.lists(span_lines(rollout_id), max_size=8))
        tail = draw(st.sampled_from([b"", b"", b'{"span_id": "torn', b"\x00\x00"]))
        files.append(b"".join(line + b"\n" for line in lines) + tail)
    return files


async def _finished_rollout(store: FileStore, attempts: int) -> tuple[str, list[tuple[int, str]]]:
    """A rollout whose ``attempts`` attempts all failed but the last, which succeeded."""
    config = RolloutConfig(max_attempts=attempts, retry_condition=["failed"])
    rollout = await store.enqueue_rollout(input={"q": 1}, config=config)
    made = []
    for i in range(attempts):
        attempted = await store.dequeue_rollout(worker_id=f"w-{i}")
        assert attempted is not None
        attempt = attempted.attempt
        made.append((attempt.sequence_id, attempt.attempt_id))
        if i == attempts - 1:
            await store.update_attempt(rollout.rollout_id, attempt.attempt_id, status="succeeded")
        else:
            await store.update_attempt(rollout.rollout_id, attempt.attempt_id, status="failed")
    return rollout.rollout_id, made


def _fast(store: FileStore) -> FastScan:
    return asyncio.run(scan_buckets(str(store.root), buckets(store.layout)))


def _by_id(rows: list[RolloutRow]) -> dict[str, RolloutRow]:
    return {row.rollout_id: row for row in rows}


def _span_problems(problems: list[Any]) -> list[Any]:
    return sorted((p for p in problems if p.kind in SPAN_KINDS), key=lambda p: (p.kind, p.path, p.detail))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), attempts=st.integers(1, 2))
def test_rows_from_files_equal_rows_through_the_api(data: st.DataObject, attempts: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp) / "store")
        try:
            rollout_id, made = asyncio.run(_finished_rollout(store, attempts))
            for seq, attempt_id in made:
                directory = store.layout.attempt_dir(rollout_id, seq, attempt_id)
                directory.mkdir(parents=True, exist_ok=True)
                for n, content in enumerate(data.draw(attempt_files(rollout_id))):
                    content = content.replace(b"at-00000000", attempt_id.encode())
                    (directory / f"spans.writer{n}-{n}.jsonl").write_bytes(content)
            rollout = asyncio.run(store.get_rollout_by_id(rollout_id))
            assert rollout is not None
            expected = asyncio.run(scan_rollout(store, rollout))
            fast = _fast(store)
            assert fast.through_api == 0  # read from the files, not through the API
            assert fast.rows == [expected]
            quick = quick_check(store.layout, fast.rows, fast.bad_spans, fast.corrupt_records)
            assert _span_problems(quick) == _span_problems(store.check())
        finally:
            store.close()


@given(line=span_lines("ro-0123456789ab"))
def test_a_line_without_a_trigger_is_neither_a_reward_nor_an_llm_call(line: bytes) -> None:
    """The byte prefilter's premise, on single lines: no trigger, no reward and no LLM call."""
    from pydantic import ValidationError

    from store_fs.report.report_scan import is_llm_span
    from store_fs.rewards import get_reward_value

    try:
        span = Span.model_validate(orjson.loads(line))
    except (ValueError, ValidationError):
        return
    if not may_carry_reward(line):
        assert get_reward_value(span) is None
    if not may_be_llm_call(line):
        assert not is_llm_span(span)


def test_several_writer_processes_and_retries(tmp_path: Path) -> None:
    """Spans of one attempt written by two processes (one file each, a span id in both)."""
    store = FileStore(tmp_path / "store")
    rollout_id, made = asyncio.run(_finished_rollout(store, 2))
    code = (
        "import asyncio, sys\n"
        "from store_fs import FileStore, Span\n"
        "from store_fs.rewards import reward_span\n"
        "root, rid, writer, *aids = sys.argv[1:]\n"
        "async def main():\n"
        "    store = FileStore(root, create=False)\n"
        "    for aid in aids:\n"
        "        spans = [Span.from_attributes(attributes={'gen_ai.request.model': 'm',\n"
        "            'gen_ai.usage.input_tokens': 10, 'gen_ai.usage.output_tokens': 3}, rollout_id=rid,\n"
        "            attempt_id=aid, sequence_id=2, name='openai.chat.completion', span_id='shared')]\n"
        "        spans.append(reward_span(0.5 if writer == '1' else 0.75, rollout_id=rid,\n"
        "            attempt_id=aid, sequence_id=9))\n"
        "        await store.add_many_spans(spans)\n"
        "    store.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    attempt_ids = [attempt_id for _seq, attempt_id in made]
    for writer in ("1", "2"):
        args = [sys.executable, "-c", code, str(store.root), rollout_id, writer, *attempt_ids]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
    for seq, attempt_id in made:
        assert len(list(store.layout.attempt_dir(rollout_id, seq, attempt_id).glob("spans.*.jsonl"))) == 2
    expected = asyncio.run(scan_page(store, 0, -1))
    fast = _fast(store)
    assert fast.rows == expected
    row = fast.rows[0]
    assert (row.spans, row.llm_calls, row.input_tokens) == (6, 2, 20)  # "shared" once per attempt
    assert row.reward in (0.5, 0.75)  # sequence 9 in both files: the later file's reward wins
    store.close()


def test_unreadable_records_and_live_attempts_go_through_the_api(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    finished, _made = asyncio.run(_finished_rollout(store, 1))
    broken, _made = asyncio.run(_finished_rollout(store, 1))
    running = asyncio.run(store.enqueue_rollout(input={"q": 2}))
    attempted = asyncio.run(store.dequeue_rollout(worker_id="w-live"))
    assert attempted is not None
    history = store.layout.history_dir(broken)
    newest = max(history.iterdir())
    os.chmod(newest, 0o644)
    newest.write_bytes(b'{"torn": ')
    reader = FileStore(store.root, create=False)
    expected = asyncio.run(scan_page(reader, 0, -1))
    fast = _fast(store)
    assert sorted(r.rollout_id for r in fast.rows) == sorted([finished, running.rollout_id])
    assert sorted(fast.rows, key=lambda r: r.rollout_id) == sorted(expected, key=lambda r: r.rollout_id)
    assert fast.through_api == 1  # the running rollout (its heartbeat files count)
    assert [path for path, _why in fast.corrupt_records] == [str(newest)]
    quick = quick_check(store.layout, fast.rows, fast.bad_spans, fast.corrupt_records)
    full = [p for p in store.check() if p.kind == "corrupt-record"]
    assert [(p.kind, p.path, p.detail) for p in quick if p.kind == "corrupt-record"] == [
        (p.kind, p.path, p.detail) for p in full
    ]
    reader.close()
    store.close()


def _quick(store: FileStore, grace: float | None = None) -> list[Any]:
    fast = _fast(store)
    if grace is None:
        return quick_check(store.layout, fast.rows, fast.bad_spans, fast.corrupt_records)
    return quick_check(store.layout, fast.rows, fast.bad_spans, fast.corrupt_records, grace)


def test_the_quick_check_finds_the_queue_problems_check_finds(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    asyncio.run(_finished_rollout(store, 1))
    queued = asyncio.run(store.enqueue_rollout(input={"q": 3}))
    for token in store.layout.pending.iterdir():  # a queued rollout without its token: not-queued
        if queued.rollout_id in token.name:
            token.unlink()
    orphan = store.layout.pending / "1-ro-0000000000aa-1.json"
    orphan.write_text("{}")  # orphan-pending (a new one is an enqueue in flight: passed over by both)
    assert "orphan-pending" not in {p.kind for p in _quick(store)} | {p.kind for p in store.check()}
    (store.layout.done / "ro-0000000000bb.1.at-0000000b.succeeded.json").write_text("{}")  # unapplied
    (store.layout.claimed / "ro-0000000000cc.1.at-0000000c.json").write_text("{}")  # orphan-claim
    # Just made: a completion or a dequeue in flight to both (the quick check reported them on a
    # busy store, its rows read before the queue was listed; an adversarial pass).
    in_flight = {"unapplied-decision", "orphan-claim"}
    assert not in_flight & ({p.kind for p in _quick(store)} | {p.kind for p in store.check()})
    quick = _quick(store, grace=0)
    full = store.check(grace=0)
    kinds = {"not-queued", "orphan-pending", "unapplied-decision", "orphan-claim"}
    assert {p.kind for p in quick} == kinds
    assert sorted(quick, key=str) == sorted((p for p in full if p.kind in kinds), key=str)
    (store.layout.rollout_index_marker).unlink()
    fast = _fast(store)
    quick = quick_check(store.layout, fast.rows, fast.bad_spans, fast.corrupt_records)
    assert "index-incomplete" in {p.kind for p in quick}
    store.close()


def test_every_kind_agl_check_reports_is_found_by_the_quick_check_or_named_as_not() -> None:
    """The page says what its quick check does not look for; a corrupt worker-log line was
    neither found nor named, so the page said "no problems" where ``agl check`` exited 7 (an
    adversarial pass). Every kind in the check's modules is one or the other."""
    import re

    import store_fs._disk as disk
    import store_fs.report.report_health as health

    sources = sorted(Path(disk.__file__).parent.glob("check*.py"))
    kinds = {k for path in sources for k in re.findall(r'Problem\(\s*"([a-z-]+)"', path.read_text())}
    found_quickly = set(re.findall(r'Problem\(\s*"([a-z-]+)"', Path(health.__file__).read_text()))
    found_quickly |= {
        "corrupt-span",
        "torn-tail",
        "orphan-claim",
        "orphan-pending",
        "not-queued",
        "unapplied-decision",
    }
    assert kinds, sources
    assert kinds - found_quickly - set(health.NOT_QUICK) == set()
    assert set(health.QUICK_ONLY_FOR) <= set(health.NOT_QUICK)  # qualified where it is named


def test_a_rollout_dequeued_after_its_row_was_read_is_not_reported_as_not_queued(tmp_path: Path) -> None:
    """The rows are read before the queue is listed: a rollout read as queued and dequeued (and
    finished) since has no token any more, which the quick check took for damage."""
    store = FileStore(tmp_path / "store")
    queued = asyncio.run(store.enqueue_rollout(input={"q": 1}))
    fast = _fast(store)  # the row: queuing
    attempted = asyncio.run(store.dequeue_rollout(worker_id="w"))
    assert attempted is not None
    asyncio.run(store.update_attempt(queued.rollout_id, attempted.attempt.attempt_id, status="succeeded"))
    quick = quick_check(store.layout, fast.rows, fast.bad_spans, fast.corrupt_records, 0)
    assert "not-queued" not in {p.kind for p in quick}
    store.close()
