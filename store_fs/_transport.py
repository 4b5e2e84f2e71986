"""HTTP transport of :class:`store_fs.client.LightningStoreClient`: requests, retries, error mapping.

Retries happen only for connection errors. A request that never reached the server
(connection refused, connect timeout) is retried whatever it is; one whose answer was
lost (reset, read timeout, server gone mid-request) is retried only when the caller
says it is safe to repeat (``idempotent=True``). Error replies are never retried. Longer
outages are the caller's to ride out (the runner retries with backoff: :mod:`store_fs.retrying`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import httpx

from store_fs import errors
from store_fs.errors import RemoteStoreError
from store_fs.models import UNSET, Unset

__all__ = ["Transport", "error_for_response"]


def error_for_response(response: httpx.Response) -> Exception:
    """The exception FileStore would have raised for this error reply.

    404 → the store's not-found class (``RolloutNotFoundError`` ...), 409 → ``ConflictError``,
    400 → ``InvalidIdError`` or ``ValueError`` (``TypeError`` when the server says so),
    413/422 → ``ValueError``; anything else → :class:`RemoteStoreError`.
    """
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail")
    status = response.status_code
    message = detail if isinstance(detail, str) else f"HTTP {status}: {detail or response.text[:200]}"
    kind = body.get("error_type")
    cls = getattr(errors, kind, None) if isinstance(kind, str) and kind in errors.__all__ else None
    if status in (400, 404, 409) and isinstance(cls, type) and issubclass(cls, errors.AglError):
        attrs = body.get("error_attrs")
        return cls.rebuild(message, attrs if isinstance(attrs, dict) else {})
    if status == 404:
        return errors.NotFoundError(message)
    if status == 409:
        return errors.ConflictError(message)
    if status in (400, 413, 422):
        return TypeError(message) if kind == "TypeError" else ValueError(message)
    return RemoteStoreError(message, status)


class Transport:
    """JSON requests to ``base`` (e.g. ``http://h:4747/v1/agl``), one connection pool per event loop."""

    def __init__(
        self, base: str, *, token: str | None, timeout: float, retry_delays: Sequence[float]
    ) -> None:
        self.base = base
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._retry_delays = tuple(retry_delays)
        # httpx clients are bound to the loop that created them; tracers run their own loops.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(headers=self._headers, timeout=self.timeout)
            self._clients[loop] = client
        return client

    async def close(self) -> None:
        """Close the running loop's connection pool (a later call opens a new one)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        idempotent: bool,
        timeout: float | Unset | None = UNSET,
    ) -> Any:
        """Send one request; the decoded JSON of a 2xx reply, else the error of :func:`error_for_response`."""
        client = self._client()
        extra: dict[str, Any] = {} if isinstance(timeout, Unset) else {"timeout": timeout}
        for attempt in range(len(self._retry_delays) + 1):
            try:
                response = await client.request(method, self.base + path, json=json, params=params, **extra)
            except httpx.TransportError as err:
                never_sent = isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt >= len(self._retry_delays) or not (never_sent or idempotent):
                    raise RemoteStoreError(f"{method} {path}: {type(err).__name__}: {err}") from err
                await asyncio.sleep(self._retry_delays[attempt])
                continue
            if response.is_success:
                return response.json()
            raise error_for_response(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_bytes(self, url: str, body: bytes, content_type: str) -> bytes:
        """POST a raw body to ``url`` (outside the JSON API, e.g. OTLP); the reply's bytes.

        Retried like an idempotent call: the only user, OTLP span export, is safe to repeat
        (a span already stored is not stored again).
        """
        client = self._client()
        headers = {"Content-Type": content_type}
        for attempt in range(len(self._retry_delays) + 1):
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.TransportError as err:
                if attempt >= len(self._retry_delays):
                    raise RemoteStoreError(f"POST {url}: {type(err).__name__}: {err}") from err
                await asyncio.sleep(self._retry_delays[attempt])
                continue
            if response.is_success:
                return response.content
            raise error_for_response(response)
        raise AssertionError("unreachable")  # pragma: no cover
