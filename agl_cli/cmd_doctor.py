"""agl doctor: is the filesystem under a store fit for it (store_fs.doctor)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from . import output
from .state import CliState

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def doctor(
    ctx: typer.Context,
    store: Annotated[
        str | None, typer.Argument(help="Store directory (default: --store, AGL_STORE or runs/default).")
    ] = None,
) -> None:
    """Check the filesystem under a store: mount type and options, exclusive create, link and
    rename behaviour, this host's clock against the file server's, how waits wake up, what the
    store's durability setting protects against here (agl init --durability), free space.

    Exits 1 when a check fails (the filesystem cannot hold a store); warnings say what to change
    (docs/nfs.md explains the advice). JSON lines when piped.

    \b
    agl doctor /mnt/agl/exp1
    agl doctor --json | jq -r 'select(.level != "ok") | .advice'
    """
    from store_fs.doctor import diagnose

    cli = CliState.of(ctx)
    opened = (dataclasses.replace(cli, store=store) if store is not None else cli).open_store()
    findings = diagnose(opened.root)
    if cli.out.machine:
        for finding in findings:
            cli.out.emit_line(
                {
                    "check": finding.check,
                    "level": finding.level,
                    "message": finding.message,
                    "advice": finding.advice,
                }
            )
    else:
        for finding in findings:
            advice = f"\n        -> {finding.advice}" if finding.advice else ""
            typer.echo(f"{_MARK[finding.level]}  {finding.check}: {finding.message}{advice}")
    failed = [f for f in findings if f.level == "fail"]
    if failed:
        output.info(f"{len(failed)} check(s) failed: this filesystem cannot hold a store safely")
        raise typer.Exit(1)
