"""Read a block's description and its parameters' descriptions from a docstring.

Only the two conventions users write are parsed: Google (``Args:``) and NumPy
(``Parameters`` underlined with dashes).
"""

from __future__ import annotations

import inspect
import re

__all__ = ["parse_docstring"]

_GOOGLE_HEADERS = frozenset({"args:", "arguments:", "parameters:", "params:"})
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\*{0,2}\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^(\w+)\s*(?::.*)?$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Return the first paragraph and the per-parameter descriptions of a docstring.

    Examples:
        >>> parse_docstring('''Add one.
        ...
        ... Args:
        ...     x: the number
        ...         to increment.
        ... ''')
        ('Add one.', {'x': 'the number to increment.'})
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        if not line.strip():
            break
        first.append(line.strip())
    return " ".join(first), _google(lines) or _numpy(lines)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _google(lines: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    in_section = False
    section_indent = item_indent = 0
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if not in_section:
            if stripped.lower() in _GOOGLE_HEADERS:
                in_section, section_indent, item_indent = True, _indent(line), -1
            continue
        if not stripped:
            continue
        indent = _indent(line)
        if indent <= section_indent:
            break  # the next section starts
        if item_indent < 0:
            item_indent = indent
        match = _GOOGLE_ITEM.match(stripped)
        if indent == item_indent and match:
            current = str(match.group(1))
            params[current] = match.group(2).strip()
        elif current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    return params


def _numpy(lines: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for start in range(len(lines) - 1):
        if lines[start].strip().lower() == "parameters" and set(lines[start + 1].strip()) == {"-"}:
            break
    else:
        return params
    base = _indent(lines[start])
    current: str | None = None
    body = lines[start + 2 :]
    for pos, line in enumerate(body):
        stripped = line.strip()
        if not stripped:
            continue
        indent = _indent(line)
        match = _NUMPY_ITEM.match(stripped)
        underlined = pos + 1 < len(body) and set(body[pos + 1].strip()) == {"-"}
        if indent == base and match and not underlined:
            current = str(match.group(1))
            params[current] = ""
        elif indent == base:
            break  # another section header
        elif current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    return params
