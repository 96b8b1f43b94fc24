"""Imports under recipes/ flow one way: no module imports one that imports it back, directly or around a circle.

A circle works in Python only while every import in it is lazy (inside a function) or the modules happen
to load in a lucky order; run as a script, a module of a circle is loaded twice and its classes exist
twice (an error raised as one class is not caught as the other). The graph is read from the source
with :mod:`ast`: absolute ``recipes.`` imports and relative ones, at the top level and inside
functions (a lazy import is an edge too). Importing ``recipes.a.b`` also runs ``recipes/a/__init__.py``;
that implicit edge is left out (a package's ``__init__`` importing its own modules is no circle),
while ``from recipes.a import name`` of a name defined in ``recipes/a/__init__.py`` is an edge to it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "recipes"


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module under ``root/package`` (``__init__.py``: the package)."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of ``from <node.module> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` (its source at ``path``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in known:  # from recipes.table3 import slurm: the module slurm
                    found.add(sub)
                elif source in known:  # from recipes.table3.rows import ROWS: the module rows
                    found.add(source)
    found.discard(module)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root, package)
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_the_reader_sees_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .low import X\n")
    (pkg / "sub" / "low.py").write_text("X = 1\n")
    (pkg / "sub" / "high.py").write_text("def f():\n    from . import low\n    from pkg.sub import X\n    import pkg.top\n")
    (pkg / "top.py").write_text("from .sub.high import f\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.high"] == {"pkg.sub.low", "pkg.sub", "pkg.top"}
    assert graph["pkg.top"] == {"pkg.sub.high"} and graph["pkg.sub"] == {"pkg.sub.low"}
    assert find_cycle(graph) == ["pkg.sub.high", "pkg.top", "pkg.sub.high"]


def test_recipes_import_graph_has_no_cycle():
    graph = import_graph()
    assert "recipes.table3.slurm" in graph  # the reader found the modules
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle under recipes/: " + " -> ".join(cycle))
