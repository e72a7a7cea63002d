"""DESIGN's layers, checked over every module's imports:

    pcapd.cli -> pcapd (daemon, controller, ...) -> triggers | uploaders | agents -> pcapd.core

A module may import its own layer and the layers below it, never above;
nothing imports `pcapd.cli`, and the three middle families do not import
each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pcapd", "triggers", "uploaders", "agents")
MIDDLE = ("triggers", "uploaders", "agents")


def layer_of(module: str) -> str:
    """`core`, `triggers`, `uploaders`, `agents`, `top` (the rest of pcapd) or `cli`."""
    parts = module.split(".")
    if parts[0] in MIDDLE:
        return parts[0]
    if parts[0] != "pcapd":
        return "external"
    if len(parts) > 1 and parts[1] == "core":
        return "core"
    if len(parts) > 1 and parts[1] in ("cli", "__main__"):
        return "cli"
    return "top"


ALLOWED = {
    "core": {"core"},
    "triggers": {"core", "triggers"},
    "uploaders": {"core", "uploaders"},
    "agents": {"core", "agents"},
    "top": {"core", "top", *MIDDLE},
    "cli": {"core", "top", "cli", *MIDDLE},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module an import statement names, with its line; `from
    pcapd import x` counts as `pcapd.x`, since x may be a module."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_tree_has_every_layer() -> None:
    layers = {layer_of(module_name(p)) for p in sources()}
    assert {"core", "triggers", "uploaders", "agents", "top"} <= layers


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    here = layer_of(module_name(path))
    wrong = []
    for line, target in imported_modules(path):
        there = layer_of(target)
        if there == "external":
            continue
        if there not in ALLOWED[here] or (there == "cli" and here != "cli"):
            wrong.append(f"line {line}: {here} module imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from pcapd.controller import Controller\nimport triggers.base\n")
    targets = [t for _, t in imported_modules(bad)]
    assert "pcapd.controller" in targets and "triggers.base" in targets
    assert layer_of("pcapd.controller") not in ALLOWED["core"]
    assert layer_of("triggers.base") not in ALLOWED["uploaders"]
