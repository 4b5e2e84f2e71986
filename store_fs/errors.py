"""The one exception hierarchy of ``store_fs``, and the one table that maps it to exit codes
and HTTP statuses.

Everything the library raises on purpose derives from :class:`AglError`. Each subclass
also inherits the builtin that upstream Agent-lightning raises for the same situation
(``ValueError`` for unknown ids and bad values), so code written against upstream keeps
working. Each class declares its attributes in its constructor; every error has a
one-line message and survives pickling (runners cross process boundaries) and the trip
through the REST API (the client raises the server's class with the same attributes).

:data:`ERROR_TABLE` says what each error means to the command line (exit code) and to the
REST API (status); ``agl_cli`` and :mod:`store_fs.server` both look errors up there, and
``agl --help`` prints the exit codes from :class:`ExitCode`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

__all__ = [
    "ERROR_TABLE",
    "AglError",
    "AttemptNotFoundError",
    "BadTokenError",
    "ConflictError",
    "CorruptRecordError",
    "CursorMismatchError",
    "ErrorMapping",
    "ExitCode",
    "FormatVersionError",
    "InvalidIdError",
    "MaintenanceBusyError",
    "NestedStoreError",
    "NotFoundError",
    "RemoteStoreError",
    "ResourcesNotFoundError",
    "RolloutNotFoundError",
    "StoreNotFoundError",
    "UnstorableValueError",
    "WorkerNotFoundError",
    "mapping_for",
]

E = TypeVar("E", bound="AglError")


class AglError(Exception):
    """Base class of every error raised on purpose by ``store_fs``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def attrs(self) -> dict[str, Any]:
        """The structured attributes (``rollout_id``, ``path`` ...), without the message."""
        return {k: v for k, v in vars(self).items() if k != "message"}

    @classmethod
    def rebuild(cls: type[E], message: str, attrs: dict[str, Any]) -> E:
        """The error with this message and these attributes, without calling the subclass's
        constructor (whose parameters differ per class): for unpickling and HTTP clients."""
        err = cls.__new__(cls)
        AglError.__init__(err, message)
        vars(err).update({k: v for k, v in attrs.items() if k != "message"})
        return err

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.attrs))


def _rebuild(cls: type[AglError], message: str, attrs: dict[str, Any]) -> AglError:
    return cls.rebuild(message, attrs)


class NotFoundError(AglError, ValueError):
    """An id names nothing in the store. A ``ValueError``, as upstream raises."""

    def __init__(self, message: str, *, rollout_id: str | None = None) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


class RolloutNotFoundError(NotFoundError):
    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"Rollout {rollout_id} not found", rollout_id=rollout_id)


class AttemptNotFoundError(NotFoundError):
    def __init__(self, rollout_id: str, attempt_id: str) -> None:
        super().__init__(f"Attempt {attempt_id} not found for rollout {rollout_id}", rollout_id=rollout_id)
        self.attempt_id = attempt_id


class ResourcesNotFoundError(NotFoundError):
    def __init__(self, resources_id: str) -> None:
        super().__init__(f"Resources {resources_id} not found")
        self.resources_id = resources_id


class WorkerNotFoundError(NotFoundError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"Worker {worker_id} not found")
        self.worker_id = worker_id


