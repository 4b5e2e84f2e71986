"""A seeded fuzz of malformed REST requests against the store server.

Requests are built from the route table (every route, and unknown ones), with ids that
exist, do not, or are unsafe; bodies that are valid, mutated, of the wrong types, not JSON
or cut short; odd queries and headers; and now and then a head with a byte flipped. Every
request goes over a fresh raw connection, half-closed once sent. The server must answer
each well-framed one with no 5xx other than 501 and 503, survive all of them, and leave a
store that ``FileStore.check()`` finds clean. ``AGL_FUZZ_SEED`` and ``AGL_FUZZ_COUNT``
replay or extend a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
from pathlib import Path
from typing import Any

from http_helpers import (
    Answer,
    Closed,
    RawClient,
    ServerThread,
    no_error_logs,  # noqa: F401  (an autouse fixture)
)

from store_fs import FileStore, PromptTemplate, init_store
from store_fs.models import Span
from store_fs.server.routes import PREFIX, StoreApi

SEED = int(os.environ.get("AGL_FUZZ_SEED", "20"))
COUNT = int(os.environ.get("AGL_FUZZ_COUNT", "600"))
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
JSON_KEYS = [
    "input", "mode", "status", "config", "metadata", "worker_id", "rollouts", "limit", "offset",
    "sort_by", "sort_order", "filter_logic", "status_in", "rollout_id", "attempt_id", "rollout_ids",
    "timeout", "heartbeat_stats", "max_attempts", "retry_condition", "resource_type", "template",
    "sequence_id", "span_id", "trace_id", "name", "attributes", "idempotency_key", "resources_id",
]  # fmt: skip


class Fuzzer:
    """Random requests from one seed; ``ids`` are real ids of the store, so some requests reach it."""

    def __init__(self, seed: int, ids: dict[str, list[str]]) -> None:
        self.rng = random.Random(seed)
        self.ids = ids
        self.templates = [(r.method, r.template) for r in StoreApi(None).routes]  # type: ignore[arg-type]

    def value(self, depth: int = 0) -> Any:
        """A random JSON value."""
        rng = self.rng
        kind = rng.randrange(10 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice([0, -1, 1, 2**63, -(2**70), 7, 10**30])
        if kind == 3:
            return rng.choice([0.5, -1e308, 1e308, 3.0, -0.0])
        if kind in (4, 5):
            return self.text()
        if kind in (6, 7):
            return [self.value(depth + 1) for _ in range(rng.randrange(4))]
        return {self.key(): self.value(depth + 1) for _ in range(rng.randrange(5))}

    def key(self) -> str:
        return self.rng.choice(JSON_KEYS) if self.rng.random() < 0.8 else self.text()

    def text(self) -> str:
        rng = self.rng
        pool = [
            "", "x", "queuing", "succeeded", "failed", "running", "train", "val", "asc", "desc", "or",
            "sequence_id", "ro-", "..", "\u00e9\u4e2d", "\x00", "a" * 300, "null", "-1", "latest",
        ]  # fmt: skip
        pool += [i for values in self.ids.values() for i in values]
        return rng.choice(pool)

    def segment(self, name: str) -> str:
        rng = self.rng
        real = self.ids.get(name, [])
        odd = ["ro-000000000000", "..", "%2e%2e", "%2F", "%00", "%C3%A9", "a" * 300, "latest", "x%zz", "-"]
        return rng.choice(real) if real and rng.random() < 0.6 else rng.choice(odd)

    def target(self) -> tuple[str, str]:
        """(method, target with query)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.85:
            method, template = rng.choice(self.templates)
            path = PREFIX + re.sub(r"\{(\w+)\}", lambda m: self.segment(m.group(1)), template)
        elif roll < 0.95:
            method, path = "POST", rng.choice(["/v1/traces", "/v1/metrics", "/v1/logs"])
        else:
            method = "GET"
            path = rng.choice(["/", "/v1", "/v1/agl", "/v1/agl/rollouts/a/b/c", "//v1/agl/health"])
        if rng.random() < 0.15:
            method = rng.choice(METHODS)
        if rng.random() < 0.3:
            pairs = [f"{self.key()}={self.text()}" for _ in range(rng.randrange(1, 4))]
            path += "?" + "&".join(p.replace(" ", "%20").replace("\x00", "%00") for p in pairs)
        return method, path.encode("utf-8", "backslashreplace").decode("latin-1")

    def pick(self, name: str, fallback: str) -> str:
        return self.rng.choice(self.ids.get(name) or [fallback])

    def template(self, path: str) -> dict[str, Any]:
        """A body the route would accept (for real ids), to be mutated."""
        rng = self.rng
        rid, aid = self.pick("rollout_id", "ro-000000000000"), self.pick("attempt_id", "latest")
        statuses = ["queuing", "running", "succeeded", "failed", "cancelled", "preparing", "timeout", "bogus"]
        prompt = {"resource_type": "prompt_template", "template": "{q}", "engine": "f-string"}
        page = {"limit": rng.choice([1, 10, -1, 0]), "sort_order": rng.choice(["asc", "desc", "up"])}
        mode = rng.choice(["train", "val"])
        bodies: list[tuple[str, dict[str, Any]]] = [
            ("/queues/rollouts/enqueue", {"rollouts": [{"input": self.value(), "mode": mode}]}),
            ("/queues/rollouts/dequeue", {"limit": rng.choice([1, 2, 0, -1]), "worker_id": "w-fuzz"}),
            ("/spans/next", {"rollout_id": rid, "attempt_id": aid}),
            ("/spans", self.span(rid, aid)),
            ("/resources", {"p": prompt}),
            ("/attempts", {"worker_id": "w-fuzz"}),
            ("/heartbeat", {}),
            ("/rollouts", {"input": self.value(), "config": {"max_attempts": rng.choice([1, 2, 0])}}),
            ("/search", page),
        ]
        if "/attempts/" in path:
            return {"status": rng.choice(statuses), "metadata": {"m": 1}}
        if re.search(r"/rollouts/[^/]+$", path):
            return {"status": rng.choice(statuses), "metadata": self.value()}
        if "/workers/" in path:
            return {"heartbeat_stats": {"cpu": self.value()}}
        for suffix, body in bodies:
            if path.endswith(suffix):
                return body
        return {self.key(): self.value()}

    def span(self, rid: str, aid: str) -> dict[str, Any]:
        n = self.rng.randrange(10**6)
        return {
            "rollout_id": rid, "attempt_id": aid, "sequence_id": self.rng.choice([1, n, -1]),
            "trace_id": f"{n:032x}", "span_id": f"{n:016x}", "parent_id": None, "name": self.text(),
            "status": {"status_code": "OK"}, "attributes": {self.key(): self.value()}, "events": [],
            "links": [], "start_time": 1.0, "end_time": 2.0, "context": None, "parent": None,
            "resource": {"attributes": {}, "schema_url": ""},
        }  # fmt: skip

    def mutate(self, data: dict[str, Any]) -> dict[str, Any]:
        rng = self.rng
        for _ in range(rng.randrange(3)):
            roll = rng.random()
            if data and roll < 0.4:
                data.pop(rng.choice(sorted(data)))
            elif data and roll < 0.8:
                data[rng.choice(sorted(data))] = self.value()
            else:
                data[self.key()] = self.value()
        return data

    def body(self, path: str) -> bytes | None:
        rng = self.rng
        roll = rng.random()
        if path == "/v1/traces":
            return rng.randbytes(rng.randrange(64))
        if path.endswith("/waits/rollouts"):
            # Always with a short timeout: a wait without one lasts until the rollouts finish.
            ids = [self.pick("rollout_id", "ro-000000000000"), self.text()][: rng.randrange(3)]
            return json.dumps({"rollout_ids": ids, "timeout": rng.choice([0, 0.01])}).encode()
        if roll < 0.05:
            return None
        if roll < 0.65:
            data = self.template(path)
            return json.dumps(data if rng.random() < 0.4 else self.mutate(data)).encode()
        if roll < 0.8:
            return json.dumps(self.value()).encode()
        if roll < 0.9:
            text = json.dumps(self.template(path))
            return text[: rng.randrange(len(text) + 1)].encode()
        return rng.randbytes(rng.randrange(1, 40))

    def request(self) -> tuple[bytes, bool]:
        """The bytes of one request, and whether its framing was deliberately damaged."""
        rng = self.rng
        method, target = self.target()
        body = self.body(target.split("?")[0])
        headers = ["Host: 127.0.0.1"]
        if body is not None:
            headers.append(f"Content-Length: {len(body)}")
        extra = {
            "Content-Type": rng.choice(["application/json", "application/x-protobuf", "text/plain", ""]),
            "Content-Encoding": rng.choice(["gzip", "deflate", "br", "identity"]),
            "Accept-Encoding": "gzip",
            "Idempotency-Key": self.text().encode("ascii", "replace").decode(),
            "X-Request-ID": rng.choice(["fuzz-1", "bad id", "x" * 80]),
        }
        for name in rng.sample(sorted(extra), rng.randrange(3)):
            headers.append(f"{name}: {extra[name]}")
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
        data = bytearray(head.encode("latin-1") + (body or b""))
        damaged = rng.random() < 0.1
        if damaged:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(head))] = rng.randrange(256)
        return bytes(data), damaged


