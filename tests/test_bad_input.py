"""Hostile and broken input: unsafe ids, unknown ids, corrupt files, missing stores, pickled errors."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import store_fs
from store_fs import (
    AglError,
    AttemptNotFoundError,
    ConflictError,
    CorruptRecordError,
    FakeClock,
    FileStore,
    FormatVersionError,
    InvalidIdError,
    NotFoundError,
    RemoteStoreError,
    ResourcesNotFoundError,
    RolloutNotFoundError,
    Span,
    StoreNotFoundError,
    WorkerNotFoundError,
)
from store_fs._disk.codec import dumps_line

BAD_IDS = {
    "slash": "a/b",
    "dotdot-slash": "../escape",
    "deep-escape": "../../../../tmp/escape",
    "dotdot": "..",
    "dot": ".",
    "backslash": "a\\b",
    "nul": "ro-0123\x00456789ab",
    "leading-dot": ".hidden",
    "newline": "ro-0123456789ab\n",
    "tab": "a\tb",
    "escape": "a\x1bb",
    "del": "a\x7fb",
    "too-long": "w" * 201,
    "too-long-rollout": "ro-" + "a" * 198,
    "empty": "",
}

UNKNOWN_ROLLOUT = "ro-000000000000"
UNKNOWN_ATTEMPT = "at-00000000"


# -- helpers -----------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, str]:
    """Every file and directory below ``directory`` with a digest of its content."""
    out: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            out[rel] = "link:" + str(path.readlink())
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _span(rollout_id: str, attempt_id: str, sequence_id: int, **kw: Any) -> Span:
    return Span.from_attributes(
        attributes={"k": sequence_id},
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        **kw,
    )


class World:
    """A store holding a running rollout with one span, a queued rollout, resources and a worker."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.rid = ""
        self.aid = ""

    async def build(self) -> World:
        s = self.store
        await s.add_resources({"p": store_fs.PromptTemplate(template="{x}", engine="f-string")})
        await s.update_resources("named", {"p": store_fs.PromptTemplate(template="{y}", engine="f-string")})
        attempted = await s.start_rollout(input="running", worker_id="w1")
        self.rid, self.aid = attempted.rollout_id, attempted.attempt.attempt_id
        await s.add_span(_span(self.rid, self.aid, await s.get_next_span_sequence_id(self.rid, self.aid)))
        await s.enqueue_rollout(input="queued")
        await s.update_worker("w1", heartbeat_stats={"ok": True})
        return self


Call = Callable[[World, str], Awaitable[Any]]

CALLS: dict[str, Call] = {
    "get_rollout_by_id": lambda w, bad: w.store.get_rollout_by_id(bad),
    "update_rollout": lambda w, bad: w.store.update_rollout(bad, status="failed"),
    "update_attempt.rollout_id": lambda w, bad: w.store.update_attempt(bad, w.aid, status="failed"),
    "update_attempt.attempt_id": lambda w, bad: w.store.update_attempt(w.rid, bad, status="failed"),
    "add_span.rollout_id": lambda w, bad: w.store.add_span(_span(bad, w.aid, 50)),
    # A high explicit sequence id: a bad attempt id must be refused before the counter moves.
    "add_span.attempt_id": lambda w, bad: w.store.add_span(_span(w.rid, bad, 50)),
    "update_resources": lambda w, bad: w.store.update_resources(
        bad, {"p": store_fs.PromptTemplate(template="z", engine="f-string")}
    ),
    "update_worker": lambda w, bad: w.store.update_worker(bad, heartbeat_stats={"a": 1}),
    "get_worker_by_id": lambda w, bad: w.store.get_worker_by_id(bad),
    "query_spans.rollout_id": lambda w, bad: w.store.query_spans(bad),
    "query_spans.attempt_id": lambda w, bad: w.store.query_spans(w.rid, attempt_id=bad),
    "dequeue_rollout.worker_id": lambda w, bad: w.store.dequeue_rollout(worker_id=bad),
}

# An empty worker id means "no worker" (as upstream): it is not refused, see the test below.
_CASES = [
    pytest.param(call, bad, id=f"{call}-{name}")
    for call in CALLS
    for name, bad in BAD_IDS.items()
    if not (bad == "" and call == "dequeue_rollout.worker_id")
]


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
async def test_resources_no_id_can_name_are_none_and_touch_nothing(
    store: FileStore, tmp_path: Path, bad: str
) -> None:
    """Not refused, unlike the calls above: a rollout's ``resources_id`` is not checked, and
    upstream's runner fetches it outside any ``try`` (docs/deviations.md)."""
    await World(store).build()
    before = _snapshot(tmp_path)
    assert await store.get_resources_by_id(bad) is None
    assert _snapshot(tmp_path) == before


