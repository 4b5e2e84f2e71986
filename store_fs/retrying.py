"""Store calls through faults: which errors are transient, capped backoff with jitter, outages
logged once, and asking the store whether an attempt is still the caller's.

The runner and the tracer's span delivery both go through :func:`call_with_retry`, so a
store that is down for a second or for an hour is handled the same way everywhere: the
call is repeated with exponential backoff (capped, with jitter), the outage is logged once
when it starts and once when it ends (:class:`OutageLog`), and errors that a retry cannot
fix (a bad request, an unknown id) are raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from store_fs.errors import AglError, RemoteStoreError, StoreNotFoundError

__all__ = [
    "Backoff",
    "OutageLog",
    "RetryPolicy",
    "attempt_alive_by_status",
    "call_with_retry",
    "describe_store",
    "heartbeat_by_update",
    "is_transient",
    "renew_attempt",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

LIVE_ATTEMPT_STATUSES = frozenset({"preparing", "running"})
CLOSED_ROLLOUT_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def is_transient(err: BaseException) -> bool:
    """True for errors a later retry may not meet: the store unreachable or failing inside.

    Transient: a server that cannot be reached or answers 5xx, 408 or 429 (``RemoteStoreError``),
    an ``OSError`` from a store directory (I/O error, disk full, a vanished network mount,
    timeouts). Everything else (unknown ids, conflicts, bad values, 4xx) is permanent.
    """
    if isinstance(err, RemoteStoreError):
        return err.status is None or _retryable_status(err.status)
    if isinstance(err, StoreNotFoundError):
        return True  # a network mount that went away comes back
    if isinstance(err, AglError):
        return False
    return isinstance(err, OSError) or _aiohttp_transient(err)


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _aiohttp_transient(err: BaseException) -> bool:
    """The same rule for upstream's HTTP client, which raises aiohttp's errors: a connection
    lost mid-request (``ServerDisconnectedError``), a reply cut short, or a 5xx/408/429 reply.
    Told by class name: aiohttp is upstream's dependency, not ours."""
    names = {cls.__name__ for cls in type(err).__mro__ if cls.__module__.startswith("aiohttp")}
    if names & {"ClientConnectionError", "ClientPayloadError"}:
        return True
    status = getattr(err, "status", None)
    return "ClientResponseError" in names and isinstance(status, int) and _retryable_status(status)


def _is_server_error(err: BaseException) -> bool:
    return isinstance(err, RemoteStoreError) and err.status == 500


class Backoff:
    """Exponential delays from ``base`` doubling up to ``cap``, each drawn from [d/2, d]
    (half of it random), so runners that failed together do not retry together."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._tries = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2.0 ** min(self._tries, 30)))
        self._tries += 1
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._tries = 0


class OutageLog:
    """Logs an outage of the store once when it starts and once when it ends.

    Shared by every loop of a runner (dequeue, heartbeats, span delivery, reports), which may
    run on different threads; whichever call fails first opens the outage, and the first call
    *sent after that* to succeed closes it. A call already in flight when another one failed
    proves nothing about the store now: counting its answer as the end made one outage log as
    two when it came back while the failures went on.
    """

    def __init__(self, store_name: str = "the store", logger: logging.Logger = log) -> None:
        self.store_name = store_name
        self._log = logger
        self._lock = threading.Lock()
        self._since: float | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, what: str, err: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
            self.outages += 1
        self._log.warning(
            "%s is unreachable or failing (%s: %s: %s); retrying until it answers",
            self.store_name,
            what,
            type(err).__name__,
            err,
        )

    def ended(self, sent: float | None = None) -> None:
        """A call succeeded; ``sent``: when it was sent (``time.monotonic()``), if known."""
        with self._lock:
            since = self._since
            if since is None or (sent is not None and sent < since):
                return
            self._since = None
        self._log.warning("%s answers again after %.1f s", self.store_name, time.monotonic() - since)


@dataclass
class RetryPolicy:
    """How store calls are retried.

    Args:
        base_seconds, cap_seconds: the backoff's first delay and its cap.
        server_error_seconds: how long an HTTP 500 counts as transient. Some servers (upstream's)
            also answer 500 for requests that can never succeed, so these are not retried forever.
        outage: where outages are logged (one per runner).
    """

    base_seconds: float = 0.2
    cap_seconds: float = 5.0
    server_error_seconds: float = 30.0
    outage: OutageLog = field(default_factory=OutageLog)

    def backoff(self) -> Backoff:
        return Backoff(self.base_seconds, self.cap_seconds)


async def _sleep_unless(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep, waking early (within 0.05 s) once ``stop()`` is true."""
    end = time.monotonic() + seconds
    while not stop():
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.05))


def _never() -> bool:
    return False


