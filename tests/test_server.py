"""The HTTP bridge end to end: real server subprocesses on 127.0.0.1, driven by upstream's
client, OpenTelemetry's OTLP exporter, raw HTTP, and store_fs's own client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import ServerProcess, raw_request, store_snapshot

from store_fs import (
    ConflictError,
    FileStore,
    InvalidIdError,
    PromptTemplate,
    RolloutNotFoundError,
    init_store,
)
from store_fs.client import LightningStoreClient
from store_fs.models import Span

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    # Imported once here, so its import-time deprecation warnings (LiteLLM's) are not errors.
    warnings.simplefilter("ignore")
    import agentlightning  # noqa: F401

ROLLOUT_KEY, ATTEMPT_KEY = "agentlightning.rollout_id", "agentlightning.attempt_id"


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return init_store(tmp_path / "store")


@pytest.fixture
def server(store_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(store_dir, tmp_path / "server.log")
    try:
        yield proc.start()
    finally:
        proc.stop()


def otlp_export(url: str, rollout_id: str, attempt_id: str, names: list[str], *, gzip: bool = False) -> Any:
    """Finish spans in an SDK TracerProvider and export them as OTLP/HTTP protobuf."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({ROLLOUT_KEY: rollout_id, ATTEMPT_KEY: attempt_id}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test_server")
    with tracer.start_as_current_span(names[0]) as outer:
        outer.set_attribute("gen_ai.request.model", "m")
        for name in names[1:]:
            with tracer.start_as_current_span(name) as inner:
                inner.set_attribute("tokens", [1, 2, 3])
    provider.shutdown()
    compression = Compression.Gzip if gzip else Compression.NoCompression
    exporter = OTLPSpanExporter(endpoint=url + "/v1/traces", compression=compression)
    try:
        return exporter.export(memory.get_finished_spans())
    finally:
        # OTLPSpanExporter.shutdown has no annotations (opentelemetry-exporter-otlp-proto-http 1.45).
        exporter.shutdown()  # type: ignore[no-untyped-call]


@pytest.mark.upstream
async def test_upstream_client_full_loop_with_restart(server: ServerProcess, store_dir: Path) -> None:
    agl = pytest.importorskip("agentlightning")
    from agentlightning.store.client_server import LightningStoreClient as UpstreamClient
    from opentelemetry.sdk.trace.export import SpanExportResult

    client = UpstreamClient(server.url, retry_delays=(0.2, 0.5), health_retry_delays=(0.1, 0.2, 0.5))
    try:
        update = await client.add_resources(
            {"main": agl.PromptTemplate(template="Q: {q}", engine="f-string")}
        )
        rollout = await client.enqueue_rollout(input={"q": "2+2"}, mode="train")
        assert rollout.resources_id == update.resources_id
        assert rollout.status == "queuing"
        attempted = await client.dequeue_rollout(worker_id="Worker-0")
        assert attempted is not None
        assert attempted.rollout_id == rollout.rollout_id
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        seq = await client.get_next_span_sequence_id(rid, aid)
        reward = agl.Span.from_attributes(
            attributes={"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": 0.9},
            rollout_id=rid,
            attempt_id=aid,
            sequence_id=seq,
            name="agentlightning.annotation",
        )
        assert (await client.add_span(reward)) is not None
        assert (await client.add_span(reward)) is None  # duplicate: stored once, null reply

        server.restart()  # mid-loop: everything lives in the directory
        assert (
            otlp_export(server.url, rid, aid, ["openai.chat.completion", "tool"]) == SpanExportResult.SUCCESS
        )
        assert otlp_export(server.url, rid, aid, ["zipped"], gzip=True) == SpanExportResult.SUCCESS

        attempt = await client.update_attempt(rid, aid, status="succeeded")
        assert attempt.status == "succeeded"
        assert attempt.end_time is not None
        finished = await client.wait_for_rollouts(rollout_ids=[rid], timeout=0.1)
        assert [r.status for r in finished] == ["succeeded"]

        rollouts = await client.query_rollouts(status_in=["succeeded"])
        assert [r.rollout_id for r in rollouts] == [rid]
        assert rollouts.total == 1
        spans = await client.query_spans(rid)
        assert next(s.name for s in spans) == "agentlightning.annotation"
        assert sorted(s.name for s in spans) == sorted(
            ["agentlightning.annotation", "openai.chat.completion", "tool", "zipped"]
        )
        seqs = [s.sequence_id for s in spans]
        assert len(set(seqs)) == 4
        assert seqs == sorted(seqs)
        assert all(s.resource.attributes[ROLLOUT_KEY] == rid for s in spans if s.name != reward.name)
        tool = next(s for s in spans if s.name == "tool")
        assert tool.parent_id == next(s for s in spans if s.name == "openai.chat.completion").span_id
        assert agl.find_final_reward(list(spans)) == 0.9
        assert [a.status for a in await client.query_attempts(rid)] == ["succeeded"]
        worker = await client.update_worker("Worker-0", heartbeat_stats={"cpu": 1.0})
        assert worker.heartbeat_stats == {"cpu": 1.0}
        workers = await client.query_workers()
        assert [w.worker_id for w in workers] == ["Worker-0"]
        latest = await client.get_latest_resources()
        assert latest is not None
        assert latest.resources_id == update.resources_id
        stats = await client.statistics()
        assert (stats["total_rollouts"], stats["total_spans"], stats["total_resources"]) == (1, 4, 1)
        assert await client.get_rollout_by_id("ro-000000000000") is None
    finally:
        await client.close()
    direct = FileStore(store_dir, create=False)
    assert (await direct.statistics())["total_spans"] == 4