async def test_empty_worker_id_means_no_worker(store: FileStore) -> None:
    await store.enqueue_rollout(input=1)
    got = await store.dequeue_rollout(worker_id="")
    assert got is not None
    assert got.attempt.worker_id == ""
    assert (await store.query_workers()).total == 0


@pytest.mark.parametrize(("call", "bad"), _CASES)
async def test_unsafe_id_is_refused_and_touches_nothing(
    store: FileStore, tmp_path: Path, call: str, bad: str
) -> None:
    world = await World(store).build()
    assert store.root.parent == tmp_path
    before_inside = _snapshot(tmp_path)
    before_outside = sorted(p.name for p in tmp_path.parent.iterdir())

    with pytest.raises(InvalidIdError) as info:
        await CALLS[call](world, bad)

    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, AglError)
    assert err.reason
    assert _snapshot(tmp_path) == before_inside, "the call changed files"
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before_outside
    # The store still works afterwards.
    got = await store.get_rollout_by_id(world.rid)
    assert got is not None
    assert got.status == "running"


@pytest.mark.parametrize("call", ["get_rollout_by_id", "update_rollout", "update_resources", "update_worker"])
async def test_id_containing_double_dot_is_refused(store: FileStore, tmp_path: Path, call: str) -> None:
    """InvalidIdError's contract: an id "holding ``..``" is refused, not only one starting with '.'."""
    world = await World(store).build()
    before = _snapshot(tmp_path)
    with pytest.raises(InvalidIdError):
        await CALLS[call](world, "a..b")
    assert _snapshot(tmp_path) == before


OTHER_CALLS: dict[str, Call] = {
    "start_rollout.worker_id": lambda w, bad: w.store.start_rollout(input=1, worker_id=bad),
    "start_attempt.worker_id": lambda w, bad: w.store.start_attempt(w.rid, worker_id=bad),
    "dequeue_many_rollouts.worker_id": lambda w, bad: w.store.dequeue_many_rollouts(limit=2, worker_id=bad),
    "update_attempt.worker_id": lambda w, bad: w.store.update_attempt(w.rid, w.aid, worker_id=bad),
    "add_many_spans.attempt_id": lambda w, bad: w.store.add_many_spans([_span(w.rid, bad, 60)]),
    "add_many_spans.rollout_id": lambda w, bad: w.store.add_many_spans([_span(bad, w.aid, 60)]),
    "heartbeat.rollout_id": lambda w, bad: w.store.heartbeat(bad, w.aid),
    "query_attempts": lambda w, bad: w.store.query_attempts(bad),
    "get_latest_attempt": lambda w, bad: w.store.get_latest_attempt(bad),
    "get_next_span_sequence_id": lambda w, bad: w.store.get_next_span_sequence_id(bad, w.aid),
}


@pytest.mark.parametrize(
    "bad", ["../x", "a/b", "a\x00b", ".x", "x" * 201], ids=["dotdot", "slash", "nul", "dot", "long"]
)
@pytest.mark.parametrize("call", list(OTHER_CALLS), ids=list(OTHER_CALLS))
async def test_unsafe_ids_in_other_entry_points(
    store: FileStore, tmp_path: Path, call: str, bad: str
) -> None:
    world = await World(store).build()
    before = _snapshot(tmp_path)
    with pytest.raises(InvalidIdError):
        await OTHER_CALLS[call](world, bad)
    assert _snapshot(tmp_path) == before, "the call changed files"


# -- unknown but well-formed ids ----------------------------------------------------------


