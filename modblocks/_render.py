"""How nodes show themselves: ``node.doc``, the tree ``repr`` and ``node.to_mermaid()``."""

from __future__ import annotations

import inspect
import itertools
from typing import TYPE_CHECKING, Any

from ._specs import InputSpec, OutputSpec
from ._typecheck import type_name

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["render_doc", "render_markdown", "render_mermaid", "render_tree"]

_INDENT = "    "


def _kind_name(node: Node) -> str:
    return node._kind


def _type(tp: Any) -> str:
    return "Any" if tp is Any else type_name(tp)


def _input_line(spec: InputSpec, note: str = "") -> str:
    parts = [_type(spec.type)]
    if spec.required:
        parts.append("required")
    elif spec.default is not inspect.Parameter.empty and repr(spec.default) != "NOTHING":
        parts.append(f"default {spec.default!r}")
    else:
        parts.append("optional")
    if note:
        parts.append(note)
    text = f"{spec.name} ({', '.join(parts)})"
    return f"{text}: {spec.description}" if spec.description else text


def _output_line(spec: OutputSpec, note: str = "") -> str:
    text = f"{spec.name} ({_type(spec.type)}{', ' + note if note else ''})"
    return f"{text}: {spec.description}" if spec.description else text


def _section(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    return ["", f"{title}:", *(_INDENT + line for line in lines)]


def _branch_notes(node: Node) -> tuple[dict[str, str], dict[str, str]]:
    """For a switch: which branches require an input, and which produce an output."""
    if node._kind != "Switch":
        return {}, {}
    children = node._children()
    need: dict[str, list[str]] = {}
    make: dict[str, list[str]] = {}
    for label, child in children:
        for name in child._iface.required:
            need.setdefault(name, []).append(label)
        for out in child.outputs:
            make.setdefault(out.name, []).append(label)
    required = {
        n: "required by " + ", ".join(f"`{b}`" for b in labels)
        for n, labels in need.items()
        if n not in node._iface.required
    }
    made = {
        n: "from " + ", ".join(f"`{b}`" for b in labels)
        for n, labels in make.items()
        if len(labels) < len(children)
    }
    return required, made


def render_doc(node: Node) -> str:
    """Render a node's documentation as plain text."""
    head = f"{node._label} ({_kind_name(node)})"
    lines = [head]
    if node.description:
        lines += ["", node.description]
    subs = node._children()
    if subs:
        title = "Branches" if node._kind == "Switch" else "Sub-blocks"
        lines += _section(title, [f"{name} ({_kind_name(child)})" for name, child in subs])
    lines += _section("Components", [_input_line(s) for s in node.components])
    lines += _section("Configs", [_input_line(s) for s in node.configs])
    needs, makes = _branch_notes(node)
    ordered = sorted(node.inputs, key=lambda s: not s.required)
    lines += _section("Inputs", [_input_line(s, needs.get(s.name, "")) for s in ordered])
    lines += _section("Outputs", [_output_line(s, makes.get(s.name, "")) for s in node.outputs])
    return "\n".join(lines)


def render_tree(node: Node) -> str:
    """Render the tree of sub-blocks with their descriptions (the ``repr`` of a node)."""
    lines = [_tree_head(node._label, node)]
    _tree(node, "", lines)
    return "\n".join(lines)


def _tree_head(name: str, node: Node) -> str:
    kind = _kind_name(node)
    if kind == "Block" or not node._children():
        ins = ", ".join(s.name for s in node._iface.inputs)
        outs = ", ".join(s.name for s in node.outputs)
        text = f"{name}({ins}) -> ({outs})"
    else:
        text = f"{name} [{kind}]"
    summary = node.description.split(". ")[0].rstrip(".")
    return f"{text}: {summary}" if summary else text


def _tree(node: Node, prefix: str, lines: list[str]) -> None:
    children = node._children()
    for pos, (name, child) in enumerate(children):
        last = pos == len(children) - 1
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_tree_head(name, child)}")
        _tree(child, prefix + ("   " if last else "│  "), lines)


def render_markdown(node: Node, doc: str | None = None) -> str:
    """Render a node for Jupyter: its doc (*doc*, when given) and its data-flow diagram."""
    text = render_doc(node) if doc is None else doc
    return f"```text\n{text}\n```\n\n```mermaid\n{render_mermaid(node)}\n```"


def render_mermaid(node: Node) -> str:
    """Draw the data flow of a node as a mermaid flowchart."""
    drawing = _Drawing()
    produced: dict[str, list[str]] = {}
    drawing.walk(node, node._label, produced)
    for name in (s.name for s in node.outputs):
        if name in produced and name not in drawing.consumed:
            out_id = drawing.new_id("out")
            drawing.lines.append(f'    {out_id}(["{name}"])')
            drawing.lines += [f"    {source} --> {out_id}" for source in produced[name]]
    return "\n".join(["flowchart LR", *drawing.lines])


class _Drawing:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counter = itertools.count()
        self.inputs: dict[str, str] = {}
        self.consumed: set[str] = set()

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"

    def walk(self, node: Node, name: str, produced: dict[str, list[str]]) -> None:
        children = node._children()
        if not children:
            self.leaf(node, name, produced)
            return
        sub = self.new_id("sg")
        label = f"{name} ({_kind_name(node)})"
        over: str | None = getattr(node, "over", None)  # a loop (not one seen through rename)
        if over is not None:
            label = f"{name} (loop over {over})"
            self.edge_in(over, sub, produced)
            # The step number and element come from the loop itself, not from outside.
            given = (getattr(node, "index", None), getattr(node, "item", None))
            produced.update({n: [] for n in given if n is not None})
        self.lines.append(f'    subgraph {sub}["{label}"]')
        if hasattr(node, "branches"):  # a switch (not one seen through rename)
            # Each branch starts from what came before; afterwards a value may come from any.
            merged: dict[str, list[str]] = {}
            for child_name, child in children:
                branch = dict(produced)
                self.walk(child, child_name, branch)
                for key, sources in branch.items():
                    if produced.get(key) is not sources:
                        merged.setdefault(key, []).extend(sources)
            if getattr(node, "default", None) is None:  # may be skipped: earlier values stay
                for key, sources in merged.items():
                    sources.extend(s for s in produced.get(key, []) if s not in sources)
            produced.update(merged)
        else:
            for child_name, child in children:
                self.walk(child, child_name, produced)
        self.lines.append("    end")

    def edge_in(self, name: str, target: str, produced: dict[str, list[str]]) -> None:
        """Draw where the value *name* that *target* reads comes from."""
        if name in produced:
            self.lines += [f"    {p} -->|{name}| {target}" for p in produced[name]]
            self.consumed.add(name)
            return
        if name not in self.inputs:
            self.inputs[name] = self.new_id("in")
            self.lines.append(f'    {self.inputs[name]}(["{name}"])')
        self.lines.append(f"    {self.inputs[name]} --> {target}")

    def leaf(self, node: Node, name: str, produced: dict[str, list[str]]) -> None:
        block_id = self.new_id("b")
        self.lines.append(f'    {block_id}["{name}"]')
        for spec in node._iface.inputs:
            # Components and configs are drawn only when a block made them (a scheduler
            # copy set for the run); bound models would clutter every diagram.
            if spec.kind == "input" or spec.name in produced:
                self.edge_in(spec.name, block_id, produced)
        for out in node.outputs:
            produced[out.name] = [block_id]
            self.consumed.discard(out.name)
