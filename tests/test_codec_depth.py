"""How deep a stored value may nest: new values and log lines leave room for the answers that
hold them; a record re-encoded at a revision is only held to JSON's own limit, since it may hold
a value an older build stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from store_fs import FileStore
from store_fs._disk import codec
from store_fs.errors import UnstorableValueError


def _nested(levels: int, inner: Any) -> Any:
    for _ in range(levels):
        inner = [inner]
    return inner


def _deepest(dump: Any, key: Any, inner: Any, around: int) -> int:
    refusals: list[str] = []

    def stored(depth: int) -> bool:
        try:
            dump({key: _nested(depth - 1, inner)})
        except UnstorableValueError as err:
            refusals.append(str(err))
            return False
        return True

    outcomes = {depth: stored(depth) for depth in range(around - 2, around + 3)}
    deepest = max(depth for depth, ok in outcomes.items() if ok)
    assert all(outcomes[d] for d in outcomes if d <= deepest)
    assert refusals
    assert all("nested deeper than" in r for r in refusals)
    return deepest


@pytest.mark.parametrize("key", ["a", 7], ids=["str-key", "int-key"])
@pytest.mark.parametrize("inner", [1, []], ids=["scalar", "empty-list"])
def test_new_values_and_lines_leave_room_records_only_need_to_be_json(key: Any, inner: Any) -> None:
    limit = codec.MAX_STORED_DEPTH
    assert _deepest(lambda v: codec.check_storable("v", v), key, inner, limit) in (limit - 1, limit)
    assert _deepest(codec.dumps_line, key, inner, limit) in (limit - 1, limit)
    assert _deepest(codec.dumps_record, key, inner, 254) in (253, 254)


async def test_a_rollout_an_older_build_stored_deeper_can_still_be_dequeued_and_cancelled(
    tmp_path: Path,
) -> None:
    """An older build took values nested up to 254 levels. Re-encoding such a record at every
    revision with the new room for answers made the rollout impossible to dequeue, cancel or
    finish, and stopped `agl check --fix` (found running old and new builds on one store)."""
    store = FileStore(tmp_path / "store")
    rid = (await store.enqueue_rollout(input=1)).rollout_id
    other = (await store.enqueue_rollout(input=2)).rollout_id
    (first,) = sorted(store.layout.history_dir(rid).glob("*.json"))
    record = orjson.loads(first.read_bytes())
    record["input"] = _nested(244, 1)  # as the older build wrote it
    first.chmod(0o644)
    first.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
    store.close()
    store = FileStore(tmp_path / "store")
    claimed = [await store.dequeue_rollout(worker_id="w") for _ in range(2)]
    assert sorted(a.rollout_id for a in claimed if a is not None) == sorted([rid, other])
    deep = next(a for a in claimed if a is not None and a.rollout_id == rid)
    await store.update_attempt(rid, deep.attempt.attempt_id, status="succeeded")
    rollout = await store.get_rollout_by_id(rid)
    assert rollout is not None
    assert rollout.status == "succeeded"
    store.close()
