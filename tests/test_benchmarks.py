"""The benchmark harness runs end to end (tiny sizes; the figures themselves are not checked).

Benchmarks are not tests: these only make sure ``benchmarks/compare.py`` keeps
working as the store changes, on our store and on upstream's in-process store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare.py"


def _run_compare(tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "results.json"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    tiny = ["--reps", "1", "--scale", "0.02", "--settle", "0", "--dir", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(COMPARE), *tiny, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload: dict[str, object] = json.loads(out.read_text())
    return payload


def test_compare_runs_every_workload_on_the_file_store(tmp_path: Path) -> None:
    payload = _run_compare(
        tmp_path,
        "--backends", "fs",
        "--only", "enqueue", "--only", "dequeue x4", "--only", "add_span", "--only", "query_spans",
        "--only", "wait wake-up", "--only", "loop",
    )  # fmt: skip
    results = payload["results"]
    assert isinstance(results, dict)
    assert set(results) == {"enqueue", "dequeue x4", "add_span", "query_spans", "wait wake-up", "loop"}
    for name, per in results.items():
        cell = per["fs"]
        assert all("error" not in run for run in cell["runs"]), (name, cell["runs"])
        assert cell["median"] > 0, name
    assert results["query_spans"]["fs"]["cold_median_ms"] > 0
    assert set(results["loop"]["fs"]["runs"][0]["peak_rss_kb"]) == {"runner"}
    # The stores lived under --dir and were removed afterwards.
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.upstream
@pytest.mark.stress  # ~30 s, most of it importing upstream's package twice: opt-in (-m stress)
def test_compare_runs_upstream_in_process_store_beside_ours(tmp_path: Path) -> None:
    pytest.importorskip("agentlightning")
    payload = _run_compare(tmp_path, "--backends", "fs,up-mem", "--only", "loop", "--only", "enqueue")
    results = payload["results"]
    assert isinstance(results, dict)
    for name in ("loop", "enqueue"):
        for backend in ("fs", "up-mem"):
            cell = results[name][backend]
            assert all("error" not in run for run in cell["runs"]), (name, backend, cell["runs"])
            assert cell["median"] > 0
