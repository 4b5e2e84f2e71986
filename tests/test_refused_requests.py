"""Requests refused as bad input change nothing, and the server does not outlive its clients.

Found by an adversarial pass over ``agl store`` (each test names the defect it pins down):
values pydantic accepts but JSON cannot hold (an integer of 2**64 or more given as a digit
string, nesting past orjson's 254 levels) failed half-way through a write; ids short in
characters but over 255 bytes failed on disk after a rollout was claimed; a span's sequence
number of 2**64 broke its rollout's counter for good; invalid UTF-8 in a path named another
record; any Content-Type was taken for JSON; a wait with a huge timeout kept running after its
client left; a span attribute of NaN or an infinity was stored as a line no reader accepts.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import AGL
from fault_helpers import PROMPT, quick_runner
from mp_workers import make_span
from server_helpers import ServerProcess, raw_request, store_snapshot

from store_fs import LLM, FileStore, InvalidIdError, PromptTemplate, Span, UnstorableValueError, init_store
from store_fs.agent import rollout
from store_fs.models import EnqueueRolloutRequest, Event, RolloutConfig

API = "/v1/agl"
JSON = {"Content-Type": "application/json"}
HUGE = "100000000000000000000000"  # a digit string pydantic turns into an int past 64 bits
DEEP = '{"a":' * 300 + "1" + "}" * 300  # orjson reads 1,024 levels, writes 254
LLM_FIELDS = '"resource_type": "llm", "endpoint": "e", "model": "m"'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # One server for the module (starting one costs ~1 s): each test compares the store with
    # itself before and after, or uses rollouts of its own.
    root = tmp_path_factory.mktemp("refused")
    proc = ServerProcess(init_store(root / "store"), root / "server.log")
    try:
        yield proc.start()
    finally:
        proc.stop()


def post(
    server: ServerProcess, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    status, answer, _ = raw_request(server.url, "POST", API + path, raw, headers or JSON)
    return status, answer


def check_clean(store: Path) -> None:
    done = subprocess.run([AGL, "--store", str(store), "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# -- values JSON cannot hold: refused before the first write ------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rollouts", f'{{"input": 1, "config": {{"max_attempts": "{HUGE}"}}}}'),
        (
            "/queues/rollouts/enqueue",
            f'{{"rollouts": [{{"input": 1, "config": {{"max_attempts": "{HUGE}"}}}}]}}',
        ),
        ("/queues/rollouts/enqueue", f'{{"rollouts": [{{"input": 2}}, {{"input": {DEEP}}}]}}'),
        ("/rollouts", f'{{"input": {DEEP}}}'),
        # JSON has no NaN or infinity, but pydantic reads a float field's string "-inf" as one.
        ("/rollouts", '{"input": 1, "config": {"timeout_seconds": "-inf"}}'),
        ("/resources", f'{{"llm": {{{LLM_FIELDS}, "sampling_parameters": {DEEP}}}}}'),
    ],
    ids=[
        "start-huge-int",
        "enqueue-huge-int",
        "batch-second-too-deep",
        "start-too-deep",
        "start-minus-inf",
        "resources-too-deep",
    ],
)
def test_a_value_json_cannot_hold_is_refused_and_nothing_is_written(
    server: ServerProcess, path: str, body: str
) -> None:
    total = raw_request(server.url, "GET", API + "/rollouts")[1]["total"]
    before = store_snapshot(server.store)
    status, answer = post(server, path, body)
    assert status == 400, answer
    assert answer["error_type"] == "UnstorableValueError"
    assert "cannot be stored as JSON" in answer["detail"]
    assert store_snapshot(server.store) == before  # not even the batch's first rollout
    status, page = raw_request(server.url, "GET", API + "/rollouts")[:2]
    assert status == 200
    assert page["total"] == total
    check_clean(server.store)


async def test_in_process_calls_refuse_unstorable_values_with_the_store_unchanged(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    try:
        before = store_snapshot(store.root)
        with pytest.raises(UnstorableValueError, match="Integer exceeds 64-bit range"):
            await store.enqueue_rollout(input={"n": 2**70})
        with pytest.raises(UnstorableValueError):
            await store.start_rollout(input="x", metadata={"n": -(2**70)})
        with pytest.raises(UnstorableValueError, match="rollout 1 of the batch"):
            await store.enqueue_many_rollouts(
                [
                    EnqueueRolloutRequest(input=1),
                    EnqueueRolloutRequest(input=2, config=RolloutConfig(max_attempts=2**64)),
                ]
            )
        deep: Any = 0
        for _ in range(300):
            deep = [deep]
        llm = LLM(endpoint="http://127.0.0.1:1/v1", model="m", sampling_parameters={"t": deep})
        with pytest.raises(UnstorableValueError, match="resources"):  # was a plain ValueError (exit 1)
            await store.add_resources({"llm": llm})
        assert store_snapshot(store.root) == before
        assert (await store.query_rollouts()).total == 0
        # The refusal is a ValueError, as a caller of upstream's API would catch.
        assert issubclass(UnstorableValueError, ValueError)
    finally:
        store.close()


async def test_an_update_json_cannot_hold_is_refused_before_anything_moves(tmp_path: Path) -> None:
    """A final status used to settle the attempt's token before the record write failed on the
    metadata: the call was refused, yet `agl check` found a half-applied decision that the
    watchdog would later finish."""
    store = FileStore(tmp_path / "store")
    try:
        await store.enqueue_rollout(input="x")
        attempted = await store.dequeue_rollout(worker_id="w1")
        assert attempted is not None
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        before = store_snapshot(store.root)
        refused: list[dict[str, Any]] = [
            {"status": "succeeded", "metadata": {"n": 2**70}},
            {"status": "failed", "metadata": {"n": math.nan}},
            {"last_heartbeat_time": math.inf},
        ]
        for values in refused:
            with pytest.raises(UnstorableValueError, match="the attempt's metadata or last_heartbeat_time"):
                await store.update_attempt(rid, aid, **values)
        for rollout_values in ({"metadata": {"n": 2**70}}, {"input": {"x": [1.0, -math.inf]}}):
            with pytest.raises(UnstorableValueError, match="the rollout's input, config or metadata"):
                await store.update_rollout(rid, **rollout_values)
        assert store_snapshot(store.root) == before
        assert store.check() == []
        assert (await store.get_latest_attempt(rid)) == attempted.attempt
    finally:
        store.close()


@pytest.mark.parametrize(
    "values",
    [
        {"input": {"x": math.nan}},
        {"input": "x", "metadata": {"deep": [{"y": math.inf}]}},
        {"input": "x", "config": RolloutConfig(timeout_seconds=-math.inf)},
    ],
    ids=["nan-input", "inf-metadata", "minus-inf-timeout"],
)
async def test_nan_and_infinities_are_refused_not_stored_as_null(
    tmp_path: Path, values: dict[str, Any]
) -> None:
    """orjson writes them as ``null``: the call returned the caller's value while the store kept
    another (a timeout of -inf, "at once", would have become "never")."""
    store = FileStore(tmp_path / "store")
    try:
        before = store_snapshot(store.root)
        with pytest.raises(UnstorableValueError, match="NaN and infinities have no JSON form"):
            await store.enqueue_rollout(**values)
        assert store_snapshot(store.root) == before
    finally:
        store.close()


def test_agl_client_refuses_nan_instead_of_sending_null(server: ServerProcess) -> None:
    async def main() -> None:
        from store_fs.client import LightningStoreClient

        client = LightningStoreClient(server.url)
        try:
            total = (await client.query_rollouts()).total
            with pytest.raises(UnstorableValueError, match="NaN and infinities"):
                await client.enqueue_rollout(input={"x": math.nan})
            assert (await client.query_rollouts()).total == total
        finally:
            await client.close()

    asyncio.run(main())


def test_agl_client_refuses_keys_json_writes_alike(server: ServerProcess) -> None:
    """Over agl's client they were merged before the request went out, and stored as one
    (found in review): input, worker stats and resources, as in process."""

    async def main() -> None:
        from store_fs.client import LightningStoreClient

        client = LightningStoreClient(server.url)
        try:
            total = (await client.query_rollouts()).total
            with pytest.raises(UnstorableValueError, match="would both be written"):
                await client.enqueue_rollout(input={1: "a", "1": "b"})
            with pytest.raises(UnstorableValueError, match="would both be written"):
                await client.update_worker("w-keys", heartbeat_stats={1: "a", "1": "b"})  # type: ignore[dict-item]
            llm = LLM(
                endpoint="http://127.0.0.1:1/v1",
                model="m",
                sampling_parameters={"logit_bias": {1: 0.1, "1": 0.2}},
            )
            with pytest.raises(UnstorableValueError, match="would both be written"):
                await client.add_resources({"llm": llm})
            assert (await client.query_rollouts()).total == total
            assert await client.get_worker_by_id("w-keys") is None
            # An id no resources can have is None, as in process ('' was a request to no route).
            assert await client.get_resources_by_id("") is None
            assert await client.get_resources_by_id("team/v1") is None
        finally:
            await client.close()

    asyncio.run(main())


async def test_resources_with_keys_json_writes_alike_are_refused_in_process(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    try:
        llm = LLM(
            endpoint="http://127.0.0.1:1/v1",
            model="m",
            sampling_parameters={"logit_bias": {1: 0.1, "1": 0.2}},
        )
        with pytest.raises(UnstorableValueError, match="would both be written"):
            await store.add_resources({"llm": llm})
        assert await store.get_latest_resources() is None
    finally:
        store.close()


# -- ids: file names are limited in bytes, not characters ----------------------------------
@pytest.mark.parametrize("worker_id", ["é" * 128, "\ud800x"], ids=["256-bytes", "lone-surrogate"])
async def test_a_worker_id_too_long_in_bytes_or_not_utf8_is_refused_before_a_claim(
    tmp_path: Path, worker_id: str
) -> None:
    store = FileStore(tmp_path / "store")
    try:
        queued = await store.enqueue_rollout(input="keep me")
        with pytest.raises(InvalidIdError, match=r"bytes in UTF-8|not valid Unicode"):
            await store.dequeue_rollout(worker_id=worker_id)
        claimed = await store.dequeue_rollout(worker_id="w1")  # still queued
        assert claimed is not None
        assert claimed.rollout_id == queued.rollout_id
    finally:
        store.close()


def test_over_http_a_long_worker_id_is_a_400_and_the_rollout_stays_queued(server: ServerProcess) -> None:
    status, queued = post(server, "/queues/rollouts/enqueue", {"rollouts": [{"input": "keep me"}]})
    assert status == 201, queued
    status, answer = post(server, "/queues/rollouts/dequeue", {"limit": 1, "worker_id": "é" * 128})
    assert status == 400, answer
    assert answer["error_type"] == "InvalidIdError", answer
    status, claimed = post(server, "/queues/rollouts/dequeue", {"limit": 1000, "worker_id": "w1"})
    assert status == 200
    assert queued[0]["rollout_id"] in [r["rollout_id"] for r in claimed]


# -- span sequence numbers: one out of range leaves the counter alone ----------------------
async def test_a_sequence_id_past_the_counters_range_is_refused_and_the_counter_still_counts(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path / "store")
    try:
        started = await store.start_rollout(input="x")
        rid, aid = started.rollout_id, started.attempt.attempt_id
        for bad in (2**63 - 1, 2**64, 10**24):
            with pytest.raises(UnstorableValueError, match="sequence_id"):
                await store.add_span(make_span(rid, aid, bad))
        assert await store.get_next_span_sequence_id(rid, aid) == 1
        assert await store.add_span(make_span(rid, aid, 2**63 - 2)) is not None  # the last one allowed
        assert await store.get_next_span_sequence_id(rid, aid) == 2**63 - 1
    finally:
        store.close()


def test_over_http_a_huge_sequence_id_leaves_next_sequence_ids_working(server: ServerProcess) -> None:
    status, started = post(server, "/rollouts", {"input": "x"})
    assert status == 201, started
    rid, aid = started["rollout_id"], started["attempt"]["attempt_id"]
    span = make_span(rid, aid, 1).model_dump(mode="json")
    span["sequence_id"] = HUGE
    status, answer = post(server, "/spans", span)
    assert 400 <= status < 500, answer
    status, answer = post(server, "/spans/next", {"rollout_id": rid, "attempt_id": aid})
    assert status == 200, answer
    assert answer == {"sequence_id": 1}, answer
    check_clean(server.store)


# -- paths and content types ---------------------------------------------------------------
def test_a_path_id_that_is_not_utf8_is_a_400_not_another_id(server: ServerProcess) -> None:
    for path in ("/workers/%FF", "/resources/%C0%80", "/rollouts/ro-%FE"):
        status, answer, _ = raw_request(server.url, "GET", API + path)
        assert status == 400, (path, answer)
        assert "not UTF-8" in answer["detail"], (path, answer)
    status, answer = post(server, "/workers/%FF", {"status": "idle"})
    assert status == 400, answer
    assert not (server.store / "workers" / "\ufffd").exists()


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_a_post_whose_content_type_is_not_json_is_refused_with_415(
    server: ServerProcess, content_type: str
) -> None:
    before = store_snapshot(server.store)
    status, answer = post(
        server, "/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, {"Content-Type": content_type}
    )
    assert status == 415, answer
    assert "not JSON" in answer["detail"], answer
    assert store_snapshot(server.store) == before


@pytest.mark.parametrize(
    "headers",
    [
        {},
        JSON,
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "application/vnd.agl+json"},
    ],
)
def test_json_or_no_content_type_is_accepted(server: ServerProcess, headers: dict[str, str]) -> None:
    status, answer = post(server, "/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}, headers)
    assert status == 201, answer
    assert len(answer) == 1, answer


def test_a_sort_by_a_field_without_order_names_the_field(server: ServerProcess) -> None:
    post(server, "/queues/rollouts/enqueue", {"rollouts": [{"input": 1}, {"input": "a"}]})
    status, answer, _ = raw_request(server.url, "GET", API + "/rollouts?sort_by=config")
    assert status == 400, answer
    assert answer["detail"].startswith("cannot sort by config"), answer


# -- a wait does not outlive its client ----------------------------------------------------
@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_long_wait_ends_when_its_client_leaves(server: ServerProcess, how: str) -> None:
    status, started = post(server, "/rollouts", {"input": "x"})
    assert status == 201
    body = json.dumps({"rollout_ids": [started["rollout_id"]], "timeout": 1e308}).encode()
    logged = len(server.log_text())
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        b"POST %s/waits/rollouts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (API.encode(), len(body), body)
    )
    time.sleep(0.5)  # the wait is running on the server
    assert "waits/rollouts" not in server.log_text()[logged:]  # no answer yet: its access line comes with it
    left = time.monotonic()
    if how == "close":
        sock.close()
    else:
        sock.shutdown(socket.SHUT_WR)  # a half-closed client still gets its answer, at once
    deadline = left + 10
    while "/waits/rollouts 200" not in server.log_text()[logged:]:
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.05)
    assert time.monotonic() - left < 5
    if how == "half-close":
        answer = sock.recv(65536)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.rstrip().endswith(b"[]"), answer


def test_the_in_process_refusals_are_the_same_errors_over_agl_client(server: ServerProcess) -> None:
    async def main() -> None:
        from store_fs.client import LightningStoreClient

        client = LightningStoreClient(server.url)
        try:
            with pytest.raises(UnstorableValueError):
                await client.enqueue_rollout(input={"n": 2**70})
        finally:
            await client.close()

    asyncio.run(main())


# -- NaN and infinities in span attributes: refused, not stored unreadable -------------------
@pytest.mark.parametrize(
    ("where", "value", "named"),
    [
        ("attributes", math.nan, "attribute 'v'"),
        ("attributes", [1.0, math.inf], "attribute 'v'"),
        ("event", -math.inf, "event 0 attribute 'v'"),
        ("resource", math.nan, "resource attribute 'v'"),
    ],
)
async def test_a_span_attribute_json_cannot_hold_is_refused_not_stored_unreadable(
    tmp_path: Path, where: str, value: Any, named: str
) -> None:
    # Before: the line was written with null there, the call returned the span, and every
    # reader skipped the line as invalid: a reward lost without an error.
    store = FileStore(tmp_path / "store")
    try:
        started = await store.start_rollout(input="x")
        rid, aid = started.rollout_id, started.attempt.attempt_id
        span = make_span(rid, aid, 1)
        if where == "attributes":
            span.attributes["v"] = value
        elif where == "event":
            span.events = [Event(name="e", attributes={"v": value})]
        else:
            span.resource.attributes["v"] = value
        with pytest.raises(UnstorableValueError, match=named):
            await store.add_span(span)
        assert (await store.query_spans(rid)).total == 0
        assert await store.add_span(make_span(rid, aid, 2)) is not None  # the attempt takes others
        assert [s.sequence_id for s in await store.query_spans(rid)] == [2]
    finally:
        store.close()


@rollout
async def nan_reward(task: Any, prompt_template: PromptTemplate) -> float:
    return math.nan


async def test_a_nan_reward_fails_the_attempt_instead_of_vanishing(tmp_path: Path) -> None:
    fs = FileStore(tmp_path / "store", scan_debounce_seconds=0, claim_grace_seconds=0.5)
    try:
        await fs.add_resources(PROMPT)
        queued = await fs.enqueue_rollout(input="x")
        runner = quick_runner(max_rollouts=1)
        with runner.run_context(agent=nan_reward, store=fs):
            await asyncio.wait_for(runner.iter(), 30)
        attempt = await fs.get_latest_attempt(queued.rollout_id)
        assert attempt is not None
        assert attempt.status == "failed"
        assert attempt.metadata is not None
        assert "could not be stored" in attempt.metadata["error"]
        assert "UnstorableValueError" in attempt.metadata["error"]
    finally:
        fs.close()


async def test_a_span_text_with_a_lone_surrogate_is_refused_naming_the_span_and_attribute(
    tmp_path: Path,
) -> None:
    """An LLM server's reply may escape a lone surrogate (valid JSON, no UTF-8 form); the
    refusal said only "dict cannot be stored as JSON" (found by an adversarial pass)."""
    store = FileStore(tmp_path / "store")
    attempted = await store.start_rollout(input=1)
    span = Span.from_attributes(name="n", attributes={"ok": "x", "gen_ai.completion.0.content": "a\ud800b"})
    span = span.model_copy(
        update={
            "rollout_id": attempted.rollout_id,
            "attempt_id": attempted.attempt.attempt_id,
            "sequence_id": 1,
        }
    )
    with pytest.raises(
        UnstorableValueError, match=f"span {span.span_id}'s attribute 'gen_ai.completion.0.content'"
    ):
        await store.add_span(span)
    assert (await store.query_spans(attempted.rollout_id)).total == 0
    store.close()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ({1: "int one", "1": "str one"}, "1"),
        ({"nested": [{True: 1, "true": 2}]}, "true"),
        ({None: "a", "null": "b"}, "null"),
        ({1.0: "a", "1.0": "b"}, "1.0"),
    ],
    ids=["int", "bool-nested", "none", "float"],
)
async def test_keys_json_writes_alike_are_refused_not_merged(tmp_path: Path, value: Any, shown: str) -> None:
    """The defect (an adversarial pass with upstream's objects): ``{1: "a", "1": "b"}`` was
    stored as ``{"1": "b"}``: orjson writes both keys as ``"1"`` and reading keeps the last,
    while the call returned the caller's dict. Found in inputs, metadata and worker stats."""
    store = FileStore(tmp_path / "store")
    try:
        before = store_snapshot(store.root)
        with pytest.raises(UnstorableValueError, match=f"would both be written as '{shown}'"):
            await store.enqueue_rollout(input=value)
        with pytest.raises(UnstorableValueError, match="would both be written"):
            await store.start_rollout(input="x", metadata={"m": value})
        with pytest.raises(UnstorableValueError, match="heartbeat_stats"):
            await store.update_worker("w1", heartbeat_stats=value)
        assert store_snapshot(store.root) == before
        # Non-string keys that stay apart are stored as JSON has them, as before.
        stored = await store.enqueue_rollout(input={1: "a", 2: "b"})
        assert (await store.get_rollout_by_id(stored.rollout_id)).input == {"1": "a", "2": "b"}  # type: ignore[union-attr]
    finally:
        store.close()


async def test_nan_in_worker_stats_is_refused_not_stored_as_null(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    try:
        with pytest.raises(UnstorableValueError, match="heartbeat_stats"):
            await store.update_worker("w1", heartbeat_stats={"load": math.nan})
        assert (await store.query_workers()).total == 0
    finally:
        store.close()
