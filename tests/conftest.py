"""Shared fixtures: a fresh store per test, with a clock the test controls."""

from __future__ import annotations

import compileall
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from store_fs import FakeClock, FileStore

if TYPE_CHECKING:
    from cli_helpers import WarmAgl  # imported by the fixture: it checks that agl is installed

# Importing agentlightning makes LiteLLM try to fetch a price list from the network; keep it local.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def pytest_configure(config: pytest.Config) -> None:
    """Compile the project's modules to bytecode once, for the processes the tests start.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on this project's CI machines) no import writes
    bytecode, so every ``agl`` call and every child process the suite starts (hundreds) would
    compile ``store_fs`` and ``agl_cli`` from source again: ~50 ms each. Reading bytecode is
    still allowed, and ``compileall`` writes it whatever that variable says.
    """
    root = Path(__file__).resolve().parent.parent
    for package in ("store_fs", "agl_cli", "tests"):
        compileall.compile_dir(root / package, quiet=1)


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


@pytest.fixture(scope="session")
def warm_agl() -> Iterator[WarmAgl]:
    """One warm fork server for the whole session (tests/cli_helpers.py ``WarmAgl``), stopped at its end."""
    from cli_helpers import WarmAgl

    driver = WarmAgl()
    try:
        yield driver
    finally:
        driver.close()
