"""Stand-ins for ``openai.Stream`` / ``AsyncStream`` that fold what passes through into a span.

A traced stream delegates every attribute to the SDK's stream and ends its call's span
exactly once: when the stream is exhausted, raises, or is closed, whether through its own
``close()`` or through the HTTP response's (the SDK's ``chat.completions.stream()`` and
``responses.stream()`` helpers close the response directly, so ``.response`` is wrapped too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

__all__ = ["Folder", "StreamCall", "StreamReportedError", "TracedAsyncStream", "TracedStream"]


class Folder(Protocol):
    """Accumulates stream items into the span's response attributes."""

    def add(self, item: Any) -> bool:
        """Fold one item in; True when it carried generated output (a token)."""
        ...

    def result(self) -> dict[str, Any]: ...

    def failure(self) -> str | None:
        """An error the stream reported as an item rather than raised (``code: message``)."""
        ...


class StreamReportedError(Exception):
    """An error a stream sent as an event the SDK hands to the caller instead of raising (the
    Responses API's ``error`` and ``response.failed``): the call failed all the same."""


class StreamCall(Protocol):
    """The part of a traced call a stream needs."""

    def fold(self, folder: Folder, item: Any) -> None: ...

    def end(self, attrs_of: Any, exc: BaseException | None) -> None: ...


class _Base:
    def __init__(self, stream: Any, call: StreamCall, folder: Folder) -> None:
        self._stream = stream
        self._call = call
        self._folder = folder

    def _add(self, item: Any) -> None:
        self._call.fold(self._folder, item)

    def _end(self, exc: BaseException | None) -> None:
        if exc is None:
            failure = self._folder.failure()
            if failure is not None:
                exc = StreamReportedError(failure)
        self._call.end(self._folder.result, exc)

    @property
    def response(self) -> Any:
        return _ClosingResponse(self._stream.response, self)

    def __getattr__(self, name: str) -> Any:
        if name == "_stream":  # not yet set (copy, pickle): no infinite recursion
            raise AttributeError(name)
        return getattr(self._stream, name)


class _ClosingResponse:
    """The stream's HTTP response; closing it ends the span too."""

    def __init__(self, response: Any, owner: _Base) -> None:
        self._response = response
        self._owner = owner

    def close(self) -> None:
        try:
            self._response.close()
        finally:
            self._owner._end(None)

    async def aclose(self) -> None:
        try:
            await self._response.aclose()
        finally:
            self._owner._end(None)

    def __getattr__(self, name: str) -> Any:
        if name == "_response":
            raise AttributeError(name)
        return getattr(self._response, name)


class TracedStream(_Base):
    """Proxy for ``openai.Stream`` (it is not an ``openai.Stream`` instance)."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._stream)
        except StopIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._add(item)
        return item

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._end(None)

    def __enter__(self) -> TracedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TracedAsyncStream(_Base):
    """Proxy for ``openai.AsyncStream`` (it is not an ``openai.AsyncStream`` instance)."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._stream.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        self._add(item)
        return item

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._end(None)

    async def __aenter__(self) -> TracedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
