"""How deep a stored document may nest: the same limit for records and log lines, any keys."""

from __future__ import annotations

from typing import Any

import pytest

from store_fs._disk import codec
from store_fs.errors import UnstorableValueError


def _nested(levels: int, inner: Any) -> Any:
    for _ in range(levels):
        inner = [inner]
    return inner


@pytest.mark.parametrize("key", ["a", 7], ids=["str-key", "int-key"])
@pytest.mark.parametrize("inner", [1, []], ids=["scalar", "empty-list"])
def test_records_and_lines_refuse_the_same_depths(key: Any, inner: Any) -> None:
    def stored(dump: Any, depth: int) -> bool:
        try:
            dump({key: _nested(depth - 1, inner)})
        except UnstorableValueError as err:
            refusals.append(str(err))
            return False
        return True

    refusals: list[str] = []
    for dump in (codec.dumps_record, codec.dumps_line):
        outcomes = {
            depth: stored(dump, depth)
            for depth in range(codec.MAX_STORED_DEPTH - 2, codec.MAX_STORED_DEPTH + 3)
        }
        deepest = max(depth for depth, ok in outcomes.items() if ok)
        assert all(outcomes[d] for d in outcomes if d <= deepest)
        assert deepest in (codec.MAX_STORED_DEPTH - 1, codec.MAX_STORED_DEPTH), (dump, outcomes)
    assert refusals
    assert all(f"nested deeper than {codec.MAX_STORED_DEPTH} levels" in r for r in refusals)
