"""Query results, filter and sort options, the UNSET sentinel, capabilities and statistics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Generic, Literal, TypedDict, TypeVar, overload

from store_fs.models.model_base import AglModel

__all__ = [
    "UNSET",
    "FilterField",
    "FilterLogic",
    "LightningStoreCapabilities",
    "LightningStoreStatistics",
    "PaginatedResult",
    "SortOptions",
    "SortOrder",
    "Unset",
]

T = TypeVar("T")

FilterLogic = Literal["and", "or"]
SortOrder = Literal["asc", "desc"]


class Unset:
    """The type of :data:`UNSET`: "argument not given", as opposed to an explicit ``None``."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET = Unset()


class FilterField(TypedDict, total=False):
    exact: Any
    within: Sequence[Any]
    contains: str


class SortOptions(TypedDict):
    name: str
    order: Literal["asc", "desc"]


class LightningStoreCapabilities(TypedDict, total=False):
    thread_safe: bool
    async_safe: bool
    zero_copy: bool
    otlp_traces: bool


class LightningStoreStatistics(TypedDict, total=False):
    name: str
    total_rollouts: int
    total_attempts: int
    total_spans: int
    total_resources: int
    total_workers: int
    uptime: float


class PaginatedResult(AglModel, Generic[T]):
    """One page of matches; ``total`` counts all matches before ``limit``/``offset``.

    Behaves like a read-only sequence over ``items``.
    """

    items: Sequence[T]
    limit: int
    offset: int
    total: int

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]
        return iter(self.items)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self.items[index]

    def __repr__(self) -> str:
        if not self.items:
            shown = "empty"
        elif len(self.items) == 1:
            shown = repr(self.items[0])
        else:
            shown = repr(list(self.items))
        end = "" if self.limit == -1 else str(self.offset + self.limit)
        return f"<PaginatedResult ({self.offset + 1}:{end} of {self.total}) {shown}>"