def _exchange(port: int, data: bytes) -> Answer | None:
    """Send one request on a new connection, half-close it, read the answer (None: closed unanswered)."""
    with RawClient(port, timeout=10.0) as c:
        try:
            c.send(data)
            c.sock.shutdown(socket.SHUT_WR)
            return c.answer(to_head=data.startswith(b"HEAD "))
        except (Closed, ConnectionResetError, BrokenPipeError):
            return None


def _seed_store(store: FileStore) -> dict[str, list[str]]:
    async def fill() -> dict[str, list[str]]:
        update = await store.add_resources({"p": PromptTemplate(template="{q}", engine="f-string")})
        queued = [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(3)]
        attempted = await store.dequeue_rollout(worker_id="w-fuzz")
        assert attempted is not None
        rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
        seq = await store.get_next_span_sequence_id(rid, aid)
        span = Span.from_attributes(attributes={"k": 1}, rollout_id=rid, attempt_id=aid, sequence_id=seq)
        await store.add_span(span)
        return {
            "rollout_id": queued,
            "attempt_id": [aid, "latest"],
            "resources_id": [update.resources_id],
            "worker_id": ["w-fuzz"],
        }

    return asyncio.run(fill())


def test_malformed_rest_requests_never_break_the_server(tmp_path: Path) -> None:
    store_dir = init_store(tmp_path / "store")
    store = FileStore(store_dir, create=False)
    fuzzer = Fuzzer(SEED, _seed_store(store))
    statuses: dict[int, int] = {}
    unanswered = 0
    with ServerThread(store, threads=2) as srv:
        for n in range(COUNT):
            data, damaged = fuzzer.request()
            answer = _exchange(srv.port, data)
            if answer is None:
                # Only a damaged head may leave the server waiting for a body that never comes.
                assert damaged, (SEED, n, data[:300])
                unanswered += 1
                continue
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            context = (SEED, n, data[:300], answer.body[:300])
            assert answer.status < 500 or answer.status in (501, 503), context
            assert answer.headers.get("x-request-id"), context
            is_json = answer.headers.get("content-type") == "application/json"
            if answer.status >= 400 and is_json and answer.body:
                assert "detail" in answer.json(), context
        survivor = _exchange(srv.port, b"GET /v1/agl/statistics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert survivor is not None
        assert survivor.status == 200
    # A spread of outcomes: the fuzz reached the store, not only the framing checks.
    assert statuses.get(200, 0) + statuses.get(201, 0) > COUNT // 20, statuses
    assert sum(v for k, v in statuses.items() if 400 <= k < 500) > COUNT // 3, statuses
    assert unanswered < COUNT // 10
    checked = FileStore(store_dir, create=False)
    assert checked.check() == []
