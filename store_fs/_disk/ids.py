"""Identifier generation and validation.

Store-made ids follow upstream's formats (``ro-`` + 12 hex, ``at-`` + 8 hex,
``rs-`` + 12 hex). Caller-chosen ids (resources ids given to
``update_resources``, worker ids) may be any reasonable string, but every id is
checked here before it becomes part of a path, so no id can escape the store
directory.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Final

from store_fs.errors import InvalidIdError

__all__ = [
    "attempt_id_from_name",
    "check_attempt_id",
    "check_name_id",
    "check_rollout_id",
    "is_rollout_id",
    "new_attempt_id",
    "new_resources_id",
    "new_rollout_id",
    "rollout_id_for_key",
]

ROLLOUT_ID_RE: Final = re.compile(r"ro-[0-9a-f]{12}")
ATTEMPT_ID_RE: Final = re.compile(r"at-[0-9a-f]{8}")
MAX_NAME_LENGTH: Final = 200
# Ids made only of these (store-made ids, most caller-chosen ones) pass every check below; one
# match instead of the checks in turn (a wait for 1,000 rollouts checks 1,000 ids).
_PLAIN: Final = re.compile(rf"[A-Za-z0-9_\-][A-Za-z0-9_\-]{{0,{MAX_NAME_LENGTH - 1}}}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _hex(n: int) -> str:
    # Upstream's recipe: SHA-1 of 16 random bytes, truncated.
    return hashlib.sha1(uuid.uuid4().bytes).hexdigest()[:n]


def new_rollout_id() -> str:
    return "ro-" + _hex(12)


def new_attempt_id() -> str:
    return "at-" + _hex(8)


def new_resources_id() -> str:
    return "rs-" + _hex(12)


def rollout_id_for_key(key: str) -> str:
    """The rollout id an idempotency key maps to: the same key always names the same rollout."""
    if not key:
        raise InvalidIdError("idempotency key", key, "must not be empty")
    return "ro-" + hashlib.sha256(b"agl-idempotency:" + key.encode()).hexdigest()[:12]


def _check_unsafe(kind: str, value: object) -> str:
    """Reject what could escape or corrupt a path; return the id when merely odd-looking is fine."""
    if not isinstance(value, str):
        raise InvalidIdError(kind, repr(value), "must be a string")
    if _PLAIN.fullmatch(value):
        return value
    if not value:
        raise InvalidIdError(kind, value, "must not be empty")
    if "\x00" in value:
        raise InvalidIdError(kind, value, "contains NUL")
    if "/" in value or "\\" in value:
        raise InvalidIdError(kind, value, "contains a path separator")
    if value.startswith("."):
        raise InvalidIdError(kind, value, "starts with '.'")
    if ".." in value:
        raise InvalidIdError(kind, value, "contains '..'")
    if _CONTROL.search(value):
        raise InvalidIdError(kind, value, "contains a control character")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidIdError(kind, value[:40] + "...", f"longer than {MAX_NAME_LENGTH} characters")
    _check_encoded_length(kind, value)
    return value


def _check_encoded_length(kind: str, value: str) -> None:
    # A file name is limited in bytes (255 on Linux), and the name an id becomes carries a prefix
    # or suffix: 128 'é' are 128 characters but 256 bytes, which failed only once written.
    try:
        encoded = value.encode()
    except UnicodeEncodeError:
        raise InvalidIdError(kind, ascii(value)[:40], "is not valid Unicode (a lone surrogate)") from None
    if len(encoded) > MAX_NAME_LENGTH:
        raise InvalidIdError(kind, value[:40] + "...", f"longer than {MAX_NAME_LENGTH} bytes in UTF-8")


def is_rollout_id(value: str) -> bool:
    """True when ``value`` has the exact shape of a rollout id (after the safety check)."""
    return ROLLOUT_ID_RE.fullmatch(_check_unsafe("rollout", value)) is not None


def check_rollout_id(value: str) -> str:
    """Return ``value`` if it is a well-formed rollout id, else raise :class:`InvalidIdError`."""
    if not is_rollout_id(value):
        raise InvalidIdError("rollout", value, "expected 'ro-' followed by 12 hex digits")
    return value


def check_attempt_id(value: str) -> bool:
    """Raise for unsafe attempt ids; return whether the id has the store's ``at-`` shape."""
    return ATTEMPT_ID_RE.fullmatch(_check_unsafe("attempt", value)) is not None


def check_name_id(kind: str, value: str) -> str:
    """Validate a caller-chosen id (resources, worker) that becomes a file name."""
    return _check_unsafe(kind, value)


def attempt_id_from_name(name: str) -> str | None:
    """Extract the attempt id from an attempt directory name ``<seq>-<attempt_id>``."""
    _, _, rest = name.partition("-")
    return rest if ATTEMPT_ID_RE.fullmatch(rest) else None
