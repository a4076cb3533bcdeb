"""The package is layered: no module imports, even lazily, one that imports it back.

The layers, bottom up: specs (specs, names, paths, state, events, errors) → wiring → plan and
engine → nodes → pipeline → map and scale-out. A function-level import of an optional extra
(`modblocks.diffusion`, `.serve`, `.ray`, `.demo`) is the one kind of edge left out: those
packages build on the core, and the core reaches them only when a user asks for them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modblocks"
EXTRAS = ("modblocks.diffusion", "modblocks.serve", "modblocks.ray", "modblocks.demo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _absolute(module: str, level: int, name: str | None, is_package: bool) -> str:
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


class _Imports(ast.NodeVisitor):
    """Collect (target, lazy) for every import, skipping `if TYPE_CHECKING:` blocks."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, bool]] = []
        self.depth = 0

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815 - ast's visitor naming

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, self.depth > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _absolute(self.module, node.level, node.module, self.is_package)
        self.found.append((target, self.depth > 0))
        for alias in node.names:  # `from . import x` may import the submodule x
            self.found.append((f"{target}.{alias.name}", self.depth > 0))


def import_graph() -> dict[str, set[str]]:
    """Module → the modblocks modules it imports (edges to optional extras made lazily left out)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        edges: set[str] = set()
        for target, lazy in visitor.found:
            if target not in files or target == module:
                continue
            if lazy and target.startswith(EXTRAS) and not module.startswith(EXTRAS):
                continue
            edges.add(target)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("modblocks._wiring", "modblocks._node"),
        ("modblocks._engine", "modblocks._node"),
        ("modblocks._codegen", "modblocks._engine"),
        ("modblocks._node", "modblocks._pipeline"),
        ("modblocks._wiring", "modblocks._engine"),
        ("modblocks._state", "modblocks._engine"),
    ],
)
def test_lower_layers_do_not_reach_upper_ones(lower, upper):
    graph = import_graph()
    seen, todo = set(), [lower]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += graph.get(module, ())
    assert upper not in seen, f"{lower} reaches {upper}"
