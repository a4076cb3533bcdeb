"""Control flow: `switch` (diffusers' AutoPipelineBlocks) and `loop` (the denoising loop)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs

from ._engine import OnStep
from ._names import check_identifier, did_you_mean, listed
from ._node import PRODUCED, Composite, Node, _joined
from ._plan import Choice, Plan, Repeat
from ._wiring import (
    Interface,
    check_declarations,
    loop_interface,
    switch_interface,
    unique_names,
)
from .exceptions import WiringError

__all__ = ["Loop", "Switch", "loop", "switch"]


@attrs.frozen(slots=False, eq=False, repr=False)
class Switch(Composite):
    """Runs one of several branches, chosen at run time (diffusers' AutoPipelineBlocks).

    Made by `switch`. Inputs are the union of the branches' inputs; one is required only when
    every branch requires it and there is a default. Outputs are the union of the branches'.
    Branches are edited by name like sub-blocks: ``sw["text2img"]``, ``sw.replace(...)``.
    """

    branches: tuple[tuple[str, Node], ...]  # (label, node), in the order they are tried
    triggers: tuple[str, ...] | None = None  # the input that selects each branch
    select: Callable[..., str | None] | None = None
    default: Node | None = None
    name: str = "switch"
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_identifier(self.name, self.name)
        nodes = [node for _, node in self.branches]
        if self.default is not None:
            nodes.append(self.default)
        if not nodes:
            msg = f"switch `{self.name}` needs at least one branch."
            raise WiringError(msg, consumer=self.name)
        labels = [label for label, _ in self.branches]
        self.__dict__["_labels"] = tuple(labels) + (
            (unique_names([*labels, self.default._label])[-1],) if self.default is not None else ()
        )
        check_declarations(self._children())
        selectors: list[tuple[str, Any]] = [(t, None) for t in self.triggers or ()]
        if self.select is not None:
            params: list[tuple[str, Any]] = []
            for p in inspect.signature(self.select).parameters.values():
                default = None if p.default is inspect.Parameter.empty else p.default
                params.append((p.name, default))
            self.__dict__["_select_params"] = tuple(params)
            selectors += params
        self.__dict__["_iface"] = switch_interface(
            nodes, has_default=self.default is not None, selectors=selectors, label=self.name
        )

    @property
    def _kind(self) -> str:
        return "Switch"

    @property
    def description(self) -> str:
        if self.triggers is not None:
            rules = [
                f"`{t}` given: `{label}`"
                for t, (label, _) in zip(self.triggers, self.branches, strict=True)
            ]
        else:
            rules = [
                f"`{getattr(self.select, '__name__', 'select')}` returns {label!r}: `{label}`"
                for label, _ in self.branches
            ]
        if self.default is not None:
            rules.append(f"otherwise: `{self.__dict__['_labels'][-1]}`")
        else:
            rules.append("otherwise: skipped")
        return "Runs one branch: " + "; ".join(rules) + "."

    def _children(self) -> tuple[tuple[str, Node], ...]:
        labels: tuple[str, ...] = self.__dict__["_labels"]
        nodes = [node for _, node in self.branches]
        if self.default is not None:
            nodes.append(self.default)
        return tuple(zip(labels, nodes, strict=True))

    def _choose(self, values: Mapping[str, Any]) -> int | None:
        """Return the position of the branch to run (the default is last), or None."""
        if self.triggers is not None:
            for pos, trigger in enumerate(self.triggers):
                if values.get(trigger) is not None:
                    return pos
        else:
            assert self.select is not None
            params: tuple[tuple[str, Any], ...] = self.__dict__["_select_params"]
            label = self.select(**{p: values.get(p, d) for p, d in params})
            if label is not None:
                for pos, (name, _) in enumerate(self.branches):
                    if name == label:
                        return pos
                known = [name for name, _ in self.branches]
                msg = (
                    f"switch `{self.name}`: `select` returned {label!r}, which is not a "
                    f"branch.{did_you_mean(str(label), known)} Branches: {listed(known)}."
                )
                raise ValueError(msg)
        return len(self.branches) if self.default is not None else None

    def resolve(self, **inputs: Any) -> Node | None:
        """Return the node that would run with *inputs* (None when the switch is skipped)."""
        return self._resolve(dict(inputs))

    def _resolve(self, known: dict[str, Any]) -> Node | None:
        pos = self._choose(known)
        if pos is None:
            return None
        return self._children()[pos][1]._resolve(known)

    def _identity_parts(self) -> list[Any]:
        return [self.triggers, self.select]

    # -- editing: branches are sub-nodes ----------------------------------------------------

    def _with_child(self, name: str, node: Node, *, keep_name: bool = True) -> Node:
        del keep_name  # a branch keeps its label, so the node takes it as its name
        self._child(name)
        labels: tuple[str, ...] = self.__dict__["_labels"]
        new = node.named(name)
        if self.default is not None and name == labels[-1]:
            return attrs.evolve(self, default=new)
        branches = tuple((label, new if label == name else old) for label, old in self.branches)
        return attrs.evolve(self, branches=branches)

    def _edit_child(self, name: str, op: tuple[Any, ...]) -> Node:
        if op[0] != "remove":
            return super()._edit_child(name, op)
        self._child(name)
        labels: tuple[str, ...] = self.__dict__["_labels"]
        if self.default is not None and name == labels[-1]:
            return attrs.evolve(self, default=None)
        pos = labels.index(name)
        branches = self.branches[:pos] + self.branches[pos + 1 :]
        triggers = None if self.triggers is None else self.triggers[:pos] + self.triggers[pos + 1 :]
        return attrs.evolve(self, branches=branches, triggers=triggers)

    def _make_plan(self) -> Plan:
        children = self._children()
        return Choice(
            **self._plan_fields(),
            branches=tuple(node._plan for _, node in children),
            labels=tuple(label for label, _ in children),
            required=tuple(frozenset(node._iface.required) for _, node in children),
            choose=self._choose,
        )


def switch(
    branches: Mapping[str, Node],
    *,
    select: Callable[..., str | None] | None = None,
    default: Node | None = None,
    name: str = "switch",
) -> Switch:
    """Choose a branch at run time, like diffusers' AutoPipelineBlocks.

    With triggers, ``switch({"mask_image": inpaint, "image": img2img}, default=text2img)``
    runs the first branch whose trigger value is present and not None (``0``, ``False`` and
    empty values count as given), else *default*, else nothing. With ``select=fn``, the keys
    of *branches* are branch names and ``fn`` — a plain function whose parameters are read from
    the state (absent ones get their default, or None) — returns one of them, or None.

    Args:
        branches: trigger input (or branch name, with *select*) → node, in the order tried;
            by position or by keyword (``switch(select=fn, branches={...})``).
        select: a function choosing the branch by name.
        default: the node to run when no branch is chosen.
        name: the switch's name in paths and docs.
    """
    if not isinstance(cast("object", branches), Mapping):
        msg = (
            f"switch `{name}`: `branches` maps trigger inputs (or branch names) to nodes, e.g. "
            f"`mb.switch({{'image': img2img}}, default=text2img)`; got {branches!r}."
        )
        raise WiringError(msg, consumer=name)
    items = tuple(branches.items())
    for key, node in items:
        if not isinstance(cast("object", key), str) or not key.isidentifier():
            msg = f"switch `{name}`: branch key {key!r} must be an input or branch name."
            raise WiringError(msg, name=str(key), consumer=name)
        if not isinstance(cast("object", node), Node):
            msg = f"switch `{name}`: branch {key!r} is {node!r}, not a node. Pass a block."
            raise WiringError(msg, name=key, consumer=name)
    if default is not None and not isinstance(cast("object", default), Node):
        msg = f"switch `{name}`: `default` is {default!r}, not a node. Pass a block or None."
        raise WiringError(msg, consumer=name)
    if select is not None:
        if not callable(cast("object", select)):
            msg = (
                f"switch `{name}`: `select` must be a function returning a branch name, not "
                f"{select!r}."
            )
            raise WiringError(msg, consumer=name)
        return Switch(items, select=select, default=default, name=name)
    labels = unique_names([node.name or "branch" for _, node in items])
    return Switch(
        tuple(zip(labels, (node for _, node in items), strict=True)),
        triggers=tuple(key for key, _ in items),
        default=default,
        name=name,
    )


@attrs.frozen(slots=False, eq=False, repr=False)
class Loop(Composite):
    """Runs a body once per element of a value (diffusers' LoopSequentialPipelineBlocks).

    Made by `loop`. What the body outputs is carried into the next step and left in the state
    after the loop; the step number and element (``index``, ``item``) are not. The body's
    sub-blocks are edited through the loop: ``denoise.insert(clamp, after="scheduler_step")``.
    """

    body: Node
    over: str
    index: str | None = "i"
    item: str | None = "t"
    name: str = "loop"
    progress: bool | Mapping[str, Any] | None = None
    on_step: OnStep | None = attrs.field(default=None, repr=False)
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_identifier(self.over, self.name)
        for label in (self.index, self.item, self.name):
            if label is not None:
                check_identifier(label, self.name)
        self.__dict__["_iface"] = loop_interface(
            self.body._iface, self.over, self.index, self.item, self.name
        )

    @property
    def _kind(self) -> str:
        return "Loop"

    @property
    def description(self) -> str:
        named = [f"`{n}`" for n in (self.index, self.item) if n is not None]
        gives = f", giving the body {' and '.join(named)}" if named else ""
        body = f"`{self.body.name}`" if self.body._named else "the body"
        return f"Runs {body} once per element of `{self.over}`{gives}."

    def _children(self) -> tuple[tuple[str, Node], ...]:
        if self.body._named:
            return ((self.body.name, self.body),)
        return self.body._children()

    def _resolve(self, known: dict[str, Any]) -> Node | None:
        body = self.body._resolve(dict(known))
        known.update(dict.fromkeys(self._iface.provides, PRODUCED))
        if body is None or body is self.body:
            return self
        return attrs.evolve(self, body=body)

    def _identity_parts(self) -> list[Any]:
        return [self.over, self.index, self.item, self.on_step]

    def _missing_hint(self, names: tuple[str, ...]) -> str:
        given = [n for n in (self.index, self.item) if n is not None]
        read = [n for n in names if n in self.body._iface.accepted and n != self.over]
        if read and given:
            gives = " and ".join(
                f"`{n}` (the {'step number' if n == self.index else 'element'})" for n in given
            )
            return (
                f" The loop `{self.name}` gives its body {gives}: if {listed(read)} is one of "
                f"them, read it under that name (e.g. `.rename({read[0]}='{given[-1]}')` on the "
                f"block) or call it so in the loop (`mb.loop(..., item='{read[0]}')`)."
            )
        return self.body._missing_hint(names)

    # -- editing: the body's sub-blocks are the loop's ---------------------------------------

    def _with_child(self, name: str, node: Node, *, keep_name: bool = True) -> Node:
        if self.body._named:
            self._child(name)
            return attrs.evolve(self, body=node.named(name) if keep_name else node)
        return attrs.evolve(self, body=self.body._with_child(name, node, keep_name=keep_name))

    def _edit_child(self, name: str, op: tuple[Any, ...]) -> Node:
        if not self.body._named:
            return attrs.evolve(self, body=self.body._edit_child(name, op))
        if op[0] == "remove":
            msg = f"can't remove `{name}`: it is the body of loop `{self.name}`. Replace it."
            raise WiringError(msg, name=name, consumer=self.name)
        return super()._edit_child(name, op)

    def _append(self, node: Node, name: str | None) -> Node:
        return attrs.evolve(self, body=_joined(self.body, node, "after", name))

    def _make_plan(self) -> Plan:
        return Repeat(
            **self._plan_fields(),
            body=self.body._plan,
            body_label=self.body.name if self.body._named else None,
            over=self.over,
            index=self.index,
            item=self.item,
            progress=self.progress,
            on_step=self.on_step,
        )


def loop(
    body: Node,
    *,
    over: str,
    index: str | None = "i",
    item: str | None = "t",
    name: str = "loop",
    progress: bool | Mapping[str, Any] | None = None,
    on_step: OnStep | None = None,
) -> Loop:
    """Run *body* once per element of the state value *over* (the denoising loop).

    Args:
        body: any node: a block, a sequence (with switches inside), another loop.
        over: the name of the value to iterate over (e.g. ``"timesteps"``).
        index: the name under which the body gets the step number (from 0); None for none.
        item: the name under which the body gets the element; None for none.
        name: the loop's name in paths (``denoise[step 12]``), docs and its progress bar.
        progress: None follows `progress` (a bar for loops of ``min_steps`` or more), False
            hides the bar, True shows it, a mapping passes options to tqdm.
        on_step: called after every step of this loop (see `Step`), before run-wide callbacks.
    """
    if not isinstance(cast("object", body), Node):
        msg = f"loop `{name}`: the body is {body!r}, not a node. Pass a block or a sequence."
        raise WiringError(msg, consumer=name)
    if not isinstance(cast("object", over), str):
        msg = (
            f"loop `{name}`: `over` names the state value to loop over (e.g. "
            f"`over='timesteps'`), not {over!r}."
        )
        raise WiringError(msg, consumer=name)
    if on_step is not None and not callable(cast("object", on_step)):
        msg = f"loop `{name}`: `on_step` must be a function taking a `Step`, not {on_step!r}."
        raise WiringError(msg, consumer=name)
    return Loop(body, over, index, item, name, progress, on_step)
