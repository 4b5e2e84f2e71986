"""Global options (store path, output format, quiet, verbose) and the helpers every command uses."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from .output import Output

if TYPE_CHECKING:
    from store_fs import FileStore

T = TypeVar("T")

DEFAULT_STORE = "runs/default"


@dataclass
class CliState:
    """The global options of one ``agl`` invocation, kept in typer's ``ctx.obj`` by the app's
    callback; every command reads them from its context (``CliState.of(ctx)``)."""

    store: str | None = None
    json: bool = False
    quiet: bool = False
    verbose: bool = False

    @classmethod
    def of(cls, ctx: typer.Context) -> CliState:
        """The state of the invocation ``ctx`` belongs to (defaults when the callback did not run)."""
        state = ctx.find_object(cls)
        return state if state is not None else cls()

    @property
    def out(self) -> Output:
        return Output(force_json=self.json)

    def store_location(self) -> str:
        """The store as given (--store, else AGL_STORE, else runs/default): a path or a URL."""
        return self.store or os.environ.get("AGL_STORE") or DEFAULT_STORE

    def store_path(self) -> Path:
        """The store directory (for commands that work on the directory itself)."""
        return Path(self.store_location())

    def open_store(self) -> FileStore:
        """The store named by --store / AGL_STORE / runs/default; it must exist (`agl init`)."""
        from store_fs import FileStore

        store = FileStore(self.store_path(), create=False)
        check_directories(store)
        return store


def check_store_path(target: Path) -> None:
    """Refuse to create a store at a path that is, or lies under, something other than a directory."""
    from .exit_codes import CliError

    for parent in (target, *target.parents):
        if parent.exists() and not parent.is_dir():
            raise CliError(f"cannot create a store at {target}: {parent} is not a directory")


def check_directories(store: FileStore) -> None:
    """Refuse a store where one of its directories is something else (a few stats): the
    commands would otherwise see it as empty, or fail halfway with an OS error."""
    from store_fs.errors import ExitCode

    from .exit_codes import CliError

    for directory in store.layout.directories():
        if os.path.lexists(directory) and not directory.is_dir():
            raise CliError(f"damaged store: {directory} is not a directory", ExitCode.CORRUPT)


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def require_rollout(store: FileStore, rollout_id: str) -> Any:
    """The rollout, or RolloutNotFoundError (exit 3): commands check ids before changing anything."""
    rollout = run(store.get_rollout_by_id(rollout_id))
    if rollout is None:
        from store_fs import RolloutNotFoundError

        raise RolloutNotFoundError(rollout_id)
    return rollout
