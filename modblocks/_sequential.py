"""`Sequential`: blocks run in order, wired by name (``a >> b >> c``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._block import Block
from ._node import Adapted, Composite, Interface, Node, _check_identifier
from ._run import Exec, Failure, Run, Values, did_you_mean
from ._specs import COMPONENT, CONFIG, INPUT, NOTHING, InputSpec, OutputSpec
from ._typecheck import is_compatible, type_name
from .exceptions import WiringError

__all__ = ["Sequential", "unique_names"]


def _flatten(nodes: Iterable[object] | Node) -> tuple[Node, ...]:
    if isinstance(nodes, Node):
        nodes = (nodes,)  # Sequential(block): a sequence of one
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


def unique_names(names: Iterable[str]) -> tuple[str, ...]:
    """Make names unique in order: repeats become ``name_2``, ``name_3``, ...

    Example:
        >>> unique_names(["f", "f", "g", "f"])
        ('f', 'f_2', 'g', 'f_3')
    """
    seen: set[str] = set()
    counts: dict[str, int] = {}
    out: list[str] = []
    for name in names:
        candidate = name
        while candidate in seen:
            counts[name] = counts.get(name, 1) + 1
            candidate = f"{name}_{counts[name]}"
        seen.add(candidate)
        out.append(candidate)
    return tuple(out)


@attrs.frozen(slots=False, eq=False, repr=False)
class Sequential(Composite):
    """Nodes that run in order; each reads what the ones before it produced.

    Made with ``a >> b``, ``Sequential([a, b])`` or `from_dict`. Anonymous sequences are
    spliced flat when composed, so ``>>`` is associative; `named` ones stay one sub-block.
    Inputs are what no earlier node produces; outputs are everything any node produces.
    """

    nodes: tuple[Node, ...] = attrs.field(converter=_flatten)
    name: str | None = None  # type: ignore[assignment] # pyright: ignore[reportIncompatibleVariableOverride] - None: anonymous
    names: tuple[str, ...] = attrs.field(init=False)
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.nodes:
            msg = "a sequence needs at least one node."
            raise WiringError(msg)
        if self.name is not None:
            _check_identifier(self.name, self.name)
        self.__dict__["names"] = unique_names(node._label for node in self.nodes)
        self.__dict__["_iface"] = _wire(self.names, self.nodes)
        self.__dict__["_index"] = {name: pos for pos, name in enumerate(self.names)}

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
    def description(self) -> str:
        return ""

    # -- editing: each returns a new sequence ------------------------------------------------

    def __getitem__(self, key: str | int) -> Node:
        if isinstance(key, int):
            return self.nodes[key]
        return self.nodes[self._position(key)]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Any:
        return iter(self.nodes)

    def _position(self, name: str) -> int:
        index: dict[str, int] = self.__dict__["_index"]
        if name not in index:
            msg = (
                f"`{self.name or 'the sequence'}` has no sub-block `{name}`."
                f"{did_you_mean(name, list(index))} Its sub-blocks are: "
                f"{', '.join(f'`{n}`' for n in index)}."
            )
            raise KeyError(msg)
        return index[name]

    def _rebuilt(self, nodes: Iterable[Node]) -> Sequential:
        # Nodes keep the names they had here, so editing never renames the others.
        return Sequential(tuple(nodes), name=self.name)

    def _as_named(self) -> list[Node]:
        return [
            n if n.name == k else n.named(k) for k, n in zip(self.names, self.nodes, strict=True)
        ]

    def replace(self, name: str, node: Node) -> Sequential:
        """Return a copy with sub-block *name* replaced by *node*, which keeps the old name."""
        nodes = self._as_named()
        nodes[self._position(name)] = node.named(name)
        return self._rebuilt(nodes)

    def insert(
        self,
        node: Node,
        *,
        before: str | None = None,
        after: str | None = None,
        name: str | None = None,
    ) -> Sequential:
        """Return a copy with *node* inserted before or after a sub-block (or at the end)."""
        if before is not None and after is not None:
            msg = "give `before=` or `after=`, not both."
            raise WiringError(msg)
        nodes = self._as_named()
        if before is not None:
            pos = self._position(before)
        elif after is not None:
            pos = self._position(after) + 1
        else:
            pos = len(nodes)
        if name is None:
            name = unique_names([*self.names, node._label])[-1]  # the others keep their names
        elif name in self.names:
            msg = (
                f"can't insert a sub-block named `{name}`: `{self._label}` already has one. "
                f"Give another `name=`, or use `.replace({name!r}, node)`."
            )
            raise WiringError(msg, name=name, consumer=self._label)
        nodes.insert(pos, node if name == node.name else node.named(name))
        return self._rebuilt(nodes)

    def remove(self, name: str) -> Sequential:
        """Return a copy without sub-block *name*; its consumers then need the value elsewhere."""
        nodes = self._as_named()
        del nodes[self._position(name)]
        return self._rebuilt(nodes)

    def _children(self) -> tuple[tuple[str, Node], ...]:
        return tuple(zip(self.names, self.nodes, strict=True))

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

    # -- running -------------------------------------------------------------------------

    def _compile(self) -> Exec:
        return _compile_sequence(self.names, self.nodes)

    def _resume(self, start: str) -> Exec:
        segments = [s.strip() for s in start.split(">")]
        if self.name is not None and segments[0] == self.name and len(segments) > 1:
            segments = segments[1:]
        head, _, step = segments[0].partition("[step")
        head = head.strip()
        pos = self._position(head)
        step_index = int(step.rstrip("] ")) if step else None
        names, nodes = self.names[pos:], self.nodes[pos:]
        rest = _compile_sequence(names, nodes)
        if step_index is None:
            return rest
        first = nodes[0]._resume(f"[step {step_index}]")
        tail = _compile_sequence(names[1:], nodes[1:]) if len(nodes) > 1 else None

        def resumed(values: Values, run: Run) -> None:
            try:
                first(values, run)
            except Failure as failure:
                raise failure.add(names[0]) from None
            if tail is not None:
                tail(values, run)

        return resumed


def _wire(names: tuple[str, ...], nodes: tuple[Node, ...]) -> Interface:
    """Wire nodes by name: check types, find the sequence's inputs and outputs."""
    producer: dict[str, tuple[str, OutputSpec]] = {}
    maybe: set[str] = set()
    needed: dict[str, InputSpec] = {}
    declared: dict[str, tuple[str, InputSpec]] = {}  # components and configs, by first owner
    outputs: dict[str, OutputSpec] = {}
    for child_name, node in zip(names, nodes, strict=True):
        iface = node._iface
        for spec in iface.inputs:
            if spec.kind != INPUT:
                _check_declared(declared, child_name, spec)
            if spec.name in producer:
                source, produced = producer[spec.name]
                if not is_compatible(produced.type, spec.type):
                    source_node = nodes[names.index(source)]
                    producer_path = _within(source_node, source, spec.name, writer=True)
                    consumer_path = _within(node, child_name, spec.name, writer=False)
                    raise _type_error(
                        spec.name, producer_path, produced.type, consumer_path, spec.type
                    )
                if spec.name not in maybe:
                    continue
                spec = attrs.evolve(spec, required=False)  # may be given when not produced
            _merge_need(needed, spec)
        outs = {s.name: s for s in iface.outputs}
        for name in iface.provides:
            out = outs.get(name, OutputSpec(name))
            producer[name] = (child_name, out)
            if name in iface.maybe:
                if name not in outputs or name in maybe:
                    maybe.add(name)
            else:
                maybe.discard(name)
            if name in outs:
                earlier = outputs.get(name)
                if earlier is not None and not out.description and earlier.description:
                    out = attrs.evolve(out, description=earlier.description)
                outputs[name] = out  # the last producer's spec, at the first production's place
    extra = tuple(name for name in producer if name not in outputs)  # bound values of children
    return Interface(
        tuple(needed.values()), tuple(outputs.values()), bound=extra, maybe=frozenset(maybe)
    )