async def test_own_client_full_loop(server: ServerProcess) -> None:
    async with LightningStoreClient(server.url, retry_delays=(0.1, 0.3)) as client:
        update = await client.add_resources({"p": PromptTemplate(template="{q}", engine="f-string")})
        first = await client.enqueue_rollout({"q": 1}, idempotency_key="task-1")
        again = await client.enqueue_rollout({"q": 1}, idempotency_key="task-1")
        assert first.rollout_id == again.rollout_id
        assert first.resources_id == update.resources_id
        attempted = await client.dequeue_rollout(worker_id="w1")
        assert attempted is not None
        assert await client.dequeue_rollout(worker_id="w1") is None
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        seq = await client.get_next_span_sequence_id(rid, aid)
        span = Span.from_attributes(attributes={"k": "v"}, rollout_id=rid, attempt_id=aid, sequence_id=seq)
        assert await client.add_span(span) == span
        assert await client.add_span(span) is None
        assert await client.heartbeat(rid, aid) is True

        async def finish_later() -> None:
            await asyncio.sleep(0.3)
            await client.update_attempt(rid, aid, status="succeeded")

        # Longer than upstream's 0.1 s cap: the server waits, the wait ends when the rollout does.
        started = time.monotonic()
        task = asyncio.create_task(finish_later())
        done = await client.wait_for_rollouts(rollout_ids=[rid], timeout=5.0)
        await task
        assert [r.status for r in done] == ["succeeded"]
        assert time.monotonic() - started < 3.0

        assert (await client.query_spans(rid, "latest")).total == 1
        page = await client.query_rollouts(limit=0)
        assert page.total == 1
        assert list(page) == []
        assert (await client.query_workers(status_in=["idle", "busy"])).total == 1
        assert (await client.query_resources(resources_id=update.resources_id)).total == 1
        with pytest.raises(RolloutNotFoundError) as missing:
            await client.update_rollout("ro-000000000000", status="failed")
        assert missing.value.rollout_id == "ro-000000000000"
        with pytest.raises(InvalidIdError):
            await client.update_worker("..", {})
        cancelled = await client.enqueue_rollout({"q": 2})
        await client.cancel_rollout(cancelled.rollout_id)
        with pytest.raises(ConflictError):
            await client.start_attempt(cancelled.rollout_id)
        with pytest.raises(ValueError, match="sort_by"):
            await client.query_rollouts(sort_by="nope")
        with pytest.raises(TypeError):
            await client.update_worker("w1", None)  # type: ignore[arg-type]


