"""One outage of the store is logged once: a call sent before the first failure does not end it.

(store_fs/retrying.py's OutageLog and call_with_retry; the runner's own outage tests, with
real servers, are in test_runner_outages.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from store_fs.errors import RemoteStoreError
from store_fs.retrying import OutageLog, RetryPolicy, call_with_retry


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.outage"]


def test_only_a_call_sent_after_the_failure_ends_the_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "test.outage")
    outage = OutageLog("store X", logging.getLogger("test.outage"))
    in_flight = time.monotonic()
    outage.failed("span delivery", OSError("down"))
    outage.failed("heartbeat", OSError("down"))  # the same outage: not logged again
    outage.ended(in_flight)  # sent before the failure: says nothing about the store now
    assert outage.down
    outage.ended(time.monotonic())
    assert not outage.down
    outage.ended()  # nothing to end
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[0].startswith("store X is unreachable or failing (span delivery: OSError: down)")
    assert lines[1].startswith("store X answers again after")


async def test_an_answer_to_an_older_call_does_not_split_an_outage_in_two(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow call sent before the store went down returns fine; another keeps failing: one
    outage, logged once, ended by the failing call's own retry once the store answers."""
    caplog.set_level(logging.WARNING, "test.outage")
    policy = RetryPolicy(
        base_seconds=0.05, cap_seconds=0.05, outage=OutageLog("store X", logging.getLogger("test.outage"))
    )
    down = asyncio.Event()
    back = asyncio.Event()

    async def slow() -> str:
        down.set()
        await asyncio.sleep(0.2)  # answered while the other call's failures go on
        return "slow"

    failures = 0

    async def flaky() -> str:
        nonlocal failures
        await down.wait()
        if not back.is_set():
            failures += 1
            raise RemoteStoreError("POST /heartbeat: ConnectError: [Errno 111] Connection refused")
        return "flaky"

    async def come_back() -> None:
        await asyncio.sleep(0.5)
        back.set()

    results = await asyncio.gather(
        call_with_retry(slow, what="slow", policy=policy),
        call_with_retry(flaky, what="heartbeat", policy=policy),
        come_back(),
    )
    assert list(results[:2]) == ["slow", "flaky"]
    assert failures >= 3
    lines = _lines(caplog)
    assert [line.split(" (")[0].split(" after")[0] for line in lines] == [
        "store X is unreachable or failing",
        "store X answers again",
    ]
