"""The report library (store_fs.report): its numbers against the store, its page, its limits.

The store of ``report_helpers.build_rich_store`` has every outcome (successes, failures with
messages, a retry, a timeout, an unresponsive attempt, cancelled, queued and running
rollouts), three resource versions and three workers; the numbers the report embeds are
checked against what the builder made and against the store read back through its API.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from report_helpers import BAD_ANSWER, MODEL, RATE_LIMIT, TEMPLATES, WORKERS, Expected, build_rich_store

from store_fs import FileStore, RolloutNotFoundError
from store_fs.report import (
    ReportOptions,
    ReportOutputError,
    gather,
    render_page,
    report_data,
    watch_report,
    write_report,
)
from store_fs.report.prompt_diff import diff_html
from store_fs.report.report_data import ReportData
from store_fs.report.report_scan import AttemptRow, RolloutRow, scan_page
from store_fs.report.report_stats import duration_bins, failure_groups, reward_series, timeline_lanes
from store_fs.report.svg_charts import nice_ticks
from store_fs.report.svg_timelines import MAX_BARS, timeline
from store_fs.rewards import find_final_reward, reward_span


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> tuple[FileStore, Expected]:
    return build_rich_store(tmp_path_factory.mktemp("rich") / "store")


@pytest.fixture(scope="module")
def rich_page(rich: tuple[FileStore, Expected]) -> tuple[str, ReportData]:
    data = asyncio.run(gather(rich[0]))
    return render_page(data), data


def embedded(page: str) -> dict[str, Any]:
    """The numbers the page embeds for tools (``<script type="application/json">``)."""
    match = re.search(r'<script type="application/json" id="agl-report-data">(.*?)</script>', page, re.S)
    assert match, "the report embeds its numbers"
    doc: dict[str, Any] = json.loads(match.group(1))
    return doc


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


async def _truth(store: FileStore) -> dict[str, Any]:
    """What the report should say, read back through the public API independently of it."""
    rewards: dict[str, float] = {}
    attempts = retries = tokens_in = llm_calls = 0
    statuses: dict[str, int] = {}
    for rollout in await store.query_rollouts():
        statuses[rollout.status] = statuses.get(rollout.status, 0) + 1
        spans = list(await store.query_spans(rollout.rollout_id))
        reward = find_final_reward(spans)
        if reward is not None:
            rewards[rollout.rollout_id] = reward
        found = list(await store.query_attempts(rollout.rollout_id))
        attempts += len(found)
        retries += sum(1 for a in found if a.sequence_id > 1)
        llm_calls += sum(1 for s in spans if s.name == "openai.chat.completion")
        tokens_in += sum(_int(s.attributes.get("gen_ai.usage.input_tokens")) for s in spans)
    return {
        "rewards": rewards,
        "statuses": statuses,
        "attempts": attempts,
        "retries": retries,
        "tokens_in": tokens_in,
        "llm_calls": llm_calls,
    }


def test_summary_numbers_match_the_store(
    rich: tuple[FileStore, Expected], rich_page: tuple[str, ReportData]
) -> None:
    store, exp = rich
    page, _data = rich_page
    summary = embedded(page)["summary"]
    truth = asyncio.run(_truth(store))
    assert summary["by_status"] == truth["statuses"] == exp.by_status
    assert summary["total"] == sum(exp.by_status.values()) == 18
    finished = sum(exp.by_status.get(s, 0) for s in ("succeeded", "failed", "cancelled"))
    assert summary["success_rate"] == pytest.approx(exp.by_status["succeeded"] / finished)
    assert summary["mean_reward"] == pytest.approx(statistics.mean(truth["rewards"].values()))
    assert summary["best_reward"] == max(truth["rewards"].values()) == 0.95
    assert summary["best_rollout"] == exp.best
    assert summary["attempts"] == truth["attempts"]
    assert summary["retries"] == truth["retries"] == 1
    assert summary["workers"] == list(WORKERS)
    assert summary["input_tokens"] == truth["tokens_in"]
    assert summary["llm_calls"] == truth["llm_calls"] == 16  # one per attempt that ran
    # and people see the same numbers
    assert f"{exp.by_status['succeeded'] / finished:.1%}" in page
    assert f"{statistics.mean(truth['rewards'].values()):.3f}" in page


def test_reward_per_version_with_prompts_diffs_and_the_best_marked(
    rich: tuple[FileStore, Expected], rich_page: tuple[str, ReportData]
) -> None:
    _store, exp = rich
    page, _data = rich_page
    versions = {v["resources_id"]: v for v in embedded(page)["versions"]}
    for i, resources_id in enumerate(exp.version_ids, 1):
        version = versions[resources_id]
        assert version["label"] == f"v{i}"
        assert version["mean_reward"] == pytest.approx(statistics.mean(exp.rewards_by_version[resources_id]))
        assert version["best_reward"] == max(exp.rewards_by_version[resources_id])
    best = [v for v in versions.values() if v["best"]]
    assert [b["resources_id"] for b in best] == [exp.version_ids[2]]  # v3: mean 0.8
    for template in TEMPLATES:
        assert template.replace("{q}", "") in page
    assert "Answer<ins> briefly</ins>: {q}" in page  # v2 against v1
    assert "briefly<ins> and exactly</ins>: {q}" in page  # v3 against v2
    assert 'class="bar best"' in page
    assert "★ best" in page


def test_failures_grouped_with_counts_and_examples(
    rich: tuple[FileStore, Expected], rich_page: tuple[str, ReportData]
) -> None:
    _store, exp = rich
    page, _data = rich_page
    groups = {(g["kind"], g["message"]): g for g in embedded(page)["failures"]}
    assert groups[("failed", BAD_ANSWER)]["attempts"] == exp.failures[("failed", BAD_ANSWER)] == 2
    assert groups[("failed", RATE_LIMIT)]["examples"] == [exp.retried]
    timeout = next(g for (kind, _m), g in groups.items() if kind == "timeout")
    assert timeout["examples"] == [exp.timed_out]
    unresponsive = next(g for (kind, _m), g in groups.items() if kind == "unresponsive")
    assert unresponsive["examples"] == [exp.unresponsive]
    assert sum(g["attempts"] for g in groups.values()) == sum(exp.failures.values())
    assert BAD_ANSWER in page
    assert RATE_LIMIT in page


def test_data_health_shows_what_check_finds(
    rich: tuple[FileStore, Expected], rich_page: tuple[str, ReportData]
) -> None:
    store, exp = rich
    page, data = rich_page
    problems = store.check()
    assert [p.kind for p in problems] == ["corrupt-span"]
    assert data.problems is not None
    assert [p.path for p in data.problems] == [exp.corrupt_span_file]
    assert embedded(page)["problems"] == 1
    assert embedded(page)["check"] == "quick"
    assert data.problems == problems  # the quick check words it as check() does
    assert "corrupt-span" in page
    assert exp.corrupt_span_file in page
    assert "quick check finds 1 problem(s)" in page
    assert "--full-check" in page


def test_timeline_waterfalls_and_charts(
    rich: tuple[FileStore, Expected], rich_page: tuple[str, ReportData]
) -> None:
    _store, exp = rich
    page, _data = rich_page
    assert embedded(page)["waterfalls"] == [exp.best, exp.worst]
    # attempts per worker: every worker has a lane; timeouts, unresponsive attempts and retries show
    for worker in WORKERS:
        assert f">{worker}<title>" in page
    assert 'class="st-timeout"' in page
    assert 'class="st-unresponsive"' in page
    assert 'class="st-succeeded retry"' in page
    # LLM calls in the waterfall: model, tokens and latency
    assert re.search(rf"{MODEL} · 1\d\d→\d\d tokens · 500 ms", page)
    assert "reward 0.950" in page
    # every chart has a title, axis labels and hover values
    charts = re.findall(r'<svg class="chart".*?</svg>', page, re.S)
    assert len(charts) == 8  # versions, reward, finished, workers, two histograms, two waterfalls
    for chart in charts:
        assert chart.count("<title>") >= 2, chart[:200]
        assert 'class="label"' in chart, chart[:200]
    for title in (
        "Mean reward per resource version",
        "Final reward over time",
        "Rollouts finished over time",
        "Attempts per worker",
        "Final reward",
        "Attempt duration",
        f"Spans of {exp.best}",
    ):
        assert f"<title>{title}" in page


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.refs += [
            v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action", "data", "srcset")
        ]


def test_the_page_fetches_nothing_and_runs_no_script(rich_page: tuple[str, ReportData]) -> None:
    page, _data = rich_page
    parser = _Links()
    parser.feed(page)
    assert parser.refs == []
    assert not parser.tags & {"link", "img", "iframe", "object", "embed", "video", "audio"}
    scripts = re.findall(r"<script([^>]*)>", page)
    assert scripts == [' type="application/json" id="agl-report-data"']  # data, never run
    assert "@import" not in page
    assert re.findall(r"url\(([^)]*)\)", page) == ["#hatch-unresponsive"]
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_an_empty_store_gives_a_report_that_says_so(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "empty")
    result = write_report(store, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert result.rollouts == 0
    assert result.problems == 0
    assert "This store has no rollouts yet" in page
    assert embedded(page)["summary"]["total"] == 0


def test_output_errors_come_before_reading_and_leave_nothing(
    rich: tuple[FileStore, Expected], tmp_path: Path
) -> None:
    store, _exp = rich
    with pytest.raises(ReportOutputError, match="No such file or directory"):
        write_report(store, tmp_path / "missing" / "r.html")
    (tmp_path / "file").write_text("")
    with pytest.raises(ReportOutputError, match="Not a directory"):
        write_report(store, tmp_path / "file" / "r.html")
    with pytest.raises(ReportOutputError, match="is a directory"):
        write_report(store, tmp_path)
    with pytest.raises(RolloutNotFoundError):
        write_report(store, tmp_path / "r.html", ReportOptions(rollout_ids=("ro-000000000000",)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no report, no temporary file


def test_a_requested_rollout_gets_its_waterfall(rich: tuple[FileStore, Expected], tmp_path: Path) -> None:
    store, exp = rich
    write_report(store, tmp_path / "r.html", ReportOptions(rollout_ids=(exp.retried,), run_check=False))
    page = (tmp_path / "r.html").read_text()
    assert embedded(page)["waterfalls"] == [exp.retried]
    assert embedded(page)["problems"] is None
    assert "Not checked" in page
    assert f"<title>Spans of {exp.retried} (requested)" in page


def test_worker_processes_read_the_same_as_one_process_and_the_api(
    rich: tuple[FileStore, Expected], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _exp = rich
    alone = asyncio.run(gather(store, ReportOptions(jobs=1)))
    monkeypatch.setattr(report_data, "PARALLEL_MIN_ROLLOUTS", 0)
    pooled = asyncio.run(gather(store, ReportOptions(jobs=2)))
    through_api = asyncio.run(scan_page(store, 0, -1))
    assert len(alone.rollouts) == 18
    assert pooled.rollouts == alone.rollouts
    assert sorted(through_api, key=lambda r: (r.start_time, r.rollout_id)) == alone.rollouts
    assert pooled.problems == alone.problems
    assert alone.check_scope == pooled.check_scope == "quick"


def test_the_full_check_is_what_check_finds(
    rich: tuple[FileStore, Expected], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, exp = rich
    full = asyncio.run(gather(store, ReportOptions(full_check=True)))
    monkeypatch.setattr(report_data, "PARALLEL_MIN_ROLLOUTS", 0)
    pooled = asyncio.run(gather(store, ReportOptions(full_check=True, jobs=2)))
    assert full.problems == pooled.problems == store.check()
    assert full.check_scope == "full"
    page = render_page(full)
    assert embedded(page)["check"] == "full"
    assert "<code>agl check</code> finds 1 problem(s)" in page
    assert exp.corrupt_span_file in page
    not_checked = asyncio.run(gather(store, ReportOptions(run_check=False, full_check=True)))
    assert not_checked.problems is None
    assert not_checked.check_scope is None


def _synthetic(n: int) -> ReportData:
    """A report's data for ``n`` rollouts (with failures, retries and 16 workers), made in memory."""
    rows: list[RolloutRow] = []
    for i in range(n):
        start = 1_700_000_000.0 + i * 0.05
        status = "failed" if i % 17 == 0 else "succeeded"
        attempts = [
            AttemptRow(
                f"ro-{i:012x}",
                1,
                f"at-{i:08x}",
                f"w-{i % 16}",
                status,
                start,
                start + 0.4 + (i % 7) * 0.1,
                None,
                "Boom" if status == "failed" else None,
            )
        ]
        rows.append(
            RolloutRow(
                f"ro-{i:012x}",
                status,
                "train",
                None,
                start - 1,
                start + 1,
                (i % 100) / 100,
                3,
                1,
                100,
                20,
                attempts,
            )
        )
    return ReportData("synthetic", rows[-1].end_time or 0.0, rows, [], [], [])