async def test_own_client_waits_take_every_timeout_and_a_retry_sends_the_time_left(
    server: ServerProcess, store_dir: Path
) -> None:
    """The client sent ``timeout + 30`` s as its HTTP limit: a negative timeout failed after
    7 s of retries, inf and NaN were refused; and a wait retried after a server restart started
    the whole timeout again (found by an adversarial pass). It reads a timeout as FileStore does."""
    store = FileStore(store_dir)
    rid = (await store.enqueue_rollout(input=1)).rollout_id
    async with LightningStoreClient(server.url, retry_delays=(0.1, 0.2, 0.4, 0.8, 1.6, 3.2)) as client:
        for one_look in (-30.0, -1e9, float("nan"), 0.0):
            started = time.monotonic()
            assert await client.wait_for_rollouts(rollout_ids=[rid], timeout=one_look) == []
            assert time.monotonic() - started < 2, one_look

        async def finish_later() -> None:
            await asyncio.sleep(0.5)
            attempted = await store.dequeue_rollout()
            assert attempted is not None
            await store.update_attempt(rid, attempted.attempt.attempt_id, status="succeeded")

        task = asyncio.create_task(finish_later())
        done = await client.wait_for_rollouts(rollout_ids=[rid], timeout=float("inf"))
        await task
        assert [r.status for r in done] == ["succeeded"]

        other = (await store.enqueue_rollout(input=2)).rollout_id
        assert server.proc is not None
        port, proc = server.port, server.proc

        async def restart_later() -> float:
            await asyncio.sleep(1.0)
            proc.kill()  # mid-wait: the answer is lost
            await asyncio.to_thread(proc.wait)
            server.port = port
            await asyncio.to_thread(server.start)
            return time.monotonic() - started  # back up (the old client waited 4 s from here)

        started = time.monotonic()
        restarting = asyncio.create_task(restart_later())
        assert await client.wait_for_rollouts(rollout_ids=[other], timeout=4.0) == []
        waited = time.monotonic() - started
        back_up = await restarting
        assert waited < max(4.0, back_up) + 0.75, f"waited {waited:.1f} s (server back at {back_up:.1f} s)"
    store.close()


async def test_a_server_back_on_another_store_refuses_its_clients(store_dir: Path, tmp_path: Path) -> None:
    """A server restarted on another directory (another working directory: a new empty store)
    took its clients' enqueues and answered "no such rollout" for the earlier ones, and nobody
    noticed (found by an adversarial pass). Answers name the store; a client sends back the one
    it began with, and another store's server refuses it (421) before changing anything."""
    from store_fs import RemoteStoreError

    other_dir = init_store(tmp_path / "other")
    server = ServerProcess(store_dir, tmp_path / "server.log")
    try:
        server.start()
        async with LightningStoreClient(server.url, retry_delays=(0.1, 0.3)) as client:
            first = await client.enqueue_rollout({"q": 1})
            port = server.port
            server.stop()
            server.store, server.port = other_dir, port
            server.start()
            with pytest.raises(RemoteStoreError, match="another directory") as refused:
                await client.enqueue_rollout({"q": 2})
            assert refused.value.status == 421
            with pytest.raises(RemoteStoreError, match="another directory"):
                await client.get_rollout_by_id(first.rollout_id)
            assert (await FileStore(other_dir, create=False).query_rollouts()).total == 0
            server.stop()
            server.store, server.port = store_dir, port
            server.start()
            assert await client.get_rollout_by_id(first.rollout_id) is not None  # the right one again
        # A store made before stores had ids names none: its clients check nothing, and work.
        old_dir = init_store(tmp_path / "old")
        body = json.loads((old_dir / "FORMAT.json").read_text())
        del body["store_id"]
        (old_dir / "FORMAT.json").write_text(json.dumps(body))
        server.stop()
        server.store, server.port = old_dir, port
        server.start()
        async with LightningStoreClient(server.url, retry_delays=(0.1, 0.3)) as fresh:
            rid = (await fresh.enqueue_rollout({"q": 3})).rollout_id
            assert await fresh.get_rollout_by_id(rid) is not None
    finally:
        server.stop()


