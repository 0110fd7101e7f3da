"""The package's shape, read from the source with `ast`: no import cycle between its modules (lazy imports inside
functions included), no module over 450 lines, and no pointer to anything outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "defectgen"
MAX_LINES = 450


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: set[str]) -> str | None:
    """The package module an import names (`a.b.c` -> the longest prefix that is a module of ours)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that `module` imports anywhere in its body (top level or inside functions).

    `from pkg import sub` is an edge to the submodule `pkg.sub` when that is a module, else to `pkg` (a name
    defined there). Parent packages a dotted import initialises on the way are not counted, as import linters do.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [_resolve(a.name, modules) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else _resolve(base, modules)
                       for a in node.names]
        found.update(t for t in targets if t is not None and t != module)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def import_graph() -> dict[str, set[str]]:
    names = set(MODULES)
    return {m: imports_of(m, p, names) for m, p in MODULES.items()}


def test_no_import_cycle_in_the_package() -> None:
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_lazy_imports_count(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\ndef f():\n    from defectgen.runtime.backends import ort\n")
    assert imports_of("x.m", src, {"defectgen.runtime.backends", "defectgen.runtime.backends.ort"}) == {
        "defectgen.runtime.backends.ort"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_450_lines(module: str) -> None:
    n = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {n} lines (split it by concern)"


def test_nothing_points_outside_the_repository() -> None:
    pattern = re.compile(r"issue [0-9]|STYLE|\.\./shared|DESIGN\.md")
    files = [*PACKAGE.rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, f"pointers to issues or files outside the repository: {hits[:10]}"
