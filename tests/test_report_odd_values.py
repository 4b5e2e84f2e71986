"""The report under odd values and odd output names (each case found by an adversarial pass).

Extreme finite rewards crashed it or wrote ``Infinity`` into its data and ``nan`` into its
charts; a tampered row cache put markup into a chart's class; ``-o`` a FIFO or a symbolic link
was replaced by a regular file; one span log that could not be read aborted the whole report;
20 KB error texts on 300 spans made a 12 MB page; ticks across decades read as time running
backwards; rewritten long prompts were diffed in quadratic time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import AGL, agl_env
from datasets_helpers import make_rollout
from test_report_cli import embedded

from store_fs import FileStore, Span, TraceStatus
from store_fs.report import ReportOptions, write_report
from store_fs.report.prompt_diff import diff_html
from store_fs.report.svg_charts import TIP_CHARS, time_ticks


def _report(store: FileStore, out: Path, **options: Any) -> str:
    write_report(store, out, ReportOptions(jobs=1, **options))
    return out.read_text()


def _strict_json(page: str) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    match = re.search(r'id="agl-report-data">(.*?)</script>', page, re.S)
    assert match
    doc: dict[str, Any] = json.loads(match.group(1), parse_constant=refuse)
    return doc


def test_rewards_near_the_largest_float_give_a_whole_page(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    for reward in (1e308, 1e308, -1e308):
        asyncio.run(make_rollout(store, reward=reward))
    page = _report(store, tmp_path / "r.html")
    _strict_json(page)
    assert not re.search(r'="[^"]*\bnan\b', page)  # no NaN coordinate in any attribute
    assert not re.search(r"\d{40}", page)  # 1e308 is not written out in 309 digits
    store.close()


def test_a_tampered_row_cache_cannot_put_markup_in_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "store")
    asyncio.run(make_rollout(store))
    later = time.time() + 3600  # rows are kept once their rollout has settled
    monkeypatch.setattr(time, "time", lambda: later)
    _report(store, tmp_path / "first.html")
    cached = list(store.layout.report_cache.glob("*.json"))
    assert cached
    for path in cached:
        body = json.loads(path.read_text())
        for entry in body["rows"].values():
            entry[1][1] = 'succeeded"/><script>window.pwned=1</script><rect class="'
            for attempt in entry[2]:
                attempt[4] = 'x"/><script>window.pwned=1</script><rect class="'
        path.write_text(json.dumps(body))
    page = _report(store, tmp_path / "second.html")
    assert "<script>window.pwned" not in page
    assert 'class="st-x"' not in page
    store.close()


def test_output_to_a_symlink_or_a_fifo_keeps_them(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    asyncio.run(make_rollout(store))
    target = tmp_path / "real.html"
    link = tmp_path / "link.html"
    link.symlink_to(target)
    write_report(store, link, ReportOptions(jobs=1))
    assert link.is_symlink()
    assert target.read_text().startswith("<!DOCTYPE html>")

    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    write_report(store, fifo, ReportOptions(jobs=1))
    reader.join(30)
    assert fifo.is_fifo()
    assert received[0].startswith(b"<!DOCTYPE html>")
    long_name = tmp_path / ("r" * 245 + ".html")  # valid; its temporary name must fit too
    write_report(store, long_name, ReportOptions(jobs=1))
    assert long_name.is_file()
    store.close()


def test_a_span_log_that_cannot_be_read_is_named_not_fatal(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    rid = asyncio.run(make_rollout(store))
    asyncio.run(make_rollout(store))
    (attempt_dir,) = list(store.layout.rollout_dir(rid).joinpath("attempts").iterdir())
    (log,) = list(attempt_dir.glob("spans.*.jsonl"))
    log.unlink()
    log.mkdir()  # a directory where the span log belongs
    page = _report(store, tmp_path / "r.html")
    assert "wrong-file-type" in page
    assert embedded(page)["problems"] == 1
    store.close()


def test_long_error_texts_are_cut_in_hover_texts(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    attempted = asyncio.run(store.start_rollout(input="x"))
    description = "E" * 20_000
    spans = [
        Span.from_attributes(name=f"step-{i}", attributes={}).model_copy(
            update={
                "rollout_id": attempted.rollout_id,
                "attempt_id": attempted.attempt.attempt_id,
                "sequence_id": i + 1,
                "start_time": 100.0 + i,
                "end_time": 100.5 + i,
                "status": TraceStatus(status_code="ERROR", description=description),
            }
        )
        for i in range(50)
    ]
    asyncio.run(store.add_many_spans(spans))
    asyncio.run(store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status="failed"))
    page = _report(store, tmp_path / "r.html", rollout_ids=(attempted.rollout_id,))
    assert "E" * (TIP_CHARS + 1) not in page
    assert len(page) < 50 * 2 * (TIP_CHARS + 200) + 400_000
    store.close()


def test_time_ticks_across_years_carry_the_year() -> None:
    labels = [label for _value, label in time_ticks(0.0, 1.7e9)]
    assert labels[0].startswith("1970-")
    assert labels == sorted(labels)  # they read in order
    within_a_day = [label for _value, label in time_ticks(1.7e9, 1.7e9 + 600)]
    assert all(len(label) <= 8 for label in within_a_day)


def test_long_rewritten_prompts_are_shown_whole_not_diffed_word_by_word() -> None:
    before = " ".join(f"alpha{i}" for i in range(8000))
    after = " ".join(f"beta{i}" for i in range(8000))
    assert diff_html(before, after) == f"<del>{before}</del><ins>{after}</ins>"
    assert diff_html("keep this\nold words\n", "keep this\nnew words\n") == (
        "keep this\n<del>old</del><ins>new</ins> words\n"
    )


def test_prompts_of_many_repeated_lines_are_compared_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matching lines that repeat (blank lines between bullets) took 24 s for two 2,000-line
    versions, at every page of ``agl report --watch`` (found by an adversarial pass). Checked
    by what is compared, not by time (shared machines): no line-by-line match above the budget;
    an edit of one word among many lines is still shown as that word."""
    import difflib

    from store_fs.report import prompt_diff

    real = difflib.SequenceMatcher

    def bounded(*args: Any, a: Any = "", b: Any = "", **kwargs: Any) -> Any:
        if len(a) * len(b) > max(prompt_diff.LINE_DIFF_BUDGET, prompt_diff.WORD_DIFF_BUDGET):
            raise AssertionError(f"matched {len(a)} by {len(b)} items")
        return real(*args, a=a, b=b, **kwargs)

    monkeypatch.setattr(difflib, "SequenceMatcher", bounded)
    before = "".join("- item\n" if i % 2 else "\n" for i in range(2000))
    after = "".join("- item\n" if i % 3 else "\n" for i in range(2000))
    assert diff_html(before, after)  # every line kept or changed, in bounded time
    lines = before.splitlines(keepends=True)
    lines[1001] = "- CHANGED\n"
    diff = diff_html(before, "".join(lines))
    assert "<del>item</del><ins>CHANGED</ins>" in diff
    assert diff.count("<del>") == 1


