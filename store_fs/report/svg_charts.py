"""Hand-written SVG charts for the report: axes, bars, histograms, lines, stacked bars.

Why by hand rather than a plotting library: the report is one offline file that must stay
small and print well. A chart here is a few dozen ``<rect>``/``<path>`` elements styled by
the page's CSS classes (``st-succeeded`` ...), with a ``<title>`` per mark as its hover value;
a library such as matplotlib would add tens of MB of dependencies and emit hundreds of KB of
glyph paths per chart, and a JavaScript charting library would break "no script, no network".
The charts needed are few and simple (bars, histograms, lines, lanes), so the helpers below
are the whole drawing layer: scales, "nice" ticks, axes with labels, and one function per
chart type. Every function returns SVG text; nothing here reads the store.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from store_fs.display_text import visible

__all__ = [
    "Bar",
    "Bin",
    "Chart",
    "Scale",
    "Series",
    "StackedBin",
    "bar_chart",
    "esc",
    "fmt_num",
    "fmt_tick",
    "fmt_time",
    "histogram",
    "line_chart",
    "nice_ticks",
    "stacked_bars",
    "time_ticks",
]

WIDTH = 960
MARGIN_LEFT = 64
MARGIN_RIGHT = 24
MARGIN_TOP = 36
MARGIN_BOTTOM = 52


def esc(text: object) -> str:
    """Text made safe for HTML and SVG, attributes included; characters that would not show as
    themselves (controls, bidirectional overrides) are written as codes (:mod:`store_fs.display_text`)."""
    return html.escape(visible(str(text)), quote=True)


#: A hover text's length at most: an error description of 20 KB on each of 300 spans made a
#: 12 MB page.
TIP_CHARS = 400


def esc_tip(tip: str) -> str:
    """A hover text, cut to :data:`TIP_CHARS`, escaped."""
    return esc(tip if len(tip) <= TIP_CHARS else tip[: TIP_CHARS - 1] + "…")


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A number for people: integers as such, others with ``digits`` significant decimals,
    huge ones in exponent form (1e308 written out is 309 digits wide)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1e15:
        return f"{value:.{digits}g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_tick(value: float) -> str:
    """A tick label: as short as the value allows (0.25, 2.5, 1,000)."""
    return f"{value:,.6g}" if abs(value) < 1e6 else f"{value:.3g}"


def fmt_time(stamp: float | None, with_date: bool = True) -> str:
    """A wall-clock time in UTC (the report says so once, in its header)."""
    if stamp is None:
        return "-"
    pattern = "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S"
    return _strftime_or_number(pattern, stamp)


def _strftime_or_number(pattern: str, stamp: float) -> str:
    # Times are stored as given: one of 1e20 has no calendar date, and must not end the report.
    try:
        return time.strftime(pattern, time.gmtime(stamp))
    except (OverflowError, OSError, ValueError):
        return f"{stamp:g}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def svg_text(
    x: float, y: float, content: str, cls: str = "tick", anchor: str = "start", tip: str = ""
) -> str:
    """A ``<text>`` element (``content`` is escaped here), with an optional hover value."""
    hover = f"<title>{esc_tip(tip)}</title>" if tip else ""
    place = f'x="{x:.1f}" y="{y:.1f}" text-anchor="{esc(anchor)}"'
    return f'<text class="{esc(cls)}" {place}>{esc(content)}{hover}</text>'


def svg_line(x1: float, x2: float, y1: float, y2: float, cls: str = "axis") -> str:
    return f'<line class="{esc(cls)}" x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}"/>'


def svg_rect(x: float, y: float, width: float, height: float, cls: str, tip: str) -> str:
    """A ``<rect>`` with its hover value."""
    return (
        f'<rect class="{esc(cls)}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}">'
        f"<title>{esc_tip(tip)}</title></rect>"
    )


def svg_vlabel(x: float, y: float, content: str) -> str:
    """An axis label written upwards."""
    return (
        f'<text class="label" x="{x:.1f}" y="{y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 {x:.1f} {y:.1f})">{esc(content)}</text>'
    )


@dataclass(frozen=True)
class Scale:
    """A linear map from data values ``[lo, hi]`` to pixels ``[a, b]``."""

    lo: float
    hi: float
    a: float
    b: float

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo
        if span <= 0:
            return (self.a + self.b) / 2
        if not math.isfinite(span):  # from -1e308 to 1e308: measured in halves, which fit
            return self.a + (value / 2 - self.lo / 2) / (self.hi / 2 - self.lo / 2) * (self.b - self.a)
        return self.a + (value - self.lo) / span * (self.b - self.a)


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round values from one at or below ``lo`` to one at or above ``hi`` (whole
    numbers only with ``integer``)."""
    if not math.isfinite(hi - lo):  # an absurd value (a span ending in 1e306) spans no scale
        return [value for value in (lo, hi) if math.isfinite(value)] or [0.0]
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    if integer:
        raw = max(raw, 1.0)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _year(stamp: float) -> int | None:
    try:
        return time.gmtime(stamp).tm_year
    except (OverflowError, OSError, ValueError):  # no calendar date (a time of 1e17)
        return None


