"""A command stopped part-way (Ctrl-C, SIGTERM) says so, and says what it had done.

Found by an adversarial pass of the command line: ``agl enqueue`` reading many inputs from
stdin and stopped after some chunks were queued printed none of their ids (exit 130), so the
caller could not tell which inputs were queued; and a command interrupted where typer catches
the interruption ended with exit 130 and not a word.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from cli_helpers import AGL, agl_env

from store_fs import FileStore

INPUTS = 5000  # ten chunks of agl enqueue's 500


def _stored_ids(root: Path) -> set[str]:
    async def ids() -> set[str]:
        store = FileStore(root)
        try:
            return {r.rollout_id for r in await store.query_rollouts()}
        finally:
            store.close()

    return asyncio.run(ids())


def test_enqueue_stopped_part_way_prints_what_it_queued(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"q": i}) + "\n" for i in range(INPUTS)))
    for attempt in range(3):  # a machine fast enough to queue them all before the signal: again
        root = tmp_path / f"store{attempt}"
        subprocess.run([AGL, "init", str(root)], check=True, capture_output=True, env=agl_env(None))
        with inputs.open("rb") as stdin:
            proc = subprocess.Popen(
                [AGL, "enqueue", "-"],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=agl_env(root),
            )
        try:
            deadline = time.monotonic() + 60
            # Past the first chunk (its tokens are made as its rollouts are queued): stop it.
            while proc.poll() is None and time.monotonic() < deadline:
                if len(os.listdir(root / "queue" / "pending")) > 600:
                    proc.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.002)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if proc.returncode == 130:
            break
        assert proc.returncode == 0, err
    assert proc.returncode == 130, err
    printed = [json.loads(line)["rollout_id"] for line in out.splitlines()]
    stored = _stored_ids(root)
    assert printed, err
    assert set(printed) <= stored  # every id printed is queued ...
    assert len(stored) - len(printed) <= 500  # ... and at most the chunk in flight is not printed
    assert f"stopped after queueing {len(printed)} of {INPUTS} rollout(s) (printed)" in err
    assert "may have been queued" in err
    assert err.rstrip().endswith("agl: interrupted"), err
    assert "Traceback" not in err


def test_an_interrupted_command_says_so(tmp_path: Path) -> None:
    """``agl rollouts list --watch`` has no handler of its own: typer took its interruption
    for a silent exit 130."""
    root = tmp_path / "store"
    subprocess.run([AGL, "init", str(root)], check=True, capture_output=True, env=agl_env(None))
    subprocess.run([AGL, "enqueue", '{"q": 1}'], check=True, capture_output=True, env=agl_env(root))
    proc = subprocess.Popen(
        [AGL, "-q", "rollouts", "list", "--watch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agl_env(root),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline()  # watching
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["agl: interrupted"], err