async def test_unknown_ids_in_mutators_raise_not_found(store: FileStore) -> None:
    world = await World(store).build()
    s = store
    with pytest.raises(RolloutNotFoundError) as r1:
        await s.update_rollout(UNKNOWN_ROLLOUT, status="failed")
    assert r1.value.rollout_id == UNKNOWN_ROLLOUT
    with pytest.raises(RolloutNotFoundError):
        await s.update_rollout("not-a-rollout-id", status="failed")
    with pytest.raises(RolloutNotFoundError):
        await s.cancel_rollout(UNKNOWN_ROLLOUT)
    with pytest.raises(RolloutNotFoundError):
        await s.update_attempt(UNKNOWN_ROLLOUT, UNKNOWN_ATTEMPT, status="failed")
    with pytest.raises(AttemptNotFoundError) as a1:
        await s.update_attempt(world.rid, UNKNOWN_ATTEMPT, status="failed")
    assert a1.value.attempt_id == UNKNOWN_ATTEMPT
    assert a1.value.rollout_id == world.rid
    with pytest.raises(RolloutNotFoundError):
        await s.add_span(_span(UNKNOWN_ROLLOUT, UNKNOWN_ATTEMPT, 1))
    with pytest.raises(AttemptNotFoundError):
        await s.add_span(_span(world.rid, UNKNOWN_ATTEMPT, 1))
    with pytest.raises(RolloutNotFoundError):
        await s.get_next_span_sequence_id(UNKNOWN_ROLLOUT, UNKNOWN_ATTEMPT)
    with pytest.raises(RolloutNotFoundError):
        await s.start_attempt(UNKNOWN_ROLLOUT)
    for cls in (RolloutNotFoundError, AttemptNotFoundError, NotFoundError):
        assert issubclass(cls, ValueError)
    # Nothing of the above touched the real rollout.
    got = await s.get_rollout_by_id(world.rid)
    assert got is not None
    assert got.status == "running"
    assert len(await s.query_spans(world.rid)) == 1


async def test_unknown_ids_in_getters_give_none_or_empty(store: FileStore) -> None:
    world = await World(store).build()
    s = store
    assert await s.get_rollout_by_id(UNKNOWN_ROLLOUT) is None
    assert await s.get_rollout_by_id("not-a-rollout-id") is None
    assert await s.get_latest_attempt(UNKNOWN_ROLLOUT) is None
    assert await s.get_resources_by_id("rs-000000000000") is None
    assert await s.get_resources_by_id("never-made") is None
    assert await s.get_worker_by_id("never-seen") is None
    for page in (
        await s.query_spans(UNKNOWN_ROLLOUT),
        await s.query_spans(world.rid, attempt_id=UNKNOWN_ATTEMPT),
        await s.query_attempts(UNKNOWN_ROLLOUT),
        await s.query_rollouts(rollout_id_in=[UNKNOWN_ROLLOUT]),
    ):
        assert list(page) == []
        assert page.total == 0
    assert await s.wait_for_rollouts(rollout_ids=[UNKNOWN_ROLLOUT], timeout=0) == []


# -- corrupt files ------------------------------------------------------------------------


def _history(store: FileStore, rollout_id: str) -> Path:
    return store.layout.history_dir(rollout_id)


@pytest.mark.parametrize("how", ["new-revision", "overwrite-head-fresh-store"])
async def test_corrupt_history_revision(store: FileStore, clock: FakeClock, how: str) -> None:
    ids = []
    for i in range(3):
        clock.advance(1)
        ids.append((await store.enqueue_rollout(input=i)).rollout_id)
    victim = ids[1]
    hist = _history(store, victim)
    if how == "new-revision":
        bad = hist / "00000002.json"
        bad.write_bytes(b'{"rollout_id": "' + victim.encode() + b'", "status": \n}\n')
        reader = store
    else:
        bad = hist / "00000001.json"
        bad.write_bytes(b"[1, 2, 3]\n")  # valid JSON, not a rollout
        reader = FileStore(store.root, create=False, clock=clock, scan_debounce_seconds=0)

    with pytest.raises(CorruptRecordError) as info:
        await reader.get_rollout_by_id(victim)
    err = info.value
    assert err.path == str(bad)
    assert str(bad) in str(err)
    assert isinstance(err, ValueError)

    page = await reader.query_rollouts()
    assert [r.rollout_id for r in page] == [ids[0], ids[2]]
    assert page.total == 2
    # Nothing was rewritten.
    assert bad.read_bytes().startswith(b'{"rollout_id"' if how == "new-revision" else b"[1, 2, 3]")
    if reader is not store:
        reader.close()


