"""A rollout's input and metadata come back in the caller's key order, as upstream's in-memory
store returns them (revisions were once written with sorted keys, which reordered them)."""

from __future__ import annotations

from pathlib import Path

from server_helpers import ServerProcess, raw_request

from store_fs import FileStore, init_store

INPUT = {"zeta": 1, "alpha": {"y": 2, "b": [{"k2": 1, "k1": 2}]}, "mid": None}
METADATA = {"z": "last first", "a": 1}


def _orders(value: object) -> list[list[str]]:
    """The key order of every dict in ``value``, depth first."""
    if isinstance(value, dict):
        return [list(value), *(o for v in value.values() for o in _orders(v))]
    if isinstance(value, list):
        return [o for v in value for o in _orders(v)]
    return []


async def test_input_and_metadata_keep_their_key_order_in_a_new_process_view(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    try:
        queued = await store.enqueue_rollout(input=INPUT, metadata=METADATA)
        await store.update_rollout(queued.rollout_id, metadata={**METADATA, "b": 2})
    finally:
        store.close()
    fresh = FileStore(tmp_path / "store")  # reads the revision from disk, not a cache
    try:
        got = await fresh.get_rollout_by_id(queued.rollout_id)
        assert got is not None
        assert _orders(got.input) == _orders(INPUT)
        assert got.metadata is not None
        assert list(got.metadata) == ["z", "a", "b"]
    finally:
        fresh.close()


def test_over_http_the_answer_keeps_the_callers_key_order(tmp_path: Path) -> None:
    with ServerProcess(init_store(tmp_path / "store"), tmp_path / "server.log") as server:
        status, started, _ = raw_request(
            server.url,
            "POST",
            "/v1/agl/rollouts",
            '{"input": {"zeta": 1, "alpha": {"y": 2, "b": [{"k2": 1, "k1": 2}]}, "mid": null},'
            ' "metadata": {"z": "last first", "a": 1}}',
            {"Content-Type": "application/json"},
        )
        assert status == 201, started
        server.restart()  # a fresh server reads the revision from disk
        status, got, _ = raw_request(server.url, "GET", f"/v1/agl/rollouts/{started['rollout_id']}")
        assert status == 200, got
        assert _orders(got["input"]) == _orders(INPUT)
        assert list(got["metadata"]) == ["z", "a"]
