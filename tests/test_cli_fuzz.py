"""A seeded fuzz test of the installed ``agl``: 600 malformed invocations (5,000 in the opt-in
stress run), built from the commands' own option lists, must each be refused cleanly.

Every invocation starts from a valid call of one command (``BASES``) and gets exactly one
thing wrong (an unknown option or command, an option without its value or with a value its
declared type, range, parser or choices refuse, a missing or extra argument, malformed JSON
or stdin, an id that names nothing or escapes the store, a non-UTF-8 argument, a broken
store, a bad environment variable...), plus harmless noise: global options and their
environment variables anywhere on the line. For each one: a non-zero documented exit code
(2 for usage errors), exactly one ``agl: ...`` line on stderr, nothing on stdout, no
traceback, no hang, and no file changed anywhere in the sandbox (the store included).

Speed: the invocations run through tests/cli_fuzz_driver.py, which executes the installed
console script in forked children of one warm interpreter (its docstring says why), in two
drivers at once, each on its own copy of the sandbox; a sample is run again through the real
executable and must give byte-identical results. AGL_FUZZ_SEED=N explores other seeds.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from cli_helpers import AGL, Ids, agl_env, diff_snapshots, run_driver, seed_store, snapshot

from store_fs.errors import ExitCode

SEED = int(os.environ.get("AGL_FUZZ_SEED", "21"))
REAL_SAMPLE = 12
DRIVERS = 2
INVOCATION_TIMEOUT = 10.0
DOCUMENTED = {int(code) for code in ExitCode} - {0}
USAGE = frozenset({2})

Unit = tuple[str, ...]  # an option with its value, or one argument: never split by noise


# --------------------------------------------------------------------------------------------
# The commands, as click sees them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    opts: tuple[str, ...]
    positional: bool
    flag: bool
    multiple: bool
    required: bool
    annotation: Any
    choices: tuple[str, ...] | None
    case_sensitive: bool
    low: float | None
    high: float | None
    parser: Callable[[Any], Any] | None


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    params: tuple[Param, ...]

    def options(self) -> list[Param]:
        return [p for p in self.params if not p.positional]

    def valued(self) -> list[Param]:
        return [p for p in self.options() if not p.flag]

    def arguments(self) -> list[Param]:
        return [p for p in self.params if p.positional]


def _param(raw: Any) -> Param:
    descriptor = raw.type_descriptor
    info = descriptor.parameter_info
    choices = descriptor.choices
    return Param(
        name=raw.name,
        opts=tuple(raw.opts),
        positional=raw.param_type_name == "argument",
        flag=bool(getattr(raw, "is_flag", False)),
        multiple=bool(getattr(raw, "multiple", False)) or raw.nargs == -1,
        required=bool(raw.required),
        annotation=descriptor.annotation,
        choices=None if choices is None else tuple(getattr(c, "value", c) for c in choices),
        case_sensitive=bool(descriptor.case_sensitive),
        low=getattr(raw, "min", None),
        high=getattr(raw, "max", None),
        parser=info.parser,
    )


def commands() -> list[Command]:
    """Every leaf command of the installed app with its parameters (completion options aside)."""
    from agl_cli.main import app

    found: list[Command] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in sorted(subs.items()):
                walk(sub, (*path, name))
            return
        params = tuple(_param(p) for p in cmd.params if p.name != "help")
        found.append(Command(path, params))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = commands()


# --------------------------------------------------------------------------------------------
# The sandbox: a populated store, broken stores, and nothing else that may change
# --------------------------------------------------------------------------------------------


def make_sandbox(root: Path) -> Ids:
    from store_fs import init_store

    root.mkdir(parents=True)
    ids = seed_store(root / "store")
    init_store(root / "damaged")  # a store whose rollouts/ is a file
    shutil.rmtree(root / "damaged" / "rollouts")
    (root / "damaged" / "rollouts").write_text("not a directory\n")
    init_store(root / "badformat")
    (root / "badformat" / "FORMAT.json").write_text('{"version": ')
    (root / "afile.txt").write_text("a file, not a store\n")
    (root / "task.json").write_text('{"q": "from a file"}\n')
    (root / "home").mkdir()
    (root / "tmp").mkdir()
    return ids


# --------------------------------------------------------------------------------------------
# Valid calls, and what goes wrong with them
# --------------------------------------------------------------------------------------------

# One valid call per command: units of the line, and stdin. {done} etc. are filled from Ids.
BASES: dict[tuple[str, ...], tuple[list[Unit], str | None]] = {
    ("attempts", "list"): ([("{running}",)], None),
    ("attempts", "update"): ([("{running}",), ("{attempt}",), ("--status", "running")], None),
    ("check",): ([], None),
    ("compact",): ([], None),
    ("complete",): ([("{running}",), ("{attempt}",)], None),
    ("dequeue",): ([("--worker-id", "w9")], None),
    ("data", "messages"): ([], None),
    ("data", "rollouts"): ([], None),
    ("data", "triplets"): ([], None),
    ("doctor",): ([], None),
    ("report",): ([("--no-check",), ("-o", "report.html")], None),
    ("enqueue",): ([('{"q": 1}',), ("--mode", "train")], None),
    ("events",): ([], None),
    ("export",): ([("{done}",)], None),
    ("fail",): ([("{running}",), ("{attempt}",), ("--error", "boom")], None),
    ("heartbeat",): ([("{running}",), ("{attempt}",)], None),
    ("init",): ([], None),
    ("prune",): ([("--status", "failed"), ("--dry-run",)], None),
    ("resources", "add"): ([("--template", "T: {q}")], None),
    ("resources", "list"): ([], None),
    ("resources", "show"): ([("latest",)], None),
    ("resources", "update"): ([("{resources}",), ("--template", "T2: {q}")], None),
    ("reward",): ([("{running}",), ("0.5",), ("--attempt", "{attempt}")], None),
    ("rollouts", "cancel"): ([("{queued}",)], None),
    ("rollouts", "list"): ([("--status", "running")], None),
    ("rollouts", "retry"): ([("{done}",)], None),
    ("rollouts", "show"): ([("{done}",)], None),
    # `agl run` is never given an importable agent here: nothing may start runners.
    ("run",): ([("agl_fuzz_no_such_module:agent",)], None),
    ("spans", "add"): ([("{running}",), ("{attempt}",)], '{"name": "x"}\n'),
    ("spans", "list"): ([("{done}",)], None),
    ("spans", "tail"): ([("{done}",)], None),
    ("stats",): ([], None),
    ("store",): ([("--port", "0")], None),
    ("wait",): ([("{done}",), ("--timeout", "1")], None),
    ("workers", "list"): ([], None),
}

ID_PARAMS = {"rollout_id", "rollout_ids", "attempt_id", "resources_id"}
JSON_PARAMS = {"input", "metadata", "body"}
STDIN_COMMANDS = {("enqueue",): "input", ("spans", "add"): None}
# Commands that create what they are pointed at: a missing store directory is valid for them.
CREATING = {("init",), ("store",)}
# Commands that take the store directory as an optional argument.
STORE_ARGUMENT = {("doctor",), ("report",)}
BAD_IDS = ["ro-000000000000", "../x", "ro-../../etc", "", "a/b", "ro-" + "f" * 300, " ", "at-00000000"]
BAD_JSON = ['{"q": ', "[1, 2", "@no-such-file.json", "nul", "@afile.txt", "{'q': 1}"]
BAD_STDIN = ['{"name": \n', "\udcff\udcfe\n", '"x"\n{"y"\n', "", "\n\n", "nul\n"]
BAD_SPAN_LINES = ["[1, 2]\n", '"x"\n', '{"name": "x", "attributes": [1]}\n']  # JSON, not spans
BAD_ENV = {"AGL_JSON": "maybe", "AGL_QUIET": "2", "AGL_VERBOSE": "perhaps"}
NOISE: list[Unit] = [
    ("--json",),
    ("-q",),
    ("--quiet",),
    ("--store", "store"),
    ("-s", "store"),
    ("--store=store",),
]
NOISE_ENV = [("AGL_JSON", "1"), ("AGL_QUIET", "yes"), ("NO_COLOR", "1"), ("AGL_JSON", "0")]
WORDS = ["bogus", "jsn", "verbos", "stat", "limitt", "x", "all-of-them", "force"]
# Semantic mistakes the option lists cannot show, per command: (units, stdin, exit codes).
SEMANTIC: dict[tuple[str, ...], list[tuple[list[Unit], str | None, frozenset[int]]]] = {
    ("enqueue",): [
        ([('"x"',), ("--key", "k"), ("--idempotent",)], None, frozenset({4})),
        ([], "", frozenset({4})),
        ([("-",), ("--key", "k")], '"a"\n"b"\n', frozenset({4})),
        ([('"x"',), ("--metadata", "[1]")], None, frozenset({4})),
    ],
    ("attempts", "update"): [([("{running}",), ("{attempt}",)], None, frozenset({4}))],
    ("resources", "add"): [
        ([], None, frozenset({4})),
        ([("--llm-endpoint", "http://127.0.0.1:9/v1")], None, frozenset({4})),
        ([("--template-file", "no-such-prompt.txt")], None, frozenset({4})),
        ([("--body", "[1]")], None, frozenset({4})),
    ],
    ("export",): [
        ([], None, frozenset({4})),
        ([("{done}",), ("--all",)], None, frozenset({4})),
        ([("--all",), ("--status", "failed")], None, frozenset({4})),
        ([("{done}",), ("ro-000000000000",)], None, frozenset({3})),
    ],
    ("wait",): [([("-",)], "\udcff\n", frozenset({4}))],  # no id at all: nothing to wait for, 0
    ("spans", "add"): [
        ([], '{"name": "x"}\n', frozenset({4})),
        ([("{running}",), ("{attempt}",)], '{"name": "x", "colour": 1}\n', frozenset({4})),
        ([("{running}",), ("at-00000000",)], '{"name": "x"}\n', frozenset({3})),
    ],
    ("rollouts", "cancel"): [([("{queued}",), ("ro-000000000000",)], None, frozenset({3}))],
    ("reward",): [([("{queued}",), ("1",)], None, frozenset({3}))],
    ("complete",): [([("{done}",), ("at-00000000",)], None, frozenset({3}))],
}


@dataclass
class Invocation:
    kind: str
    command: tuple[str, ...]
    units: list[Unit]
    stdin: str | None
    codes: frozenset[int] | None  # None: any documented non-zero code
    env: dict[str, str] = field(default_factory=dict)
    head: list[Unit] = field(default_factory=list)  # units before the command path

    def args(self) -> list[str]:
        return (
            [t for unit in self.head for t in unit] + list(self.command) + [t for u in self.units for t in u]
        )

    def __str__(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        stdin = "" if self.stdin is None else f" <<< {self.stdin!r}"
        return f"[{self.kind}] {env + ' ' if env else ''}agl {' '.join(map(repr, self.args()))}{stdin}"


def _fill(units: list[Unit], ids: Ids) -> list[Unit]:
    names = {"{done}": ids.done, "{running}": ids.running, "{attempt}": ids.attempt}
    names |= {"{queued}": ids.queued, "{resources}": ids.resources}
    return [tuple(names.get(token, token) for token in unit) for unit in units]


def _invalid_numbers(param: Param) -> list[str]:
    """Values the parameter's declared type, range or parser refuses."""
    if param.parser is not None:  # ask the parser itself
        candidates = ["nan", "inf", "-inf", "1e999", "abc", "", "-1", "1e10", "-0.5", "0", "3600.5", "1e-9"]
        refused = []
        for value in candidates:
            try:
                param.parser(value)
            except typer.BadParameter:
                refused.append(value)
        return refused
    if param.annotation is float:  # a float without a parser: only what does not parse
        return ["abc", "", "0x10", "1,5", "--"]
    values = ["abc", "", "1.5", "0x10", "1e3", "--"]
    if param.low is not None:
        values += [str(int(param.low) - 1), "-" + "9" * 40]
    if param.high is not None:
        values += [str(int(param.high) + 1), "1" + "0" * 40]
    return values