def _merge_need(needed: dict[str, InputSpec], spec: InputSpec) -> None:
    first = needed.get(spec.name)
    if first is None:
        needed[spec.name] = spec
        return
    # The first consumer describes the value and says whether it is required: later consumers
    # that require it get its default (`_fed_defaults`), unless it has none to give (a switch
    # that may skip its reader), and then they make it required. It is a component or config
    # if any consumer declares it so.
    kind = first.kind if first.kind != INPUT else spec.kind
    required = first.required or (spec.required and first.default is NOTHING)
    if kind != first.kind or required != first.required:
        needed[spec.name] = attrs.evolve(first, kind=kind, required=required)


def _fed_defaults(nodes: tuple[Node, ...]) -> list[tuple[tuple[str, Any], ...]]:
    """Per node, the defaults it gets: inputs it requires that its sequence doesn't.

    An input of a sequence is optional when its first consumer has a default; a later consumer
    that requires it, and reads it before anything produces it, gets that default (as in
    diffusers, where the combined input's default is what every block reads).
    """
    first: dict[str, InputSpec] = {}
    produced: set[str] = set()
    feeds: list[tuple[tuple[str, Any], ...]] = []
    for node in nodes:
        feed: list[tuple[str, Any]] = []
        for spec in node._iface.inputs:
            if spec.name in produced:
                continue
            earlier = first.setdefault(spec.name, spec)
            if spec.required and not earlier.required and earlier.default is not NOTHING:
                feed.append((spec.name, earlier.default))
        feeds.append(tuple(feed))
        produced.update(node._iface.provides)
    return feeds