class InvalidIdError(AglError, ValueError):
    """An id that may not touch a path: empty, too long, or holding ``/``, ``..``, NUL..."""

    def __init__(self, kind: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {kind} id {value!r}: {reason}")
        self.kind = kind
        self.value = value
        self.reason = reason


class UnstorableValueError(AglError, ValueError):
    """A value JSON cannot hold as given: an integer outside 64 bits, nesting deeper than a
    stored document may (238 levels), a string with a lone surrogate, an object of no JSON
    type. Refused before anything of the call is written."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} cannot be stored as JSON: {reason}")
        self.what = what
        self.reason = reason


class BadTokenError(AglError, ValueError):
    """A bearer token that cannot travel in an ``Authorization`` header as given
    (:func:`store_fs.bearer_token.check_token`)."""


class ConflictError(AglError, ValueError):
    """The request contradicts the stored state (for example: starting an attempt of a cancelled rollout)."""

    def __init__(self, message: str, *, rollout_id: str | None = None) -> None:
        super().__init__(message)
        self.rollout_id = rollout_id


class CorruptRecordError(AglError, ValueError):
    """A complete record on disk does not parse or validate. The file is named; nothing is rewritten."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"corrupt record {path}: {reason}")
        self.path = path
        self.reason = reason


class CursorMismatchError(AglError, ValueError):
    """A saved cursor belongs to another store (or to the store this one was copied from): its
    positions name other files, so reading on from it would skip what this store holds."""

    def __init__(self, cursor: str, saved_for: str, store: str) -> None:
        super().__init__(
            f"the cursor {cursor} was saved for another store ({saved_for}), not {store}: "
            "pass that store, or remove the cursor file to read this one from its start"
        )
        self.cursor = cursor
        self.saved_for = saved_for
        self.store = store


class NestedStoreError(AglError, ValueError):
    """A new store asked for inside another store's directory, whose names belong to that store:
    ``agl init outer/rollouts`` made what the outer store's ``check`` took for damage."""

    def __init__(self, root: str, outer: str) -> None:
        super().__init__(f"cannot make a store at {root}: it is inside the store at {outer}")
        self.root = root
        self.outer = outer


class StoreNotFoundError(AglError, FileNotFoundError):
    """The directory holds no store (no ``FORMAT.json``)."""

    def __init__(self, root: str) -> None:
        super().__init__(f"no store at {root} (create one with `agl init {root}`)")
        self.root = root


class FormatVersionError(AglError, RuntimeError):
    """The store was written by a newer, incompatible format version."""

    def __init__(self, root: str, found: object, supported: int) -> None:
        super().__init__(f"store {root} has format version {found!r}; this agl reads version {supported}")
        self.root = root
        self.found = found
        self.supported = supported


class MaintenanceBusyError(AglError, RuntimeError):
    """Another process holds the store's maintenance lock (a repair or a migration is running)."""

    def __init__(self, lock_path: str) -> None:
        super().__init__(f"another maintenance process holds {lock_path}; try again when it is done")
        self.lock_path = lock_path


class RemoteStoreError(AglError, RuntimeError):
    """The store server failed (5xx, 401, an unexpected reply) or could not be reached after retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ExitCode(enum.IntEnum):
    """The exit codes of ``agl``; the member docs are what ``agl --help`` shows."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    BAD_INPUT = 4
    NO_STORE = 5
    CONFLICT = 6
    CORRUPT = 7
    QUEUE_EMPTY = 10
    WAIT_TIMED_OUT = 11
    NOT_ALL_SUCCEEDED = 12
    ATTEMPT_LOST = 13
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _EXIT_MEANINGS[self]


_EXIT_MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "any other store error",
    ExitCode.USAGE: "usage",
    ExitCode.NOT_FOUND: "not found",
    ExitCode.BAD_INPUT: "bad input",
    ExitCode.NO_STORE: "no store",
    ExitCode.CONFLICT: "conflict",
    ExitCode.CORRUPT: "corrupt record",
    ExitCode.QUEUE_EMPTY: "queue empty",
    ExitCode.WAIT_TIMED_OUT: "wait timed out",
    ExitCode.NOT_ALL_SUCCEEDED: "not all succeeded",
    ExitCode.ATTEMPT_LOST: "attempt no longer yours",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM)",
}


@dataclass(frozen=True)
class ErrorMapping:
    """What one kind of error means to the command line and to the REST API.

    ``exit_code`` None: not an expected command-line error (the CLI treats it as a bug).
    ``client_error``: the REST answer is a caller's mistake, carrying the class name and
    attributes so the client can raise the same error; otherwise it is the server's problem
    (logged there).
    """

    error: type[BaseException]
    exit_code: ExitCode | None
    http_status: int
    client_error: bool


# First match wins, so subclasses come before their bases.
ERROR_TABLE: tuple[ErrorMapping, ...] = (
    ErrorMapping(NotFoundError, ExitCode.NOT_FOUND, 404, True),
    ErrorMapping(ConflictError, ExitCode.CONFLICT, 409, True),
    ErrorMapping(MaintenanceBusyError, ExitCode.CONFLICT, 409, True),
    ErrorMapping(InvalidIdError, ExitCode.BAD_INPUT, 400, True),
    ErrorMapping(BadTokenError, ExitCode.BAD_INPUT, 400, True),
    ErrorMapping(UnstorableValueError, ExitCode.BAD_INPUT, 400, True),
    ErrorMapping(CursorMismatchError, ExitCode.BAD_INPUT, 400, True),
    ErrorMapping(NestedStoreError, ExitCode.BAD_INPUT, 400, True),
    # A missing store or damage on disk is the server's problem, not the caller's.
    ErrorMapping(StoreNotFoundError, ExitCode.NO_STORE, 500, False),
    ErrorMapping(FormatVersionError, ExitCode.NO_STORE, 500, False),
    ErrorMapping(CorruptRecordError, ExitCode.CORRUPT, 500, False),
    ErrorMapping(AglError, ExitCode.ERROR, 500, False),
    ErrorMapping(pydantic.ValidationError, ExitCode.BAD_INPUT, 422, True),
    # The store's argument checks (paging, key counts, None where a dict is needed).
    ErrorMapping(ValueError, None, 400, True),
    ErrorMapping(TypeError, None, 400, True),
)


def mapping_for(err: BaseException) -> ErrorMapping | None:
    """The first row of :data:`ERROR_TABLE` that ``err`` is an instance of; None for the rest."""
    for row in ERROR_TABLE:
        if isinstance(err, row.error):
            return row
    return None