class _Tries:
    """The bookkeeping of one retried call: what to do after each failure."""

    def __init__(self, policy: RetryPolicy, stop: Callable[[], bool], give_up_after: float | None) -> None:
        self.policy = policy
        self.stop = stop
        self.give_up_after = give_up_after
        self.backoff = policy.backoff()
        self.first_failure: float | None = None
        self.server_errors_since: float | None = None

    def delay_after(self, err: Exception, what: str) -> float | None:
        """Seconds to wait before the next try, or None: raise ``err`` now."""
        now = time.monotonic()
        if not is_transient(err) or self.stop():
            return None
        if _is_server_error(err):
            self.server_errors_since = self.server_errors_since or now
            if now - self.server_errors_since > self.policy.server_error_seconds:
                return None
        else:
            self.server_errors_since = None
        self.first_failure = self.first_failure or now
        delay = self.backoff.next_delay()
        if self.give_up_after is not None and now + delay - self.first_failure > self.give_up_after:
            return None
        self.policy.outage.failed(what, err)
        return delay


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    policy: RetryPolicy,
    stop: Callable[[], bool] = _never,
    give_up_after: float | None = None,
) -> T:
    """``await call()`` until it returns; transient errors (:func:`is_transient`) are retried.

    Each failure waits a backoff delay first; the first failure of an outage is logged (once
    per outage, by ``policy.outage``), and the first success after it logs its end.
    Raises a permanent error at once, and the last transient one when ``stop()`` turns true
    or retrying would go on longer than ``give_up_after`` seconds after the first failure.
    """
    tries = _Tries(policy, stop, give_up_after)
    while True:
        sent = time.monotonic()
        try:
            result = await call()
        except Exception as err:
            delay = tries.delay_after(err, what)
            if delay is None:
                raise
            await _sleep_unless(delay, stop)
            if stop():
                raise
            continue
        policy.outage.ended(sent)
        return result


def describe_store(store: Any) -> str:
    """A short name for log lines: the server URL or the store directory."""
    for attr in ("url", "root"):
        value = getattr(store, attr, None)
        if value is not None:
            return f"store {value}"
    return f"store {type(store).__name__}"


async def attempt_alive_by_status(store: Any, rollout_id: str, attempt_id: str) -> bool:
    """Is the attempt still live and the latest of an open rollout? (Read-only; any store.)

    Upstream's HTTP client answers ``get_rollout_by_id`` and ``get_latest_attempt`` with None
    when the server cannot be reached, as for a rollout that does not exist; a None is
    therefore asked again of ``query_rollouts`` / ``query_attempts``, which raise then (a
    transient error: the caller retries), so an outage is never taken for a removed rollout.
    """
    rollout = await store.get_rollout_by_id(rollout_id) or await _queried_rollout(store, rollout_id)
    if rollout is None or rollout.status in CLOSED_ROLLOUT_STATUSES:
        return False
    latest = getattr(rollout, "attempt", None)
    if latest is None or latest.attempt_id != attempt_id:
        latest = await store.get_latest_attempt(rollout_id) or await _queried_latest(store, rollout_id)
    return latest is not None and latest.attempt_id == attempt_id and latest.status in LIVE_ATTEMPT_STATUSES


async def _queried_rollout(store: Any, rollout_id: str) -> Any:
    query = getattr(store, "query_rollouts", None)
    if query is None:
        return None
    found = list(await query(rollout_id_in=[rollout_id]))
    return found[0] if found else None


async def _queried_latest(store: Any, rollout_id: str) -> Any:
    query = getattr(store, "query_attempts", None)
    if query is None:
        return None
    found = list(await query(rollout_id))
    return found[-1] if found else None


async def heartbeat_by_update(store: Any, rollout_id: str, attempt_id: str) -> bool:
    """A heartbeat for stores without one: read the attempt's state, then refresh
    ``last_heartbeat_time`` only if it is still live (an update could revive a cancelled
    rollout on upstream's stores). Returns whether the attempt is still the caller's."""
    if not await attempt_alive_by_status(store, rollout_id, attempt_id):
        return False
    attempt = await store.update_attempt(rollout_id, attempt_id, last_heartbeat_time=time.time())
    return getattr(attempt, "status", "running") in LIVE_ATTEMPT_STATUSES


async def renew_attempt(store: Any, rollout_id: str, attempt_id: str) -> bool:
    """Keep an attempt alive; False when it is no longer the caller's (cancelled, expired, settled).

    Uses the store's ``heartbeat`` (agl's stores; the HTTP client falls back by itself when
    the server lacks the route), else :func:`heartbeat_by_update`.
    """
    beat = getattr(store, "heartbeat", None)
    if beat is None:
        return await heartbeat_by_update(store, rollout_id, attempt_id)
    return bool(await beat(rollout_id, attempt_id))
