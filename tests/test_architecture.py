"""The floors of docs/architecture.md, checked on the source: who may import whom, no cycles.

Every ``import`` counts, at module level or inside a function (a lazy import still
makes the importing module depend on the imported one at run time). Imports under
``if TYPE_CHECKING:`` do not run and are left out. A package's ``__init__`` counts as
a module: ``from spa_opt.passes import X`` depends on ``spa_opt/passes/__init__.py``
(importing from a package runs it), ``import spa_opt.passes.prune`` on the module
named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spa_opt"

#: Floors, lowest first: (name, module prefixes, floors it may import besides itself).
FLOORS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("base", ("spa_opt._version", "spa_opt.errors"), ()),
    ("obs", ("spa_opt.obs",), ("base",)),
    ("ir", ("spa_opt.ir",), ("base",)),
    ("inputs", ("spa_opt.inputs", "spa_opt.decoder_inputs", "spa_opt.calibration",
                "spa_opt.noise", "spa_opt.verify", "spa_opt.ort"), ("base", "ir")),
    ("autodiff", ("spa_opt.autodiff",), ("base", "ir", "inputs")),
    ("latency", ("spa_opt.latency",), ("base", "ir", "inputs")),
    ("infra", ("spa_opt.passes._infra",), ("base", "ir")),
    ("passes", ("spa_opt.passes",), ("base", "obs", "ir", "inputs", "autodiff", "latency",
                                     "infra")),
    ("app", ("spa_opt.report", "spa_opt.report_html", "spa_opt.api", "spa_opt.cli",
             "spa_opt.cli_support", "spa_opt.cli_report", "spa_opt.integrations"),
     ("base", "obs", "ir", "inputs", "autodiff", "latency", "infra", "passes")),
    ("package", ("spa_opt",), ("base", "obs", "ir", "inputs", "autodiff", "latency", "infra",
                               "passes", "app")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _floor(module: str) -> str:
    best = max((prefix for _, prefixes, _ in FLOORS for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=len)
    return next(name for name, prefixes, _ in FLOORS if best in prefixes)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return skipped


def _imports(module: str) -> set[str]:
    """The spa_opt modules ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES and name != module}


GRAPH: dict[str, set[str]] = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_floor() -> None:
    for module in MODULES:
        assert _floor(module), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_stay_on_allowed_floors(module: str) -> None:
    floor = _floor(module)
    allowed = {floor, *next(a for name, _, a in FLOORS if name == floor)}
    wrong = sorted(f"{target} ({_floor(target)})" for target in GRAPH[module]
                   if _floor(target) not in allowed)
    assert not wrong, f"{module} ({floor}) may not import {wrong}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a lazy import back into an importer is a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _imports("spa_opt.passes.rules") >= {"spa_opt.passes.rules.registry"}
