"""`Node` and the composition algebra: ``>>`` (`Sequential`), `rename`/`bind` (`Adapted`), editing.

Every node describes itself once as a plan (`_plan`) that the engine runs, and edits by path:
``node["text2img > denoise > scheduler_step"]``, `replace`, `insert`, `remove` reach through
sequences, switch branches and loop bodies and return new nodes with every other setting kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs

from ._cachehook import cache_hooks
from ._engine import CancelToken, OnStep, check_options, execute, run_plain
from ._events import Event
from ._names import check_identifier, did_you_mean, listed
from ._paths import Path, parse
from ._plan import Plan, Scope, Seq
from ._specs import COMPONENT, CONFIG, INPUT, InputSpec, OutputSpec
from ._state import State
from ._typecheck import Check, or_none, runtime_check
from ._wiring import (
    Interface,
    adapted_interface,
    fed_defaults,
    reader_path,
    unique_names,
    wire_sequence,
)
from .exceptions import PathError, WiringError

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = ["PRODUCED", "Adapted", "Composite", "Node", "Sequential"]

PRODUCED: Any = object()  # stands for a value an earlier block will produce, when resolving

Where = Literal["before", "after"]


class Node:
    """A step of a pipeline: a `Block`, `Sequential`, `Switch` or `Loop`.

    Every node is immutable and compared by identity. ``a >> b`` composes nodes into a
    `Sequential`; `rename`, `bind` and `named` return adapted copies; `run` executes;
    ``node[path]``, `replace`, `insert` and `remove` edit by path.
    """

    # Set by subclasses (attrs fields or properties).
    name: str
    _iface: Interface

    @property
    def _kind(self) -> str:
        """How docs call the node: Block, Sequential, Switch or Loop."""
        return "Node"

    # -- what the node reads and writes ------------------------------------------------------

    @property
    def description(self) -> str:
        """One paragraph saying what the node does."""
        return ""

    @property
    def inputs(self) -> tuple[InputSpec, ...]:
        """The values the node reads per call (not components or configs), in order."""
        return tuple(s for s in self._iface.inputs if s.kind == INPUT)

    @property
    def components(self) -> tuple[InputSpec, ...]:
        """The models, schedulers, tokenizers ... the node reads, bound once by a pipeline."""
        return tuple(s for s in self._iface.inputs if s.kind == COMPONENT)

    @property
    def configs(self) -> tuple[InputSpec, ...]:
        """The settings the node reads, bound once by a pipeline."""
        return tuple(s for s in self._iface.inputs if s.kind == CONFIG)

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        """The values the node writes, in order of first production."""
        return self._iface.outputs

    @property
    def _named(self) -> bool:
        """Whether the node adds its own name to paths (anonymous sequences don't)."""
        return True

    @property
    def _label(self) -> str:
        """The name used in messages and docs (anonymous sequences are `sequence`)."""
        return self.name if self._named else "sequence"

    def _inner_name(self, name: str) -> str:
        """The name a value has inside the node (renames change it)."""
        return name

    def resolve(self, **inputs: Any) -> Node | None:
        """Return the node that would run with *inputs*: switches replaced by their choice.

        Like diffusers' ``get_execution_blocks``: ``pipe.blocks.resolve(image=x).doc``
        documents the workflow that actually runs. Values produced by earlier blocks count as
        given; a switch that would be skipped disappears (None when nothing would run).
        """
        return self._resolve(dict(inputs))

    def _resolve(self, known: dict[str, Any]) -> Node | None:
        known.update(dict.fromkeys(self._iface.provides, PRODUCED))
        return self

    # -- composing -----------------------------------------------------------------------

    def __rshift__(self, other: Node) -> Sequential:
        _check_node(other, f"`{self._label} >> ...`")
        return Sequential((self, other))

    def __rrshift__(self, other: object) -> Sequential:
        _check_node(other, f"`... >> {self._label}`")
        raise AssertionError  # pragma: no cover - _check_node raised

    def named(self, name: str) -> Node:
        """Return a copy of this node called *name* (a named sequence stays one sub-block)."""
        check_identifier(name, self._label)
        return attrs.evolve(self, name=name)  # type: ignore[misc]

    def rename(self, **names: str) -> Node:
        """Return a copy whose inputs and outputs ``old`` are read and written as ``new``.

        Example: ``encode.rename(image="mask_image")`` reuses one block for another value.
        """
        self._check_names(names, "rename")
        for new in names.values():
            check_identifier(new, self._label)
        return Adapted(self, renames=tuple(names.items()), name=self.name)

    def bind(self, **values: Any) -> Node:
        """Return a copy with inputs, components or configs fixed (partial application).

        Bound names stop being inputs of the node; at run time their values enter the state
        as if the caller had given them.
        """
        self._check_names(values, "bind", outputs=False)
        return Adapted(self, bound=tuple(values.items()), name=self.name)

    def _check_names(self, names: Mapping[str, object], verb: str, *, outputs: bool = True) -> None:
        known = [s.name for s in self._iface.inputs]
        if outputs:
            known += [s.name for s in self._iface.outputs]
        for name in names:
            if name not in known:
                what = "input or output" if outputs else "input, component or config"
                msg = (
                    f"can't {verb} `{name}` of `{self._label}`: it has no {what} of that name."
                    f"{did_you_mean(name, known)} Known: {listed(known)}."
                )
                raise WiringError(msg, name=name, consumer=self._label)

    # -- editing by path -------------------------------------------------------------------

    def __getitem__(self, path: str | Path | int) -> Node:
        """The sub-node at *path*: ``node["text2img > denoise > scheduler_step"]``.

        Paths go through named sequences, switch branches and loop bodies; `err.path` works
        too (loop steps are ignored). A sequence also takes a position.
        """
        node: Node = self
        for name in self._segments(path):
            node = node._child(name)
        return node

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the sub-nodes, as paths and ``node[name]`` know them."""
        return tuple(label for label, _ in self._children())

    def replace(self, path: str | Path, node: Node) -> Node:
        """Return a copy with the sub-node at *path* replaced by *node* (which keeps its name)."""
        _check_node(node, f"`{self._label}.replace(...)`")
        return self._edit(self._segments(path), ("replace", node))

    def insert(
        self,
        node: Node,
        *,
        before: str | Path | None = None,
        after: str | Path | None = None,
        name: str | None = None,
    ) -> Node:
        """Return a copy with *node* inserted before or after the sub-node at a path.

        Without either, a sequence gets *node* at its end. The path reaches inside loops and
        switches: ``sd.insert(clamp, after="text2img > denoise > scheduler_step")``.
        """
        _check_node(node, f"`{self._label}.insert(...)`")
        if before is not None and after is not None:
            msg = "give `before=` or `after=`, not both."
            raise WiringError(msg, consumer=self._label)
        if name is not None:
            check_identifier(name, self._label)
        if before is None and after is None:
            return self._append(node, name)
        where: Where = "before" if before is not None else "after"
        target = before if before is not None else after
        assert target is not None
        return self._edit(self._segments(target), ("insert", node, where, name))

    def remove(self, path: str | Path) -> Node:
        """Return a copy without the sub-node at *path* (its readers need the value elsewhere)."""
        return self._edit(self._segments(path), ("remove",))

    def _segments(self, path: str | Path | int) -> tuple[str, ...]:
        if isinstance(path, int):
            return (self._children()[path][0],)
        names = tuple(s.name for s in parse(path))
        if self._named and len(names) > 1 and names[0] == self.name and names[0] not in self.names:
            return names[1:]  # the path starts with the node's own name, as err.path does
        return names

    def _child(self, name: str) -> Node:
        for label, child in self._children():
            if label == name:
                return child
        labels = self.names
        if not labels:
            msg = f"`{self._label}` is a block: it has no sub-block `{name}`."
        else:
            msg = (
                f"`{self._label}` has no sub-block `{name}`.{did_you_mean(name, labels)} "
                f"Its sub-blocks are: {listed(labels)}."
            )
        raise PathError(msg, path=name, node=self._label)

    def _edit(self, names: tuple[str, ...], op: tuple[Any, ...]) -> Node:
        """Apply *op* to the sub-node at *names*; each level rebuilds itself around the result."""
        if len(names) == 1:
            return self._edit_child(names[0], op)
        child = self._child(names[0])
        return self._with_child(names[0], child._edit(names[1:], op))

    def _edit_child(self, name: str, op: tuple[Any, ...]) -> Node:
        """Apply *op* to the direct sub-node *name* (sequences override: they hold a list)."""
        child = self._child(name)
        kind = op[0]
        if kind == "replace":
            return self._with_child(name, op[1])
        if kind == "insert":
            return self._with_child(name, _joined(child, op[1], op[2], op[3]), keep_name=False)
        msg = (
            f"can't remove `{name}` from `{self._label}`: it is not in a sequence. Replace it, "
            f"or remove the whole `{self._label}`."
        )
        raise WiringError(msg, name=name, consumer=self._label)

    def _with_child(self, name: str, node: Node, *, keep_name: bool = True) -> Node:  # noqa: ARG002
        """A copy with the direct sub-node *name* replaced by *node* (composites override).

        With *keep_name*, *node* takes the old one's name; without, it keeps its own (the
        sequence an insert made around a loop's body is no sub-block of its own).
        """
        self._child(name)  # raises: a block has no sub-nodes
        raise AssertionError  # pragma: no cover

    def _append(self, node: Node, name: str | None) -> Node:  # noqa: ARG002 - composites override
        msg = (
            f"`{self._label}` is not a sequence: say where with `insert(node, before=...)` or "
            "`after=...`, or compose with `>>`."
        )
        raise WiringError(msg, consumer=self._label)

    # -- running -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Plans and generated functions are rebuilt on first use after unpickling.
        state = dict(self.__dict__)
        for name in ("_plan_made", "_identity", "_checks_made", "_plain"):
            state.pop(name, None)
        return state

    @property
    def _plan(self) -> Plan:
        """How the engine runs this node (built on first use, then kept)."""
        found: Plan | None = self.__dict__.get("_plan_made")
        if found is None:
            found = self.__dict__["_plan_made"] = self._make_plan()
        return found

    def _make_plan(self) -> Plan:
        raise NotImplementedError

    def _plan_fields(self) -> dict[str, Any]:
        iface = self._iface
        return {
            "node": self,
            "name": self._label,
            "inputs": tuple(s.name for s in iface.inputs),
            "outputs": iface.provides,
            "components": tuple(s.name for s in iface.inputs if s.kind == COMPONENT),
            "cacheable": all(child._plan.cacheable for _, child in self._children()),
        }

    @functools.cached_property
    def _identity(self) -> bytes:
        """A digest of what this node does: its code, structure and names (for caching)."""
        from ._fingerprint import identity_digest

        parts: list[Any] = [type(self).__name__, self._label]
        parts += [(name, child._identity) for name, child in self._children()]
        parts += self._identity_parts()
        return identity_digest(*parts)

    def _identity_parts(self) -> list[Any]:
        return []

    @property
    def _input_checks(self) -> dict[str, Check]:
        """How to check each input's value at run time, by name (those that can be checked)."""
        found: dict[str, Check] | None = self.__dict__.get("_checks_made")
        if found is None:
            found = {}
            for spec in self._iface.inputs:
                check = runtime_check(spec.type) if spec.kind == INPUT else None
                if check is not None:
                    # None may be given where None is the default (as ``x: int = None``).
                    found[spec.name] = or_none(check) if spec.default is None else check
            self.__dict__["_checks_made"] = found
        return found

    def _reader(self, name: str) -> tuple[str, Any]:
        """The path of the block that reads *name* first, and the type it declares."""
        spec = next(s for s in self._iface.inputs if s.name == name)
        return reader_path(self, self._label, name), spec.type

    def _missing_hint(self, names: tuple[str, ...]) -> str:
        """A hint for missing inputs that a loop inside gives its body under other names."""
        for _, child in self._children():
            hint = child._missing_hint(names)
            if hint:
                return hint
        return ""

    def run(
        self,
        state: Mapping[str, Any] | None = None,
        /,
        *,
        on_step: OnStep | None = None,
        events: Callable[[Event], None] | None = None,
        cancel: CancelToken | None = None,
        cache: Cache | None = None,
        resume: str | Path | None = None,
        **inputs: Any,
    ) -> State:
        """Run the node and return the final state.

        Args:
            state: values to start from (a `State` or any mapping); its names are not checked.
            on_step: called after every step of every loop (see `Step`).
            events: called with an `Event` when a block starts, finishes or is served from the
                cache, and after each loop step (a `Report` collects them).
            cancel: a token that stops the run between blocks and loop steps.
            cache: a `Cache` that serves unchanged blocks instead of running them.
            resume: start at a sub-block, skipping those before it: a name, a path such as
                ``"denoise[step 12] > unet"``, or the ``.path`` of a `BlockError` or a
                `CancelledError`. The values of *state* that runs change in place (generators,
                schedulers) are copied first, so one state can be resumed more than once.
            **inputs: the node's inputs by name.

        Raises:
            MissingInputError: a required input is missing (all are listed at once).
            UnknownInputError: an input name the node does not read.
            PathError: *resume* names no sub-block.
            BlockError: a block raised; ``err.state`` holds the values computed before.
            CancelledError: *cancel* was cancelled; ``err.path`` is the first unit not run.
        """
        if (
            state is None
            and on_step is None
            and events is None
            and cancel is None
            and cache is None
            and resume is None
        ):
            return run_plain(self, inputs)  # `inputs` is this call's own dict: it is handed over
        check_options(self._label, on_step, events, cancel, cache)
        return execute(
            self,
            state,
            inputs,
            on_step=on_step,
            events=events,
            cancel=cancel,
            resume=resume,
            hooks=cache_hooks(cache),
        )

    def stream(self, state: Mapping[str, Any] | None = None, /, **inputs: Any) -> Iterator[State]:
        """Run the node, yielding the state after each loop step and the final state last.

        The run advances only when the next state is asked for, so a server or UI can show
        previews and interleave requests; closing the iterator cancels the run.
        """
        from ._stream import stream

        return stream(self, state, inputs)

    # -- documentation ---------------------------------------------------------------------

    @property
    def doc(self) -> str:
        """The node's documentation: description, components, configs, inputs, outputs."""
        from ._render import render_doc

        return render_doc(self)

    def to_mermaid(self) -> str:
        """Draw the data flow (blocks and the values between them) as a mermaid flowchart."""
        from ._render import render_mermaid

        return render_mermaid(self)

    def _children(self) -> tuple[tuple[str, Node], ...]:
        """The named sub-nodes: the tree `repr`, paths and editing walk them."""
        return ()

    def __repr__(self) -> str:
        from ._render import render_tree

        return render_tree(self)

    def _repr_markdown_(self) -> str:
        from ._render import render_markdown

        return render_markdown(self)


def _check_node(value: object, where: str) -> None:
    """Raise `WiringError` unless *value* is a node, saying how to make one."""
    if isinstance(value, Node):
        return
    if callable(value) and hasattr(value, "__code__"):
        name = getattr(value, "__name__", "it")
        fix = f"Make `{name}` a block first: decorate it with `@mb.block`."
    else:
        fix = "Pass a block, a sequence, a switch or a loop."
    msg = f"{where} takes nodes, not {type(value).__name__} {value!r:.60}. {fix}"
    raise WiringError(msg)


def _joined(target: Node, node: Node, where: Where, name: str | None) -> Node:
    """*target* with *node* run before or after it, for a target that sits in no sequence."""
    if isinstance(target, Sequential):
        return target.insert(node, name=name) if where == "after" else target._prepend(node, name)
    new = node if name is None else node.named(name)
    pair = (new, target) if where == "before" else (target, new)
    return Sequential(pair)


class Composite(Node):
    """A node made of other nodes; calling it runs it (blocks, instead, call their function)."""

    def __call__(self, state: Mapping[str, Any] | None = None, /, **inputs: Any) -> State:
        """Run the node (see `run`) and return the final `State`."""
        return self.run(state, **inputs)


@attrs.frozen(slots=False, eq=False, repr=False)
class Adapted(Composite):
    """A node seen through renamed values and bound inputs (made by `rename` and `bind`)."""

    node: Node
    name: str
    renames: tuple[tuple[str, str], ...] = ()  # (inner name, outer name)
    bound: tuple[tuple[str, Any], ...] = ()  # (outer name, value)
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        iface = adapted_interface(
            self.node._iface, dict(self.renames), [n for n, _ in self.bound], self.name
        )
        object.__setattr__(self, "_iface", iface)

    @property
    def _kind(self) -> str:
        return self.node._kind

    @property
    def description(self) -> str:
        return self.node.description

    @property
    def _named(self) -> bool:
        return self.node._named

    def _inner_name(self, name: str) -> str:
        return {outer: inner for inner, outer in self.renames}.get(name, name)

    def named(self, name: str) -> Node:
        check_identifier(name, self._label)
        return Adapted(self.node.named(name), name=name, renames=self.renames, bound=self.bound)

    def rename(self, **names: str) -> Node:
        # Fold a rename of a rename into one adapter: outer names map back to inner ones.
        self._check_names(names, "rename")
        renames = dict(self.renames)
        inner_of = {outer: inner for inner, outer in renames.items()}
        for old, new in names.items():
            check_identifier(new, self._label)
            renames[inner_of.get(old, old)] = new
        bound = tuple((names.get(n, n), v) for n, v in self.bound)
        return Adapted(self.node, name=self.name, renames=tuple(renames.items()), bound=bound)

    def bind(self, **values: Any) -> Node:
        self._check_names(values, "bind", outputs=False)
        return Adapted(
            self.node,
            name=self.name,
            renames=self.renames,
            bound=self.bound + tuple(values.items()),
        )

    def _children(self) -> tuple[tuple[str, Node], ...]:
        return self.node._children()

    def _child(self, name: str) -> Node:
        return self.node._child(name)

    def _edit(self, names: tuple[str, ...], op: tuple[Any, ...]) -> Node:
        return attrs.evolve(self, node=self.node._edit(names, op))

    def _append(self, node: Node, name: str | None) -> Node:
        return attrs.evolve(self, node=self.node._append(node, name))

    def _missing_hint(self, names: tuple[str, ...]) -> str:
        return self.node._missing_hint(tuple(self._inner_name(n) for n in names))

    def _identity_parts(self) -> list[Any]:
        return [self.node._identity, self.renames, self.bound]

    def _make_plan(self) -> Plan:
        outer = dict(self.renames)
        inner = self.node._iface
        return Scope(
            **self._plan_fields(),
            inner=self.node._plan,
            bound=self.bound,
            reads=tuple((s.name, outer.get(s.name, s.name)) for s in inner.inputs),
            writes=tuple((n, outer.get(n, n)) for n in inner.provides),
            renamed=bool(self.renames),
        )


def _flatten(nodes: Iterable[object] | Node) -> tuple[Node, ...]:
    if isinstance(nodes, Node):
        nodes = (nodes,)  # Sequential(block): a sequence of one
    if not isinstance(cast("object", nodes), Iterable):
        msg = f"a sequence holds nodes (blocks, sequences, switches, loops), not {nodes!r}."
        raise WiringError(msg)
    flat: list[Node] = []
    for node in nodes:
        if not isinstance(node, Node):
            msg = f"a sequence holds nodes (blocks, sequences, switches, loops), not {node!r}."
            raise WiringError(msg)
        if isinstance(node, Sequential) and node.name is None:
            flat.extend(node.nodes)  # anonymous sequences are spliced: `>>` is associative
        else:
            flat.append(node)
    return tuple(flat)


@attrs.frozen(slots=False, eq=False, repr=False)
class Sequential(Composite):
    """Nodes that run in order; each reads what the ones before it produced.

    Made with ``a >> b``, ``Sequential([a, b])`` or `from_dict`. Anonymous sequences are
    spliced flat when composed, so ``>>`` is associative; `named` ones stay one sub-block.
    Inputs are what no earlier node produces; outputs are everything any node produces.
    """

    nodes: tuple[Node, ...] = attrs.field(converter=_flatten)
    name: str | None = None  # type: ignore[assignment] # pyright: ignore[reportIncompatibleVariableOverride] - None: anonymous
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.nodes:
            msg = "a sequence needs at least one node."
            raise WiringError(msg)
        if self.name is not None:
            check_identifier(self.name, self.name)
        labels = unique_names(node._label for node in self.nodes)
        self.__dict__["_labels"] = labels
        self.__dict__["_iface"] = wire_sequence(labels, self.nodes)

    @classmethod
    def from_dict(cls, nodes: Mapping[str, Node], /, *, name: str | None = None) -> Sequential:
        """Build a sequence whose sub-blocks are called by the keys of *nodes*, in order.

        Example: ``Sequential.from_dict({"input": a, "image_encoder": b})``.
        """
        return cls(tuple(node.named(key) for key, node in nodes.items()), name=name)

    @property
    def _named(self) -> bool:
        return self.name is not None

    @property
    def _kind(self) -> str:
        return "Sequential"

    # -- editing: each returns a new sequence ------------------------------------------------

    def __getitem__(self, path: str | Path | int) -> Node:
        if isinstance(path, int):
            return self.nodes[path]
        return super().__getitem__(path)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def _children(self) -> tuple[tuple[str, Node], ...]:
        return tuple(zip(self.__dict__["_labels"], self.nodes, strict=True))

    def _as_named(self) -> list[Node]:
        # Nodes keep the names they had here, so editing never renames the others.
        return [n if n._label == k else n.named(k) for k, n in self._children()]

    def _rebuilt(self, nodes: Iterable[Node]) -> Sequential:
        return attrs.evolve(self, nodes=tuple(nodes))

    def _position(self, name: str) -> int:
        labels: tuple[str, ...] = self.__dict__["_labels"]
        if name not in labels:
            self._child(name)  # raises, with a suggestion
        return labels.index(name)

    def _with_child(self, name: str, node: Node, *, keep_name: bool = True) -> Node:
        del keep_name  # a sequence holds its sub-nodes by name: the name always stays
        nodes = self._as_named()
        nodes[self._position(name)] = node.named(name)
        return self._rebuilt(nodes)

    def _edit_child(self, name: str, op: tuple[Any, ...]) -> Node:
        pos = self._position(name)
        nodes = self._as_named()
        if op[0] == "replace":
            nodes[pos] = op[1].named(name)
        elif op[0] == "remove":
            if len(nodes) == 1:
                msg = (
                    f"can't remove `{name}`: it is the only sub-block of `{self._label}`, and a "
                    "sequence needs at least one. Remove the sequence instead."
                )
                raise WiringError(msg, name=name, consumer=self._label)
            del nodes[pos]
        else:
            _, node, where, new_name = op
            nodes.insert(pos if where == "before" else pos + 1, self._fresh(node, new_name))
        return self._rebuilt(nodes)

    def _fresh(self, node: Node, name: str | None) -> Node:
        """*node* under a name no sub-block has yet (its own, numbered if taken)."""
        if name is None:
            name = unique_names([*self.names, node._label])[-1]  # the others keep their names
        elif name in self.names:
            msg = (
                f"can't insert a sub-block named `{name}`: `{self._label}` already has one. "
                f"Give another `name=`, or use `.replace({name!r}, node)`."
            )
            raise WiringError(msg, name=name, consumer=self._label)
        return node if name == node._label else node.named(name)

    def _append(self, node: Node, name: str | None) -> Node:
        return self._rebuilt([*self._as_named(), self._fresh(node, name)])

    def _prepend(self, node: Node, name: str | None) -> Node:
        return self._rebuilt([self._fresh(node, name), *self._as_named()])

    def replace(self, path: str | Path, node: Node) -> Sequential:
        """Return a copy with the sub-node at *path* replaced by *node*, which keeps the name."""
        return cast("Sequential", super().replace(path, node))

    def insert(
        self,
        node: Node,
        *,
        before: str | Path | None = None,
        after: str | Path | None = None,
        name: str | None = None,
    ) -> Sequential:
        """Return a copy with *node* inserted before or after a sub-node (or at the end)."""
        return cast("Sequential", super().insert(node, before=before, after=after, name=name))

    def remove(self, path: str | Path) -> Sequential:
        """Return a copy without the sub-node at *path*."""
        return cast("Sequential", super().remove(path))

    def _resolve(self, known: dict[str, Any]) -> Node | None:
        kept: list[Node] = []
        for name, node in self._children():
            chosen = node._resolve(known)
            if chosen is not None:
                kept.append(chosen.named(name) if chosen is node else chosen)
        if not kept:
            return None
        if len(kept) == len(self.nodes) and all(
            k is n or (k.name == n.name and getattr(k, "_iface", None) is n._iface)
            for k, n in zip(kept, self.nodes, strict=True)
        ):
            return self  # nothing chosen away: the sequence itself runs
        return Sequential(tuple(kept), name=self.name)

    def _make_plan(self) -> Plan:
        feeds = tuple(fed_defaults(self.nodes))
        fields = self._plan_fields()
        # The defaults it feeds later readers enter the state too: a cache serving the whole
        # sequence must put them back.
        fed = dict.fromkeys(name for feed in feeds for name, _ in feed)
        fields["outputs"] += tuple(name for name in fed if name not in fields["outputs"])
        return Seq(
            **fields,
            children=tuple(node._plan for node in self.nodes),
            labels=self.__dict__["_labels"],
            feeds=feeds,
        )
