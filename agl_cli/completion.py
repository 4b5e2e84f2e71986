"""Shell completion of ids from the store (rollouts, attempts, resources).

Click completes commands, options and enumerated values by itself; these callbacks add the
ids the store holds. They run while the shell waits, with the line parsed leniently (no
callback has run, so ``ctx.obj`` is empty): they find the store from the root's parsed
``--store`` / ``AGL_STORE``, and any failure means "no suggestions", never an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from store_fs import FileStore

# Suggestions are for people: the newest this many are plenty.
MAX_SUGGESTIONS = 200

Suggestions = list[tuple[str, str]]


def _open(ctx: typer.Context) -> FileStore:
    from .state import CliState

    root = ctx.find_root()
    return CliState(store=root.params.get("store")).open_store()


def _safely(ctx: typer.Context, find: Callable[[FileStore], Suggestions]) -> Suggestions:
    try:
        return find(_open(ctx))[:MAX_SUGGESTIONS]
    except Exception:  # completion never fails: no store, a bad id, a damaged record...
        return []


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def rollout_ids(ctx: typer.Context, incomplete: str) -> Suggestions:
    """Rollout ids starting with ``incomplete``, newest first, each with its status."""

    def find(store: FileStore) -> Suggestions:
        found = _run(store.query_rollouts(rollout_id_contains=incomplete or None, sort_order="asc"))
        newest = reversed(list(found))
        return [(r.rollout_id, r.status) for r in newest if r.rollout_id.startswith(incomplete)]

    return _safely(ctx, find)


def _rollout_on_the_line(ctx: typer.Context) -> str | None:
    """The rollout named earlier on the line: as click parsed it, or, when completing the value
    of an option (click then parses nothing), the first word of the line being completed that
    looks like a rollout id (bash passes the line in COMP_WORDS, the other shells in
    _TYPER_COMPLETE_ARGS)."""
    parsed = ctx.params.get("rollout_id")
    if isinstance(parsed, str):
        return parsed
    line = os.environ.get("_TYPER_COMPLETE_ARGS") or os.environ.get("COMP_WORDS") or ""
    return next((word for word in line.split() if word.startswith("ro-")), None)


def attempt_ids(ctx: typer.Context, incomplete: str) -> Suggestions:
    """Attempt ids of the rollout named earlier on the line, newest first, and 'latest'."""
    rollout_id = _rollout_on_the_line(ctx)
    if rollout_id is None:
        return []

    def find(store: FileStore) -> Suggestions:
        attempts = list(_run(store.query_attempts(rollout_id)))
        found = [(a.attempt_id, f"attempt {a.sequence_id}, {a.status}") for a in reversed(attempts)]
        found.append(("latest", "the newest attempt"))
        return [item for item in found if item[0].startswith(incomplete)]

    return _safely(ctx, find)


def resources_ids(ctx: typer.Context, incomplete: str) -> Suggestions:
    """Resources snapshot ids starting with ``incomplete``, and 'latest'."""

    def find(store: FileStore) -> Suggestions:
        found = [(u.resources_id, f"version {u.version}") for u in _run(store.query_resources())]
        found.append(("latest", "the newest snapshot"))
        return [item for item in found if item[0].startswith(incomplete)]

    return _safely(ctx, find)
