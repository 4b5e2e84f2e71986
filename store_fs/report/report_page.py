"""The report as one HTML page: sections of tables and inline SVG, styled by inline CSS.

The page loads nothing (no script runs, no font, image or style sheet is fetched), so it
opens from ``file://`` offline and prints as it looks. The numbers of the summary, the
resource versions and the failures are also embedded as JSON (``<script
type="application/json" id="agl-report-data">``, which browsers do not run), so tools and
tests read them without scraping.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from store_fs.report.prompt_diff import diff_texts
from store_fs.report.report_data import ReportData, Waterfall
from store_fs.report.report_health import NOT_QUICK, QUICK_ONLY_FOR
from store_fs.report.report_stats import (
    ATTEMPT_STATUSES,
    ROLLOUT_STATUSES,
    FailureGroup,
    Summary,
    VersionStat,
    duration_bins,
    failure_groups,
    finished_bins,
    problem_groups,
    reward_bins,
    reward_series,
    summarize,
    timeline_lanes,
    version_stats,
)
from store_fs.report.svg_charts import (
    Bar,
    Series,
    bar_chart,
    empty_chart,
    esc,
    fmt_duration,
    fmt_num,
    fmt_time,
    histogram,
    line_chart,
    stacked_bars,
)
from store_fs.report.svg_timelines import MAX_LANES, timeline, waterfall

__all__ = ["render_page"]

MAX_VERSION_ROWS = 40
MAX_VERSION_BARS = 150
MAX_FAILURE_ROWS = 50

CSS = """
:root { --fg: #1d2329; --muted: #5f6b76; --line: #d5dbe1; --bg: #ffffff; --card: #f5f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; max-width: 1040px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.meta, .caption, .muted { color: var(--muted); font-size: 12.5px; }
section { border-top: 1px solid var(--line); padding: 18px 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.card { background: var(--card); border-radius: 6px; padding: 10px 12px; overflow-wrap: anywhere; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 6px 0; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top;
  overflow-wrap: anywhere; }
th { background: var(--card); font-weight: 600; } td.n, th.n { text-align: right; white-space: nowrap; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }
td code { white-space: nowrap; } td code.long { white-space: normal; overflow-wrap: anywhere; }
.prompt { white-space: pre-wrap; word-break: break-word; max-width: 460px; }
del { background: #fde2e1; color: #8a1c15; }
ins { background: #dcf5df; color: #15602a; text-decoration: none; }
tr.best td { background: #fff8dc; } .star { color: #b8860b; font-weight: 700; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; font-size: 12px; color: var(--muted); margin: 4px 0; }
.legend span::before { content: ""; display: inline-block; width: 11px; height: 11px; margin-right: 5px;
  vertical-align: -1px; border-radius: 2px; background: var(--sw); }
.empty-store { background: var(--card); padding: 16px; border-radius: 6px; font-size: 15px; }
.ok { color: #1b5e20; } .bad { color: #b71c1c; }
svg.chart { width: 100%; height: auto; display: block; margin: 4px 0 8px; }
svg text { font: 11.5px system-ui, sans-serif; fill: var(--fg); }
svg .chart-title { font-size: 13px; font-weight: 600; } svg .label { fill: var(--muted); font-size: 11.5px; }
svg .tick { fill: var(--muted); font-size: 10.5px; } svg .note { fill: var(--muted); font-size: 10px; }
svg .empty { fill: var(--muted); font-size: 13px; }
svg .axis { stroke: #8c969f; stroke-width: 1; } svg .grid { stroke: #e6eaee; stroke-width: 1; }
svg .lane { fill: transparent; } svg .lane:hover { fill: #f0f3f6; }
svg .bar { fill: #4e79a7; } svg .bar.best { fill: #e1a100; }
svg .dot { fill: #4e79a7; fill-opacity: .55; }
svg .rolling { fill: none; stroke: #d1495b; stroke-width: 2.2; }
svg rect.retry { stroke: #1d2329; stroke-width: 1.2; stroke-dasharray: 3 2; }
svg .span { fill: #90a4ae; } svg .span-llm { fill: #7b61c9; } svg .span-error { fill: #d32f2f; }
svg .span-reward { fill: #e1a100; } svg .span-name { fill: var(--fg); }
.st-succeeded { --sw: #59a14f; fill: #59a14f; } .st-failed { --sw: #e15759; fill: #e15759; }
.st-cancelled { --sw: #9c9c9c; fill: #9c9c9c; } .st-timeout { --sw: #f28e2b; fill: #f28e2b; }
.st-unresponsive { --sw: #8b3fa8; fill: url(#hatch-unresponsive); stroke: #8b3fa8; stroke-width: .8; }
.st-running { --sw: #4e79a7; fill: #4e79a7; } .st-preparing { --sw: #a0cbe8; fill: #a0cbe8; }
.st-queuing { --sw: #d4d9de; fill: #d4d9de; } .st-requeuing { --sw: #f1ce63; fill: #f1ce63; }
.sw-llm { --sw: #7b61c9; } .sw-span { --sw: #90a4ae; }
.sw-error { --sw: #d32f2f; } .sw-reward { --sw: #e1a100; }
.sw-retry::before { outline: 1.5px dashed #1d2329; outline-offset: -1px; }
.statusbar { display: flex; height: 14px; border-radius: 3px; overflow: hidden; margin: 10px 0 4px; }
.statusbar div { background: var(--sw); }
@media print {
  body { max-width: none; padding: 0; font-size: 12px; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  svg.chart, tr, .cards, .statusbar { break-inside: avoid; } h2, h3, .caption { break-after: avoid; }
  svg .lane:hover { fill: transparent; }
}
"""

# One pattern for unresponsive attempts, shared by every chart of the page.
DEFS = (
    '<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
    '<pattern id="hatch-unresponsive" width="6" height="6" patternUnits="userSpaceOnUse" '
    'patternTransform="rotate(45)"><rect width="6" height="6" fill="#d9c3e4"/>'
    '<rect width="2.5" height="6" fill="#8b3fa8"/></pattern></defs></svg>'
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(f'<span class="{c}">{esc(t)}</span>' for c, t in items) + "</div>"


def _card(key: str, value: str, note: str = "") -> str:
    extra = f'<div class="k">{esc(note)}</div>' if note else ""
    return f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{esc(value)}</div>{extra}</div>'


def _status_bar(counts: dict[str, int], total: int) -> str:
    parts = [
        f'<div class="st-{s}" style="width:{n / total * 100:.3f}%" title="{esc(f"{s}: {n:,}")}"></div>'
        for s, n in counts.items()
    ]
    legend = _legend([(f"st-{s}", f"{s} {n:,} ({n / total:.1%})") for s, n in counts.items()])
    return f'<div class="statusbar">{"".join(parts)}</div>{legend}'


def _summary(s: Summary) -> str:
    span = s.last_time - s.first_time if s.first_time is not None and s.last_time is not None else None
    best = f"rollout {s.best_rollout}" if s.best_rollout else ""
    cards = [
        _card("rollouts", f"{s.total:,}", f"{s.finished:,} finished"),
        _card("success rate", _pct(s.success_rate), f"{s.succeeded:,} of {s.finished:,} finished"),
        _card("mean reward", fmt_num(s.mean_reward), f"over {s.rewarded:,} rewarded rollouts"),
        _card("best reward", fmt_num(s.best_reward), best),
        _card("attempts", f"{s.attempts:,}", f"{s.retries:,} retries"),
        _card(
            "time span",
            fmt_duration(span),
            f"{fmt_time(s.first_time)} → {_end_time(s.first_time, s.last_time)}",
        ),
        _card(
            "workers", f"{len(s.workers):,}", ", ".join(s.workers[:6]) + (" …" if len(s.workers) > 6 else "")
        ),
        _card("LLM calls", f"{s.llm_calls:,}", f"{s.input_tokens:,} → {s.output_tokens:,} tokens"),
        _card("spans", f"{s.spans:,}"),
    ]
    attempts = ", ".join(f"{n:,} {k}" for k, n in s.attempts_by_status.items()) or "none"
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<div class="cards">{"".join(cards)}</div>'
        f"{_status_bar(s.by_status, s.total)}"
        f'<p class="caption">Rollouts by status (success rate = succeeded / finished, where finished means '
        f"succeeded, failed or cancelled). Attempts: {esc(attempts)}.</p></section>"
    )


def _shown_versions(stats: Sequence[VersionStat], limit: int) -> list[VersionStat]:
    """All versions, or when there are too many the first, the best and the latest ones."""
    if len(stats) <= limit:
        return list(stats)
    keep = {0, len(stats) - 1} | {i for i, s in enumerate(stats) if s.best}
    keep |= set(range(len(stats) - (limit - len(keep)), len(stats)))
    return [s for i, s in enumerate(stats) if i in keep]


def _version_chart(stats: Sequence[VersionStat]) -> str:
    bars = [
        Bar(
            s.label + (" ★" if s.best else ""),
            s.mean_reward or 0.0,
            f"{s.label} ({s.resources_id or 'no resources'}): mean reward {fmt_num(s.mean_reward)} over "
            f"{len(s.rewards):,} rollouts, best {fmt_num(s.best_reward)}"
            + (" — best version" if s.best else ""),
            "bar best" if s.best else "bar",
        )
        for s in _shown_versions([s for s in stats if s.rewards], MAX_VERSION_BARS)
    ]
    if not bars:
        return empty_chart("Mean reward per resource version", "no rewards recorded yet")
    return bar_chart("Mean reward per resource version", "resource version", "mean final reward", bars)


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    """A table; a heading starting with ``#`` is a numeric (right-aligned) column."""
    cells = "".join(
        f'<th class="n">{esc(h[1:])}</th>' if h.startswith("#") else f"<th>{esc(h)}</th>" for h in head
    )
    return f"<table><tr>{cells}</tr>{''.join(rows)}</table>"


def _num(value: str) -> str:
    return f'<td class="n">{value}</td>'


def _named(items: Sequence[tuple[str, str]]) -> str:
    """Lines of ``name: html`` (the html already escaped)."""
    return "".join(f'<div><span class="muted">{esc(n)}:</span> {h}</div>' for n, h in items)


def _version_row(s: VersionStat, before: dict[str, str] | None, first: bool) -> str:
    text = _named([(n, esc(t)) for n, t in s.texts.items()])
    if first:
        diff = '<span class="muted">first version</span>'
    else:
        diff = _named(diff_texts(before, s.texts)) or '<span class="muted">unchanged</span>'
    star = ' <span class="star" title="highest mean reward">★ best</span>' if s.best else ""
    version = f"<b>{esc(s.label)}</b>{star}<br>{_code(s.resources_id or '-')}"
    created = f'<br><span class="muted">{esc(fmt_time(s.created))}</span>'
    counts = _num(f"{s.rollouts:,}") + _num(f"{s.succeeded:,}") + _num(f"{len(s.rewards):,}")
    rewards = _num(fmt_num(s.mean_reward)) + _num(fmt_num(s.best_reward))
    texts = f'<td class="prompt">{text}</td><td class="prompt">{diff}</td>'
    return f'<tr class="{"best" if s.best else ""}"><td>{version}{created}</td>{counts}{rewards}{texts}</tr>'


def _version_rows(stats: Sequence[VersionStat]) -> str:
    """The versions table; each version's texts are compared with the previous published one."""
    before: dict[int, dict[str, str] | None] = {}
    previous: dict[str, str] | None = None
    for i, s in enumerate(stats):
        if s.index is not None:
            before[i] = previous
            previous = s.texts
    shown = {id(s) for s in _shown_versions(stats, MAX_VERSION_ROWS)}
    rows = [
        _version_row(s, before.get(i), i in before and before[i] is None)
        for i, s in enumerate(stats)
        if id(s) in shown
    ]
    hidden = len(stats) - len(shown)
    note = f"{hidden:,} versions not listed (the first, the best and the latest are)."
    head = ["version", "#rollouts", "#succeeded", "#rewarded", "#mean reward", "#best", "resources"]
    table = _table([*head, "change from the previous version"], rows)
    return table + (f'<p class="caption">{note}</p>' if hidden else "")


def _versions(stats: Sequence[VersionStat]) -> str:
    return (
        '<section id="versions"><h2>Reward per resource version</h2>'
        f"{_version_chart(stats)}"
        '<p class="caption">A version is one published resources snapshot, numbered in publication order; '
        "★ marks the highest mean final reward.</p>"
        f"{_version_rows(stats)}</section>"
    )


def _dot_radius(dots: int) -> float:
    return 4.5 if dots <= 100 else 3.5 if dots <= 400 else 2.6


def _over_time(data: ReportData) -> str:
    series = reward_series(data.rollouts)
    dots = [(t, r, f"{rid}: reward {fmt_num(r)} at {fmt_time(t)}") for t, r, rid in series.dots]
    rolling = Series(series.rolling, "rolling", f"rolling mean of {series.window}")
    reward_chart = (
        line_chart(
            "Final reward over time", "final reward", [rolling], dots, dot_radius=_dot_radius(len(dots))
        )
        if series.count
        else empty_chart("Final reward over time", "no rewards recorded yet")
    )
    thinned = f" Every {series.dot_every}th reward is drawn as a dot." if series.dot_every > 1 else ""
    finished = stacked_bars(
        "Rollouts finished over time", "rollouts finished", finished_bins(data.rollouts), ROLLOUT_STATUSES
    )
    return (
        '<section id="over-time"><h2>Over time</h2>'
        f"{reward_chart}"
        f'<p class="caption">Dots: each rollout\'s final reward when it finished; line: rolling mean of '
        f"the last {series.window:,} rewards ({series.count:,} in all).{thinned}</p>"
        f"{finished}{_legend([(f'st-{s}', s) for s in ('succeeded', 'failed', 'cancelled')])}</section>"
    )


def _timeline(data: ReportData) -> str:
    lanes = timeline_lanes(data.rollouts)
    if not lanes:
        chart = empty_chart("Attempts per worker", "no attempts yet")
    else:
        chart = timeline("Attempts per worker", lanes)
    more = f" The {MAX_LANES} busiest of {len(lanes):,} workers are shown." if len(lanes) > MAX_LANES else ""
    legend = _legend(
        [(f"st-{s}", s) for s in ATTEMPT_STATUSES] + [("sw-retry", "retry (attempt after the first)")]
    )
    return (
        '<section id="timeline"><h2>Attempts per worker</h2>'
        f"{chart}{legend}"
        '<p class="caption">Each bar is one attempt from its start to its end (a live or expired one to '
        "its last heartbeat or span); blank stretches are idle time. Hover a worker's name for its "
        f"busy share and longest gap.{more}</p></section>"
    )


def _distributions(data: ReportData) -> str:
    rewards = [r.reward for r in data.rollouts if r.reward is not None]
    durations = [
        a.end_time - a.start_time for r in data.rollouts for a in r.attempts if a.end_time is not None
    ]
    duration_label = "seconds (start to end of finished attempts)"
    return (
        '<section id="distributions"><h2>Distributions</h2>'
        f"{histogram('Final reward', 'final reward', reward_bins(rewards))}"
        f"{histogram('Attempt duration', duration_label, duration_bins(durations), ' s')}"
        '<p class="caption">Durations beyond the 99th percentile share the last bar.</p></section>'
    )


def _failure_row(g: FailureGroup) -> str:
    examples = " ".join(f"<code>{esc(rid)}</code>" for rid in g.examples)
    kind = f'<span class="legend"><span class="st-{esc(g.kind)}">{esc(g.kind)}</span></span>'
    counts = _num(f"{g.attempts:,}") + _num(f"{len(g.rollout_ids):,}")
    last = _num(esc(fmt_time(g.last_time)))
    return f'<tr><td>{kind}</td><td class="mono">{esc(g.message)}</td>{counts}<td>{examples}</td>{last}</tr>'


def _failures(groups: Sequence[FailureGroup]) -> str:
    head = '<section id="failures"><h2>Failures</h2>'
    if not groups:
        return head + '<p class="ok">No failed, timed-out, unresponsive or cancelled work.</p></section>'
    rows = [_failure_row(g) for g in groups[:MAX_FAILURE_ROWS]]
    more = len(groups) - MAX_FAILURE_ROWS
    note = f'<p class="caption">{more:,} rarer messages not listed.</p>' if more > 0 else ""
    table = _table(["kind", "message", "#attempts", "#rollouts", "examples", "#last seen"], rows)
    return (
        f"{head}{table}{note}"
        '<p class="caption">Failed, timed-out and unresponsive attempts grouped by error message (the '
        "first line of the error a runner or <code>agl fail --error</code> recorded), and cancelled "
        "rollouts.</p></section>"
    )


def _check_name(data: ReportData) -> tuple[str, str]:
    """(who found the problems, what was not looked at) for the health section."""
    if data.check_scope == "full":
        return "<code>agl check</code>", ""
    return (
        "The report's quick check",
        '<p class="caption">The quick check reports what reading the rollouts for this report found '
        "(span lines that do not parse or validate, torn span files, unreadable records) and what the "
        "queue, the trash and the index marker show. It does not look for "
        + ", ".join(
            f"<code>{kind}</code>" + (f" ({QUICK_ONLY_FOR[kind]})" if kind in QUICK_ONLY_FOR else "")
            for kind in NOT_QUICK
        )
        + ": <code>agl report --full-check</code> (or <code>agl check</code>) reads every file again "
        "for those.</p>",
    )


def _health(data: ReportData) -> str:
    head = '<section id="health"><h2>Data health</h2>'
    if data.problems is None:
        return head + '<p class="muted">Not checked (<code>--no-check</code>).</p></section>'
    who, caption = _check_name(data)
    if not data.problems:
        return head + f'<p class="ok">✓ {who} finds no problems.</p>{caption}</section>'
    rows = "".join(
        f'<tr><td><code>{esc(g.kind)}</code></td><td class="n">{g.count:,}</td><td class="n">{g.fixed:,}</td>'
        "<td>" + "<br>".join(f"{_code(p)}: {esc(d)}" for p, d in g.examples) + "</td></tr>"
        for g in problem_groups(data.problems)
    )
    return (
        head + f'<p class="bad">✗ {who} finds {len(data.problems):,} problem(s); '
        "<code>agl check --fix</code> repairs what is safe to repair (on a quiet store).</p>"
        '<table><tr><th>kind</th><th class="n">count</th><th class="n">fixed</th><th>examples</th></tr>'
        f"{rows}</table>{caption}</section>"
    )


def _waterfall(w: Waterfall) -> str:
    row = w.row
    title = f"Spans of {row.rollout_id} ({w.label})"
    chart = (
        waterfall(title, w.spans, row.spans) if w.spans else empty_chart(title, "this rollout has no spans")
    )
    return (
        f'<h3 id="spans-{esc(row.rollout_id)}">{esc(w.label)}: <code>{esc(row.rollout_id)}</code></h3>'
        f'<p class="caption">status {esc(row.status)}, final reward {fmt_num(row.reward)}, '
        f"{len(row.attempts)} attempt(s), {row.spans:,} spans, {row.llm_calls:,} LLM calls, resources "
        f"<code>{esc(row.resources_id or '-')}</code></p>{chart}"
    )


def _waterfalls(data: ReportData) -> str:
    if not data.waterfalls:
        body = '<p class="muted">No rollout has a reward yet; pick one with <code>--rollout ID</code>.</p>'
    else:
        body = "".join(_waterfall(w) for w in data.waterfalls)
    legend = _legend(
        [
            ("sw-llm", "LLM call (model · tokens in→out · latency)"),
            ("sw-span", "other span"),
            ("sw-error", "span with an error status"),
            ("sw-reward", "reward"),
        ]
    )
    return f'<section id="spans"><h2>Span waterfall</h2>{legend}{body}</section>'


def _embedded(
    summary: Summary, stats: Sequence[VersionStat], groups: Sequence[FailureGroup], data: ReportData
) -> str:
    doc: dict[str, Any] = {
        "store": data.store,
        "generated_at": data.generated_at,
        "summary": dict(vars(summary)),
        "versions": [
            {
                "label": s.label,
                "resources_id": s.resources_id,
                "rollouts": s.rollouts,
                "succeeded": s.succeeded,
                "rewarded": len(s.rewards),
                "mean_reward": s.mean_reward,
                "best_reward": s.best_reward,
                "best": s.best,
            }
            for s in stats
        ],
        "failures": [
            {
                "kind": g.kind,
                "message": g.message,
                "attempts": g.attempts,
                "rollouts": len(g.rollout_ids),
                "examples": g.examples,
            }
            for g in groups
        ],
        "problems": None if data.problems is None else len(data.problems),
        "check": data.check_scope,
        "waterfalls": [w.row.rollout_id for w in data.waterfalls],
    }
    # Every "<" as \u003c (still the same JSON): "</script" would end the block early, and
    # "<!--<script" would keep the real end tag from ending it. JSON has no Infinity: null.
    text = json.dumps(_finite(doc), sort_keys=True, allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="agl-report-data">{text}</script>'


def _end_time(first: float | None, last: float | None) -> str:
    """The end of a time span: its clock time alone on the day it began, else with its date."""
    same_day = first is not None and last is not None and fmt_time(first)[:10] == fmt_time(last)[:10]
    return fmt_time(last, not same_day)


def _code(text: str) -> str:
    """An id or a path in a table cell: kept on one line unless it is long enough to widen the
    page (a caller-chosen resources id, a store path)."""
    return f'<code class="long">{esc(text)}</code>' if len(text) > 24 else f"<code>{esc(text)}</code>"


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None (a mean of rewards near the
    largest float overflowed, and ``JSON.parse`` refused the page's data)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _header(data: ReportData) -> str:
    refresh = (
        f'<meta http-equiv="refresh" content="{data.options.refresh_seconds}">'
        if data.options.refresh_seconds
        else ""
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>agl report: {esc(data.store)}</title><style>{CSS}</style></head><body>{DEFS}"
        f'<h1>agl report</h1><div class="meta"><code>{esc(data.store)}</code> · generated '
        f"{esc(fmt_time(data.generated_at))} UTC in {data.gather_seconds:.1f} s · all times UTC</div>"
    )


def render_page(data: ReportData) -> str:
    """The whole report as one HTML document."""
    summary = summarize(data)
    stats = version_stats(data)
    groups = failure_groups(data.rollouts)
    if not data.rollouts:
        body = (
            '<section id="summary"><h2>Summary</h2><p class="empty-store">This store has no rollouts yet: '
            f"nothing to report. {len(data.resources):,} resource version(s) and {len(data.workers):,} "
            "worker(s) are recorded.</p></section>" + _health(data)
        )
    else:
        body = "".join(
            [
                _summary(summary),
                _versions(stats),
                _over_time(data),
                _timeline(data),
                _distributions(data),
                _failures(groups),
                _health(data),
                _waterfalls(data),
            ]
        )
    return _header(data) + body + _embedded(summary, stats, groups, data) + "</body></html>\n"