async def test_two_servers_share_one_directory(store_dir: Path, tmp_path: Path) -> None:
    with (
        ServerProcess(store_dir, tmp_path / "a.log") as a,
        ServerProcess(store_dir, tmp_path / "b.log") as b,
    ):
        ca, cb = LightningStoreClient(a.url), LightningStoreClient(b.url)
        ids = [r.rollout_id for r in [await ca.enqueue_rollout({"i": i}) for i in range(3)]]
        got = await cb.dequeue_rollout(worker_id="wb")
        assert got is not None
        assert got.rollout_id == ids[0]
        await cb.update_attempt(got.rollout_id, got.attempt.attempt_id, status="failed")
        assert [r.status for r in await ca.wait_for_rollouts(rollout_ids=ids[:1], timeout=2)] == ["failed"]
        direct = FileStore(store_dir, create=False)
        seen = await direct.query_rollouts()
        assert [r.rollout_id for r in seen] == ids
        assert [r.status for r in seen] == ["failed", "queuing", "queuing"]
        assert (await direct.dequeue_rollout()).rollout_id == ids[1]  # type: ignore[union-attr]
        assert (await ca.get_rollout_by_id(ids[1])).status == "preparing"  # type: ignore[union-attr]
        await ca.close()
        await cb.close()


def test_malformed_requests_are_4xx_and_change_nothing(store_dir: Path, tmp_path: Path) -> None:
    proc = ServerProcess(store_dir, tmp_path / "s.log", args=["--max-body-mb", "1"])
    with proc:
        url = proc.url
        status, body, _ = raw_request(
            url, "POST", "/v1/agl/queues/rollouts/enqueue", '{"rollouts": [{"input": 1}]}'
        )
        assert status == 201
        rid = body[0]["rollout_id"]
        before = store_snapshot(store_dir)
        cases: list[tuple[str, str, str | bytes | None, int]] = [
            ("POST", "/v1/agl/queues/rollouts/enqueue", "{not json", 400),
            ("POST", "/v1/agl/queues/rollouts/enqueue", '{"rollouts": "x"}', 422),
            ("POST", "/v1/agl/queues/rollouts/enqueue", '{"rollouts": [{"input": 1, "mode": "bogus"}]}', 422),
            ("POST", "/v1/agl/rollouts", "{}", 422),
            ("POST", f"/v1/agl/rollouts/{rid}", None, 422),
            ("POST", f"/v1/agl/rollouts/{rid}", '{"status": null}', 400),
            ("POST", f"/v1/agl/rollouts/{rid}", '{"config": {"max_attempts": 0}}', 422),
            ("POST", "/v1/agl/rollouts/ro-000000000000", '{"status": "failed"}', 404),
            ("POST", f"/v1/agl/rollouts/{rid}/attempts/at-00000000", '{"status": "failed"}', 404),
            ("POST", "/v1/agl/rollouts/ro-000000000000/attempts", None, 404),
            ("POST", "/v1/agl/spans/next", '{"rollout_id": "ro-000000000000", "attempt_id": "a"}', 404),
            ("POST", "/v1/agl/workers/..", '{"heartbeat_stats": {}}', 400),
            ("POST", "/v1/agl/workers/w", '{"heartbeat_stats": null}', 400),
            ("POST", "/v1/agl/rollouts/search", '{"limit": 0}', 400),
            ("POST", "/v1/agl/rollouts/search", '{"offset": -1}', 400),
            ("POST", "/v1/agl/rollouts/search", '{"sort_by": "nope"}', 400),
            ("POST", "/v1/agl/rollouts/search", '{"sort_order": "up"}', 400),
            ("POST", "/v1/agl/workers/search", '{"filter_logic": "xor"}', 400),
            ("GET", "/v1/agl/spans?rollout_id=x&limit=-2", None, 400),
            ("GET", "/v1/agl/spans", None, 422),
            ("POST", "/v1/agl/resources", '{"p": {"resource_type": "nope"}}', 422),
            ("POST", "/v1/traces", b"\x00\x01garbage", 400),
            ("GET", "/v1/agl/nothing", None, 404),
            ("POST", "/v1/agl/queues/rollouts/enqueue", "x" * (2 << 20), 413),
        ]
        for method, path, data, expected in cases:
            headers = {"Content-Type": "application/x-protobuf"} if path == "/v1/traces" else {}
            status, body, seconds = raw_request(url, method, path, data, headers)
            assert (status, seconds < 1.0) == (expected, True), (method, path, body)
            if path != "/v1/traces":
                assert "detail" in body, (path, body)
                assert isinstance(body["detail"], list) == (status == 422), (path, body)
        # A body announced as 10 GB is refused before it is read.
        status, _, _ = raw_request(url, "POST", "/v1/agl/spans", b"{}", {"Content-Length": str(10**10)})
        assert status == 413
        status, body, _ = raw_request(url, "GET", "/v1/agl/rollouts/ro-000000000000")
        assert (status, body) == (200, None)
        assert store_snapshot(store_dir) == before
        assert raw_request(url, "GET", "/v1/agl/health")[:2] == (200, {"status": "ok"})


