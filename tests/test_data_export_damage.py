"""``agl export`` of a rollout whose span files are damaged: named, exit 7, like ``agl data``.

Found by an adversarial pass: a complete but corrupt span line (the reward's, say) of a finished
attempt was passed over with a WARNING and the document printed without it, exit 0, while
``agl data rollouts`` left the rollout out and exited 7. A backup must never look complete when
it is not: the document is still printed, with the spans that could be read, the damage is named
on stderr and the exit code is 7.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cli_helpers import Agl
from datasets_helpers import make_rollout

from store_fs import FileStore


def _corrupt_last_line(path: Path) -> None:
    body, last = path.read_bytes()[:-1].rsplit(b"\n", 1)
    path.write_bytes(body + b"\n" + b"{" + last[1:-20] + b"\n")  # complete, but not JSON


def _made(root: Path) -> tuple[str, str, str, Path]:
    async def seed() -> tuple[str, str, str]:
        store = FileStore(root)
        ids = (
            await make_rollout(store, reward=0.9),
            await make_rollout(store, reward=0.5),
            await make_rollout(store, reward=0.3, end=None),  # its attempt still running
        )
        store.close()
        return ids

    good, damaged, running = asyncio.run(seed())
    [path] = list(root.glob(f"rollouts/*/{damaged}/attempts/*/spans.*.jsonl"))
    _corrupt_last_line(path)  # the reward span, the last one written
    [live] = list(root.glob(f"rollouts/*/{running}/attempts/*/spans.*.jsonl"))
    with open(live, "ab") as f:
        f.write(b'{"span_id": "being-wri')  # a write in progress: no damage
    return good, damaged, running, path


def test_export_names_damaged_spans_and_exits_7(tmp_path: Path) -> None:
    good, damaged, running, path = _made(tmp_path / "store")
    agl = Agl(tmp_path / "store", tmp_path)
    res = agl("export", damaged)
    assert res.code == 7, str(res)
    document = json.loads(res.stdout)  # still printed: what could be read
    assert document["rollout_id"] == damaged
    assert [s["name"] for s in document["spans"]] == [
        "agent.run",
        "openai.chat.completion",
        "openai.chat.completion",
    ]
    assert f"{damaged}: exported without the spans that could not be read: {path}" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("agl: 1 rollout(s) exported without spans")
    assert "Traceback" not in res.stderr
    assert agl("data", "rollouts", "--rollout", damaged).code == 7  # the data view agrees
    whole = agl("export", "--all")
    assert whole.code == 7, str(whole)
    assert {json.loads(line)["rollout_id"] for line in whole.stdout.splitlines()} == {good, damaged, running}
    assert damaged in whole.stderr.strip().splitlines()[-1]
    for rid in (good, running):
        res = agl("export", rid)
        assert res.code == 0, str(res)
        assert "could not be read" not in res.stderr
