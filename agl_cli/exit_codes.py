"""Where failures become exit codes: :class:`CliError` for the commands' own checks, and
:data:`store_fs.errors.ERROR_TABLE` for the library's errors (the codes are
:class:`store_fs.errors.ExitCode`, listed by ``agl --help``)."""

from __future__ import annotations

from store_fs.errors import ExitCode, mapping_for


class CliError(Exception):
    """A user-facing failure raised by a command: one line, one exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(err: BaseException) -> int | None:
    """The documented exit code of an expected error; None for a bug (keeps its traceback)."""
    if isinstance(err, CliError):
        return err.code
    row = mapping_for(err)
    return None if row is None else row.exit_code


def exit_codes_help() -> str:
    """The exit codes as one line for ``--help``."""
    return ", ".join(f"{code.value} {code.meaning}" for code in ExitCode) + "."


def one_line(err: BaseException) -> str:
    """The error as one line (pydantic's multi-line reports are folded)."""
    import pydantic

    if isinstance(err, pydantic.ValidationError):
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "value"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"invalid {err.title}: {where}: {first.get('msg')}{more}"
    return " ".join(str(err).split())
