"""The service's modules import without cycles: each alone in a fresh interpreter, and no module imports one
that imports it back (imports made only for type checkers aside)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import response_model.service

SERVICE = Path(response_model.service.__file__).parent
PACKAGE = "response_model.service"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE).with_suffix("").parts
    return ".".join((PACKAGE, *parts)).removesuffix(".__init__")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    return {id(node) for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for node in ast.walk(block)}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The service modules ``path`` imports when it runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """{module: the service modules it imports at run time} over every module of the service package."""
    paths = {_module_name(p): p for p in SERVICE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name, PACKAGE} for name, path in paths.items()}


def test_no_service_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert f"{PACKAGE}.deps" in graph and f"{PACKAGE}.routers.predictions" in graph
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == start:
                cycles.append(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"


# the modules that used to reach into app.py (one interpreter each is slow; the test above covers the rest)
@pytest.mark.parametrize("module", ["web", "auditor", "model_report", "deps"])
def test_each_module_imports_alone(module):
    done = subprocess.run([sys.executable, "-c", f"import {PACKAGE}.{module}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
