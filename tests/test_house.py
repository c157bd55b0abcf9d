"""House rules of the package (issue 23): sizes, no import cycle, imports point one way.

core ← jobs ← cli / widget: the headless core never imports the jobs, the command
line or the GUI, and the jobs never import the command line or the GUI.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_sparse_unet"
NAME = PACKAGE.name
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 80  # with its docstring and decorators


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports when run (deferred imports included, type-only ones not)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)
    resolved = set()
    for target in targets:
        # An import of a.b.c also runs a and a.b; the edge that matters is the deepest module named.
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _span(node: ast.AST) -> int:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return node.end_lineno - first + 1


def test_modules_classes_and_functions_are_small():
    too_big = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"module {name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and _span(node) > MAX_CLASS_LINES:
                too_big.append(f"class {name}.{node.name}: {_span(node)} lines")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _span(node) > MAX_FUNCTION_LINES:
                too_big.append(f"function {name}.{node.name}: {_span(node)} lines")
    assert not too_big, "over the size limits:\n" + "\n".join(too_big)


def _ancestors(name: str) -> set[str]:
    """The packages whose __init__ runs before ``name`` (importing a.b.c runs a and a.b)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycle():
    # A package's __init__ importing its own modules is no cycle: they import it first anyway.
    graph = {name: {t for t in targets if t not in _ancestors(name)} for name, targets in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [name, target]) if target in stack else f"{name} -> {target}")
            elif target not in state:
                visit(target, stack + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("core", ("jobs", "cli", "_qt", "_layers")),
        ("jobs", ("cli", "_qt")),
    ],
)
def test_imports_point_one_way(layer, forbidden):
    inside = [n for n in GRAPH if n == f"{NAME}.{layer}" or n.startswith(f"{NAME}.{layer}.")]
    assert inside, f"no module {layer} in the package"
    wrong = [
        f"{name} imports {target}"
        for name in inside
        for target in sorted(GRAPH[name])
        if any(target == f"{NAME}.{f}" or target.startswith(f"{NAME}.{f}.") for f in forbidden)
    ]
    assert not wrong, "\n".join(wrong)


def test_one_way_to_start_background_work():
    # Worker threads of the widget start in its JobRunner only, so one object knows what runs.
    starters = ("create_worker", "thread_worker", "QThread", "threading.Thread")
    # Not work of the widget: a helper beside an export that gives freed memory back to the system.
    helpers = {f"{NAME}.bioimageio.allocator"}
    elsewhere = [
        f"{name}: {word}"
        for name, path in MODULES.items()
        if name != f"{NAME}._qt.runner" and name not in helpers
        for word in starters
        if word in path.read_text(encoding="utf-8")
    ]
    assert not elsewhere, "background work started outside _qt/runner.py:\n" + "\n".join(elsewhere)
