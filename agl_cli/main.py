"""Entry point of the ``agl`` command."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="agl",
    help="Drive, inspect and repair an Agent-lightning training loop kept in a directory.",
    no_args_is_help=True,
)


@app.callback()
def _root() -> None:
    """agl: an Agent-lightning store that is a directory."""


@app.command()
def init(path: str = typer.Argument("runs/default", help="Directory of the new store.")) -> None:
    """Create a store (idempotent): `agl init runs/exp1`."""
    from store_fs import init_store

    root = init_store(path)
    typer.echo(f"store ready at {root}", err=True)


def main() -> None:
    app()