async def test_torn_and_garbage_span_lines_are_skipped(store: FileStore) -> None:
    attempted = await store.start_rollout(input="spans")
    rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
    stored = []
    for _ in range(3):
        seq = await store.get_next_span_sequence_id(rid, aid)
        stored.append(await store.add_span(_span(rid, aid, seq)))
    files = sorted(store.layout.rollout_dir(rid).glob("attempts/*/spans.*.jsonl"))
    assert len(files) == 1
    lines = files[0].read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    torn = dumps_line(_span(rid, aid, 99))[:40]  # a write in progress: no newline
    files[0].write_bytes(lines[0] + b"{garbage not json\n" + lines[1] + b"\n" + lines[2] + torn)

    # Another writer's file with a valid line, a non-object line and a torn tail.
    other = files[0].with_name("spans.other-writer.jsonl")
    extra = _span(rid, aid, 4, name="from-other")
    other.write_bytes(b"[1, 2]\n" + dumps_line(extra) + b'{"span_id": "tor')

    page = await store.query_spans(rid)
    assert [s.span_id for s in page] == [*(s.span_id for s in stored if s), extra.span_id]
    assert page.total == 4
    assert [s.sequence_id for s in page] == [1, 2, 3, 4]
    # The broken bytes are left for `agl check`, not rewritten.
    assert files[0].read_bytes().endswith(torn)


# -- FORMAT.json -------------------------------------------------------------------------


def test_missing_store_with_create_false(tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    with pytest.raises(StoreNotFoundError) as info:
        FileStore(root, create=False)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.root == str(root)
    assert not root.exists(), "create=False must not create the directory"


def test_store_dir_without_format_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FileStore(root).close()
    (root / "FORMAT.json").unlink()
    before = _snapshot(tmp_path)
    with pytest.raises(StoreNotFoundError):
        FileStore(root, create=False)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"format": "agl-st',
        b'{"format": "agl-store", "version": 1',
        b"\x00\x00\x00\x00",
        b"[1]\n",
        b"null\n",
    ],
    ids=["empty", "truncated", "truncated-late", "nul-filled", "list", "null"],
)
@pytest.mark.parametrize("create", [False, True])
def test_broken_format_file(tmp_path: Path, content: bytes, create: bool) -> None:
    root = tmp_path / "store"
    FileStore(root).close()
    (root / "FORMAT.json").write_bytes(content)
    # Damage, named as such (exit 7), not "a newer format" as it was once reported.
    with pytest.raises(CorruptRecordError, match=r"FORMAT\.json"):
        FileStore(root, create=create)
    assert (root / "FORMAT.json").read_bytes() == content, "a broken FORMAT.json must not be overwritten"


def test_newer_format_version(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FileStore(root).close()
    (root / "FORMAT.json").write_bytes(b'{"format": "agl-store", "version": 2}\n')
    with pytest.raises(FormatVersionError) as info:
        FileStore(root, create=False)
    err = info.value
    assert err.found == 2
    assert err.supported == 1
    assert isinstance(err, RuntimeError)


# -- errors cross process boundaries ---------------------------------------------------------

ERRORS: list[AglError] = [
    AglError.rebuild("plain message", {"extra": 1}),
    NotFoundError("thing missing"),
    RolloutNotFoundError("ro-0123456789ab"),
    AttemptNotFoundError("ro-0123456789ab", "at-01234567"),
    ResourcesNotFoundError("rs-0123456789ab"),
    WorkerNotFoundError("worker-9"),
    InvalidIdError("worker", "../x", "contains a path separator"),
    ConflictError("rollout ro-1 is cancelled", rollout_id="ro-1"),
    RemoteStoreError("HTTP 503: busy", 503),
    CorruptRecordError("/s/rollouts/01/ro-0123456789ab/history/00000002.json", "expected value"),
    StoreNotFoundError("/nowhere"),
    FormatVersionError("/s", 7, 1),
    FormatVersionError("/s", None, 1),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__ + ":" + str(e)[:20])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_errors_pickle(err: AglError, protocol: int) -> None:
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.message == err.message
    assert back.args == err.args
    assert back.attrs == err.attrs
    for key, value in err.attrs.items():
        assert getattr(back, key) == value
    for base in (ValueError, FileNotFoundError, RuntimeError):
        assert isinstance(back, base) == isinstance(err, base)
    # And it can be raised and caught as what it is.
    with pytest.raises(type(err), match=r"."):
        raise back


def test_error_attributes() -> None:
    e = AttemptNotFoundError("ro-1", "at-2")
    assert (e.rollout_id, e.attempt_id) == ("ro-1", "at-2")
    assert "at-2" in str(e)
    assert "ro-1" in str(e)
    i = InvalidIdError("rollout", "a/b", "contains a path separator")
    assert (i.kind, i.value, i.reason) == ("rollout", "a/b", "contains a path separator")
    assert "a/b" in str(i)