def time_ticks(lo: float, hi: float, count: int = 6) -> list[tuple[float, str]]:
    """Round wall-clock instants in ``[lo, hi]`` with labels (UTC)."""
    if hi <= lo or not math.isfinite(hi - lo):
        return [(lo, fmt_time(lo, with_date=False))]
    raw = (hi - lo) / max(count, 1)
    step = next((s for s in _TIME_STEPS if s >= raw), math.ceil(raw / 86400) * 86400)
    first = math.ceil(lo / step) * step
    with_date = hi - lo > 86400
    if step >= 86400 * 300 or _year(lo) != _year(hi):
        pattern = "%Y-%m-%d"  # across years: month-day alone read as time running backwards
    elif with_date:
        pattern = "%m-%d %H:%M"
    else:
        pattern = "%H:%M" if step >= 60 else "%H:%M:%S"
    out: list[tuple[float, str]] = []
    value = float(first)
    while value <= hi:
        out.append((value, _strftime_or_number(pattern, value)))
        value += step
    return out


@dataclass
class Chart:
    """One SVG chart being drawn: a plot area with scales, and its elements."""

    title: str
    x: Scale
    y: Scale
    height: int
    parts: list[str] = field(default_factory=list)

    @classmethod
    def create(
        cls, title: str, x_range: tuple[float, float], y_range: tuple[float, float], height: int = 260
    ) -> Chart:
        x = Scale(x_range[0], x_range[1], MARGIN_LEFT, WIDTH - MARGIN_RIGHT)
        y = Scale(y_range[0], y_range[1], height - MARGIN_BOTTOM, MARGIN_TOP)
        return cls(title, x, y, height)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def rect(self, x0: float, x1: float, y0: float, y1: float, cls: str, tip: str) -> None:
        """A rectangle between data coordinates, with a hover value."""
        left, right = sorted((self.x(x0), self.x(x1)))
        top, bottom = sorted((self.y(y1), self.y(y0)))
        self.add(svg_rect(left, top, max(right - left, 1.0), max(bottom - top, 0.5), cls, tip))

    def axes(
        self, x_label: str, y_label: str, x_ticks: Sequence[tuple[float, str]], y_ticks: Sequence[float]
    ) -> None:
        """Axis lines, grid, ticks and the two axis labels."""
        left, right = self.x.a, self.x.b
        bottom, top = self.y.a, self.y.b
        for value in y_ticks:
            py = self.y(value)
            self.add(svg_line(left, right, py, py, "grid"))
            self.add(svg_text(left - 6, py + 4, fmt_tick(value), anchor="end"))
        for value, label in x_ticks:
            px = self.x(value)
            self.add(svg_line(px, px, bottom, bottom + 4))
            self.add(svg_text(px, bottom + 17, label, anchor="middle"))
        self.add(svg_line(left, right, bottom, bottom))
        self.add(svg_line(left, left, bottom, top))
        self.add(svg_text((left + right) / 2, self.height - 10, x_label, "label", "middle"))
        self.add(svg_vlabel(14, (bottom + top) / 2, y_label))

    def render(self) -> str:
        head = (
            f'<svg class="chart" viewBox="0 0 {WIDTH} {self.height}" role="img" '
            f'aria-label="{esc(self.title)}" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{esc(self.title)}</title>"
            f'<text class="chart-title" x="{MARGIN_LEFT}" y="20">{esc(self.title)}</text>'
        )
        return head + "".join(self.parts) + "</svg>"


def empty_chart(title: str, message: str, height: int = 120) -> str:
    """A chart frame that says why there is nothing to draw."""
    chart = Chart.create(title, (0, 1), (0, 1), height)
    chart.add(svg_text(WIDTH / 2, height / 2 + 10, message, "empty", "middle"))
    return chart.render()


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    tip: str
    cls: str = "bar"


