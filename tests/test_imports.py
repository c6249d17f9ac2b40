"""The package reads bottom-up: every module imports, and the module import graph has no cycle.

The graph comes from the source (AST), not from ``sys.modules``: Python tolerates many cycles at run
time (a partially initialised module is often enough), so only the source shows them. Every
``import noisyseg...`` / ``from noisyseg... import`` counts, at the top of a module and inside
functions alike: a lazy import inside a function hides a cycle from the import machinery but not
from the layering (the module still needs the one above it to work), and hiding
methods -> meta -> distributed -> engine -> methods that way is what this test exists to stop.

The implicit edge from a module to its parent packages (importing ``noisyseg.meta`` first runs
``noisyseg/__init__.py``) is not counted: ``__init__`` files re-export public names from below, so
that edge would make every package a cycle by construction.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
import warnings
from pathlib import Path

import pytest

import noisyseg

PACKAGE = "noisyseg"


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, with its source file (``__main__`` included)."""
    found = {PACKAGE: Path(noisyseg.__file__)}
    for info in pkgutil.walk_packages(noisyseg.__path__, prefix=f"{PACKAGE}."):
        spec = info.module_finder.find_spec(info.name)
        found[info.name] = Path(spec.origin)
    return found


def _target(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (top-level and in-function imports)."""
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, else the module itself
            else:
                continue
            for target in targets:
                if target.split(".")[0] == PACKAGE:
                    module = _target(target, known)
                    if module and module != name:
                        edges.add(module)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_reports_the_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import x\n")
    (pkg / "a.py").write_text("def f():\n    from noisyseg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\nfrom ..a import f\nfrom noisyseg import sub\n")
    mods = {PACKAGE: pkg / "__init__.py", f"{PACKAGE}.a": pkg / "a.py", f"{PACKAGE}.sub": pkg / "sub" / "__init__.py",
            f"{PACKAGE}.sub.b": pkg / "sub" / "b.py"}
    graph = import_graph(mods)
    assert graph == {PACKAGE: set(), f"{PACKAGE}.a": {f"{PACKAGE}.sub.b"}, f"{PACKAGE}.sub": {f"{PACKAGE}.sub.b"},
                     f"{PACKAGE}.sub.b": {f"{PACKAGE}.a", f"{PACKAGE}.sub"}}
    assert find_cycle(graph) == [f"{PACKAGE}.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.a"]


def test_no_import_cycle():
    graph = import_graph(modules())
    assert len(graph) > 30  # the walk found the package, not an empty folder
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(n for n in modules() if not n.endswith("__main__")))  # __main__ runs the CLI
def test_every_module_imports(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated aliases warn on import
        assert importlib.import_module(name).__name__ == name
