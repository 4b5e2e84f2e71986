"""Where failures become exit codes and one line on stderr.

:class:`CliError` is for the commands' own checks; the library's errors are looked up in
:data:`store_fs.errors.ERROR_TABLE` (the codes are :class:`store_fs.errors.ExitCode`, listed
by ``agl --help``). :func:`report` handles everything else an invocation can raise, so no
input ends in a traceback: usage errors (exit 2, with the command's ``--help`` as the hint),
operating-system errors (exit 1, naming the file) and bugs (exit 1). Every one is a single
line; with ``--verbose`` (or ``AGL_VERBOSE=1``) the traceback is printed above it.
"""

from __future__ import annotations

import re
import sys
import traceback

from store_fs.errors import ExitCode, mapping_for

TRACEBACK_HINT = "--verbose shows the traceback"


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


def _polish(message: str) -> str:
    """Click's and pydantic's wording, shortened: "Value error, x" -> "x", "Input should" -> "must"."""
    message = message.replace("Value error, ", "").replace("Input should be", "must be")
    return re.sub(r"\s+", " ", message).strip()


def usage_line(err: Exception) -> str:
    """A click usage error as one line, ending with where to read the command's help."""
    ctx = getattr(err, "ctx", None)
    format_message = getattr(err, "format_message", None)
    message = _polish(format_message() if callable(format_message) else str(err))
    message = message[:1].lower() + message[1:].rstrip(".")
    where = f"{ctx.command_path} --help" if ctx is not None else "agl --help"
    return f"{message} (see '{where}')"


def _os_line(err: OSError) -> str:
    where = err.filename if err.filename is not None else ""
    what = err.strerror or type(err).__name__
    return f"{what}: {where} ({TRACEBACK_HINT})" if where else f"{what} ({TRACEBACK_HINT})"


def _say(line: str) -> None:
    sys.stderr.write(f"agl: {line}\n")
    sys.stderr.flush()


def report(err: BaseException, verbose: bool) -> int:
    """Print ``err`` as one ``agl: ...`` line (after its traceback with ``verbose``); its exit code."""
    from typer._click.exceptions import ClickException, UsageError

    if isinstance(err, UsageError):
        _say(usage_line(err))
        return ExitCode.USAGE
    if isinstance(err, ClickException):  # e.g. a file click could not open
        _say(_polish(err.format_message()))
        return err.exit_code
    if verbose:
        traceback.print_exception(err, file=sys.stderr)
    code = exit_code_for(err)
    if code is not None:
        _say(one_line(err))
        return code
    if isinstance(err, OSError):
        _say(_os_line(err))
        return ExitCode.ERROR
    _say(f"unexpected {type(err).__name__}: {one_line(err)} ({TRACEBACK_HINT})")
    return ExitCode.ERROR
