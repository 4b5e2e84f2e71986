"""``agl report``: one self-contained HTML file that shows how a training loop went.

Summary, reward per resource version (with each version's prompt and its diff), reward and
throughput over time, attempts per worker, distributions, failures, data health and span
waterfalls, as inline SVG and CSS: no script runs, nothing is fetched, the page opens from
``file://`` offline and prints well. Modules:

    report_scan     the rows (final reward, counts, attempts) as the public API gives them
    report_fastscan the same rows read straight from records and span files (the hot path)
    _record_rows    a row from a record's JSON in the store's own shape
    _span_digest    a rollout's span digest from its span files, without span objects
    report_health   the default quick data health check (``--full-check``: ``agl check``)
    report_data     gathering a store into ``ReportData`` (worker processes for big stores)
    report_stats    the numbers: summary, versions, series, histograms, failures, lanes
    svg_charts      hand-written SVG: scales, axes, bars, histograms, lines
    svg_timelines   attempts per worker, span waterfall
    prompt_diff     word-level diff of resource texts
    report_page     the HTML page
    report_writer   writing the file (whole, by rename), once or on every change

>>> from store_fs import FileStore
>>> from store_fs.report import write_report
>>> write_report(FileStore("runs/exp1", create=False), "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

from store_fs.report.report_data import ReportData, ReportOptions, gather
from store_fs.report.report_page import render_page
from store_fs.report.report_writer import (
    ReportOutputError,
    ReportResult,
    build_report,
    watch_report,
    write_report,
)

__all__ = [
    "ReportData",
    "ReportOptions",
    "ReportOutputError",
    "ReportResult",
    "build_report",
    "gather",
    "render_page",
    "watch_report",
    "write_report",
]
