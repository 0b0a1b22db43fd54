"""pyproject.toml declares what the package imports, and imports what it declares (no torch here)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parent.parent


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}
    extras = set().union(*map(names, project.get("optional-dependencies", {}).values()))
    return names(project["dependencies"]), extras


def _imported_top_level() -> set[str]:
    found = set()
    for path in (REPO / "upscale").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"upscale", "__future__"}


def test_every_import_is_declared_and_every_dependency_imported():
    runtime, extras = _declared()
    dists = packages_distributions()
    imported_dists = {}
    for module in _imported_top_level():
        assert module in dists, f"{module} is imported but not installed"
        imported_dists[module] = {_norm(d) for d in dists[module]}
    undeclared = sorted(m for m, ds in imported_dists.items() if not ds & (runtime | extras))
    assert undeclared == [], f"imported but not declared in pyproject.toml: {undeclared}"
    used = set().union(*imported_dists.values())
    unused = sorted(runtime - used)
    assert unused == [], f"declared but never imported: {unused}"
