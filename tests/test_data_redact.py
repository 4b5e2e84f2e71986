"""``agl data --redact`` masks text, not the rows' identity.

Found by an adversarial pass: a pattern like a hex secret's (``[0-9a-f]{8,}``) also masked every
``rollout_id`` and ``attempt_id`` ("ro-[REDACTED]"), so the rows of different rollouts could no
longer be told apart, while the README says that for each ``rollout_id`` the newest rows count.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cli_helpers import Agl
from datasets_helpers import make_rollout

from store_fs import FileStore
from store_fs.datasets import Redactor

HEX = "[0-9a-f]{8,}"
SECRET = "deadbeefcafe1234"


@pytest.fixture
def made(tmp_path: Path) -> tuple[Agl, list[str]]:
    root = tmp_path / "store"

    async def seed() -> list[str]:
        store = FileStore(root)
        ids = [
            await make_rollout(store, question=f"the key is {SECRET}"),
            await make_rollout(store, question=f"again {SECRET}"),
        ]
        store.close()
        return ids

    return Agl(root, tmp_path), asyncio.run(seed())


@pytest.mark.parametrize("view", ["triplets", "messages", "rollouts"])
def test_redact_leaves_the_rows_identity_alone(made: tuple[Agl, list[str]], view: str) -> None:
    agl, ids = made
    plain = agl.ok("data", view).lines()
    masked = agl.ok("data", view, "--redact", HEX).lines()
    assert [row["rollout_id"] for row in masked] == [row["rollout_id"] for row in plain]
    assert {row["rollout_id"] for row in masked} == set(ids)
    for before, after in zip(plain, masked, strict=True):
        for key in ("rollout_id", "attempt_id", "resources_id", "mode", "ended", "step", "status"):
            assert after.get(key) == before.get(key), key
    text = agl.ok("data", view, "--redact", HEX).stdout
    assert SECRET not in text
    assert "[REDACTED]" in text
    if view == "rollouts":
        for before, after in zip(plain, masked, strict=True):
            assert [a["attempt_id"] for a in after["attempts"]] == [
                a["attempt_id"] for a in before["attempts"]
            ]
            assert [(s["trace_id"], s["span_id"], s["parent_id"]) for s in after["spans"]] == [
                (s["trace_id"], s["span_id"], s["parent_id"]) for s in before["spans"]
            ]
            assert after["input"] == {"q": before["input"]["q"].replace(SECRET, "[REDACTED]")}


def test_the_identity_of_a_row_is_only_kept_where_it_stands() -> None:
    redactor = Redactor([HEX])
    row = {"rollout_id": SECRET, "metadata": {"rollout_id": SECRET}, "prompt": {"text": SECRET}}
    assert redactor.row(row) == {
        "rollout_id": SECRET,
        "metadata": {"rollout_id": "[REDACTED]"},  # not the row's identity: text like any other
        "prompt": {"text": "[REDACTED]"},
    }
    assert redactor.apply(row)["rollout_id"] == "[REDACTED]"  # apply masks every string
