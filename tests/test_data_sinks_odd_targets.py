"""Output names that are not plain files (a FIFO, symbolic links) and Parquet rows the schema
cannot hold: store_fs/datasets/row_writers.py, through ``agl data`` where the CLI decides."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Agl, assert_error
from datasets_helpers import make_rollout

from store_fs import FileStore
from store_fs.datasets import row_writers


@pytest.fixture
def agl_one(tmp_path: Path) -> tuple[Agl, str]:
    """A store holding one succeeded rollout of two LLM calls (two triplets)."""
    root = tmp_path / "store"

    async def seed() -> str:
        store = FileStore(root)
        rollout_id = await make_rollout(store, calls=2)
        store.close()
        return rollout_id

    return Agl(root, tmp_path), asyncio.run(seed())


class _FifoReader(threading.Thread):
    """Reads a FIFO until its writer closes it, or until told to stop (then what is there)."""

    def __init__(self, fifo: Path) -> None:
        super().__init__(daemon=True)
        # Non-blocking, so opening does not wait for a writer and the thread never hangs.
        self.fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.data = b""
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(self.fd, 65536)
                except BlockingIOError:  # a writer, nothing written yet
                    chunk = None
                if chunk:
                    self.data += chunk
                elif chunk == b"" and (self.data or self.stop.is_set()):
                    return  # the writer closed it (or none will come)
                else:
                    time.sleep(0.01)
        finally:
            os.close(self.fd)


def test_jsonl_into_a_fifo_reaches_its_reader(agl_one: tuple[Agl, str], tmp_path: Path) -> None:
    agl, rollout_id = agl_one
    fifo = tmp_path / "rows.fifo"
    os.mkfifo(fifo)
    reader = _FifoReader(fifo)
    reader.start()
    try:
        res = agl.ok("data", "triplets", "-o", str(fifo))
    finally:
        reader.stop.set()
        reader.join(10)
    rows = [json.loads(line) for line in reader.data.splitlines()]
    assert [(r["rollout_id"], r["step"]) for r in rows] == [(rollout_id, 0), (rollout_id, 1)]
    assert fifo.is_fifo()  # still the FIFO: written into, not replaced
    assert "wrote 2 triplets row(s)" in res.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_parquet_into_a_fifo_is_refused(agl_one: tuple[Agl, str], tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    agl, _ = agl_one
    fifo = tmp_path / "rows.parquet"
    os.mkfifo(fifo)
    assert_error(agl("data", "triplets", "-o", str(fifo)), 4, str(fifo), "FIFO", "Parquet")
    assert fifo.is_fifo()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _rows(rollout_id: str, n: int) -> list[dict[str, Any]]:
    return [{"rollout_id": rollout_id, "status": "succeeded", "document_no": i} for i in range(n)]


def _write_jsonl(target: Path, rows: list[dict[str, Any]]) -> None:
    sink = row_writers.open_sink(target, "rollouts")
    for row in rows:
        sink.write(row)
    sink.close()


def test_a_link_to_a_file_elsewhere_writes_that_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real = elsewhere / "real.jsonl"
    real.write_text("old content\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(real)
    rows = _rows("ro-1", 3)
    _write_jsonl(link, rows)
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert [json.loads(line) for line in real.read_text().splitlines()] == rows
    assert sorted(p.name for p in elsewhere.iterdir()) == ["real.jsonl"]  # no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out.jsonl"]


def test_a_link_to_a_new_name_creates_it_and_stays(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    link = tmp_path / "out.jsonl"
    link.symlink_to(Path("dir") / "new.jsonl")  # relative, and nothing there yet
    rows = _rows("ro-2", 2)
    _write_jsonl(link, rows)
    assert link.is_symlink()
    created = tmp_path / "dir" / "new.jsonl"
    assert [json.loads(line) for line in created.read_text().splitlines()] == rows
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["new.jsonl"]


def _triplet(rollout_id: str, step: int, **prompt: Any) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "attempt_id": "at-1",
        "resources_id": None,
        "mode": "train",
        "final_reward": 1.0,
        "ended": "succeeded",
        "step": step,
        "prompt": {"token_ids": [1, 2, 3], "raw_content": [{"role": "user"}], "image_urls": [], **prompt},
        "response": {"token_ids": [4, 5], "raw_content": None},
        "reward": 0.5,
        "metadata": {"big": 2**63 + 1},  # fine as JSON text
    }


@pytest.mark.parametrize(
    ("odd", "column", "why"),
    [
        ({"token_ids": [1, 2**63]}, "prompt_token_ids", "outside int64"),
        ({"token_ids": [-(2**63) - 1]}, "prompt_token_ids", "outside int64"),
        ({"token_ids": [True, 7]}, "prompt_token_ids", "bool True is not an integer"),
        ({"token_ids": [1.5]}, "prompt_token_ids", "float 1.5 is not an integer"),
        ({"image_urls": [12345]}, "prompt_image_urls", "int 12345 is not text"),
    ],
)
def test_parquet_refuses_a_row_it_cannot_hold_and_goes_on(
    tmp_path: Path, odd: dict[str, Any], column: str, why: str
) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    sink = row_writers.open_sink(path, "triplets")
    sink.write(_triplet("ro-good", 0))
    with pytest.raises(row_writers.ParquetRowError) as caught:
        sink.write(_triplet("ro-odd", 0, **odd))
    err = caught.value
    assert isinstance(err, ValueError)
    assert (err.rollout_id, err.column) == ("ro-odd", column)
    assert "ro-odd" in str(err)
    assert column in str(err)
    assert why in str(err)
    sink.write(_triplet("ro-good", 1))
    sink.close()
    table = pq.read_table(path)
    assert table.column("rollout_id").to_pylist() == ["ro-good", "ro-good"]
    assert table.column("step").to_pylist() == [0, 1]
    assert table.column("prompt_token_ids").to_pylist() == [[1, 2, 3], [1, 2, 3]]
    assert json.loads(table.column("metadata")[0].as_py()) == {"big": 2**63 + 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]
