"""Report rows kept between reports (store_fs/report/_row_cache.py): a second report reads only
what changed and says exactly what a report without the cache says; changed, recent, damaged and
foreign entries are read again; a store the report cannot write to still gets its report."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl
from report_helpers import Expected, build_rich_store

from store_fs import FileStore, Span, TraceStatus
from store_fs._disk import fsio
from store_fs.report import ReportOptions, _row_cache, gather, report_fastscan
from store_fs.report.report_data import ReportData
from store_fs.report.report_scan import AttemptRow, RolloutRow
from store_fs.rewards import reward_span


@pytest.fixture
def rich(tmp_path: Path) -> Iterator[tuple[FileStore, Expected]]:
    store, expected = build_rich_store(tmp_path / "store")
    yield store, expected
    store.close()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The rollouts whose record the fast scan reads (a kept row needs none)."""
    seen: list[str] = []
    real = report_fastscan._revision

    def counting(history: str, rev: int) -> dict[str, Any] | bool:
        seen.append(Path(history).parent.name)
        return real(history, rev)

    monkeypatch.setattr(report_fastscan, "_revision", counting)
    return seen


def _report(store: FileStore, **options: Any) -> ReportData:
    return asyncio.run(gather(store, ReportOptions(jobs=1, **options)))


def _keepable(rows: list[RolloutRow]) -> set[str]:
    """Finished rollouts read from their files (one with an attempt the API reports with a fresher
    heartbeat, such as an unresponsive one, is read through the API, and not kept)."""
    return {
        r.rollout_id
        for r in rows
        if r.status in ("succeeded", "failed", "cancelled")
        and all(a.status in ("succeeded", "failed", "timeout") for a in r.attempts)
    }