def bar_chart(title: str, x_label: str, y_label: str, bars: Sequence[Bar], height: int = 260) -> str:
    """Vertical bars, one per category, labelled below (every label when they fit)."""
    if not bars:
        return empty_chart(title, "nothing to show")
    top = max(max(b.value for b in bars), 0.0)
    low = min(min(b.value for b in bars), 0.0)
    ticks = nice_ticks(low, top if top > low else low + 1)
    # At least six slots, so one or two bars stay bar-shaped rather than filling the width.
    chart = Chart.create(title, (0, max(len(bars), 6)), (min(ticks[0], low), max(ticks[-1], top)), height)
    every = max(1, math.ceil(len(bars) / 24))
    labels = [(i + 0.5, b.label) for i, b in enumerate(bars) if i % every == 0]
    chart.axes(x_label, y_label, labels, ticks)
    for i, bar in enumerate(bars):
        chart.rect(i + 0.12, i + 0.88, 0.0, bar.value, bar.cls, bar.tip)
    return chart.render()


@dataclass(frozen=True)
class Bin:
    lo: float
    hi: float
    count: int
    label: str = ""


def histogram(title: str, x_label: str, bins: Sequence[Bin], unit: str = "", height: int = 240) -> str:
    """Adjacent bars over a numeric range; each bar's hover gives its range and count."""
    if not bins or sum(b.count for b in bins) == 0:
        return empty_chart(title, "no values")
    lo, hi = bins[0].lo, bins[-1].hi
    y_ticks = nice_ticks(0, max(max(b.count for b in bins), 1), 4, integer=True)
    chart = Chart.create(title, (lo, hi), (0, max(y_ticks[-1], 1)), height)
    x_ticks = [(v, fmt_tick(v) + unit) for v in nice_ticks(lo, hi, 8) if lo <= v <= hi]
    chart.axes(x_label, "count", x_ticks, y_ticks)
    for b in bins:
        label = b.label or f"{fmt_num(b.lo, 3)}{unit} to {fmt_num(b.hi, 3)}{unit}"
        chart.rect(b.lo, b.hi, 0, b.count, "bar", f"{label}: {b.count:,}")
    return chart.render()


@dataclass(frozen=True)
class Series:
    """A polyline (``points`` in data coordinates), drawn with the CSS class ``cls``."""

    points: Sequence[tuple[float, float]]
    cls: str
    label: str


def _path(chart: Chart, points: Sequence[tuple[float, float]]) -> str:
    return " ".join(
        f"{'M' if i == 0 else 'L'}{chart.x(x):.1f},{chart.y(y):.1f}" for i, (x, y) in enumerate(points)
    )


def line_chart(
    title: str,
    y_label: str,
    lines: Sequence[Series],
    dots: Sequence[tuple[float, float, str]] = (),
    height: int = 280,
    dot_radius: float = 2.6,
) -> str:
    """Values over wall-clock time: optional dots (each with a hover value) and lines."""
    xs = [p[0] for s in lines for p in s.points] + [d[0] for d in dots]
    ys = [p[1] for s in lines for p in s.points] + [d[1] for d in dots]
    if not xs:
        return empty_chart(title, "no values")
    y_ticks = nice_ticks(min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1, 5)
    chart = Chart.create(
        title, (min(xs), max(xs)), (min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))), height
    )
    chart.axes("time (UTC)", y_label, time_ticks(min(xs), max(xs)), y_ticks)
    for x, y, tip in dots:
        cx, cy = chart.x(x), chart.y(y)
        circle = f'<circle class="dot" cx="{cx:.1f}" cy="{cy:.1f}" r="{dot_radius}">'
        chart.add(f"{circle}<title>{esc(tip)}</title></circle>")
    for series in lines:
        if series.points:
            last_x, last_y = series.points[-1]
            tip = f"{series.label}: {fmt_num(last_y)} at {fmt_time(last_x)}"
            path = _path(chart, series.points)
            chart.add(f'<path class="{series.cls}" d="{path}"><title>{esc(tip)}</title></path>')
    return chart.render()


@dataclass(frozen=True)
class StackedBin:
    lo: float
    hi: float
    counts: dict[str, int]


def stacked_bars(
    title: str, y_label: str, bins: Sequence[StackedBin], order: Sequence[str], height: int = 240
) -> str:
    """Counts per time bin, stacked by category (CSS class ``st-<category>``)."""
    if not bins or not any(b.counts for b in bins):
        return empty_chart(title, "nothing finished yet")
    peak = max(sum(b.counts.values()) for b in bins)
    y_ticks = nice_ticks(0, max(peak, 1), 4, integer=True)
    chart = Chart.create(title, (bins[0].lo, bins[-1].hi), (0, max(y_ticks[-1], 1)), height)
    chart.axes("time (UTC)", y_label, time_ticks(bins[0].lo, bins[-1].hi), y_ticks)
    for b in bins:
        base = 0
        for category in order:
            count = b.counts.get(category, 0)
            if count:
                tip = f"{fmt_time(b.lo, False)} to {fmt_time(b.hi, False)}: {count:,} {category}"
                chart.rect(b.lo, b.hi, base, base + count, f"st-{category}", tip)
                base += count
    return chart.render()