def test_a_big_store_is_aggregated_not_dumped() -> None:
    data = _synthetic(100_000)
    started = time.perf_counter()
    page = render_page(data)
    took = time.perf_counter() - started
    assert len(page.encode()) < 3_000_000, len(page)
    assert took < 20, took
    summary = embedded(page)["summary"]
    assert summary["total"] == 100_000
    assert "binned into 200 intervals" in page
    assert "Every 125th reward is drawn as a dot" in page


def test_statistics_helpers() -> None:
    # ticks cover the range they are asked for
    ticks = nice_ticks(0, 500, 4, integer=True)
    assert ticks[0] <= 0
    assert ticks[-1] >= 500
    assert all(t == int(t) for t in nice_ticks(0, 3, 4, integer=True))
    # rolling mean over a window of a tenth of the rewards
    rows = [
        RolloutRow(f"ro-{i}", "succeeded", None, None, float(i), float(i) + 0.5, float(i)) for i in range(40)
    ]
    series = reward_series(rows)
    assert series.window == 4
    assert series.rolling[-1] == (39.5, statistics.mean([36, 37, 38, 39]))
    # durations past the 99th percentile share a last bar
    bins = duration_bins([1.0] * 99 + [1000.0])
    assert sum(b.count for b in bins) == 100
    assert bins[-1].count == 1
    assert bins[-1].label.startswith("over")
    # long messages are cut, first lines grouped
    attempt = AttemptRow("ro-1", 1, "at-1", "w", "failed", 0.0, 1.0, None, "E: " + "x" * 500 + "\nmore")
    groups = failure_groups([RolloutRow("ro-1", "failed", None, None, 0.0, 1.0, attempts=[attempt])])
    assert len(groups[0].message) == 300
    assert groups[0].message.endswith("…")
    assert diff_html(
        "Answer: {q}", "Answer briefly: {q}"
    ) == "Answer<del>:</del><ins> briefly:</ins> {q}" or (
        "<ins>" in diff_html("Answer: {q}", "Answer briefly: {q}")
    )


