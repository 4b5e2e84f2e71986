"""Global options (store path, output format, quiet, verbose) and the helpers every command uses."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
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
        """The store as given (--store, else AGL_STORE, else runs/default): a path or a URL.
        An empty one given on the line is refused rather than read as "the default store"."""
        if self.store is not None and not self.store.strip():
            from .exit_codes import CliError

            raise CliError("the store's path is empty")
        return self.store or os.environ.get("AGL_STORE") or DEFAULT_STORE

    def store_path(self) -> Path:
        """The store directory (for commands that work on the directory itself). A server's
        URL is refused: made into a path, `agl init http://host:4747` created a directory
        `http:` and every command given that URL then worked on it without a word."""
        location = self.store_location()
        if is_url(location):
            from .exit_codes import CliError

            raise CliError(
                f"{location} is a store server's URL: this command works on a store directory "
                "(`agl run` takes a URL; `agl store --store DIR` serves one)"
            )
        return Path(location)

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


# How long a cancelled command may take to stop before it is interrupted where it stands.
_STOP_GRACE_SECONDS = 1.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store call to its end; Ctrl-C stops it (``KeyboardInterrupt``), even while blocked.

    Like ``asyncio.run``, a first Ctrl-C cancels the call, which then ends through its
    ``finally`` blocks. That cancellation lands only at the next ``await``, so a call blocked
    meanwhile (a store call waiting out a network filesystem's caches, up to a minute) ignored
    it: one still running a second later is interrupted where it stands. Store calls are safe
    to stop at any point, as a kill -9 is. A second Ctrl-C interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(coro)
    previous = signal.getsignal(signal.SIGINT)
    previous_alarm = signal.getsignal(signal.SIGALRM)
    # Someone chose their own SIGINT handler, or holds SIGALRM (None: one installed outside
    # Python, which could not be put back): leave both alone.
    if previous is not signal.default_int_handler or previous_alarm not in (signal.SIG_DFL, signal.SIG_IGN):
        return asyncio.run(coro)
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(coro)
        interrupted = False

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            nonlocal interrupted
            if interrupted:
                raise KeyboardInterrupt
            interrupted = True
            loop.call_soon_threadsafe(task.cancel)
            signal.setitimer(signal.ITIMER_REAL, _STOP_GRACE_SECONDS)

        def on_alarm(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)
        signal.signal(signal.SIGALRM, on_alarm)
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
            signal.signal(signal.SIGINT, previous)


def require_rollout(store: FileStore, rollout_id: str) -> Any:
    """The rollout, or RolloutNotFoundError (exit 3): commands check ids before changing anything."""
    rollout = run(store.get_rollout_by_id(rollout_id))
    if rollout is None:
        from store_fs import RolloutNotFoundError

        raise RolloutNotFoundError(rollout_id)
    return rollout
