"""Exit codes, and the one place where library errors become them.

| code | meaning |
|------|---------|
| 0  | success |
| 1  | any other store error |
| 2  | bad usage (unknown option, missing argument) |
| 3  | not found: an unknown rollout, attempt, resources or worker id |
| 4  | bad input: malformed JSON, an invalid id, a value of the wrong type |
| 5  | no store at the path, or a store of an unsupported format version |
| 6  | conflict with the stored state (e.g. the rollout is cancelled) |
| 7  | a corrupt record on disk (named in the message) |
| 10 | `agl dequeue`: the queue stayed empty |
| 11 | `agl wait`: the timeout passed before every rollout finished |
| 12 | `agl wait`: all finished, but not all succeeded |
| 13 | `agl heartbeat`: the attempt is no longer yours (cancelled or expired) |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

from typing import Final

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 3
EXIT_BAD_INPUT: Final = 4
EXIT_NO_STORE: Final = 5
EXIT_CONFLICT: Final = 6
EXIT_CORRUPT: Final = 7
EXIT_EMPTY: Final = 10
EXIT_TIMEOUT: Final = 11
EXIT_NOT_ALL_SUCCEEDED: Final = 12
EXIT_LOST: Final = 13
EXIT_INTERRUPTED: Final = 130


class CliError(Exception):
    """A user-facing failure raised by a command: one line, one exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(err: BaseException) -> int | None:
    """The documented exit code of an expected error; None for a bug (keeps its traceback)."""
    if isinstance(err, CliError):
        return err.code
    import pydantic

    from store_fs import errors as e

    table: list[tuple[type[BaseException], int]] = [
        (e.NotFoundError, EXIT_NOT_FOUND),
        (e.InvalidIdError, EXIT_BAD_INPUT),
        (e.StoreNotFoundError, EXIT_NO_STORE),
        (e.FormatVersionError, EXIT_NO_STORE),
        (e.ConflictError, EXIT_CONFLICT),
        (e.CorruptRecordError, EXIT_CORRUPT),
        (e.AglError, EXIT_ERROR),
        (pydantic.ValidationError, EXIT_BAD_INPUT),
    ]
    for cls, code in table:
        if isinstance(err, cls):
            return code
    return None


def one_line(err: BaseException) -> str:
    """The error as one line (pydantic's multi-line reports are folded)."""
    import pydantic

    if isinstance(err, pydantic.ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"invalid {err.title}: {where}: {first.get('msg')}{more}"
    return " ".join(str(err).split())