def test_a_timeline_of_many_attempts_is_binned() -> None:
    few = _synthetic(MAX_BARS // 2)
    assert timeline("t", timeline_lanes(few.rollouts)).count("<rect") > MAX_BARS // 2  # one per attempt
    sizes = []
    for n in (MAX_BARS * 3, MAX_BARS * 30):
        data = _synthetic(n)
        sizes.append(len(timeline("t", timeline_lanes(data.rollouts))))
    assert sizes[1] < 1_000_000  # bounded by workers x bins x outcomes, whatever the number of attempts


def test_watch_writes_again_when_the_store_changes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    out = tmp_path / "live.html"
    written: list[int] = []
    stop = threading.Event()

    def run() -> None:
        watch_report(
            FileStore(store.root, create=False),
            out,
            on_written=lambda r: written.append(r.rollouts),
            interval=0.2,
            stop=stop,
        )

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not written and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written == [0]
        asyncio.run(store.enqueue_rollout(input={"q": 1}))
        while written[-1] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written[-1] == 1
        assert embedded(out.read_text())["summary"]["total"] == 1
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_watch_writes_again_for_a_late_reward_and_stops_when_the_store_goes(tmp_path: Path) -> None:
    """A grader's reward after the rollout finished changes no status: the page kept the old
    best reward; and a store removed meanwhile got an empty page written, then nothing (found
    by an adversarial pass)."""
    from datasets_helpers import make_rollout

    from store_fs.errors import StoreNotFoundError

    store = FileStore(tmp_path / "store")
    rid = asyncio.run(make_rollout(store, reward=0.25))
    out = tmp_path / "live.html"
    best: list[float | None] = []
    failed: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            watch_report(
                FileStore(store.root, create=False),
                out,
                on_written=lambda r: best.append(embedded(out.read_text())["summary"]["best_reward"]),
                interval=0.2,
                stop=stop,
            )
        except BaseException as err:
            failed.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not best and time.monotonic() < deadline:
            time.sleep(0.05)
        assert best == [0.25]
        aid = _latest_attempt(store, rid)
        seq = asyncio.run(store.get_next_span_sequence_id(rid, aid))
        asyncio.run(store.add_span(reward_span(0.75, rollout_id=rid, attempt_id=aid, sequence_id=seq)))
        while best[-1] != 0.75 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert best[-1] == 0.75
        shutil.rmtree(store.root)
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert [type(e) for e in failed] == [StoreNotFoundError]
    finally:
        stop.set()
        thread.join(timeout=10)


def _latest_attempt(store: FileStore, rollout_id: str) -> str:
    attempt = asyncio.run(store.get_latest_attempt(rollout_id))
    assert attempt is not None
    return attempt.attempt_id


def test_the_report_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_report.py"
    out = tmp_path / "figures.json"
    args = ["--n", "60", "--versions", "2", "--jobs", "1", "--dir", str(tmp_path), "--json", str(out)]
    args += ["--checks", "quick,full", "--caches", "first,next"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    results = [(r["rollouts"], r["check"], r["cache"], r["problems"]) for r in figures["results"]]
    assert results == [
        (60, "quick", "first", 0),
        (60, "quick", "next", 0),
        (60, "full", "first", 0),
        (60, "full", "next", 0),
    ]
    assert "page MB" in done.stdout


DATA_BLOCK = '<script type="application/json" id="agl-report-data">'


def _gathered(
    root: Path,
    fill: Callable[[FileStore], Coroutine[Any, Any, object]],
    damage: Callable[[FileStore], object] | None = None,
) -> ReportData:
    """The report's data of a store at ``root`` that ``fill`` wrote (then ``damage`` changed)."""
    store = FileStore(root)
    try:
        asyncio.run(fill(store))
        if damage is not None:
            damage(store)
        return asyncio.run(gather(store))
    finally:
        store.close()


def test_the_embedded_data_stays_one_json_block_whatever_the_values_hold(tmp_path: Path) -> None:
    """A value holding "<!--<script>" kept the block's real end tag from ending it under the
    HTML parsing rules, so tools reading the block got invalid JSON (found this session)."""

    async def fill(store: FileStore) -> None:
        await store.start_rollout(input="x", worker_id="w<!--<script>")

    page = render_page(_gathered(tmp_path / "odd<!--<script>", fill))
    start = page.index(DATA_BLOCK)
    block = page[start:].split(">", 1)[1]
    body, end = block.split("</script>", 1)
    assert "<" not in body  # nothing the HTML tokenizer could take for a tag or a comment
    assert end.strip().endswith("</html>")
    assert "odd<!--<script>" in json.dumps(json.loads(body))


def test_a_resource_version_without_its_body_is_a_problem_on_the_page_not_a_failure(tmp_path: Path) -> None:
    """The report failed with exit 7 and wrote nothing when one resource version's body was
    missing (found this session); the rest of the store is readable, so the page is made."""
    import shutil

    from store_fs import PromptTemplate

    async def fill(store: FileStore) -> None:
        await store.add_resources({"p": PromptTemplate(template="a {x}", engine="f-string")})
        await store.start_rollout(input="x")

    data = _gathered(tmp_path / "st", fill, lambda store: shutil.rmtree(store.root / "resources" / "objects"))
    assert data.problems is not None
    damaged = [p for p in data.problems if "resources/by-id" in p.path]
    assert [p.kind for p in damaged] == ["corrupt-record"]
    assert "missing" in damaged[0].detail
    assert "resources/by-id" in render_page(data)


def test_controls_and_bidirectional_overrides_show_as_code_points(tmp_path: Path) -> None:
    """A raw NUL (an HTML parse error) and U+202E (which shows the text after it reversed, so a
    worker id could read as another) were written into the page as they were."""
    from store_fs import PromptTemplate

    async def fill(store: FileStore) -> None:
        await store.add_resources({"p": PromptTemplate(template="Q\x00 {x}", engine="f-string")})
        await store.start_rollout(input="x", worker_id="w-\u202egnp.exe")

    page = render_page(_gathered(tmp_path / "st", fill))
    start = page.index(DATA_BLOCK)
    markup = page[:start] + page[start:].split("</script>", 1)[1]
    assert "\x00" not in page
    assert "\u202e" not in markup  # the JSON block keeps the value exactly (it is not shown)
    assert "w-\\u202egnp.exe" in markup
    assert "Q\\u0000 {x}" in markup