def test_far_off_times_and_one_word_edits_in_long_paragraphs() -> None:
    """From review: the year check called gmtime unguarded (a store written at time 1e17 failed
    its report), and the diff budget showed a one-word edit of a 330-word paragraph as the
    whole paragraph replaced."""
    assert time_ticks(1e17, 1e17 + 100)
    paragraph = " ".join(f"w{i}" for i in range(330))
    diff = diff_html(paragraph, paragraph.replace("w100 ", "CHANGED "))
    assert diff.count("<del>") == 1
    assert "<del>w100</del><ins>CHANGED</ins>" in diff


def test_a_row_read_while_a_span_log_was_unreadable_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "store")
    rid = asyncio.run(make_rollout(store, reward=0.75))
    later = time.time() + 3600  # settled: its row would be kept
    monkeypatch.setattr(time, "time", lambda: later)
    (attempt_dir,) = list(store.layout.rollout_dir(rid).joinpath("attempts").iterdir())
    (log,) = list(attempt_dir.glob("spans.*.jsonl"))
    kept = log.with_name("kept")
    log.rename(kept)
    log.mkdir()
    assert embedded(_report(store, tmp_path / "r1.html"))["problems"] == 1
    log.rmdir()
    kept.rename(log)
    page = _report(store, tmp_path / "r2.html")
    assert embedded(page)["problems"] == 0
    store.close()


def test_a_page_to_standard_output_is_whole_and_watch_refuses_a_stream(tmp_path: Path) -> None:
    """``agl report -o /dev/stdout > file``: the JSON summary went to the same file through
    another descriptor and overwrote the page's start; ``--watch`` into a stream appended page
    after page (found in review)."""
    root = tmp_path / "store"
    store = FileStore(root)
    asyncio.run(make_rollout(store))
    store.close()
    page = tmp_path / "page.html"
    with open(page, "wb") as stdout:
        done = subprocess.run(
            [AGL, "report", "-o", "/dev/stdout"],
            env=agl_env(root),
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.rstrip().endswith("</html>")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused = subprocess.run(
        [AGL, "report", "--watch", "-o", str(fifo)],
        env=agl_env(root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 4, refused.stderr
    assert "a FIFO" in refused.stderr