def _invalid_values(param: Param) -> list[str]:
    if param.choices is not None:
        values = ["bogus", "", " " + param.choices[0], param.choices[0] + "x"]
        if param.case_sensitive and param.choices[0].upper() != param.choices[0]:
            values.append(param.choices[0].upper())
        return values
    inner = param.annotation
    inner = getattr(inner, "__args__", (inner,))[0] if param.multiple else inner
    if inner in (int, float) or param.parser is not None:
        return _invalid_numbers(param)
    return []


class Generator:
    """Builds invocations; each mutation returns None where it does not apply."""

    def __init__(self, rng: random.Random, ids: Ids) -> None:
        self.rng = rng
        self.ids = ids
        self.kinds: list[Callable[[Command, list[Unit], str | None], Invocation | None]] = [
            self.unknown_option,
            self.unknown_command,
            self.missing_value,
            self.bad_value,
            self.flag_with_value,
            self.missing_argument,
            self.extra_argument,
            self.bad_id,
            self.bad_json,
            self.bad_stdin,
            self.non_utf8,
            self.bad_store,
            self.bad_env,
            self.after_double_dash,
            self.semantic,
        ]

    def _at(self, units: list[Unit], unit: Unit, where: int | None = None) -> list[Unit]:
        where = self.rng.randint(0, len(units)) if where is None else where
        return [*units[:where], unit, *units[where:]]

    def _set(self, units: list[Unit], param: Param, unit: Unit) -> list[Unit]:
        """``unit`` (the option with a value) in place of the option's value in the base call,
        if it has one (the last of a repeated option wins), else anywhere."""
        if param.multiple:
            return self._at(units, unit)
        replaced = [unit if u[0] in param.opts else u for u in units]
        return replaced if replaced != units or unit in units else self._at(units, unit)

    def unknown_option(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        known = {o for p in cmd.options() for o in p.opts} | {"--json", "--quiet", "--verbose", "--store"}
        name = "--" + self.rng.choice(WORDS) if self.rng.random() < 0.8 else "-" + self.rng.choice("xyzZ")
        if name in known:
            return None
        return Invocation("unknown-option", cmd.path, self._at(units, (name,)), stdin, USAGE)

    def unknown_command(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        path = list(cmd.path)
        i = self.rng.randrange(len(path))
        path[i] = self.rng.choice([path[i] + "x", path[i][:-1], path[i].upper(), "no-such-" + path[i]])
        if tuple(path[: i + 1]) in {c.path[: i + 1] for c in COMMANDS}:
            return None
        return Invocation("unknown-command", tuple(path), units, stdin, USAGE)

    def missing_value(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        names = [p.opts[0] for p in cmd.valued()] + ["--store", "-s"]
        return Invocation("missing-value", cmd.path, [*units, (self.rng.choice(names),)], stdin, USAGE)

    def bad_value(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        typed = [(p, v) for p in cmd.params if not p.flag for v in _invalid_values(p)]
        if not typed:
            return None
        param, value = self.rng.choice(typed)
        if param.positional:  # replace the argument's value in the base call
            index = [i for i, p in enumerate(cmd.arguments()) if p is param]
            if not index or index[0] >= len(units):
                return None
            changed = list(units)
            changed[index[0]] = (value,)
            if value.startswith("-"):
                changed = [u for u in changed if u != (value,)] + [("--", value)]
            return Invocation("bad-value", cmd.path, changed, stdin, USAGE)
        flat = (param.opts[0], value)
        return Invocation("bad-value", cmd.path, self._set(units, param, flat), stdin, USAGE)

    def flag_with_value(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        flags = [p.opts[0] for p in cmd.options() if p.flag and p.opts[0].startswith("--")]
        if not flags:
            return None
        unit = (self.rng.choice(flags) + "=" + self.rng.choice(["1", "yes", ""]),)
        return Invocation("flag-with-value", cmd.path, self._at(units, unit), stdin, USAGE)

    def missing_argument(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        required = [i for i, p in enumerate(cmd.arguments()) if p.required]
        if not required:
            return None
        positional = [u for u in units if not u[0].startswith("-")]
        keep = positional[: self.rng.choice(required)]
        options = [u for u in units if u[0].startswith("-")]
        return Invocation("missing-argument", cmd.path, keep + options, stdin, USAGE)

    def extra_argument(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        arguments = cmd.arguments()
        if any(p.multiple for p in arguments) or cmd.path == ("run",):
            return None
        positional = [u for u in units if not u[0].startswith("-")]
        if len(positional) < len(arguments):  # an optional argument left out: fill it, then one more
            return None
        extra = [("extra-arg",)]
        return Invocation(
            "extra-argument",
            cmd.path,
            units[: len(positional)] + extra + units[len(positional) :],
            stdin,
            USAGE,
        )

    def bad_id(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        slots = [i for i, p in enumerate(cmd.arguments()) if p.name in ID_PARAMS and i < len(units)]
        slots = [i for i in slots if not units[i][0].startswith("-")]
        if not slots or cmd.path == ("resources", "update"):  # an unknown snapshot id is created there
            return None
        changed = list(units)
        changed[self.rng.choice(slots)] = (self.rng.choice(BAD_IDS),)
        return Invocation("bad-id", cmd.path, changed, stdin, frozenset({3, 4}))

    def bad_json(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        params = [p for p in cmd.params if p.name in JSON_PARAMS]
        if not params:
            return None
        param = self.rng.choice(params)
        value = self.rng.choice(BAD_JSON)
        if param.positional:
            changed = [(value,) if u == units[0] else u for u in units]
            return Invocation("bad-json", cmd.path, changed, stdin, frozenset({4}))
        return Invocation(
            "bad-json", cmd.path, self._set(units, param, (param.opts[0], value)), stdin, frozenset({4})
        )

    def bad_stdin(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        if cmd.path not in STDIN_COMMANDS:
            return None
        if STDIN_COMMANDS[cmd.path] == "input":  # enqueue: read stdin instead of the argument
            units = [u for u in units if u[0].startswith("-")]
        bad = BAD_STDIN if STDIN_COMMANDS[cmd.path] == "input" else BAD_STDIN + BAD_SPAN_LINES
        return Invocation("bad-stdin", cmd.path, units, self.rng.choice(bad), frozenset({4}))

    def non_utf8(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        bad = self.rng.choice(["ro-\udcff\udcfe", "\udce9t\udce9", "--\udcff", "caf\udce9"])
        if units and self.rng.random() < 0.5:
            i = self.rng.randrange(len(units))
            changed = list(units)
            changed[i] = (*units[i][:-1], bad)
            return Invocation("non-utf8", cmd.path, changed, stdin, frozenset({4}))
        return Invocation("non-utf8", cmd.path, self._at(units, (bad,)), stdin, frozenset({4}))

    def bad_store(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        stores = ["afile.txt", "damaged", "badformat", "afile.txt/sub"]
        if cmd.path not in CREATING:
            stores += ["no-such-store", "store/rollouts"]
        unit = self.rng.choice([("--store", s) for s in stores] + [(f"--store={s}",) for s in stores])
        return Invocation("bad-store", cmd.path, self._at(units, unit), stdin, frozenset({4, 5, 7}))

    def bad_env(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        name = self.rng.choice(sorted(BAD_ENV))
        return Invocation("bad-env", cmd.path, units, stdin, USAGE, env={name: BAD_ENV[name]})

    def after_double_dash(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        if cmd.path in CREATING:  # `agl init -- --json` makes a store named "--json": valid
            return None
        unit = ("--", self.rng.choice(["--json", "-q", "--store"]))
        # For commands whose argument is a store directory, "--json" names a store that is not there.
        codes = frozenset({2, 3, 4, 5}) if cmd.path in STORE_ARGUMENT else frozenset({2, 3, 4})
        return Invocation("after-double-dash", cmd.path, [*units, unit], stdin, codes)

    def semantic(self, cmd: Command, units: list[Unit], stdin: str | None) -> Invocation | None:
        cases = SEMANTIC.get(cmd.path)
        if not cases:
            return None
        case_units, case_stdin, codes = self.rng.choice(cases)
        return Invocation("semantic", cmd.path, _fill(case_units, self.ids), case_stdin, codes)

    def noise(self, inv: Invocation) -> Invocation:
        """Valid global options anywhere (never inside an option and its value), valid env vars."""
        if inv.kind in ("bad-store", "bad-env"):  # the bad --store must be the last one; an option
            return inv  # on the line would win over the bad variable (flag > env)
        for _ in range(self.rng.choice([0, 1, 1, 2, 3])):
            unit = self.rng.choice(NOISE)
            if self.rng.random() < 0.3:
                inv.head = self._at(inv.head, unit)
            else:
                # Nothing after `--`, nor after an option left without its value.
                fixed = [i for i, u in enumerate(inv.units) if u[0] == "--"]
                fixed += [len(inv.units) - 1] if inv.kind == "missing-value" else []
                where = self.rng.randint(0, min(fixed)) if fixed else None
                inv.units = self._at(inv.units, unit, where)
        if self.rng.random() < 0.3 and inv.kind != "bad-env":
            name, value = self.rng.choice(NOISE_ENV)
            inv.env = {name: value, **inv.env}
        return inv

    def invocations(self, count: int) -> Iterator[Invocation]:
        """``count`` invocations: a kind of mistake, then a command it applies to."""
        made = 0
        while made < count:
            mutate = self.rng.choice(self.kinds)
            for _ in range(50):
                cmd = self.rng.choice(COMMANDS)
                base_units, base_stdin = BASES[cmd.path]
                inv = mutate(cmd, _fill(base_units, self.ids), base_stdin)
                if inv is not None:
                    made += 1
                    yield self.noise(inv)
                    break


# --------------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------------


def _env(sandbox: Path, extra: dict[str, str]) -> dict[str, str]:
    env = agl_env(None)
    for name in ("AGL_JSON", "AGL_QUIET", "AGL_VERBOSE", "AGL_STORE_TOKEN", "NO_COLOR", "AGL_WATCH"):
        env.pop(name, None)
    env.update(AGL_STORE="store", HOME=str(sandbox / "home"), TMPDIR=str(sandbox / "tmp"))
    env.update(extra)
    return env


def _problems(inv: Invocation, result: dict[str, Any]) -> list[str]:
    code, err = result["code"], result["stderr"]
    lines = [line for line in err.splitlines() if line.strip()]
    problems = []
    if code is None:
        problems.append(f"hung (killed after {INVOCATION_TIMEOUT:.0f}s)")
    elif code == 0:
        problems.append("exit 0")
    elif code not in DOCUMENTED:
        problems.append(f"undocumented exit {code}")
    elif inv.codes is not None and code not in inv.codes:
        problems.append(f"exit {code}, expected {sorted(inv.codes)}")
    if "Traceback" in err:
        problems.append("traceback")
    if result["stdout"]:
        problems.append(f"stdout: {result['stdout'][:200]!r}")
    if len(lines) != 1 or not lines[0].startswith("agl: "):
        problems.append(f"stderr is not one 'agl: ' line: {err[:300]!r}")
    if result["changes"]:
        problems.append(f"wrote files: {result['changes'][:5]}")
    return problems


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ids]:
    root = tmp_path_factory.mktemp("fuzz")
    return root / "sandbox", make_sandbox(root / "sandbox")


def test_every_command_has_a_valid_base_call() -> None:
    missing = {c.path for c in COMMANDS} - set(BASES)
    assert not missing, f"add a valid call of {sorted(missing)} to BASES, so the fuzz test covers it"
    assert set(BASES) <= {c.path for c in COMMANDS}


# Commands whose numbers need not declare ranges (none: every number does).
UNRANGED: set[tuple[str, ...]] = set()


def test_every_number_declares_its_range() -> None:
    """What the fuzz test knows to be invalid comes from these declarations (agl_cli/params.py)."""
    for cmd in COMMANDS:
        if cmd.path in UNRANGED:
            continue
        for param in cmd.params:
            inner = (
                getattr(param.annotation, "__args__", (param.annotation,))[0]
                if param.multiple
                else param.annotation
            )
            where = f"agl {' '.join(cmd.path)} {'/'.join(param.opts)}"
            if inner is int:
                assert None not in (param.low, param.high), f"{where}: an int needs min and max"
            if inner is float:
                assert param.parser is not None, f"{where}: a float needs a parser (agl_cli/params.py)"


@pytest.mark.timeout(600)  # 600: about 12 s on two busy cores; the margin is for slower machines
@pytest.mark.parametrize("count", [600, pytest.param(5000, marks=pytest.mark.stress)], ids=["short", "long"])
def test_fuzz_malformed_invocations(sandbox: tuple[Path, Ids], count: int) -> None:
    root, ids = sandbox
    invocations = list(Generator(random.Random(SEED), ids).invocations(count))
    kinds = Counter(inv.kind for inv in invocations)
    assert len(kinds) >= 14, kinds  # every kind of mistake was made
    assert {inv.command for inv in invocations} >= set(BASES)  # on every command
    specs: list[dict[str, Any]] = [
        {"args": inv.args(), "stdin": inv.stdin, "env": _env(root, inv.env), "timeout": INVOCATION_TIMEOUT}
        for inv in invocations
    ]
    before = snapshot(root / "store")
    copies = [root]
    for n in range(1, DRIVERS):
        copies.append(root.with_name(f"sandbox-{n}"))
        shutil.copytree(root, copies[-1], symlinks=True)
    for n in range(DRIVERS):
        (root.parent / f"work-{n}").mkdir()
    start = time.monotonic()
    with ThreadPoolExecutor(DRIVERS) as pool:
        parts = list(
            pool.map(
                lambda n: run_driver(copies[n], specs[n::DRIVERS], root.parent / f"work-{n}"),
                range(DRIVERS),
            )
        )
    elapsed = time.monotonic() - start
    results: list[dict[str, Any]] = [{}] * len(specs)
    for n, part in enumerate(parts):
        results[n::DRIVERS] = part
    failures = [
        f"{inv}\n    -> {'; '.join(p)}"
        for inv, r in zip(invocations, results, strict=True)
        if (p := _problems(inv, r))
    ]
    assert not failures, f"{len(failures)} of {len(invocations)} invocations misbehaved:\n" + "\n".join(
        failures[:30]
    )
    assert diff_snapshots(before, snapshot(root / "store")) == []
    print(f"{len(invocations)} invocations in {elapsed:.1f}s; {dict(kinds)}")

    # The fork server runs what the installed executable runs: a sample, exec'd for real.
    sample = random.Random(SEED + 1).sample(range(len(invocations)), REAL_SAMPLE)
    for i in sample:
        spec = specs[i]
        stdin = None if spec["stdin"] is None else spec["stdin"].encode("utf-8", "surrogateescape")
        real = subprocess.run(
            [AGL, *spec["args"]],
            input=stdin if stdin is not None else None,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            cwd=root,
            env=spec["env"],
            timeout=60,
        )
        forked = results[i]
        got = (
            real.returncode,
            real.stdout.decode(errors="backslashreplace"),
            real.stderr.decode(errors="backslashreplace"),
        )
        assert got == (forked["code"], forked["stdout"], forked["stderr"]), str(invocations[i])