def test_token_and_cli_command(store_dir: Path, tmp_path: Path) -> None:
    proc = ServerProcess(store_dir, tmp_path / "cli.log", args=["--token", "s3cret"])
    with proc:
        assert raw_request(proc.url, "GET", "/v1/agl/statistics")[0] == 401
        assert (
            raw_request(proc.url, "GET", "/v1/agl/statistics", headers={"Authorization": "Bearer no"})[0]
            == 401
        )
        status, body, _ = raw_request(
            proc.url, "GET", "/v1/agl/statistics", headers={"Authorization": "Bearer s3cret"}
        )
        assert status == 200
        assert body["total_rollouts"] == 0
        assert raw_request(proc.url, "GET", "/v1/agl/health")[0] == 200
        rollout = asyncio.run(_enqueue_with_token(proc.url))
        assert rollout.startswith("ro-")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop with exit code 0
        assert proc.proc.wait(10) == 0
    assert "/v1/agl/statistics 401" in proc.log_text()


def test_agl_run_with_a_token_the_server_refuses_stops_at_once(store_dir: Path, tmp_path: Path) -> None:
    """Each runner logged "dequeue failed: ... bearer token" at every poll, forever (an
    adversarial pass); agl run now asks the server once, before starting any runner."""
    import subprocess
    import sys

    proc = ServerProcess(store_dir, tmp_path / "cli.log", args=["--token", "s3cret"])
    with proc:
        env = dict(
            os.environ,
            AGL_STORE_TOKEN="wrong",
            PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        )
        agl = str(Path(sys.executable).with_name("agl"))
        run = subprocess.run(
            [agl, "--store", proc.url, "run", "fault_helpers:starts_a_subprocess", "--workers", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert "401" in run.stderr or "token" in run.stderr, run.stderr
    assert "runner(s) for" not in run.stderr  # no runner was started


@pytest.mark.parametrize("token", ["tökén", " lead", "abc\r"])
def test_a_token_that_cannot_travel_as_given_is_refused_by_server_and_client(
    token: str, tmp_path: Path
) -> None:
    """The server compared the UTF-8 bytes of a token its client sent as Latin-1 (the right
    token refused), stripped what arrived but not what it expected, and a CR made requests
    malformed; 't€st' ended agl run with "unexpected UnicodeEncodeError" (an adversarial pass)."""
    import subprocess

    from cli_helpers import AGL, agl_env

    from store_fs.errors import BadTokenError

    served = subprocess.run(
        [AGL, "store", "--port", "0"],
        env=agl_env(tmp_path / "store", AGL_STORE_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 4, served.stderr
    assert served.stderr.strip().splitlines() == [served.stderr.strip()], served.stderr  # one line
    assert served.stderr.startswith("agl: the bearer token holds"), served.stderr
    assert not (tmp_path / "store").exists()  # refused before anything was made
    with pytest.raises(BadTokenError, match="visible ASCII"):
        LightningStoreClient("http://127.0.0.1:9", token=token)


async def _enqueue_with_token(url: str) -> str:
    async with LightningStoreClient(url, token="s3cret") as client:
        return (await client.enqueue_rollout("task")).rollout_id


async def test_otlp_mapping(store_dir: Path) -> None:
    """Conversion rules of docs/behaviour.md §9.5, in process: ids from span attributes win, given sequence
    ids are kept, kvlists and bytes become strings, spans without ids are skipped."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList

    from store_fs.server import otlp

    store = FileStore(store_dir, create=False)
    attempted = await store.start_rollout(input=None)
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key=ROLLOUT_KEY, value=AnyValue(string_value="ro-ffffffffffff")))
    spans = rs.scope_spans.add().spans
    kv = KeyValueList(values=[KeyValue(key="a", value=AnyValue(int_value=1))])
    for seq in ("7", None):
        span = spans.add(
            name=f"s{seq}", trace_id=b"\x01" * 16, span_id=os.urandom(8), start_time_unix_nano=10**18
        )
        span.attributes.extend(
            [
                KeyValue(key=ROLLOUT_KEY, value=AnyValue(string_value=rid)),
                KeyValue(key=ATTEMPT_KEY, value=AnyValue(string_value=aid)),
                KeyValue(key="blob", value=AnyValue(bytes_value=b"\xab")),
                KeyValue(key="nested", value=AnyValue(kvlist_value=kv)),
            ]
        )
        if seq:
            span.attributes.append(
                KeyValue(key="agentlightning.span_sequence_id", value=AnyValue(string_value=seq))
            )
    spans.add(name="orphan", trace_id=b"\x02" * 16, span_id=b"\x03" * 8)
    converted, skipped = await otlp.spans_from_request(store, request)
    assert skipped == 1
    assert [s.sequence_id for s in converted] == [7, 1]
    first = converted[0]
    assert (first.rollout_id, first.trace_id, first.start_time) == (rid, "01" * 16, 1e9)
    assert first.attributes["blob"] == "ab"
    assert first.attributes["nested"] == '{"a":1}'
    assert first.resource.attributes[ROLLOUT_KEY] == "ro-ffffffffffff"


def test_an_otlp_body_of_several_gzip_members_is_read_whole_and_a_cut_one_refused() -> None:
    """Concatenated gzip members are one gzip body (gzip.decompress, upstream's reader, reads
    them all): only the first was read, its spans stored and the rest dropped with a 200
    (found by an adversarial pass). A body cut before its checksum was taken as it stood."""
    import gzip

    from store_fs.server.otlp import decode_body

    assert decode_body(gzip.compress(b"first ") + gzip.compress(b"second"), "gzip", 100) == b"first second"
    assert decode_body(gzip.compress(b"padded") + b"\0\0", "gzip", 100) == b"padded"
    whole = gzip.compress(b"some spans")
    for cut in (1, 4, 8, 9):
        with pytest.raises(ValueError, match="ends before"):
            decode_body(whole[:-cut], "gzip", 100)
    with pytest.raises(ValueError, match="larger than 100"):
        decode_body(gzip.compress(b"a" * 60) * 2, "gzip", 100)  # the limit counts every member


async def test_an_otlp_batch_keeps_other_attempts_when_one_is_refused(store_dir: Path) -> None:
    """An exporter's batch mixes attempts. A span of an attempt whose retry has started is
    refused (409, docs/behaviour.md §5.3), and the whole batch, other attempts' spans with it,
    was refused too (found in review). Those are stored; the refused ones are a partial success."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    from store_fs import RolloutConfig
    from store_fs.server import otlp

    store = FileStore(store_dir, create=False)
    config = RolloutConfig(max_attempts=2, retry_condition=["unresponsive"])
    await store.enqueue_rollout(input="stalled", config=config)
    stale = await store.dequeue_rollout()
    assert stale is not None
    await store.update_attempt(stale.rollout_id, stale.attempt.attempt_id, status="unresponsive")
    retry = await store.dequeue_rollout()
    assert retry is not None
    assert retry.rollout_id == stale.rollout_id
    other = await store.start_rollout(input="other")
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for name, attempted in (("late", stale), ("fine", other)):
        span = spans.add(name=name, trace_id=b"\x01" * 16, span_id=os.urandom(8), start_time_unix_nano=10**18)
        span.attributes.extend(
            [
                KeyValue(key=ROLLOUT_KEY, value=AnyValue(string_value=attempted.rollout_id)),
                KeyValue(key=ATTEMPT_KEY, value=AnyValue(string_value=attempted.attempt.attempt_id)),
            ]
        )
    reply = ExportTraceServiceResponse()
    reply.ParseFromString(await otlp.export(store, request.SerializeToString()))
    assert reply.partial_success.rejected_spans == 1
    assert "retried" in reply.partial_success.error_message
    assert [s.name for s in await store.query_spans(other.rollout_id)] == ["fine"]
    assert list(await store.query_spans(stale.rollout_id)) == []
    store.close()
