"""The numbers of a report, computed from gathered rows (pure functions, no I/O).

Definitions, as the page states them: a rollout is *finished* when it succeeded, failed or
was cancelled; the *success rate* is succeeded / finished; a rollout's *reward* is its final
reward (docs/behaviour.md §11.2), and mean and best are over rollouts that have one; a
*resource version* is one resources snapshot (``resources_id``), numbered v1, v2 ... in the
order they were published; a *retry* is an attempt after the first.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from store_fs.models import LLM, PromptTemplate, ResourcesUpdate
from store_fs.report.report_scan import AttemptRow, RolloutRow
from store_fs.report.svg_charts import Bin, StackedBin

if TYPE_CHECKING:
    from store_fs._disk.check import Problem
    from store_fs.report.report_data import ReportData

__all__ = [
    "FINISHED",
    "ROLLOUT_STATUSES",
    "FailureGroup",
    "Lane",
    "ProblemGroup",
    "RewardSeries",
    "Summary",
    "VersionStat",
    "duration_bins",
    "failure_groups",
    "finished_bins",
    "problem_groups",
    "resource_texts",
    "reward_bins",
    "reward_series",
    "summarize",
    "timeline_lanes",
    "version_stats",
]

ROLLOUT_STATUSES = ("succeeded", "failed", "cancelled", "running", "preparing", "requeuing", "queuing")
ATTEMPT_STATUSES = ("succeeded", "failed", "timeout", "unresponsive", "running", "preparing")
FINISHED = ("succeeded", "failed", "cancelled")
FAILED_ATTEMPTS = ("failed", "timeout", "unresponsive")
_DEFAULT_MESSAGES = {
    "failed": "failed (no error message recorded)",
    "timeout": "timed out (ran past timeout_seconds)",
    "unresponsive": "unresponsive (no heartbeat within unresponsive_seconds)",
}
MESSAGE_CHARS = 300
EXAMPLES = 3


def _mean(values: Sequence[float]) -> float | None:
    if not values:
        return None
    total = sum(values)
    if math.isfinite(total):
        return total / len(values)
    return sum(v / len(values) for v in values)  # rewards near the largest float: no overflow


@dataclass
class Summary:
    total: int
    by_status: dict[str, int]
    finished: int
    succeeded: int
    success_rate: float | None
    rewarded: int
    mean_reward: float | None
    best_reward: float | None
    best_rollout: str | None
    first_time: float | None
    last_time: float | None
    attempts: int
    attempts_by_status: dict[str, int]
    retries: int
    workers: list[str]
    spans: int
    llm_calls: int
    input_tokens: int
    output_tokens: int


def _time_span(rows: Sequence[RolloutRow]) -> tuple[float | None, float | None]:
    if not rows:
        return None, None
    first = min(r.start_time for r in rows)
    last = max(max([r.end_time or r.start_time] + [a.last_seen for a in r.attempts]) for r in rows)
    return first, last


def summarize(data: ReportData) -> Summary:
    rows = data.rollouts
    by_status = Counter(r.status for r in rows)
    attempts = [a for r in rows for a in r.attempts]
    rewarded = [r for r in rows if r.reward is not None]
    best = max(rewarded, key=lambda r: r.reward or 0.0) if rewarded else None
    finished = sum(by_status[s] for s in FINISHED)
    first, last = _time_span(rows)
    workers = {w.worker_id for w in data.workers} | {a.worker_id for a in attempts if a.worker_id}
    return Summary(
        total=len(rows),
        by_status={s: by_status[s] for s in ROLLOUT_STATUSES if by_status[s]},
        finished=finished,
        succeeded=by_status["succeeded"],
        success_rate=by_status["succeeded"] / finished if finished else None,
        rewarded=len(rewarded),
        mean_reward=_mean([r.reward for r in rewarded if r.reward is not None]),
        best_reward=best.reward if best else None,
        best_rollout=best.rollout_id if best else None,
        first_time=first,
        last_time=last,
        attempts=len(attempts),
        attempts_by_status=dict(Counter(a.status for a in attempts).most_common()),
        retries=sum(1 for a in attempts if a.sequence_id > 1),
        workers=sorted(workers),
        spans=sum(r.spans for r in rows),
        llm_calls=sum(r.llm_calls for r in rows),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=sum(r.output_tokens for r in rows),
    )


def resource_texts(update: ResourcesUpdate) -> dict[str, str]:
    """Each named resource of a snapshot as text: a template's text, an LLM's model and endpoint."""
    out: dict[str, str] = {}
    for name, resource in sorted(update.resources.items()):
        if isinstance(resource, PromptTemplate):
            out[name] = resource.template
        elif isinstance(resource, LLM):
            out[name] = f"{resource.resource_type} {resource.model} at {resource.endpoint}"
        else:
            out[name] = resource.model_dump_json()
    return out


@dataclass
class VersionStat:
    """The rollouts of one resources snapshot. ``index`` is None for rollouts run without one."""

    index: int | None
    resources_id: str | None
    created: float | None
    texts: dict[str, str]
    rollouts: int = 0
    finished: int = 0
    succeeded: int = 0
    rewards: list[float] = field(default_factory=list)
    best: bool = False

    @property
    def label(self) -> str:
        if self.index is None:
            return "no resources" if self.resources_id is None else f"{self.resources_id} (missing)"
        return f"v{self.index}"

    @property
    def mean_reward(self) -> float | None:
        return _mean(self.rewards)

    @property
    def best_reward(self) -> float | None:
        return max(self.rewards) if self.rewards else None


def version_stats(data: ReportData) -> list[VersionStat]:
    """One entry per snapshot in publication order (then groups without a known snapshot);
    the one with the highest mean reward is marked ``best``."""
    stats: dict[str | None, VersionStat] = {
        u.resources_id: VersionStat(i, u.resources_id, u.create_time, resource_texts(u))
        for i, u in enumerate(data.resources, 1)
    }
    for row in data.rollouts:
        stat = stats.get(row.resources_id)
        if stat is None:
            stat = stats[row.resources_id] = VersionStat(None, row.resources_id, None, {})
        stat.rollouts += 1
        stat.finished += row.status in FINISHED
        stat.succeeded += row.status == "succeeded"
        if row.reward is not None:
            stat.rewards.append(row.reward)
    out = list(stats.values())
    rewarded = [s for s in out if s.rewards]
    if rewarded:
        max(rewarded, key=lambda s: s.mean_reward or 0.0).best = True
    return out


@dataclass
class RewardSeries:
    """Final rewards in the order rollouts finished, and their rolling mean."""

    dots: list[tuple[float, float, str]]  # (time, reward, rollout id), thinned to at most max_dots
    rolling: list[tuple[float, float]]
    window: int
    count: int
    dot_every: int


def _when(row: RolloutRow) -> float:
    return row.end_time or max([row.start_time] + [a.last_seen for a in row.attempts])


def _rolling_means(values: Sequence[float], window: int, scale: float = 1.0) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    means: list[float] = []
    total = 0.0
    for i, value in enumerate(values):
        total += value * scale
        if i >= window:
            total -= values[i - window] * scale
        means.append(total / (scale * min(i + 1, window)))
    if scale == 1.0 and not all(math.isfinite(m) for m in means):
        # Rewards near the largest float overflowed the running sum: sum them scaled down.
        return _rolling_means(values, window, 1.0 / window)
    return means


def reward_series(rows: Sequence[RolloutRow], max_dots: int = 800, max_points: int = 400) -> RewardSeries:
    points = sorted((_when(r), r.reward, r.rollout_id) for r in rows if r.reward is not None)
    window = max(1, min(200, max(3, len(points) // 10), len(points)))  # a tenth, at least 3, at most 200
    means = _rolling_means([reward for _t, reward, _rid in points], window)
    rolling = [(t, mean) for (t, _reward, _rid), mean in zip(points, means, strict=True)]
    step = max(1, math.ceil(len(rolling) / max_points))
    thinned = rolling[::step] + ([rolling[-1]] if rolling and (len(rolling) - 1) % step else [])
    every = max(1, math.ceil(len(points) / max_dots))
    return RewardSeries(points[::every], thinned, window, len(points), every)


def finished_bins(rows: Sequence[RolloutRow], count: int = 40) -> list[StackedBin]:
    """Rollouts reaching a final status per time bin, by status."""
    done = sorted((r.finish_time, r.status) for r in rows if r.finish_time is not None)
    if not done:
        return []
    lo, hi = done[0][0] or 0.0, done[-1][0] or 0.0
    width = (hi - lo) / count if hi > lo else 1.0
    bins = [StackedBin(lo + i * width, lo + (i + 1) * width, {}) for i in range(count if hi > lo else 1)]
    for t, status in done:
        index = min(int(((t or lo) - lo) / width), len(bins) - 1)
        bins[index].counts[status] = bins[index].counts.get(status, 0) + 1
    return bins


def _linear_bins(values: Sequence[float], lo: float, hi: float, count: int) -> list[Bin]:
    # A range past the largest float (rewards of -1e308 and 1e308) is measured in parts of
    # ``count``, which do not overflow.
    parts = 1 if math.isfinite(hi - lo) else count
    width = (hi / parts - lo / parts) / (count / parts)
    if parts == 1:
        edges = [lo + i * width for i in range(count + 1)]
    else:  # each edge between lo and hi without a sum past the largest float
        edges = [lo * (1 - i / count) + hi * (i / count) for i in range(count + 1)]
    bins = [Bin(edges[i], edges[i + 1], 0) for i in range(count)]
    counts = [0] * count
    for value in values:
        counts[min(max(int((value / parts - lo / parts) / (width / parts)), 0), count - 1)] += 1
    return [Bin(b.lo, b.hi, c) for b, c in zip(bins, counts, strict=True)]


def reward_bins(rewards: Sequence[float], count: int = 20) -> list[Bin]:
    if not rewards:
        return []
    lo, hi = min(rewards), max(rewards)
    if hi - lo < 1e-12:
        return [Bin(lo - 0.5, lo + 0.5, len(rewards), f"{lo:g}")]
    return _linear_bins(rewards, lo, hi, count)


def duration_bins(durations: Sequence[float], count: int = 24) -> list[Bin]:
    """Durations from 0 to their 99th percentile; longer ones share a last, open bin."""
    if not durations:
        return []
    ordered = sorted(durations)
    cap = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    if cap <= 0:
        return [Bin(0.0, 1.0, len(ordered), "0 s")]
    inside = ordered[: bisect.bisect_right(ordered, cap)]
    bins = _linear_bins(inside, 0.0, cap, count)
    over = len(ordered) - len(inside)
    if over:
        width = cap / count
        bins.append(Bin(cap, cap + width, over, f"over {cap:.3g} s"))
    return bins


@dataclass
class FailureGroup:
    """Attempts that ended the same way with the same message."""

    kind: str
    message: str
    attempts: int = 0
    rollout_ids: set[str] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)
    last_time: float = 0.0


def _message(text: str | None, kind: str) -> str:
    if not text:
        return _DEFAULT_MESSAGES.get(kind, kind)
    first = text.strip().splitlines()[0] if text.strip() else kind
    return first if len(first) <= MESSAGE_CHARS else first[: MESSAGE_CHARS - 1] + "…"


def _failures(rows: Iterable[RolloutRow]) -> Iterable[tuple[str, str, str, float]]:
    for row in rows:
        for attempt in row.attempts:
            if attempt.status in FAILED_ATTEMPTS:
                yield (
                    attempt.status,
                    _message(attempt.error, attempt.status),
                    row.rollout_id,
                    attempt.last_seen,
                )
        if row.status == "cancelled":
            yield "cancelled", "rollout cancelled", row.rollout_id, row.end_time or row.start_time


def failure_groups(rows: Sequence[RolloutRow]) -> list[FailureGroup]:
    """Failed, timed-out and unresponsive attempts (and cancelled rollouts), grouped by message,
    most frequent first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for kind, message, rollout_id, when in _failures(rows):
        group = groups.setdefault((kind, message), FailureGroup(kind, message))
        group.attempts += 1
        group.last_time = max(group.last_time, when)
        if rollout_id not in group.rollout_ids:
            group.rollout_ids.add(rollout_id)
            if len(group.examples) < EXAMPLES:
                group.examples.append(rollout_id)
    return sorted(groups.values(), key=lambda g: (-g.attempts, g.kind, g.message))


