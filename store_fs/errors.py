"""The one exception hierarchy of ``store_fs``.

Everything the library raises on purpose derives from :class:`AglError`. Each
subclass also inherits the builtin that upstream Agent-lightning raises for the
same situation (``ValueError`` for unknown ids and bad values), so code written
against upstream keeps working. The CLI maps these classes to exit codes in one
place (``agl_cli.errors``); the HTTP server maps them to status codes.

Every error carries structured attributes and a one-line message, and survives
pickling (the runner crosses process boundaries).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AglError",
    "AttemptNotFoundError",
    "ConflictError",
    "CorruptRecordError",
    "FormatVersionError",
    "InvalidIdError",
    "NotFoundError",
    "ResourcesNotFoundError",
    "RolloutNotFoundError",
    "StoreNotFoundError",
    "WorkerNotFoundError",
]


class AglError(Exception):
    """Base class of every error raised on purpose by ``store_fs``."""

    def __init__(self, message: str, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in attrs.items():
            setattr(self, key, value)
        self._attrs = attrs

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._attrs))


def _rebuild(cls: type[AglError], message: str, attrs: dict[str, Any]) -> AglError:
    err = cls.__new__(cls)
    AglError.__init__(err, message, **attrs)
    return err


class NotFoundError(AglError, ValueError):
    """An id names nothing in the store. A ``ValueError``, as upstream raises."""


class RolloutNotFoundError(NotFoundError):
    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"Rollout {rollout_id} not found", rollout_id=rollout_id)


class AttemptNotFoundError(NotFoundError):
    def __init__(self, rollout_id: str, attempt_id: str) -> None:
        super().__init__(
            f"Attempt {attempt_id} not found for rollout {rollout_id}",
            rollout_id=rollout_id,
            attempt_id=attempt_id,
        )


class ResourcesNotFoundError(NotFoundError):
    def __init__(self, resources_id: str) -> None:
        super().__init__(f"Resources {resources_id} not found", resources_id=resources_id)


class WorkerNotFoundError(NotFoundError):
    def __init__(self, worker_id: str) -> None:
        super().__init__(f"Worker {worker_id} not found", worker_id=worker_id)


class InvalidIdError(AglError, ValueError):
    """An id that may not touch a path: empty, too long, or holding ``/``, ``..``, NUL..."""

    def __init__(self, kind: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {kind} id {value!r}: {reason}", kind=kind, value=value, reason=reason)


class ConflictError(AglError, ValueError):
    """The request contradicts the stored state (for example: starting an attempt of a cancelled rollout)."""


class CorruptRecordError(AglError, ValueError):
    """A complete record on disk does not parse or validate. The file is named; nothing is rewritten."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"corrupt record {path}: {reason}", path=path, reason=reason)


class StoreNotFoundError(AglError, FileNotFoundError):
    """The directory holds no store (no ``FORMAT.json``)."""

    def __init__(self, root: str) -> None:
        super().__init__(f"no store at {root} (create one with `agl init {root}`)", root=root)


class FormatVersionError(AglError, RuntimeError):
    """The store was written by a newer, incompatible format version."""

    def __init__(self, root: str, found: object, supported: int) -> None:
        super().__init__(
            f"store {root} has format version {found!r}; this agl reads version {supported}",
            root=root,
            found=found,
            supported=supported,
        )