def _kept(root: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for path in sorted((root / "cache" / "report-rows").glob("*.json")):
        rows.update(json.loads(path.read_bytes())["rows"])
    return rows


def test_the_field_tables_name_every_row_field() -> None:
    assert list(_row_cache._ROW_TYPES) == [
        f.name for f in dataclasses.fields(RolloutRow) if f.name != "attempts"
    ]
    assert list(_row_cache._ATTEMPT_TYPES) == [f.name for f in dataclasses.fields(AttemptRow)]


def test_a_second_report_reads_only_unsettled_rollouts_and_says_the_same(
    rich: tuple[FileStore, Expected], reads: list[str]
) -> None:
    store, _exp = rich
    uncached = _report(store, cache=False)
    assert not (store.root / "cache").exists()  # --no-cache writes nothing
    first = _report(store)
    kept = _kept(store.root)
    settled = _keepable(first.rollouts)
    assert len(settled) >= 12
    assert set(kept) == settled
    reads.clear()
    second = _report(store)
    assert reads  # the running and queued rollouts are read again...
    assert not set(reads) & settled  # ...and only they
    assert second.rollouts == first.rollouts == uncached.rollouts
    assert second.problems == first.problems == uncached.problems
    assert any(p.kind == "corrupt-span" for p in second.problems or [])  # kept with its row


def test_a_rollout_changed_since_is_read_again(rich: tuple[FileStore, Expected], reads: list[str]) -> None:
    store, exp = rich
    _report(store)
    target = exp.best
    before = next(r for r in _report(store).rollouts if r.rollout_id == target)
    attempt = before.attempts[-1]

    async def late_reward() -> None:
        # A span on a finished attempt: the store stamps its heartbeat in a new revision.
        span = reward_span(0.123, rollout_id=target, attempt_id=attempt.attempt_id, sequence_id=999)
        await store.add_span(span)

    asyncio.run(late_reward())
    reads.clear()
    after = next(r for r in _report(store).rollouts if r.rollout_id == target)
    assert target in reads
    assert after.spans == before.spans + 1
    assert after.reward == pytest.approx(0.123)
    assert after == next(r for r in _report(store, cache=False).rollouts if r.rollout_id == target)


def test_recently_ended_rollouts_are_not_kept(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")  # the real clock: this rollout ends now

    async def one() -> str:
        attempted = await store.start_rollout(input={"q": 1})
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        await store.add_span(
            Span(
                rollout_id=rid,
                attempt_id=aid,
                sequence_id=1,
                trace_id="ab" * 16,
                span_id="cd" * 8,
                parent_id=None,
                name="work",
                status=TraceStatus(status_code="OK"),
                attributes={},
                events=[],
                links=[],
                start_time=1.0,
                end_time=2.0,
                context=None,
                parent=None,
                resource={"attributes": {}, "schema_url": ""},
            )
        )
        await store.update_attempt(rid, aid, status="succeeded")
        return rid

    rid = asyncio.run(one())
    report = _report(store)
    assert [r.rollout_id for r in report.rollouts] == [rid]
    assert _kept(store.root) == {}  # ended under SETTLE_SECONDS ago: a late span may not stamp yet
    store.close()


def test_damaged_and_foreign_cache_files_are_read_again_and_rewritten(
    rich: tuple[FileStore, Expected],
) -> None:
    store, _exp = rich
    truth = _report(store, cache=False)
    _report(store)
    files = sorted((store.root / "cache" / "report-rows").glob("*.json"))
    assert len(files) >= 3
    files[0].write_bytes(b"{not json")
    body = json.loads(files[1].read_bytes())
    files[1].write_text(json.dumps({**body, "shape": {"version": 0}}))  # another build's rows
    body = json.loads(files[2].read_bytes())
    for entry in body["rows"].values():
        entry[1][0] = 12  # a rollout id that is not a string
        entry[1][6] = "high"  # a reward that is not a number
    files[2].write_text(json.dumps(body))
    again = _report(store)
    assert again.rollouts == truth.rollouts
    assert again.problems == truth.problems
    assert _report(store).rollouts == truth.rollouts  # rewritten: read from the cache now
    assert set(_kept(store.root)) == _keepable(truth.rollouts)


def test_a_store_the_report_cannot_write_to_still_gets_its_report(
    rich: tuple[FileStore, Expected], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _exp = rich

    def refuse(path: Path, data: bytes, *, durable: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fsio, "publish", refuse)
    assert _report(store).rollouts == _report(store, cache=False).rollouts
    assert not list((store.root / "cache" / "report-rows").glob("*.json"))


def test_pruned_rollouts_leave_the_report_and_the_cache(
    rich: tuple[FileStore, Expected], tmp_path: Path
) -> None:
    store, _exp = rich
    failed = {r.rollout_id for r in _report(store).rollouts if r.status == "failed"}
    assert failed & set(_kept(store.root))
    Agl(store.root, tmp_path).ok("prune", "--status", "failed")
    shown = {r.rollout_id for r in _report(store).rollouts}
    assert shown == {r.rollout_id for r in _report(store, cache=False).rollouts}
    assert not shown & failed
    assert not set(_kept(store.root)) & failed


def test_a_repair_drops_the_kept_rows(rich: tuple[FileStore, Expected]) -> None:
    """``check --fix`` quarantines a corrupt span line without a new revision: the kept rows go."""
    store, exp = rich
    before = _report(store)
    assert any(p.kind == "corrupt-span" for p in before.problems or [])
    assert _kept(store.root)
    assert any(p.fixed for p in store.check(fix=True))
    assert not (store.root / "cache" / "report-rows").exists()
    after = _report(store)
    assert not any(p.kind == "corrupt-span" for p in after.problems or [])
    assert after.rollouts == _report(store, cache=False).rollouts
    assert exp.corrupt_span_file


def test_a_prune_drops_the_kept_rows(rich: tuple[FileStore, Expected], tmp_path: Path) -> None:
    """A pruned rollout's id can come back (its idempotency key enqueued again) and reach the
    revision number of the row kept for the old one, which was then shown for the new one
    (found by an adversarial pass)."""
    store, _exp = rich
    _report(store)
    assert _kept(store.root)
    Agl(store.root, tmp_path).ok("prune", "--status", "failed")
    assert not (store.root / "cache" / "report-rows").exists()


def test_a_row_is_not_kept_while_a_late_span_may_still_come_without_a_revision() -> None:
    """The rollout ended long ago, but a late span stamped its attempt a moment ago: a second
    one within 0.25 s writes no revision, so a row kept between them went stale for good."""
    now = 10_000.0
    attempt = AttemptRow(
        rollout_id="ro-1",
        sequence_id=1,
        attempt_id="at-1",
        worker_id="w",
        status="succeeded",
        start_time=100.0,
        end_time=200.0,
        last_heartbeat_time=now - 1.0,  # a late span's stamp
        error=None,
    )
    row = RolloutRow(
        rollout_id="ro-1", status="succeeded", mode=None, resources_id=None, start_time=100.0, end_time=200.0
    )
    row.attempts = [attempt]
    assert not _row_cache._settled(row, now)
    row.attempts = [dataclasses.replace(attempt, last_heartbeat_time=300.0)]
    assert _row_cache._settled(row, now)


async def _retried(store: FileStore) -> str:
    """Attempt 1 is rewarded 0.9 and fails; attempt 2 fails without a reward."""
    from store_fs import RolloutConfig

    config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    rid = (await store.enqueue_rollout(input={"q": 1}, config=config)).rollout_id
    first = await store.dequeue_rollout(worker_id="w")
    assert first is not None
    await store.add_span(reward_span(0.9, rollout_id=rid, attempt_id=first.attempt.attempt_id, sequence_id=1))
    await store.update_attempt(rid, first.attempt.attempt_id, status="failed")
    second = await store.dequeue_rollout(worker_id="w")
    assert second is not None
    await store.update_attempt(rid, second.attempt.attempt_id, status="failed")
    return rid


def test_a_retried_rollouts_reward_is_its_latest_attempts(tmp_path: Path) -> None:
    """The page counted an earlier, failed attempt's reward as the rollout's (rewarded 1, best
    0.9) where agl data and prune read none (found by an adversarial pass): both scan paths."""
    from store_fs.report.report_scan import scan_rollout

    store = FileStore(tmp_path / "store")
    rid = asyncio.run(_retried(store))
    (row,) = _report(store, cache=False).rollouts
    assert (row.rollout_id, row.reward, row.spans) == (rid, None, 1)
    rollout = asyncio.run(store.get_rollout_by_id(rid))
    assert rollout is not None
    assert asyncio.run(scan_rollout(store, rollout)).reward is None
    store.close()
