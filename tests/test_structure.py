"""The package's shape: no import cycles (not even inside functions), a core layer that
imports nothing above it, and no function over 80 lines without a comment saying why.

Both read the source with ``ast``, so they see imports hidden inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "robustkit"
MAX_LINES = 80
#: A function longer than MAX_LINES carries this comment, followed by its reason.
LONG_MARK = "# long function:"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The module that importing ``name`` executes (a package's own module at least)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the robustkit modules it imports, anywhere in its source."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # "from robustkit import data" imports the module robustkit.data
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                           for a in node.names]
            for t in targets:
                if t.split(".")[0] != "robustkit":
                    continue
                resolved = _target(t)
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # robustkit.cli imports the experiment runner inside a command function
    assert any(t.startswith("robustkit.experiment") for t in graph["robustkit.cli.run"]) \
        or any(t.startswith("robustkit.experiment") for deps in
               (graph[m] for m in graph if m.startswith("robustkit.cli")) for t in deps)


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_a_planted_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_core_imports_nothing_above_it():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("robustkit.core"):
            above = {d for d in deps if not d.startswith("robustkit.core")
                     and d != "robustkit.errors"}
            assert not above, f"{name} imports {sorted(above)}"


def _long_functions() -> list[str]:
    out = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                body = "\n".join(lines[node.lineno - 1:node.end_lineno]).lower()
                if length > MAX_LINES and LONG_MARK not in body:
                    out.append(f"{name}.{node.name} ({length} lines)")
    return out


def test_no_function_over_80_lines_without_a_reason():
    assert _long_functions() == []


@pytest.mark.parametrize("module", ["robustkit.cli", "robustkit.experiment.runner"])
def test_entry_points_exist(module):
    assert module in MODULES
