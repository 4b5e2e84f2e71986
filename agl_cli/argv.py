"""The command line before click sees it: global options moved to the front, arguments checked.

Click parses a group's options only before the subcommand, but ``agl rollouts list --json
--store runs/exp1`` is how gh and kubectl users type. :func:`hoist_globals` moves the
global options (``--store/-s DIR``, ``--json``, ``--quiet/-q``, ``--verbose/-v``) from
anywhere on the line to the front, so click parses them as the root's options. It walks the
line with the command tree's own option lists, so the value of a command's option is never
taken for a global option (``agl fail R A --error --json`` keeps ``--json`` as the error
message), and it stops at ``--``: what follows is positional. A global option given twice
keeps the last, as click does. No command may declare a global option's name (a test checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GLOBAL_FLAGS = ("--json", "--quiet", "-q", "--verbose", "-v")
GLOBAL_VALUED = ("--store", "-s")
_SHORT_FLAGS = {"q", "v"}


@dataclass
class Hoisted:
    """The line with global options first; ``verbose`` if -v/--verbose was among them;
    ``missing_value``: a global option that ends the line without its value."""

    args: list[str]
    verbose: bool = False
    missing_value: str | None = None


def _valued_options(command: Any) -> set[str]:
    """Names of ``command``'s options that take a value (flags and counts do not)."""
    names: set[str] = set()
    for param in getattr(command, "params", ()):
        if getattr(param, "param_type_name", "") != "option":
            continue
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        names.update(param.opts)
        names.update(getattr(param, "secondary_opts", ()))
    return names


def _global_width(args: Sequence[str], i: int) -> int:
    """How many tokens the global option at ``args[i]`` spans (0: not a global option)."""
    arg = args[i]
    if arg in GLOBAL_FLAGS:
        return 1
    if arg in GLOBAL_VALUED or _ends_with_store(arg):
        return 2 if i + 1 < len(args) else 0
    if arg.startswith("--store=") or (arg.startswith("-s") and not arg.startswith("--") and len(arg) > 2):
        return 1
    if _store_in_bundle(arg):
        return 1  # -qsDIR
    return 1 if _short_bundle(arg) else 0


def _short_bundle(arg: str) -> bool:
    """-vq, -qv: global short flags written together."""
    return len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and set(arg[1:]) <= _SHORT_FLAGS


def _flags_then_store(arg: str) -> int:
    """Where ``-s`` starts its value in a bundle of global short flags ending with it (``-qs``,
    ``-vqsDIR``: the index after the ``s``), or 0 when ``arg`` is no such bundle."""
    if len(arg) < 3 or arg[0] != "-" or arg[1] == "-" or "s" not in arg:
        return 0
    flags = arg[1 : arg.index("s")]
    return arg.index("s") + 1 if flags and set(flags) <= _SHORT_FLAGS else 0


def _bundled_flags(arg: str) -> str:
    """The global short flags of a bundle (``-vq``: "vq"; ``-vsDIR``: "v"), else ""."""
    if _short_bundle(arg):
        return arg[1:]
    start = _flags_then_store(arg)
    return arg[1 : start - 1] if start else ""


def _ends_with_store(arg: str) -> bool:
    """``-qs``: global flags and ``-s``, whose value is the next token."""
    return 0 < _flags_then_store(arg) == len(arg)


def _store_in_bundle(arg: str) -> bool:
    """``-qsDIR``: global flags and ``-s`` with its value attached."""
    return 0 < _flags_then_store(arg) < len(arg)


def _takes_value(arg: str, command: Any) -> bool:
    """Whether ``arg`` is an option of ``command`` whose value is the next token."""
    return "=" not in arg and arg in _valued_options(command)


def hoist_globals(args: Sequence[str], root: Any) -> Hoisted:
    """``args`` with the global options moved in front (see the module docstring)."""
    front: list[str] = []
    rest: list[str] = []
    command = root
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if (arg in GLOBAL_VALUED or _ends_with_store(arg)) and i + 1 == len(args):
            return Hoisted(list(args), missing_value=arg)
        width = _global_width(args, i)
        if width:
            front.extend(args[i : i + width])
        elif arg.startswith("-") and len(arg) > 1:
            width = 2 if _takes_value(arg, command) and i + 1 < len(args) else 1
            rest.extend(args[i : i + width])
        else:
            width = 1
            sub = getattr(command, "commands", {}).get(arg)
            command = sub if sub is not None else command
            rest.append(arg)
        i += width
    verbose = any(a in ("--verbose", "-v") or "v" in _bundled_flags(a) for a in front)
    return Hoisted(front + rest, verbose=verbose)


def undecodable(args: Sequence[str]) -> tuple[int, str] | None:
    """The first argument that is not valid UTF-8 (position from 1, shown escaped), or None.

    Python hands such bytes over as lone surrogates, which no JSON writer accepts; agl
    refuses them on the line rather than failing halfway through a command.
    """
    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raw = arg.encode("utf-8", "surrogateescape")
            return position, repr(raw)[2:-1]
    return None