@dataclass
class ProblemGroup:
    kind: str
    count: int
    fixed: int
    examples: list[tuple[str, str]]


def problem_groups(problems: Sequence[Problem]) -> list[ProblemGroup]:
    """``check()``'s findings by kind, with a few (path, detail) examples each."""
    groups: dict[str, ProblemGroup] = {}
    for problem in problems:
        group = groups.setdefault(problem.kind, ProblemGroup(problem.kind, 0, 0, []))
        group.count += 1
        group.fixed += problem.fixed
        if len(group.examples) < EXAMPLES:
            group.examples.append((problem.path, problem.detail))
    return sorted(groups.values(), key=lambda g: (-g.count, g.kind))


@dataclass
class Lane:
    """The attempts one worker ran, in start order, and its longest idle gap."""

    worker: str
    attempts: list[AttemptRow]
    busy_seconds: float = 0.0
    longest_gap: float = 0.0


def timeline_lanes(rows: Sequence[RolloutRow]) -> list[Lane]:
    by_worker: dict[str, list[AttemptRow]] = {}
    for row in rows:
        for attempt in row.attempts:
            by_worker.setdefault(attempt.worker_id or "(no worker)", []).append(attempt)
    lanes: list[Lane] = []
    for worker in sorted(by_worker):
        attempts = sorted(by_worker[worker], key=lambda a: a.start_time)
        lane = Lane(worker, attempts)
        busy_until = attempts[0].start_time
        for attempt in attempts:
            end = attempt_end(attempt)
            lane.busy_seconds += max(end - attempt.start_time, 0.0)
            lane.longest_gap = max(lane.longest_gap, attempt.start_time - busy_until)
            busy_until = max(busy_until, end)
        lanes.append(lane)
    return lanes


def attempt_end(attempt: AttemptRow) -> float:
    """Where an attempt's bar ends: at its end; an expired one when the reaper decided; a live one
    at its last sign of life (heartbeat or span), so a runner that died silently shows where it
    stopped."""
    return attempt.end_time or attempt.verdict_time or attempt.last_seen
