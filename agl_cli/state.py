"""Global options (store path, output format) and the helpers every command uses."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from store_fs import FileStore

T = TypeVar("T")

DEFAULT_STORE = "runs/default"


@dataclass
class Settings:
    store: str | None = None
    json: bool = False


settings = Settings()


def store_path() -> Path:
    return Path(settings.store or os.environ.get("AGL_STORE") or DEFAULT_STORE)


def open_store() -> FileStore:
    """The store named by --store / AGL_STORE / runs/default; it must exist (`agl init`)."""
    from store_fs import FileStore

    return FileStore(store_path(), create=False)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def require_rollout(store: FileStore, rollout_id: str) -> Any:
    """The rollout, or RolloutNotFoundError (exit 3): commands check ids before changing anything."""
    rollout = run(store.get_rollout_by_id(rollout_id))
    if rollout is None:
        from store_fs import RolloutNotFoundError

        raise RolloutNotFoundError(rollout_id)
    return rollout
