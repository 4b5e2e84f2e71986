"""Shared fixtures: a fresh store per test, with a clock the test controls."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from store_fs import FakeClock, FileStore

# Importing agentlightning makes LiteLLM try to fetch a price list from the network; keep it local.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[FileStore]:
    """A store whose reaper scans before every eligible call (like upstream's test fixtures)."""
    s = FileStore(tmp_path / "store", clock=clock, scan_debounce_seconds=0, claim_grace_seconds=5)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
