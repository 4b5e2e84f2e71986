"""The layout stays legible: every module is on the code map, names do not collide, and the
code cites only documents in the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import store_fs._disk

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store_fs", "agl_cli")
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def modules() -> list[str]:
    return sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def test_every_module_is_on_the_code_map_and_every_entry_exists() -> None:
    text = ARCHITECTURE.read_text()
    mapped = set(re.findall(r"^\| `((?:store_fs|agl_cli)/[\w/]+\.py)` \|", text, re.M))
    assert set(modules()) - mapped == set(), "modules missing from docs/architecture.md's code map"
    assert mapped - set(modules()) == set(), "docs/architecture.md names modules that do not exist"


def test_the_disk_package_docstring_maps_each_of_its_modules() -> None:
    doc = store_fs._disk.__doc__ or ""
    described = set(re.findall(r"^    (\w+) ", doc, re.M))
    on_disk = {p.stem for p in Path(store_fs._disk.__file__).parent.glob("*.py") if p.stem != "__init__"}
    assert on_disk == described


def test_no_two_modules_share_a_name() -> None:
    stems: dict[str, str] = {}
    for module in modules():
        stem = Path(module).stem
        if stem in ("__init__", "__main__"):
            continue
        assert stem not in stems, f"{module} and {stems[stem]}"
        stems[stem] = module


def test_store_fs_has_one_server_entry_point() -> None:
    # `agl store` is the way to serve a store; the library has no `python -m` entry of its own.
    assert not list((ROOT / "store_fs").rglob("__main__.py"))


# Citations of a specification must point into the repository (docs/behaviour.md §N).
OUTSIDE_SPEC = re.compile(r"upstream-spec|spec(?:ification)? (?:section |§ ?)?\d|behaviours? \d", re.I)


@pytest.mark.parametrize("top", ["store_fs", "agl_cli", "tests", "docs", "benchmarks", "examples"])
def test_nothing_cites_a_document_outside_the_repository(top: str) -> None:
    this = Path(__file__).resolve()
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / top).rglob("*"))
        if path.suffix in (".py", ".md") and path.resolve() != this
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_SPEC.search(line)
    ]
    assert offenders == []


def test_cli_keeps_no_module_level_state() -> None:
    # Options live in typer's ctx.obj (agl_cli.state.CliState), never in a module global.
    for module in modules():
        if not module.startswith("agl_cli/"):
            continue
        tree = ast.parse((ROOT / module).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                func = node.value.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                assert name in {"Typer", "TypeVar", "getLogger", "compile"}, (
                    f"{module}:{node.lineno}: module-level state ({name})"
                )
