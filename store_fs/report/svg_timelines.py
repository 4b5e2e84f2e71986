"""The report's two lane charts: attempts per worker over time, and one rollout's span waterfall.

Same approach as :mod:`store_fs.report.svg_charts` (hand-written SVG, CSS classes, a
``<title>`` per mark). A timeline with more attempts than :data:`MAX_BARS` is drawn
aggregated: per worker, time is cut into bins and each bin is one column split by the
outcomes of the attempts started in it, so the size of the page does not grow with the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from store_fs.models import Span
from store_fs.report.report_scan import AttemptRow, is_llm_span, llm_details
from store_fs.report.report_stats import Lane, attempt_end
from store_fs.report.svg_charts import (
    WIDTH,
    Chart,
    Scale,
    esc,
    esc_tip,
    fmt_duration,
    fmt_num,
    fmt_tick,
    fmt_time,
    nice_ticks,
    svg_line,
    svg_rect,
    svg_text,
    svg_vlabel,
    time_ticks,
)
from store_fs.rewards import get_reward_value

__all__ = ["MAX_BARS", "MAX_LANES", "timeline", "waterfall"]

MAX_BARS = 2000
MAX_LANES = 40
TIME_BINS = 200
LANE_HEIGHT = 22
LABEL_WIDTH = 150
ROW_HEIGHT = 18
TOP = 40.0
# Worst first: the order (top down) of outcomes in a bin of aggregated attempts.
_SEVERITY = ("unresponsive", "timeout", "failed", "running", "preparing", "succeeded")


@dataclass(frozen=True)
class _Frame:
    x: Scale
    height: int


def _frame(lanes: int, t0: float, t1: float) -> _Frame:
    height = int(TOP + lanes * LANE_HEIGHT + 48)
    return _Frame(Scale(t0, t1 if t1 > t0 else t0 + 1, LABEL_WIDTH, WIDTH - 20), height)


def _attempt_tip(attempt: AttemptRow, end: float) -> str:
    took = fmt_duration(end - attempt.start_time)
    parts = [
        f"{attempt.rollout_id} attempt {attempt.sequence_id} ({attempt.attempt_id})",
        f"on {attempt.worker_id or '(no worker)'}: {attempt.status}",
        f"{fmt_time(attempt.start_time)} to {fmt_time(end, False)} ({took})",
    ]
    if attempt.sequence_id > 1:
        parts.append("retry")
    if attempt.error:
        parts.append(attempt.error[:200])
    return ", ".join(parts)


def _bars(chart: Chart, frame: _Frame, index: int, lane: Lane) -> None:
    y = TOP + index * LANE_HEIGHT + 3
    for attempt in lane.attempts:
        end = attempt_end(attempt)
        left = frame.x(attempt.start_time)
        width = max(frame.x(end) - left, 1.5)
        cls = f"st-{attempt.status}" + (" retry" if attempt.sequence_id > 1 else "")
        chart.add(svg_rect(left, y, width, LANE_HEIGHT - 6, cls, _attempt_tip(attempt, end)))


def _bin_tip(lane: Lane, start: float, width: float, attempts: Sequence[AttemptRow]) -> str:
    counts = Counter(a.status for a in attempts)
    detail = ", ".join(f"{n:,} {s}" for s, n in counts.most_common())
    retries = sum(1 for a in attempts if a.sequence_id > 1)
    when = f"{fmt_time(start, False)} to {fmt_time(start + width, False)}"
    tip = f"{lane.worker} {when}: {len(attempts):,} attempts started ({detail})"
    return tip + (f", {retries:,} retries" if retries else "")


def _bins(chart: Chart, frame: _Frame, index: int, lane: Lane) -> None:
    """Attempts started per time bin, as a column split by outcome (worst at the top)."""
    y = TOP + index * LANE_HEIGHT + 3
    lo = frame.x.lo
    width = (frame.x.hi - lo) / TIME_BINS
    binned: dict[int, list[AttemptRow]] = {}
    for attempt in lane.attempts:
        binned.setdefault(min(int((attempt.start_time - lo) / width), TIME_BINS - 1), []).append(attempt)
    for b, attempts in sorted(binned.items()):
        counts = Counter(a.status for a in attempts)
        start = lo + b * width
        left, right = frame.x(start), frame.x(start + width)
        parts = [f"<g><title>{esc_tip(_bin_tip(lane, start, width, attempts))}</title>"]
        top = y
        for status in [*_SEVERITY, *sorted(set(counts) - set(_SEVERITY))]:
            if counts[status]:
                height = (LANE_HEIGHT - 6) * counts[status] / len(attempts)
                parts.append(
                    f'<rect class="st-{esc(status)}" x="{left:.1f}" y="{top:.1f}" '
                    f'width="{max(right - left - 0.3, 0.8):.1f}" height="{height:.1f}"/>'
                )
                top += height
        chart.add("".join(parts) + "</g>")


def _lane_label(chart: Chart, index: int, lane: Lane, t0: float, t1: float) -> None:
    y = TOP + index * LANE_HEIGHT
    share = lane.busy_seconds / (t1 - t0) if t1 > t0 else 1.0
    tip = (
        f"{lane.worker}: {len(lane.attempts):,} attempts, busy {share:.0%} of the shown span, "
        f"longest idle gap {fmt_duration(lane.longest_gap)}"
    )
    chart.add(svg_rect(LABEL_WIDTH, y, WIDTH - 20 - LABEL_WIDTH, LANE_HEIGHT, "lane", tip))
    name = lane.worker if len(lane.worker) <= 20 else lane.worker[:19] + "…"
    chart.add(svg_text(LABEL_WIDTH - 6, y + 15, name, anchor="end", tip=tip))


def _time_axis(chart: Chart, frame: _Frame, lanes: int, label: str) -> None:
    bottom = TOP + lanes * LANE_HEIGHT
    chart.add(svg_line(LABEL_WIDTH, WIDTH - 20, bottom, bottom))
    for value, text in time_ticks(frame.x.lo, frame.x.hi):
        px = frame.x(value)
        chart.add(svg_line(px, px, TOP, bottom + 4, "grid"))
        chart.add(svg_text(px, bottom + 17, text, anchor="middle"))
    chart.add(svg_text((LABEL_WIDTH + WIDTH) / 2, frame.height - 10, label, "label", "middle"))
    chart.add(svg_vlabel(14, (TOP + bottom) / 2, "worker"))


def timeline(title: str, lanes: Sequence[Lane]) -> str:
    """Attempts per worker over time: one bar per attempt, or binned when there are many."""
    shown = sorted(lanes, key=lambda lane: -len(lane.attempts))[:MAX_LANES]
    shown.sort(key=lambda lane: lane.worker)
    attempts = [a for lane in shown for a in lane.attempts]
    t0 = min(a.start_time for a in attempts)
    t1 = max(attempt_end(a) for a in attempts)
    frame = _frame(len(shown), t0, t1)
    chart = Chart(title, frame.x, frame.x, frame.height)
    binned = len(attempts) > MAX_BARS
    for index, lane in enumerate(shown):
        _lane_label(chart, index, lane, t0, t1)
        if binned:
            _bins(chart, frame, index, lane)
        else:
            _bars(chart, frame, index, lane)
    how = f"; attempts binned into {TIME_BINS} intervals by start, split by outcome" if binned else ""
    _time_axis(chart, frame, len(shown), "time (UTC)" + how)
    return chart.render()


def _depths(spans: Sequence[Span]) -> dict[str, int]:
    parents = {s.span_id: s.parent_id for s in spans}
    depths: dict[str, int] = {}
    for span in spans:
        depth, parent, seen = 0, span.parent_id, {span.span_id}
        while parent and parent in parents and parent not in seen and depth < 12:
            seen.add(parent)
            depth += 1
            parent = parents[parent]
        depths[span.span_id] = depth
    return depths


def _span_note(span: Span) -> tuple[str, str]:
    """(CSS class, the text written beside the bar) of one span."""
    reward = get_reward_value(span)
    if reward is not None:
        return "span-reward", f"reward {fmt_num(reward)}"
    latency = (span.end_time or 0.0) - (span.start_time or 0.0)
    if is_llm_span(span):
        model, tokens_in, tokens_out = llm_details(span)
        tokens = f"{fmt_num(tokens_in)}→{fmt_num(tokens_out)} tokens"
        return "span-llm", f"{model or 'LLM'} · {tokens} · {fmt_duration(latency)}"
    cls = "span-error" if span.status.status_code == "ERROR" else "span"
    return cls, fmt_duration(latency)


def _time_range(spans: Sequence[Span]) -> tuple[float, float]:
    starts = [s.start_time for s in spans if s.start_time is not None]
    ends = [s.end_time for s in spans if s.end_time is not None]
    t0 = min(starts) if starts else 0.0
    return t0, max([*ends, *starts, t0 + 1e-3])


def waterfall(title: str, spans: Sequence[Span], total: int) -> str:
    """One row per span in start order, indented under its parent, bars on a shared time axis;
    LLM calls say model, tokens (in→out) and latency; reward spans their value."""
    ordered = sorted(spans, key=lambda s: (s.start_time or 0.0, s.sequence_id))
    t0, t1 = _time_range(ordered)
    left, right = 300.0, WIDTH - 190.0
    x = Scale(t0, t1, left, right)
    bottom = TOP + len(ordered) * ROW_HEIGHT
    height = int(bottom + 46)
    chart = Chart(title, x, x, height)
    depths = _depths(ordered)
    for i, span in enumerate(ordered):
        _span_row(chart, x, TOP + i * ROW_HEIGHT, span, depths.get(span.span_id, 0))
    chart.add(svg_line(left, right, bottom, bottom))
    for value in nice_ticks(0.0, max((t1 - t0) * 1000, 1.0), 6):
        px = x(t0 + value / 1000)
        chart.add(svg_line(px, px, TOP, bottom + 4, "grid"))
        chart.add(svg_text(px, bottom + 17, fmt_tick(value), anchor="middle"))
    more = f" (first {len(ordered):,} of {total:,} spans)" if total > len(ordered) else ""
    label = f"ms since the first span started{more}"
    chart.add(svg_text((left + right) / 2, height - 10, label, "label", "middle"))
    chart.add(svg_text(10, TOP - 6, "span", "label"))
    return chart.render()


def _span_row(chart: Chart, x: Scale, y: float, span: Span, depth: int) -> None:
    cls, note = _span_note(span)
    start = span.start_time if span.start_time is not None else x.lo
    end = span.end_time if span.end_time is not None else start
    name = span.name if len(span.name) <= 40 else span.name[:39] + "…"
    offset = (start - x.lo) * 1000
    tip = f"#{span.sequence_id} {span.name} ({span.attempt_id}): {note}; starts at +{offset:.1f} ms"
    if span.status.description:
        tip += f"; {span.status.description}"
    chart.add(svg_text(10 + depth * 12, y + 13, name, "tick span-name", tip=tip))
    px0, px1 = x(start), x(end)
    if cls == "span-reward":
        d = f"M{px0:.1f},{y + 3:.1f} l6,6 l-6,6 l-6,-6 Z"
        chart.add(f'<path class="{cls}" d="{d}"><title>{esc_tip(tip)}</title></path>')
    else:
        chart.add(svg_rect(px0, y + 3, max(px1 - px0, 2.0), ROW_HEIGHT - 6, cls, tip))
    chart.add(svg_text(x.b + 10, y + 13, note, "note"))
