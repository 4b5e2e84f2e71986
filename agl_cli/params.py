"""Option and argument types shared by the commands: every number has a range, every
enumeration its values, so click rejects bad input before a command touches the store.

Ranges are declared (``min``/``max``), not checked in command bodies, so ``--help`` shows
them and the fuzz test (tests/test_cli_fuzz.py) generates invalid values from them. Floats
go through :func:`seconds` or :func:`finite`: typer's own float parsing accepts ``nan`` and
``inf``. Lists of statuses are enums (typer takes ``Literal`` only for single values).
"""

from __future__ import annotations

import enum
import math
from typing import Annotated, Any, Literal

import typer

from . import completion

# Counts and sizes: large enough for any real use, small enough for every JSON reader.
MAX_COUNT = 2**31 - 1
# Seconds: about 31 years, well inside what time.monotonic() + x and asyncio accept.
MAX_SECONDS = 1e9


class RolloutStatus(enum.StrEnum):
    queuing = "queuing"
    preparing = "preparing"
    running = "running"
    failed = "failed"
    succeeded = "succeeded"
    cancelled = "cancelled"
    requeuing = "requeuing"


class RetryOn(enum.StrEnum):
    failed = "failed"
    timeout = "timeout"
    unresponsive = "unresponsive"


# In the order of store_fs.models.AttemptStatus: typing caches ``Literal[...] | None`` by value
# (set equality), so whichever of two equal literals is met first would decide the order of the
# choices --help and error messages print, depending on import order.
AttemptStatus = Literal["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]
Mode = Literal["train", "val", "test"]
# Scalar fields of a rollout (the store also accepts input, config and metadata, which do not sort).
RolloutSortField = Literal["rollout_id", "start_time", "end_time", "status", "mode", "resources_id"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Engine = Literal["f-string", "jinja", "poml"]
Durability = Literal["process", "fsync"]


def values(items: list[Any] | None) -> list[str] | None:
    """Enum members as their string values (None stays None)."""
    return None if items is None else [item.value if isinstance(item, enum.Enum) else item for item in items]


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise typer.BadParameter(f"{value!r} is not a finite number")
    return number


def finite(value: Any) -> float:
    """A finite float (no nan, no inf)."""
    return _number(value)


def seconds(value: Any) -> float:
    """A finite number of seconds in [0, MAX_SECONDS]."""
    number = _number(value)
    if not 0 <= number <= MAX_SECONDS:
        raise typer.BadParameter(f"{value!r} is not between 0 and {MAX_SECONDS:g} seconds")
    return number


def interval_seconds(value: Any) -> float:
    """Seconds between two looks at the store: 0.01 to 3600 (0 would spin)."""
    number = _number(value)
    if not 0.01 <= number <= 3600:
        raise typer.BadParameter(f"{value!r} is not between 0.01 and 3600 seconds")
    return number


def megabytes(value: Any) -> float:
    """A finite size in MB, more than 0 and at most 1e6 (a terabyte)."""
    number = _number(value)
    if not 0 < number <= 1e6:
        raise typer.BadParameter(f"{value!r} is not more than 0 and at most 1e6 MB")
    return number


# -- arguments -----------------------------------------------------------------------------
RolloutArg = Annotated[
    str, typer.Argument(help="Rollout id (ro-...).", autocompletion=completion.rollout_ids)
]
RolloutArgs = Annotated[
    list[str], typer.Argument(help="Rollout ids (ro-...).", autocompletion=completion.rollout_ids)
]
AttemptArg = Annotated[
    str, typer.Argument(help="Attempt id (at-...), or 'latest'.", autocompletion=completion.attempt_ids)
]

# -- options -------------------------------------------------------------------------------
Limit = Annotated[int, typer.Option(min=-1, max=MAX_COUNT, help="At most this many (-1: all).")]
Offset = Annotated[int, typer.Option(min=0, max=MAX_COUNT, help="Skip this many matches first.")]
StatusFilter = Annotated[
    list[RolloutStatus] | None,
    typer.Option("--status", help="Keep rollouts in this status (repeatable).", show_choices=True),
]
