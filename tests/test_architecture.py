"""The package's layers: imports only go downward, there is no import cycle (function-local
imports count), and the engine is numerics only (numpy and scipy)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixedfx"

#: Layer of each top-level part of the package, lowest first (docs/architecture.md).
LAYERS = {
    "errors": 0,
    "spec": 1,
    "engine": 2,
    "data": 3,
    "datasets": 3,
    "results": 4,
    "fitting": 5,
    "analysis": 6,
    "present": 7,
    "api": 8,
    "glmm": 8,
    "plots": 8,
    "reduce": 8,
    "__init__": 8,
    "cli": 9,
    "__main__": 9,
}

#: What the engine may import besides itself.
ENGINE_THIRD_PARTY = {"numpy", "scipy", "threadpoolctl"}  # threadpoolctl: BLAS threads of the dense factorisations


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    if node.level == 0:
        return node.module or ""
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``module`` imports anywhere in its body (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer(graph):
    for module in graph:
        assert _layer(module) >= 0, module


def test_imports_only_go_down(graph):
    for module, imported in graph.items():
        for target in imported:
            if target.split(".")[0] != "mixedfx" or target == module:
                continue
            assert _layer(target) <= _layer(module), f"{module} (layer {_layer(module)}) imports {target}"
            if _layer(target) == _layer(module) and _layer(module) < LAYERS["api"]:
                top = module.split(".")[:2]
                assert target.split(".")[:2] == top, f"{module} imports {target} across one layer"


def test_no_import_cycles(graph):
    internal = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in internal[node]:
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(internal):
        if module not in state:
            visit(module, [module])


def test_engine_is_numerics_only(graph):
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for module, imported in graph.items():
        if not module.startswith("mixedfx.engine"):
            continue
        for target in imported:
            top = target.split(".")[0]
            if top == "mixedfx":
                assert target.startswith("mixedfx.engine"), f"{module} imports {target}"
            else:
                assert top in stdlib or top in ENGINE_THIRD_PARTY, f"{module} imports {target}"


def test_the_checker_sees_function_local_imports():
    source = "def f():\n    from ..results import FitRecord\n"
    path = PACKAGE / "engine" / "probe.py"
    tree_imports = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            tree_imports.add(_resolve("mixedfx.engine.probe", path, node))
    assert tree_imports == {"mixedfx.results"}