def _check_declared(
    declared: dict[str, tuple[str, InputSpec]], owner: str, spec: InputSpec
) -> None:
    if spec.name not in declared:
        declared[spec.name] = (owner, spec)
        return
    first_owner, first = declared[spec.name]
    if first.kind != spec.kind and {first.kind, spec.kind} == {COMPONENT, CONFIG}:
        msg = (
            f"`{spec.name}` is a {first.kind} of `{first_owner}` but a {spec.kind} of `{owner}`. "
            "Rename one of them with `.rename(...)`."
        )
        raise WiringError(msg, name=spec.name, producer=first_owner, consumer=owner)
    if not (is_compatible(first.type, spec.type) or is_compatible(spec.type, first.type)):
        msg = (
            f"{spec.kind} `{spec.name}` is declared with incompatible types:\n"
            f"  - `{first_owner}` declares: {type_name(first.type)}\n"
            f"  - `{owner}` declares: {type_name(spec.type)}\n"
            "Make the annotations agree, or rename one with `.rename(...)`."
        )
        raise WiringError(msg, name=spec.name, producer=first_owner, consumer=owner)


def _within(node: Node, label: str, name: str, *, writer: bool) -> str:
    """Return *label* and the path to the block in *node* that reads *name* first, for messages.

    With *writer*, the block that writes it last. Example: ``denoise > scheduler_step``.
    """
    if isinstance(node, Adapted):
        inner = {outer: inner for inner, outer in node.renames}.get(name, name)
        return _within(node.node, label, inner, writer=writer)
    children = node._children()
    if writer:
        children = children[::-1]
    for child_label, child in children:
        iface = child._iface
        found = name in iface.provides if writer else name in iface.accepted
        if found:
            return _within(child, f"{label} > {child_label}", name, writer=writer)
    return label


def _type_error(
    name: str, producer: str, produced: Any, consumer: str, expected: Any
) -> WiringError:
    width = max(len(producer) + len(" returns"), len(consumer) + len(" expects"))
    msg = (
        f"can't feed value `{name}` from `{producer}` into `{consumer}`:\n"
        f"  - {f'`{producer}` returns:':<{width + 3}} {type_name(produced)}\n"
        f"  - {f'`{consumer}` expects:':<{width + 3}} {type_name(expected)}\n"
        f"Change one of the annotations, or rename the value with `.rename({name}=...)`."
    )
    return WiringError(
        msg, name=name, producer=producer, consumer=consumer, produced=produced, expected=expected
    )


def _compile_sequence(names: tuple[str, ...], nodes: tuple[Node, ...]) -> Exec:
    """Generate one function that runs the nodes in order, inlining plain blocks.

    The fast path is straight-line code over the run's dict, as a hand-written pipeline would
    be; ``k`` tracks the running node so a failure can say where it happened. Runs that need
    paths (callbacks, streams, cancellation) take the slow path, one node at a time.
    """
    namespace: dict[str, Any] = {"Failure": Failure}
    lines: list[str] = []
    execs = tuple(node._exec for node in nodes)
    slows = tuple(node._slow_exec for node in nodes)
    feeds = _fed_defaults(nodes)
    for k, node in enumerate(nodes):
        lines.append(f"k = {k}")
        for j, (name, default) in enumerate(feeds[k]):
            namespace[f"f_{k}_{j}"] = default
            lines.append(f"if {name!r} not in v: v[{name!r}] = f_{k}_{j}")
        if isinstance(node, Block):
            block_lines, block_ns = node._source(f"_{k}")
            lines += block_lines
            namespace.update(block_ns)
        else:
            namespace[f"x_{k}"] = execs[k]
            lines.append(f"x_{k}(v, run)")
    body = "\n".join(f"        {line}" for line in lines)
    source = (
        "def run_sequence(v, run):\n"
        "    if run.slow:\n"
        "        return slow(v, run)\n"
        "    k = 0\n"
        "    try:\n"
        f"{body}\n"
        "    except Exception as exc:\n"
        "        raise fail(exc, k, v) from None\n"
    )

    def fail(exc: Exception, k: int, values: Values) -> Failure:
        if isinstance(exc, Failure):
            return exc.add(names[k])
        node = nodes[k]
        failure = node._failure(exc, values) if isinstance(node, Block) else Failure("block", exc)
        return failure.add(names[k])

    def slow(values: Values, run: Run) -> None:
        path = run.path
        cancel = run.cancel
        k = 0
        try:
            for k, (name, exec_) in enumerate(zip(names, slows, strict=True)):
                path.append(name)
                if cancel is not None and cancel.cancelled:
                    run.check_cancel()  # before `name` runs: the path says where it stopped
                for given, default in feeds[k]:
                    values.setdefault(given, default)
                exec_(values, run)
                path.pop()
        except Exception as exc:  # noqa: BLE001 - turned into a Failure with the path
            path.pop()
            raise fail(exc, k, values) from None

    namespace.update(fail=fail, slow=slow)
    exec(compile(source, "<sequence>", "exec"), namespace)  # noqa: S102
    run_sequence: Exec = namespace["run_sequence"]
    return run_sequence
