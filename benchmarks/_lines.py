"""Lines of code, counted by one rule for modblocks and diffusers.

`count_lines` counts the lines of a source file that hold code. `reached` finds the code a
modblocks family runs: its family module, and every top-level definition of
`modblocks/diffusion/` that the module uses, directly or through other definitions (shared
stage blocks and helpers included). Imports are not definitions, so they are not counted.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable, Iterable
from pathlib import Path

_PACKAGE = "modblocks.diffusion"
_ROOT = Path(__file__).resolve().parent.parent / "modblocks" / "diffusion"

_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def code_lines(source: str, *, docstrings: bool) -> set[int]:
    """Return the numbers of the lines of *source* that hold code.

    The rule, the same for every file: a line counts if it holds a token other than a
    comment or whitespace (blank and comment-only lines don't count). With *docstrings*
    false, the lines of string statements (docstrings, also of attributes) don't count
    either. Strings that are values (`Doc("...")`, a `description` property's text) always
    count.
    """
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(range(token.start[0], token.end[0] + 1))
    if not docstrings:
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                lines -= set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def count_lines(source: str, *, docstrings: bool, extra: Iterable[str] = ()) -> tuple[int, int]:
    """Count the lines of *source* that hold code, and those of some top-level classes.

    Returns:
        The number of lines, and how many of them are in top-level classes whose name
        holds one of *extra* (e.g. ``ControlNet``: features a modblocks family lacks).
    """
    lines = code_lines(source, docstrings=docstrings)
    found: set[int] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and any(word in node.name for word in extra):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            found |= lines & set(range(first, (node.end_lineno or node.lineno) + 1))
    return len(lines), len(found)


class _Module:
    """One module of `modblocks.diffusion`: its top-level definitions and imported names."""

    def __init__(self, name: str) -> None:
        relative = name.removeprefix(_PACKAGE).lstrip(".").replace(".", "/")
        path = _ROOT / f"{relative}.py"
        if not path.exists():
            path = _ROOT / relative / "__init__.py"
        self.name = name
        self.source = path.read_text(encoding="utf-8")
        self.tree = ast.parse(self.source)
        self.definitions: dict[str, ast.stmt] = {}
        self.imports: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for statement in self.tree.body:
            if isinstance(statement, ast.ImportFrom):
                module = statement.module or ""
                if statement.level:
                    base = package.rsplit(".", statement.level - 1)[0]
                    module = f"{base}.{module}" if module else base
                if module.startswith(_PACKAGE):
                    for alias in statement.names:
                        self.imports[alias.asname or alias.name] = (module, alias.name)
            for target in _defined_names(statement):
                if target != "__all__":
                    self.definitions[target] = statement


def _defined_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [statement.name]
    if isinstance(statement, ast.Assign):
        return [t.id for t in statement.targets if isinstance(t, ast.Name)]
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return [statement.target.id]
    return []


def reached(*family_modules: str) -> dict[str, list[ast.stmt]]:
    """Return, per module, the definitions that the given family modules use.

    Every statement of a family module counts, and every top-level definition of
    `modblocks.diffusion` reached from them by name.
    """
    modules: dict[str, _Module] = {}

    def module(name: str) -> _Module:
        if name not in modules:
            modules[name] = _Module(name)
        return modules[name]

    found: dict[str, dict[int, ast.stmt]] = {}
    todo: list[tuple[str, ast.stmt]] = []
    for name in family_modules:
        todo += [
            (name, s)
            for s in module(name).tree.body
            if not isinstance(s, ast.Import | ast.ImportFrom) and _defined_names(s) != ["__all__"]
        ]
    while todo:
        name, statement = todo.pop()
        if id(statement) in found.setdefault(name, {}):
            continue
        found[name][id(statement)] = statement
        here = module(name)
        for node in ast.walk(statement):
            if not isinstance(node, ast.Name):
                continue
            target = _resolve(module, here, node.id)
            if target is not None:
                todo.append(target)
    return {name: list(statements.values()) for name, statements in found.items()}


def _resolve(
    module: Callable[[str], _Module], here: _Module, name: str
) -> tuple[str, ast.stmt] | None:
    """Find the definition that *name* means in module *here*, following imports."""
    for _ in range(10):  # re-exports are a few levels deep at most
        if name in here.definitions:
            return here.name, here.definitions[name]
        if name not in here.imports:
            return None
        module_name, name = here.imports[name]
        here = module(module_name)
    return None


def reached_lines(
    family_modules: Iterable[str], *, docstrings: bool, excluding: Iterable[str] = ()
) -> int:
    """Count the code lines of what *family_modules* reach and *excluding* modules don't."""
    others = {
        (name, statement.lineno)
        for name, statements in reached(*excluding).items()
        for statement in statements
    }
    total = 0
    for name, statements in reached(*family_modules).items():
        source = _Module(name).source
        lines = code_lines(source, docstrings=docstrings)
        for statement in statements:
            if (name, statement.lineno) in others:
                continue
            first = min(
                [statement.lineno, *(d.lineno for d in getattr(statement, "decorator_list", []))]
            )
            total += len(lines & set(range(first, (statement.end_lineno or first) + 1)))
    return total
