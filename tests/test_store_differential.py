"""Differential test: one random sequence of store calls, applied to upstream Agent-lightning's
``InMemoryLightningStore`` (the reference) and to a fresh ``FileStore``; every result, and the
whole observable state after every step, must be the same.

What is compared: rollouts (enqueue, enqueue many, start; retry configs, modes, resources ids,
metadata), the queue (dequeue one or many, ``start_attempt``), attempts (``update_attempt`` with
every status, so the retry rule of docs/behaviour.md §2.4), ``update_rollout``, spans
(``add_span``/``add_many_spans`` built as upstream's spans, rewards as ``emit_reward`` builds
them, sequence numbers, duplicates), resources, workers, and every query with its filters,
sorting and paging, ``wait_for_rollouts(timeout=0)`` and ``statistics``.

Normalizations, and nothing else (each names the row of docs/deviations.md it applies):

* ids are random in both stores: they are mapped by creation order (``R<i>``, ``R<i>A<j>``,
  ``S<k>``); store-made times are compared as "set or not", never by value;
* typed errors ("Unknown ids in mutating calls"): agl's error must be an instance of upstream's
  error type (agl's not-found errors subclass ``ValueError``);
* the rows on default orderings and ties (``query_rollouts``, ``query_resources``,
  ``query_workers``), the requeued rollout's place in the queue, cancellation, the empty
  ``or`` filter, late outcomes and late spans after a verdict, ``add_many_spans`` refused for
  one attempt, negative paging arguments and sorting by a field without an order: see where
  each is applied; and behaviour.md §5.1 (a refused span does not move agl's sequence counter).

Three rows were added to docs/deviations.md after this test found the difference: the order of
spans of several attempts whose sort keys tie, what ``add_many_spans`` returns when its batch
holds a ``span_id`` already stored, and ``query_rollouts(sort_by="input")`` with a None input.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pydantic import BaseModel

agl = pytest.importorskip("agentlightning")

from store_fs import ConflictError, FileStore  # noqa: E402

pytestmark = pytest.mark.upstream

QUEUED = ("queuing", "requeuing")
ROLLOUT_STATUSES = ["queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"]
ATTEMPT_STATUSES = ["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]
VERDICTS = ("timeout", "unresponsive")
WORKERS = ["w-a", "w-b", "w-c"]
RESOURCE_NAMES = ["prompts", "llm-config"]
UNKNOWN_ROLLOUT = "ro-000000000000"
UNKNOWN_ATTEMPT = "at-00000000"
# Times the stores make themselves: compared as "set or not" (their values are the stores' clocks).
STORE_TIMES = frozenset(
    {
        "start_time",
        "end_time",
        "last_heartbeat_time",
        "create_time",
        "update_time",
        "last_dequeue_time",
        "last_busy_time",
        "last_idle_time",
    }
)
SPAN_IDS = [f"{n:016x}" for n in range(1, 7)]
TRACE_IDS = [f"{n:032x}" for n in (1, 2)]
SPAN_NAMES = [
    "agentlightning.annotation",
    "agentlightning.message",
    "openai.chat.completion",
    "tool_call.lookup",
]
REWARD, MESSAGE = SPAN_NAMES[0], SPAN_NAMES[1]

# -- strategies ---------------------------------------------------------------------------------

inputs = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.sampled_from(["q", "task", ""]),
    st.fixed_dictionaries({"q": st.sampled_from(["1+1", "2+2"])}),
)
modes = st.sampled_from([None, "train", "val", "test"])
metadatas = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["k", "tag"]), st.one_of(st.integers(0, 3), st.sampled_from(["a", "b"])), max_size=2
    ),
)
# -2: leave it to the store (the latest resources); -1: an id no resources have; k >= 0: a known id.
resource_choices = st.integers(-2, 6)
worker_choices = st.sampled_from([None, *WORKERS])
limits = st.sampled_from([-1, -1, 0, 1, 2, 3])
offsets = st.sampled_from([0, 0, 1, 2, 4])
orders = st.sampled_from(["asc", "desc"])
picks = st.integers(0, 1000)  # an index into whatever list a rule picks from


@st.composite
def configs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)) == 0:
        return None
    return agl.RolloutConfig(
        max_attempts=draw(st.integers(1, 3)),
        retry_condition=draw(st.lists(st.sampled_from(["failed", "timeout", "unresponsive"]), unique=True)),
        # Never reached in a test: the watchdog must not act on its own between two calls.
        timeout_seconds=draw(st.sampled_from([None, 3600.0])),
        unresponsive_seconds=draw(st.sampled_from([None, 7200.0])),
    )


@dataclass(frozen=True)
class SpanSpec:
    """A span without its rollout and attempt: the same for both stores."""

    name: str
    span_id: str
    trace_id: str
    parent_id: str | None
    sequence_id: int | None  # None: allocated by get_next_span_sequence_id on both stores
    start: float
    reward: float


span_specs = st.builds(
    SpanSpec,
    name=st.sampled_from(SPAN_NAMES),
    span_id=st.sampled_from(SPAN_IDS),
    trace_id=st.sampled_from(TRACE_IDS),
    parent_id=st.sampled_from([None, *SPAN_IDS[:2]]),
    sequence_id=st.sampled_from([None, None, 1, 2, 3, 5]),
    start=st.sampled_from([100.0, 100.5, 101.0]),
    reward=st.sampled_from([0.0, 0.25, 1.0]),
)


def span_body(spec: SpanSpec, rollout_id: str, attempt_id: str, sequence_id: int) -> dict[str, Any]:
    """A span shaped as upstream's ``Span`` JSON; a reward is built by upstream's own emitter."""
    start, end = spec.start, spec.start + 0.25
    if spec.name == REWARD:
        reward = {"acc": spec.reward, "eff": 0.5} if spec.reward > 0.5 else spec.reward
        core = agl.emit_reward(
            reward, primary_key="acc" if isinstance(reward, dict) else None, propagate=False
        )
        attributes: dict[str, Any] = dict(core.attributes)
        end = start
    elif spec.name == MESSAGE:
        attributes = {"agentlightning.message.body": f"said {spec.span_id[-1]}"}
    else:
        attributes = {"gen_ai.request.model": "m", "n": 1, "tags": ["a", "b"]}
    context = {"trace_id": spec.trace_id, "span_id": spec.span_id, "is_remote": False, "trace_state": {}}
    return {
        "rollout_id": rollout_id,
        "attempt_id": attempt_id,
        "sequence_id": sequence_id,
        "trace_id": spec.trace_id,
        "span_id": spec.span_id,
        "parent_id": spec.parent_id,
        "name": spec.name,
        "status": {"status_code": "OK", "description": None},
        "attributes": attributes,
        "events": [{"name": "e", "attributes": {"x": 1}, "timestamp": start}],
        "links": [],
        "start_time": start,
        "end_time": end,
        "context": context,
        "parent": None,
        "resource": {"attributes": {"service.name": "diff"}, "schema_url": ""},
    }


@dataclass
class Outcome:
    value: Any = None
    error: Exception | None = None


def _same_error(what: str, up: Exception, ours: Exception) -> None:
    if isinstance(up, TypeError) and "sort" in what:
        # deviations.md "Sorting by a field without an order": TypeError upstream, ValueError here.
        assert isinstance(ours, ValueError), f"{what}: upstream {up!r}, agl {ours!r}"
        return
    # deviations.md "Unknown ids in mutating calls": typed errors, all ValueError subclasses (and
    # a call both an unknown id and a bad value make wrong may be refused for either).
    expected = ValueError if isinstance(up, ValueError) else type(up)
    assert isinstance(ours, expected), f"{what}: upstream raised {up!r}, agl {ours!r}"


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class StoreDifferential(RuleBasedStateMachine):
    """Upstream's in-memory store and a FileStore, driven by the same calls."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="agl-diff-"))
        self.up: Any = agl.InMemoryLightningStore()
        self.fs = FileStore(self.dir / "store")
        self.canon_ids: dict[str, str] = {}
        self.rollouts: list[tuple[str, str]] = []  # (upstream id, agl id) by creation order
        self.attempts: list[list[tuple[str, str]]] = []  # per rollout, by sequence
        self.resources: list[tuple[str, str]] = []  # ids the stores made or were given
        self.status: list[str] = []  # each rollout's status, as both stores report it
        # The queues as each store keeps them. Upstream's holds rollout indices: an entry stays
        # when its rollout leaves the queued statuses without a dequeue, and a rollout sent back
        # while it has one keeps that old place. agl's holds (rollout, next attempt number): an
        # entry is valid while no attempt was made since, so a rollout that got an attempt
        # without a dequeue (start_attempt) and is sent back joins the tail (deviations.md "A
        # requeued rollout's place in the queue").
        self.up_queue: list[int] = []
        self.fs_queue: list[tuple[int, int]] = []
        self.workers_seen: set[str] = set()

    def teardown(self) -> None:
        self.fs.close()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- running calls ------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, Any]) -> Outcome:
        try:
            return Outcome(value=self.loop.run_until_complete(coro))
        except Exception as exc:
            return Outcome(error=exc)

    def both(
        self, up_call: Callable[[], Coroutine[Any, Any, Any]], fs_call: Callable[[], Coroutine[Any, Any, Any]]
    ) -> tuple[Outcome, Outcome]:
        return self._run(up_call()), self._run(fs_call())

    def call(self, method: str, up_args: Sequence[Any], fs_args: Sequence[Any]) -> tuple[Outcome, Outcome]:
        """``method`` of both stores, each with its own (id) arguments."""
        return self._run(getattr(self.up, method)(*up_args)), self._run(getattr(self.fs, method)(*fs_args))

    def value(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    # -- canonical forms ----------------------------------------------------------------------
    def canon(self, value: Any, *, times: bool = True) -> Any:
        """JSON of ``value`` with ids mapped and store-made times reduced to "set or not"."""
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if times and key in STORE_TIMES:
                    out[key] = None if item is None else "<time>"
                else:
                    out[key] = self.canon(item, times=times)
            return out
        if isinstance(value, (list, tuple)):
            return [self.canon(v, times=times) for v in value]
        if isinstance(value, str):
            return self.canon_ids.get(value, value)
        return value

    def canon_span(self, span: Any) -> Any:
        # A span's times are the caller's: compared exactly.
        return self.canon(span, times=False)

    def check_same(self, what: str, up: Outcome, ours: Outcome, *, span_items: bool = False) -> None:
        if up.error is not None or ours.error is not None:
            got_up = up.error or self.canon(up.value)
            got_ours = ours.error or self.canon(ours.value)
            assert up.error is not None, f"{what}: upstream {got_up!r}, agl {got_ours!r}"
            assert ours.error is not None, f"{what}: upstream {got_up!r}, agl {got_ours!r}"
            _same_error(what, up.error, ours.error)
            return
        convert = self.canon_span if span_items else self.canon
        a, b = convert(up.value), convert(ours.value)
        assert a == b, f"{what}:\nupstream {a!r}\nagl      {b!r}"

    # -- ids ------------------------------------------------------------------------------------
    def _add_rollout(self, up_id: str, fs_id: str, status: str) -> int:
        index = len(self.rollouts)
        self.rollouts.append((up_id, fs_id))
        self.attempts.append([])
        self.status.append(status)
        self.canon_ids[up_id] = self.canon_ids[fs_id] = f"R{index}"
        if status in QUEUED:
            self.up_queue.append(index)
            self.fs_queue.append((index, 1))
        return index

    def _add_attempt(self, index: int, up_attempt: Any, fs_attempt: Any) -> None:
        assert up_attempt.sequence_id == fs_attempt.sequence_id == len(self.attempts[index]) + 1
        pair = (up_attempt.attempt_id, fs_attempt.attempt_id)
        self.canon_ids[pair[0]] = self.canon_ids[pair[1]] = f"R{index}A{len(self.attempts[index])}"
        self.attempts[index].append(pair)

    def _add_resources(self, up_id: str, fs_id: str) -> None:
        if (up_id, fs_id) in self.resources:
            return
        self.resources.append((up_id, fs_id))
        if up_id != fs_id:
            self.canon_ids[up_id] = self.canon_ids[fs_id] = f"S{len(self.resources) - 1}"

    def _index_of(self, up_id: str) -> int:
        return next(i for i, (u, _) in enumerate(self.rollouts) if u == up_id)

    def _resources_id(self, choice: int) -> tuple[str | None, str | None]:
        if choice == -2 or (choice >= 0 and not self.resources):
            return None, None
        if choice == -1:
            return "rs-given-by-caller", "rs-given-by-caller"
        return self.resources[choice % len(self.resources)]

    def _rollout(self, pick: int, unknown: bool = False) -> tuple[int | None, str, str]:
        """A known rollout (index, ids), or the unknown id when asked or there is none."""
        if unknown or not self.rollouts:
            return None, UNKNOWN_ROLLOUT, UNKNOWN_ROLLOUT
        index = pick % len(self.rollouts)
        return index, *self.rollouts[index]

    def _sync_statuses(self) -> None:
        """Read each rollout's status (upstream's; the invariant checks agl's is the same) and
        follow its queue entries in both queue models."""
        for index, (up_id, _) in enumerate(self.rollouts):
            rollout = self.value(self.up.get_rollout_by_id(up_id))
            old, new = self.status[index], rollout.status
            if new in QUEUED and old not in QUEUED:
                if index not in self.up_queue:
                    self.up_queue.append(index)
                entry = (index, len(self.attempts[index]) + 1)
                if entry not in self.fs_queue:
                    self.fs_queue.append(entry)
            if old != new:
                event(f"rollout {old} -> {new}")
            self.status[index] = new

    # -- creating rollouts ----------------------------------------------------------------------
    @initialize(
        batch=st.lists(st.tuples(inputs, configs()), min_size=1, max_size=4),
        started=st.integers(0, 2),
        worker=worker_choices,
    )
    def some_rollouts(self, batch: list[tuple[Any, Any]], started: int, worker: str | None) -> None:
        """Work to start from: queued rollouts (with retry settings), some of them dequeued."""
        for input, config in batch:
            self.enqueue_rollout(input=input, mode="train", resources=-2, config=config, metadata=None)
        for _ in range(started):
            self.dequeue_rollout(worker=worker)

    @rule(
        input=inputs,
        mode=modes,
        resources=resource_choices,
        config=configs(),
        metadata=metadatas,
    )
    def enqueue_rollout(self, input: Any, mode: Any, resources: int, config: Any, metadata: Any) -> None:
        up_res, fs_res = self._resources_id(resources)
        up, ours = self.both(
            lambda: self.up.enqueue_rollout(
                input=input, mode=mode, resources_id=up_res, config=config, metadata=metadata
            ),
            lambda: self.fs.enqueue_rollout(
                input=input, mode=mode, resources_id=fs_res, config=config, metadata=metadata
            ),
        )
        if up.error is None and ours.error is None:
            self._add_rollout(up.value.rollout_id, ours.value.rollout_id, "queuing")
        self.check_same("enqueue_rollout", up, ours)

    @rule(
        requests=st.lists(
            st.tuples(inputs, modes, resource_choices, configs(), metadatas),
            max_size=3,
        )
    )
    def enqueue_many_rollouts(self, requests: list[tuple[Any, Any, int, Any, Any]]) -> None:
        up_requests, fs_requests = [], []
        for input, mode, resources, config, metadata in requests:
            up_res, fs_res = self._resources_id(resources)
            fields = {"input": input, "mode": mode, "config": config, "metadata": metadata}
            up_requests.append(agl.EnqueueRolloutRequest(resources_id=up_res, **fields))
            fs_requests.append(agl.EnqueueRolloutRequest(resources_id=fs_res, **fields))
        up, ours = self.both(
            lambda: self.up.enqueue_many_rollouts(up_requests),
            lambda: self.fs.enqueue_many_rollouts(fs_requests),
        )
        if up.error is None and ours.error is None and len(up.value) == len(ours.value):
            for a, b in zip(up.value, ours.value, strict=True):
                self._add_rollout(a.rollout_id, b.rollout_id, "queuing")
        self.check_same("enqueue_many_rollouts", up, ours)

    @rule(
        input=inputs,
        mode=modes,
        resources=resource_choices,
        config=configs(),
        metadata=metadatas,
        worker=worker_choices,
    )
    def start_rollout(
        self, input: Any, mode: Any, resources: int, config: Any, metadata: Any, worker: str | None
    ) -> None:
        up_res, fs_res = self._resources_id(resources)
        kwargs = {"input": input, "mode": mode, "config": config, "metadata": metadata, "worker_id": worker}
        up, ours = self.both(
            lambda: self.up.start_rollout(resources_id=up_res, **kwargs),
            lambda: self.fs.start_rollout(resources_id=fs_res, **kwargs),
        )
        if up.error is None and ours.error is None:
            index = self._add_rollout(up.value.rollout_id, ours.value.rollout_id, "preparing")
            self._add_attempt(index, up.value.attempt, ours.value.attempt)
        self.check_same("start_rollout", up, ours)

    # -- the queue ------------------------------------------------------------------------------
    def _expected_upstream(self, limit: int) -> tuple[list[int], int]:
        """The rollouts upstream's dequeue gives, and how many queue entries it consumes."""
        taken: list[int] = []
        consumed = 0
        for index in self.up_queue:
            if len(taken) >= limit:
                break
            consumed += 1
            if self.status[index] in QUEUED:
                taken.append(index)
        return taken, consumed

    def _fs_valid(self, entry: tuple[int, int]) -> bool:
        index, attempt_number = entry
        return self.status[index] in QUEUED and attempt_number == len(self.attempts[index]) + 1

    def _fs_effective(self) -> list[int]:
        """agl's queue: its valid entries, in order."""
        return list(dict.fromkeys(i for i, n in self.fs_queue if self._fs_valid((i, n))))

    def _fs_consumed(self, limit: int) -> int:
        """How many of agl's queue tokens a dequeue of ``limit`` takes away: it walks them in
        order, dropping the stale ones it meets (a rollout that left the queue, as upstream
        drops its entries), and an empty-handed dequeue drops them all. A rollout sent back
        after its stale token was dropped joins the tail."""
        taken = consumed = 0
        for entry in self.fs_queue:
            if taken >= limit:
                return consumed
            consumed += 1
            taken += self._fs_valid(entry)
        return consumed

    def _queues_agree(self) -> bool:
        effective = [i for i in self.up_queue if self.status[i] in QUEUED]
        assert sorted(effective) == sorted(self._fs_effective()), "queue model out of step with the statuses"
        return effective == self._fs_effective()

    def _drain(self) -> None:
        """The queues hold the same rollouts in another order (deviations.md "A requeued
        rollout's place in the queue"): take everything from both and compare it as a set, and
        each store's order with its own queue."""
        event("queues in another order: drained")
        up_expected, _ = self._expected_upstream(len(self.up_queue))
        fs_expected = self._fs_effective()
        up_got = self._dequeue_all(self.up)
        fs_got = self._dequeue_all(self.fs)
        up_indices = [self._index_of(r.rollout_id) for r in up_got]
        assert up_indices == up_expected
        by_index = dict(zip(up_indices, up_got, strict=True))
        fs_indices: list[int] = []
        for rollout in fs_got:
            index = next(i for i, (_, f) in enumerate(self.rollouts) if f == rollout.rollout_id)
            fs_indices.append(index)
            self._add_attempt(index, by_index[index].attempt, rollout.attempt)
        assert fs_indices == fs_expected, f"agl dequeued {fs_indices}, its queue was {fs_expected}"
        for index, rollout in zip(fs_indices, fs_got, strict=True):
            assert self.canon(by_index[index]) == self.canon(rollout), f"dequeue (drained) R{index}"
        self.up_queue.clear()
        self.fs_queue.clear()

    def _dequeue_all(self, store: Any) -> list[Any]:
        out: list[Any] = []
        while (rollout := self.value(store.dequeue_rollout())) is not None:
            out.append(rollout)
            assert len(out) <= len(self.rollouts)
        return out

    def _took(self, up_items: Sequence[Any], fs_items: Sequence[Any], consumed: int) -> None:
        for a, b in zip(up_items, fs_items, strict=True):
            index = self._index_of(a.rollout_id)
            assert self.rollouts[index][1] == b.rollout_id, "the stores dequeued different rollouts"
            self._add_attempt(index, a.attempt, b.attempt)
        del self.up_queue[:consumed]

    @rule(worker=worker_choices)
    def dequeue_rollout(self, worker: str | None) -> None:
        if not self._queues_agree():
            self._drain()
        else:
            expected, consumed = self._expected_upstream(1)
            if not expected:
                consumed = len(self.up_queue)  # an empty dequeue drops every stale entry
            up, ours = self.both(
                lambda: self.up.dequeue_rollout(worker_id=worker),
                lambda: self.fs.dequeue_rollout(worker_id=worker),
            )
            assert up.error is None, up
            assert ours.error is None, ours
            got = [up.value] if up.value is not None else []
            assert [self._index_of(r.rollout_id) for r in got] == expected
            del self.fs_queue[: self._fs_consumed(1)]
            if up.value is not None and ours.value is not None:
                self._took([up.value], [ours.value], consumed)
            else:
                del self.up_queue[:consumed]
            self.check_same("dequeue_rollout", up, ours)
        self._sync_statuses()

    @rule(limit=st.integers(-1, 3), worker=worker_choices)
    def dequeue_many_rollouts(self, limit: int, worker: str | None) -> None:
        if not self._queues_agree():
            self._drain()
        else:
            expected, consumed = self._expected_upstream(max(limit, 0))
            if len(expected) < limit:
                consumed = len(self.up_queue)
            up, ours = self.both(
                lambda: self.up.dequeue_many_rollouts(limit=limit, worker_id=worker),
                lambda: self.fs.dequeue_many_rollouts(limit=limit, worker_id=worker),
            )
            assert up.error is None, up
            assert ours.error is None, ours
            assert [self._index_of(r.rollout_id) for r in up.value] == expected
            del self.fs_queue[: self._fs_consumed(max(limit, 0))]
            if len(up.value) == len(ours.value):
                self._took(up.value, ours.value, consumed)
            self.check_same("dequeue_many_rollouts", up, ours)
        self._sync_statuses()

    @rule(pick=picks, unknown=st.booleans(), worker=worker_choices)
    def start_attempt(self, pick: int, unknown: bool, worker: str | None) -> None:
        index, up_id, fs_id = self._rollout(pick, unknown and pick % 4 == 0)
        if index is not None and self.status[index] == "cancelled":
            # deviations.md "Cancellation": upstream revives a cancelled rollout here; agl refuses,
            # changing nothing (the invariant checks that the stores still agree).
            outcome = self._run(self.fs.start_attempt(fs_id, worker_id=worker))
            assert isinstance(outcome.error, ConflictError), outcome
            event("start_attempt on a cancelled rollout refused")
            return
        up, ours = self.both(
            lambda: self.up.start_attempt(up_id, worker_id=worker),
            lambda: self.fs.start_attempt(fs_id, worker_id=worker),
        )
        if index is not None and up.error is None and ours.error is None:
            self._add_attempt(index, up.value.attempt, ours.value.attempt)
        self.check_same("start_attempt", up, ours)
        self._sync_statuses()

    # -- updates --------------------------------------------------------------------------------
    @rule(
        pick=picks,
        which=st.sampled_from(["latest", "latest", "known", "known", "unknown"]),
        status=st.sampled_from([None, *ATTEMPT_STATUSES, "failed", "succeeded"]),
        worker=st.sampled_from([None, None, "", *WORKERS]),
        metadata=st.sampled_from([None, None, {}, {"error": "boom"}, "null"]),
        heartbeat=st.booleans(),
    )
    def update_attempt(
        self, pick: int, which: str, status: str | None, worker: str | None, metadata: Any, heartbeat: bool
    ) -> None:
        index, up_rid, fs_rid = self._rollout(pick, unknown=pick % 13 == 0)
        if index is not None and self.status[index] == "cancelled":
            return  # deviations.md "Cancellation": upstream revives a cancelled rollout here; agl does not
        if which == "latest":
            up_aid = fs_aid = "latest"
        elif which == "known" and index is not None and self.attempts[index]:
            up_aid, fs_aid = self.attempts[index][pick % len(self.attempts[index])]
        else:
            up_aid = fs_aid = UNKNOWN_ATTEMPT
        kwargs: dict[str, Any] = {}
        if status is not None:
            kwargs["status"] = status
        if worker is not None:
            kwargs["worker_id"] = worker
        if metadata is not None:
            kwargs["metadata"] = None if metadata == "null" else metadata
        if heartbeat:
            kwargs["last_heartbeat_time"] = 1_700_000_000.0
        if self._attempt_status(index, up_aid) in VERDICTS and status in ("succeeded", "failed"):
            # deviations.md "A late outcome after a watchdog verdict": agl refuses it and keeps the
            # verdict (it cannot tell a verdict written by update_attempt from the watchdog's);
            # upstream overwrites it. Only agl is called; the invariant checks it changed nothing.
            outcome = self._run(self.fs.update_attempt(fs_rid, fs_aid, **kwargs))
            assert isinstance(outcome.error, ConflictError), outcome
            event("late outcome refused")
            return
        up, ours = self.both(
            lambda: self.up.update_attempt(up_rid, up_aid, **kwargs),
            lambda: self.fs.update_attempt(fs_rid, fs_aid, **kwargs),
        )
        self.check_same(f"update_attempt({which}, {kwargs})", up, ours)
        if up.error is not None:
            event(f"update_attempt refused: {type(up.error).__name__}")
        self._sync_statuses()

    def _attempt_status(self, index: int | None, up_aid: str) -> str | None:
        """The status of an attempt as upstream has it (None: no such attempt)."""
        if index is None:
            return None
        attempts = list(self.value(self.up.query_attempts(self.rollouts[index][0])).items)
        if up_aid == "latest":
            return str(attempts[-1].status) if attempts else None
        return next((str(a.status) for a in attempts if a.attempt_id == up_aid), None)

    @rule(
        pick=picks,
        unknown=st.booleans(),
        status=st.sampled_from([None, *ROLLOUT_STATUSES]),
        input=st.one_of(st.just("unset"), inputs),
        mode=st.sampled_from(["unset", None, "train", "val"]),
        resources=st.one_of(st.just("unset"), st.none(), st.just("rs-other")),
        config=st.one_of(st.just("unset"), st.just("null"), configs()),
        metadata=st.one_of(st.just("unset"), metadatas),
    )
    def update_rollout(
        self,
        pick: int,
        unknown: bool,
        status: str | None,
        input: Any,
        mode: Any,
        resources: Any,
        config: Any,
        metadata: Any,
    ) -> None:
        _, up_id, fs_id = self._rollout(pick, unknown and pick % 5 == 0)
        kwargs: dict[str, Any] = {}
        for name, given in (
            ("input", input),
            ("mode", mode),
            ("resources_id", resources),
            ("metadata", metadata),
        ):
            if given != "unset":
                kwargs[name] = given
        if status is not None:
            kwargs["status"] = status
        if config == "null":
            kwargs["config"] = None  # refused by both (pydantic), changing nothing
        elif config is not None and config != "unset":
            kwargs["config"] = config
        up, ours = self.both(
            lambda: self.up.update_rollout(up_id, **kwargs),
            lambda: self.fs.update_rollout(fs_id, **kwargs),
        )
        self.check_same(f"update_rollout({sorted(kwargs)})", up, ours)
        self._sync_statuses()

    @precondition(lambda self: bool(self.rollouts))
    @rule(pick=picks, status=st.sampled_from(QUEUED))
    def send_back(self, pick: int, status: str) -> None:
        """update_rollout(status=queuing/requeuing), as ``agl rollouts retry`` does: more often
        than the general rule, since where a rollout sent back rejoins the queue differs."""
        self.update_rollout(pick, False, status, "unset", "unset", "unset", "unset", "unset")

    # -- spans ----------------------------------------------------------------------------------
    def _span_target(self, pick: int, kind: str) -> tuple[int | None, tuple[str, str], tuple[str, str]]:
        """(rollout index, rollout ids, attempt ids) for a span: a known attempt, or an unknown one."""
        with_attempts = [i for i, a in enumerate(self.attempts) if a]
        if kind == "unknown-rollout" or not with_attempts:
            return None, (UNKNOWN_ROLLOUT, UNKNOWN_ROLLOUT), (UNKNOWN_ATTEMPT, UNKNOWN_ATTEMPT)
        index = with_attempts[pick % len(with_attempts)]
        if kind == "unknown-attempt":
            return index, self.rollouts[index], (UNKNOWN_ATTEMPT, UNKNOWN_ATTEMPT)
        attempts = self.attempts[index]
        # Mostly the latest attempt, as a runner's spans are.
        pair = attempts[-1] if pick % 3 else attempts[pick % len(attempts)]
        return index, self.rollouts[index], pair

    def _superseded(self, index: int | None, up_aid: str) -> bool:
        """Whether agl refuses spans of this attempt: found timeout/unresponsive and retried
        (deviations.md "A late span after a watchdog verdict and its retry")."""
        if index is None or up_aid == UNKNOWN_ATTEMPT:
            return False
        ids = [u for u, _ in self.attempts[index]]
        return self._attempt_status(index, up_aid) in VERDICTS and ids.index(up_aid) < len(ids) - 1

    def _spans_for(
        self, targets: list[tuple[int | None, tuple[str, str], tuple[str, str], SpanSpec]]
    ) -> tuple[list[Any], list[Any]]:
        up_spans, fs_spans = [], []
        for _, (up_rid, fs_rid), (up_aid, fs_aid), spec in targets:
            sequence_id = spec.sequence_id
            if sequence_id is None:
                if up_rid == UNKNOWN_ROLLOUT:
                    sequence_id = 1  # agl refuses to count for an unknown rollout (deviations.md)
                else:
                    up, ours = self.call("get_next_span_sequence_id", (up_rid, up_aid), (fs_rid, fs_aid))
                    self.check_same("get_next_span_sequence_id", up, ours)
                    sequence_id = up.value
            up_spans.append(agl.Span.model_validate(span_body(spec, up_rid, up_aid, sequence_id)))
            fs_spans.append(agl.Span.model_validate(span_body(spec, fs_rid, fs_aid, sequence_id)))
        return up_spans, fs_spans

    @rule(
        pick=picks,
        kind=st.sampled_from(["known"] * 8 + ["unknown-attempt", "unknown-rollout"]),
        spec=span_specs,
    )
    def add_span(self, pick: int, kind: str, spec: SpanSpec) -> None:
        index, rids, aids = self._span_target(pick, kind)
        [up_span], [fs_span] = self._spans_for([(index, rids, aids, spec)])
        if self._superseded(index, aids[0]):
            # deviations.md "A late span after a watchdog verdict and its retry": refused by agl
            # (upstream stores it and revives the attempt). Only agl is called.
            outcome = self._run(self.fs.add_span(fs_span))
            assert isinstance(outcome.error, ConflictError), outcome
            event("late span refused")
            return
        if index is not None and aids[0] == UNKNOWN_ATTEMPT and spec.sequence_id is not None:
            # behaviour.md §5.1 (**Deviation**): upstream raises the rollout's sequence counter to
            # the span's number before it finds the attempt unknown; agl moves it only for a span
            # it takes. Only agl is called, so the counters stay in step.
            outcome = self._run(self.fs.add_span(fs_span))
            assert isinstance(outcome.error, ValueError), outcome
            return
        up, ours = self.both(lambda: self.up.add_span(up_span), lambda: self.fs.add_span(fs_span))
        self.check_same("add_span", up, ours, span_items=True)
        self._sync_statuses()

    @rule(
        picks_=st.lists(
            st.tuples(picks, st.sampled_from(["known"] * 12 + ["unknown-attempt"]), span_specs), max_size=4
        )
    )
    def add_many_spans(self, picks_: list[tuple[int, str, SpanSpec]]) -> None:
        targets = [(*self._span_target(pick, kind), spec) for pick, kind, spec in picks_]
        up_spans, fs_spans = self._spans_for(targets)
        refused = any(
            t[2][0] == UNKNOWN_ATTEMPT or t[1][0] == UNKNOWN_ROLLOUT or self._superseded(t[0], t[2][0])
            for t in targets
        )
        if refused:
            # Only agl is called, and the invariant checks that it changed nothing: with several
            # attempts, deviations.md "add_many_spans refused for one attempt" (agl checks every
            # group first, upstream keeps the groups before the refused one); with one, upstream
            # would still move the sequence counter (behaviour.md §5.1) or take a late span
            # (deviations.md "A late span after a watchdog verdict and its retry").
            outcome = self._run(self.fs.add_many_spans(fs_spans))
            assert isinstance(outcome.error, ValueError), outcome
            event("span batch refused")
            return
        up, ours = self.both(
            lambda: self.up.add_many_spans(up_spans), lambda: self.fs.add_many_spans(fs_spans)
        )
        # deviations.md "add_many_spans whose batch holds a span_id already stored": upstream then
        # returns only some of the spans it stored (often none); agl returns them all. What
        # upstream returns must be among agl's; the state check compares what both stored.
        if up.error is None and ours.error is None:
            got_up = Counter(map(_dumps, self.canon_span(list(up.value))))
            got_ours = Counter(map(_dumps, self.canon_span(list(ours.value))))
            assert got_up <= got_ours, f"add_many_spans:\nupstream {got_up}\nagl      {got_ours}"
            self._heartbeat_upstream_skipped(targets, up_spans, up.value, ours.value)
        else:
            self.check_same("add_many_spans", up, ours, span_items=True)
        self._sync_statuses()

    def _heartbeat_upstream_skipped(
        self, targets: list[Any], up_spans: list[Any], up_stored: Any, fs_stored: Any
    ) -> None:
        """Upstream runs the span heartbeat (attempt and rollout to ``running``) for an attempt
        only when its batch insert returned spans; the fallback after a duplicate often returns
        none though it stored some (deviations.md "add_many_spans whose batch holds a span_id
        already stored"). agl runs it for every attempt that stored a span. Run upstream's own
        heartbeat for such attempts, so that both stores go on from what they stored."""
        up_groups = {(s.rollout_id, s.attempt_id) for s in up_stored}
        fs_groups = {(s.rollout_id, s.attempt_id) for s in fs_stored}
        groups: dict[tuple[str, str], tuple[tuple[str, str], list[Any]]] = {}
        for (_, (up_rid, fs_rid), (up_aid, fs_aid), _), span in zip(targets, up_spans, strict=True):
            groups.setdefault((up_rid, up_aid), ((fs_rid, fs_aid), []))[1].append(span)
        for up_pair, (fs_pair, spans) in groups.items():
            if up_pair not in up_groups and fs_pair in fs_groups:
                event("upstream skipped a batch's heartbeat")
                self.value(self.up._post_add_spans(spans, *up_pair))

    @precondition(lambda self: bool(self.rollouts))
    @rule(choice=st.lists(picks, min_size=0, max_size=4))
    def get_many_span_sequence_ids(self, choice: list[int]) -> None:
        pairs = [self.rollouts[p % len(self.rollouts)] for p in choice]
        up, ours = self.both(
            lambda: self.up.get_many_span_sequence_ids([(u, "at-x") for u, _ in pairs]),
            lambda: self.fs.get_many_span_sequence_ids([(f, "at-x") for _, f in pairs]),
        )
        self.check_same("get_many_span_sequence_ids", up, ours)

    # -- resources and workers ------------------------------------------------------------------
    @staticmethod
    def _named_resources(n: int) -> dict[str, Any]:
        if n % 2:
            return {"llm": agl.LLM(endpoint=f"http://127.0.0.1:{9000 + n}/v1", model=f"m{n}")}
        return {"main_prompt": agl.PromptTemplate(template=f"Q{n}: {{q}}", engine="f-string")}

    @rule(n=st.integers(0, 5))
    def add_resources(self, n: int) -> None:
        up, ours = self.both(
            lambda: self.up.add_resources(self._named_resources(n)),
            lambda: self.fs.add_resources(self._named_resources(n)),
        )
        if up.error is None and ours.error is None:
            self._add_resources(up.value.resources_id, ours.value.resources_id)
        self.check_same("add_resources", up, ours)

    @rule(name=st.sampled_from(RESOURCE_NAMES), n=st.integers(0, 5))
    def update_resources(self, name: str, n: int) -> None:
        up, ours = self.both(
            lambda: self.up.update_resources(name, self._named_resources(n)),
            lambda: self.fs.update_resources(name, self._named_resources(n)),
        )
        self._add_resources(name, name)
        self.check_same("update_resources", up, ours)

    @rule(pick=picks, known=st.booleans())
    def get_resources(self, pick: int, known: bool) -> None:
        up_id, fs_id = (
            self.resources[pick % len(self.resources)] if known and self.resources else ("rs-none",) * 2
        )
        up, ours = self.both(
            lambda: self.up.get_resources_by_id(up_id), lambda: self.fs.get_resources_by_id(fs_id)
        )
        self.check_same("get_resources_by_id", up, ours)
        up, ours = self.both(self.up.get_latest_resources, self.fs.get_latest_resources)
        self.check_same("get_latest_resources", up, ours)

    @rule(
        which=st.sampled_from(["none", "known", "name", "contains"]),
        pick=picks,
        sort_by=st.sampled_from([None, "version", "resources_id"]),
        order=orders,
        limit=limits,
        offset=offsets,
    )
    def query_resources(
        self, which: str, pick: int, sort_by: str | None, order: Any, limit: int, offset: int
    ) -> None:
        up_kw: dict[str, Any] = {}
        fs_kw: dict[str, Any] = {}
        if which == "known" and self.resources:
            up_kw["resources_id"], fs_kw["resources_id"] = self.resources[pick % len(self.resources)]
        elif which == "name":
            up_kw["resources_id"] = fs_kw["resources_id"] = RESOURCE_NAMES[pick % 2]
        elif which == "contains":
            up_kw["resources_id_contains"] = fs_kw["resources_id_contains"] = ["rs-", "o", "zz"][pick % 3]
        page: dict[str, Any] = {"sort_by": sort_by, "sort_order": order}
        # deviations.md "Default ordering of query_rollouts / query_resources": agl lists oldest
        # first (create_time, then id), which also breaks ties; upstream lists by insertion. And
        # ids differ, so sorting by id is compared per store. The key compared across stores:
        key = (lambda r: r["version"]) if sort_by == "version" else None
        self._compare_query(
            "query_resources",
            lambda **kw: self.up.query_resources(**up_kw, **page, **kw),
            lambda **kw: self.fs.query_resources(**fs_kw, **page, **kw),
            key,
            limit,
            offset,
            own_order=self._resource_order(sort_by, order),
        )

    def _resource_order(self, sort_by: str | None, order: Any) -> Callable[[Any], Any] | None:
        if sort_by is None:
            return lambda r: (r.create_time, r.resources_id)
        if sort_by == "resources_id":
            return lambda r: r.resources_id
        return None

    @rule(worker=st.sampled_from(WORKERS), stats=st.sampled_from(["unset", {}, {"cpu": 0.5}, {"n": [1, 2]}]))
    def update_worker(self, worker: str, stats: Any) -> None:
        kwargs = {} if stats == "unset" else {"heartbeat_stats": stats}
        up, ours = self.both(
            lambda: self.up.update_worker(worker, **kwargs), lambda: self.fs.update_worker(worker, **kwargs)
        )
        self.check_same("update_worker", up, ours)

    @rule(
        status_in=st.one_of(st.none(), st.lists(st.sampled_from(["idle", "busy", "unknown"]), unique=True)),
        contains=st.sampled_from([None, "w-", "a", "zz"]),
        logic=st.sampled_from(["and", "or"]),
        sort_by=st.sampled_from([None, "worker_id", "status"]),
        order=orders,
        limit=limits,
        offset=offsets,
    )
    def query_workers(
        self,
        status_in: list[str] | None,
        contains: str | None,
        logic: Any,
        sort_by: str | None,
        order: Any,
        limit: int,
        offset: int,
    ) -> None:
        kw: dict[str, Any] = {
            "status_in": status_in,
            "worker_id_contains": contains,
            "filter_logic": logic,
            "sort_by": sort_by,
        }
        kw["sort_order"] = order
        up_all = self.value(self.up.query_workers(**kw))
        # deviations.md "Default ordering of query_workers, and ties under any sort_by": agl orders
        # by worker_id, also within ties; upstream by first sight. Upstream's page is rebuilt so.
        ordered = sorted(up_all.items, key=lambda w: w.worker_id)
        if sort_by is not None:
            ordered = sorted(ordered, key=lambda w: getattr(w, sort_by), reverse=order == "desc")
        ours = self._run(self.fs.query_workers(**kw, limit=limit, offset=offset))
        assert ours.error is None, ours
        expected = ordered[offset:] if limit == -1 else ordered[offset : offset + limit]
        assert self.canon(expected) == self.canon(list(ours.value.items)), "query_workers"
        assert ours.value.total == up_all.total
        for worker in WORKERS:
            up, fs = self.call("get_worker_by_id", (worker,), (worker,))
            self.check_same("get_worker_by_id", up, fs)

    # -- queries ------------------------------------------------------------------------------
    def _compare_query(
        self,
        what: str,
        up_query: Callable[..., Coroutine[Any, Any, Any]],
        fs_query: Callable[..., Coroutine[Any, Any, Any]],
        key: Callable[[Any], Any] | None,
        limit: int,
        offset: int,
        *,
        exact: bool = False,
        span_items: bool = False,
        own_order: Callable[[Any], Any] | None = None,
    ) -> None:
        """Compare a paged query. ``exact``: the orders must be the same. Otherwise the orders
        may differ within ties (or everywhere, when ``key`` is None) by a documented deviation:
        the full results must hold the same items, with ``key`` in the same sequence; each
        store's page must be its own full result's slice, and the pages hold the same keys."""
        if limit < -1 or offset < 0:
            # deviations.md "limit < -1, offset < 0 in queries": agl refuses them (upstream slices).
            refused = self._run(fs_query(limit=limit, offset=offset))
            assert isinstance(refused.error, ValueError), refused
            return
        up, ours = (
            self._run(up_query(limit=limit, offset=offset)),
            self._run(fs_query(limit=limit, offset=offset)),
        )
        if (
            isinstance(up.error, ValueError)
            and ours.error is None
            and "unsupported field type" in str(up.error)
        ):
            # deviations.md "query_rollouts(sort_by="input") when an input is None": upstream
            # cannot sort them, agl sorts None first.
            return
        if exact or up.error is not None or ours.error is not None:
            self.check_same(what, up, ours, span_items=span_items)
            return
        convert = self.canon_span if span_items else self.canon
        up_all = self.value(up_query(limit=-1, offset=0))
        fs_all = self.value(fs_query(limit=-1, offset=0))
        for name, result, full in (("upstream", up.value, up_all), ("agl", ours.value, fs_all)):
            window = full.items[offset:] if limit == -1 else full.items[offset : offset + limit]
            assert convert(list(result.items)) == convert(list(window)), f"{what}: {name}'s page is no slice"
            assert (result.total, result.limit, result.offset) == (len(full.items), limit, offset), what
        up_items, fs_items = convert(list(up_all.items)), convert(list(fs_all.items))
        assert Counter(map(_dumps, up_items)) == Counter(map(_dumps, fs_items)), (
            f"{what}: different items\nupstream {up_items}\nagl      {fs_items}"
        )
        if own_order is not None:
            keys = [own_order(item) for item in fs_all.items]
            assert keys == sorted(keys) or keys == sorted(keys, reverse=True), f"{what}: agl's own order"
        if key is not None:
            assert [key(i) for i in up_items] == [key(i) for i in fs_items], (
                f"{what}: order\n{up_items}\n{fs_items}"
            )
            page_up, page_fs = convert(list(up.value.items)), convert(list(ours.value.items))
            assert [key(i) for i in page_up] == [key(i) for i in page_fs], f"{what}: page order"

    @rule(
        status_in=st.one_of(st.none(), st.lists(st.sampled_from(ROLLOUT_STATUSES), unique=True, max_size=3)),
        id_in=st.one_of(st.none(), st.lists(st.integers(-1, 20), max_size=3)),
        contains=st.one_of(st.none(), st.sampled_from(["ro-", "zzz", ""]), st.integers(0, 20)),
        logic=st.sampled_from(["and", "or"]),
        sort_by=st.sampled_from(
            [None, "status", "mode", "start_time", "end_time", "rollout_id", "input", "config", "nope"]
        ),
        order=orders,
        limit=st.sampled_from([-2, -1, -1, 0, 1, 2, 3]),
        offset=offsets,
    )
    def query_rollouts(
        self,
        status_in: list[str] | None,
        id_in: list[int] | None,
        contains: str | int | None,
        logic: Any,
        sort_by: str | None,
        order: Any,
        limit: int,
        offset: int,
    ) -> None:
        up_kw: dict[str, Any] = {
            "status_in": status_in,
            "filter_logic": logic,
            "sort_by": sort_by,
            "sort_order": order,
        }
        fs_kw = dict(up_kw)
        if id_in is not None:
            chosen = [
                self.rollouts[i % len(self.rollouts)] if i >= 0 and self.rollouts else (UNKNOWN_ROLLOUT,) * 2
                for i in id_in
            ]
            up_kw["rollout_id_in"] = [u for u, _ in chosen]
            fs_kw["rollout_id_in"] = [f for _, f in chosen]
        if isinstance(contains, int):
            # A piece of one rollout's id in each store: the same rollout (ids are random hex).
            if self.rollouts:
                up_id, fs_id = self.rollouts[contains % len(self.rollouts)]
                up_kw["rollout_id_contains"], fs_kw["rollout_id_contains"] = up_id[-7:], fs_id[-7:]
        elif contains is not None:
            up_kw["rollout_id_contains"] = fs_kw["rollout_id_contains"] = contains
        # deviations.md "Default ordering of query_rollouts / query_resources": agl lists oldest
        # first (start_time, then id), which also breaks sort_by ties; upstream lists by insertion.
        # Only the sort key's sequence is compared; for ids and times (each store's own values)
        # each store's order is checked against its own values.
        key: Callable[[Any], Any] | None = None
        if sort_by in ("status", "mode", "input"):
            # Not normalized, no deviation covers it: sorting by ``input`` when an input is None
            # fails upstream (ValueError "unsupported field type", its None-substitute reads the
            # field's annotation); agl sorts None as ""/0 (docs/behaviour.md §6.2).
            key = lambda r: r[sort_by]  # noqa: E731
        own: Callable[[Any], Any] | None = None
        if sort_by is None:
            own = lambda r: (r.start_time, r.rollout_id)  # noqa: E731
        elif sort_by == "rollout_id":
            own = lambda r: r.rollout_id  # noqa: E731
        elif sort_by in ("start_time", "end_time"):
            own = lambda r: (getattr(r, sort_by) is None, getattr(r, sort_by) or 0.0)  # noqa: E731
        self._compare_query(
            f"query_rollouts(sort_by={sort_by})",
            lambda **kw: self.up.query_rollouts(**up_kw, **kw),
            lambda **kw: self.fs.query_rollouts(**fs_kw, **kw),
            key,
            limit,
            offset,
            own_order=own,
        )

    @rule(
        pick=picks,
        unknown=st.booleans(),
        sort_by=st.sampled_from([None, "sequence_id", "status", "worker_id", "start_time", "nope"]),
        order=orders,
        limit=limits,
        offset=offsets,
    )
    def query_attempts(
        self, pick: int, unknown: bool, sort_by: str | None, order: Any, limit: int, offset: int
    ) -> None:
        _, up_id, fs_id = self._rollout(pick, unknown and pick % 5 == 0)
        if sort_by == "start_time":
            # Store-made times: each store orders by its own clock; the stores agree on the items.
            self._compare_query(
                "query_attempts(start_time)",
                lambda **kw: self.up.query_attempts(up_id, sort_by=sort_by, sort_order=order, **kw),
                lambda **kw: self.fs.query_attempts(fs_id, sort_by=sort_by, sort_order=order, **kw),
                None,
                limit,
                offset,
                own_order=lambda a: a.start_time,
            )
            return
        self._compare_query(
            f"query_attempts({sort_by})",
            lambda **kw: self.up.query_attempts(up_id, sort_by=sort_by, sort_order=order, **kw),
            lambda **kw: self.fs.query_attempts(fs_id, sort_by=sort_by, sort_order=order, **kw),
            None,
            limit,
            offset,
            exact=True,
        )
        up, ours = self.both(
            lambda: self.up.get_latest_attempt(up_id), lambda: self.fs.get_latest_attempt(fs_id)
        )
        self.check_same("get_latest_attempt", up, ours)
        up, ours = self.both(
            lambda: self.up.get_rollout_by_id(up_id), lambda: self.fs.get_rollout_by_id(fs_id)
        )
        self.check_same("get_rollout_by_id", up, ours)

    @rule(
        pick=picks,
        attempt=st.sampled_from(["none", "none", "latest", "first", "unknown"]),
        unknown=st.booleans(),
        conditions=st.dictionaries(
            st.sampled_from(
                [
                    "trace_id",
                    "trace_id_contains",
                    "span_id",
                    "span_id_contains",
                    "parent_id",
                    "parent_id_contains",
                    "name",
                    "name_contains",
                ]
            ),
            st.sampled_from(
                [*SPAN_IDS[:3], TRACE_IDS[0], *SPAN_NAMES, "agentlightning", "0001", "call", "zz"]
            ),
            max_size=2,
        ),
        logic=st.sampled_from(["and", "or"]),
        sort_by=st.sampled_from(
            ["sequence_id", "sequence_id", None, "name", "start_time", "span_id", "parent_id"]
        ),
        order=orders,
        limit=limits,
        offset=offsets,
    )
    def query_spans(
        self,
        pick: int,
        attempt: str,
        unknown: bool,
        conditions: dict[str, str],
        logic: Any,
        sort_by: str | None,
        order: Any,
        limit: int,
        offset: int,
    ) -> None:
        index, up_rid, fs_rid = self._rollout(pick, unknown and pick % 7 == 0)
        up_aid: str | None = None
        fs_aid: str | None = None
        if attempt == "latest":
            up_aid = fs_aid = "latest"
        elif attempt == "first" and index is not None and self.attempts[index]:
            up_aid, fs_aid = self.attempts[index][0]
        elif attempt == "unknown":
            up_aid = fs_aid = UNKNOWN_ATTEMPT
        kw: dict[str, Any] = {**conditions, "sort_by": sort_by, "sort_order": order}
        up_logic = logic
        if logic == "or" and not conditions:
            # deviations.md "query_spans(filter_logic="or") with no conditions": upstream returns
            # nothing, agl every span in scope, which is what upstream's "and" returns.
            up_logic = "and"
        # deviations.md "Order of spans of several attempts whose sort keys tie": upstream lists
        # the latest attempt's first, agl the first attempt's. With spans of one attempt in scope
        # the orders must be the same; with several, the same items and the same key sequence.
        several = up_aid is None and index is not None and len(self.attempts[index]) > 1
        key = None if sort_by is None else (lambda s: s.get(sort_by))
        self._compare_query(
            f"query_spans({attempt}, {kw}, {logic})",
            lambda **k: self.up.query_spans(up_rid, up_aid, filter_logic=up_logic, **kw, **k),
            lambda **k: self.fs.query_spans(fs_rid, fs_aid, filter_logic=logic, **kw, **k),
            key,
            limit,
            offset,
            exact=not several,
            span_items=True,
        )

    @rule(choice=st.lists(st.integers(-1, 20), max_size=5))
    def wait_for_rollouts(self, choice: list[int]) -> None:
        pairs = [
            self.rollouts[i % len(self.rollouts)] if i >= 0 and self.rollouts else (UNKNOWN_ROLLOUT,) * 2
            for i in choice
        ]
        up, ours = self.both(
            lambda: self.up.wait_for_rollouts(rollout_ids=[u for u, _ in pairs], timeout=0),
            lambda: self.fs.wait_for_rollouts(rollout_ids=[f for _, f in pairs], timeout=0),
        )
        self.check_same("wait_for_rollouts", up, ours)

    # -- the whole state ----------------------------------------------------------------------
    @invariant()
    def stores_agree(self) -> None:
        for index, (up_id, fs_id) in enumerate(self.rollouts):
            up, ours = self.call("get_rollout_by_id", (up_id,), (fs_id,))
            self.check_same(f"get_rollout_by_id(R{index})", up, ours)
            up, ours = self.call("query_attempts", (up_id,), (fs_id,))
            self.check_same(f"query_attempts(R{index})", up, ours)
            # Spans in sequence order; ties in the same order too, but for spans of several
            # attempts (deviations.md "Order of spans of several attempts whose sort keys tie").
            up, ours = self.call("query_spans", (up_id,), (fs_id,))
            if len(self.attempts[index]) > 1 and up.error is None and ours.error is None:
                a = self.canon_span(list(up.value.items))
                b = self.canon_span(list(ours.value.items))
                assert [s["sequence_id"] for s in a] == [s["sequence_id"] for s in b], (
                    f"query_spans(R{index})"
                )
                assert Counter(map(_dumps, a)) == Counter(map(_dumps, b)), f"query_spans(R{index})"
            else:
                self.check_same(f"query_spans(R{index})", up, ours, span_items=True)
        up_workers = sorted(self.value(self.up.query_workers()).items, key=lambda w: w.worker_id)
        fs_workers = list(self.value(self.fs.query_workers()).items)
        assert self.canon(up_workers) == self.canon(fs_workers), "workers"
        up, ours = self.both(self.up.get_latest_resources, self.fs.get_latest_resources)
        self.check_same("get_latest_resources", up, ours)
        up_stats, fs_stats = self.value(self.up.statistics()), self.value(self.fs.statistics())
        for name in ("total_rollouts", "total_attempts", "total_spans", "total_resources", "total_workers"):
            assert up_stats[name] == fs_stats[name], (
                f"statistics {name}: {up_stats[name]} vs {fs_stats[name]}"
            )


TestStoreDifferential = StoreDifferential.TestCase
# Reproducible (derandomize) and bounded: no shrinking, which can take minutes for a state machine;
# a failure prints its whole step list. The long profile below shrinks.
TestStoreDifferential.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.stress
@pytest.mark.timeout(3600)
def test_store_differential_long() -> None:
    run_state_machine_as_test(
        StoreDifferential,
        settings=settings(
            max_examples=1000,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
