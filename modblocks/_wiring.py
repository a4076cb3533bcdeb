"""The wiring rule: what a node reads and writes, worked out once when the node is built.

Every kind of node gets its `Interface` here — blocks, sequences, switches, loops and adapters
(`rename`/`bind`) — and `Pipeline` checks its bindings against it. Nothing here runs a node: the
functions take the sub-nodes' interfaces (and, for messages, anything with ``_iface`` and
``_children()``).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from types import FrameType
from typing import Any, Protocol

import attrs

from ._names import check_not_reserved
from ._specs import COMPONENT, CONFIG, INPUT, NOTHING, InputSpec, OutputSpec
from ._typecheck import is_compatible, type_name
from .exceptions import DefaultsWarning, WiringError

__all__ = [
    "Interface",
    "Wired",
    "adapted_interface",
    "block_interface",
    "check_declarations",
    "fed_defaults",
    "loop_interface",
    "reader_path",
    "switch_interface",
    "unique_names",
    "wire_sequence",
]


@attrs.frozen
class Interface:
    """What a node reads and writes, computed once when the node is built."""

    inputs: tuple[InputSpec, ...]  # every kind: inputs, components, configs
    outputs: tuple[OutputSpec, ...]
    bound: tuple[str, ...] = ()  # names a node puts in the state besides its outputs (bind)
    maybe: frozenset[str] = frozenset()  # outputs that may not be produced (switch branches)
    required: frozenset[str] = attrs.field(init=False)
    accepted: frozenset[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "required", frozenset(s.name for s in self.inputs if s.required))
        object.__setattr__(self, "accepted", frozenset(s.name for s in self.inputs))

    @property
    def provides(self) -> tuple[str, ...]:
        """Names this node puts in the state: its outputs, then bound values."""
        return tuple(s.name for s in self.outputs) + self.bound


class Wired(Protocol):
    """What the wiring rule needs to know of a node (for messages that point inside it)."""

    @property
    def _iface(self) -> Interface: ...
    def _children(self) -> tuple[tuple[str, Any], ...]: ...
    def _inner_name(self, name: str) -> str: ...


def unique_names(names: Iterable[str]) -> tuple[str, ...]:
    """Make names unique in order: repeats become ``name_2``, ``name_3``, ...

    Examples:
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


# -- leaves and adapters -------------------------------------------------------------------


def _check_names(iface: Interface, label: str) -> Interface:
    for name in (*iface.accepted, *iface.provides):
        check_not_reserved(name, label)
    return iface


def block_interface(
    inputs: Sequence[InputSpec],
    outputs: Sequence[OutputSpec],
    renames: Mapping[str, str],
    bound: Mapping[str, Any],
    label: str,
) -> Interface:
    """A block's interface: its parameters and outputs under their state names."""
    ins = tuple(
        attrs.evolve(s, name=renames.get(s.name, s.name))
        for s in inputs
        if renames.get(s.name, s.name) not in bound
    )
    outs = tuple(attrs.evolve(s, name=renames.get(s.name, s.name)) for s in outputs)
    for specs, what in ((ins, "inputs"), (outs, "outputs")):
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            msg = (
                f"renaming block `{label}` gives two of its {what} the name `{twice[0]}`. "
                "Rename to a name it doesn't use yet."
            )
            raise WiringError(msg, name=twice[0], producer=label)
    return _check_names(Interface(ins, outs, bound=tuple(bound)), label)


def adapted_interface(
    inner: Interface, renames: Mapping[str, str], bound: Iterable[str], label: str
) -> Interface:
    """The interface of a node seen through renames (inner → outer name) and bound values."""
    bound_names = tuple(bound)
    _check_aliases(inner, renames, label)
    inputs: dict[str, InputSpec] = {}
    for spec in inner.inputs:
        name = renames.get(spec.name, spec.name)
        if name not in bound_names:
            inputs.setdefault(name, attrs.evolve(spec, name=name))
    outputs = [attrs.evolve(s, name=renames.get(s.name, s.name)) for s in inner.outputs]
    seen: set[str] = set()
    for out in outputs:
        if out.name in seen:
            msg = f"renaming `{label}` gives two outputs the name `{out.name}`."
            raise WiringError(msg, name=out.name, producer=label)
        seen.add(out.name)
    iface = Interface(
        tuple(inputs.values()),
        tuple(outputs),
        bound=tuple(renames.get(n, n) for n in inner.bound) + bound_names,
        maybe=frozenset(renames.get(n, n) for n in inner.maybe),
    )
    return _check_names(iface, label)


def _check_aliases(inner: Interface, renames: Mapping[str, str], label: str) -> None:
    """Reject renames that give a value the node writes the outer name of another of its values.

    Inside the node the two stay apart, but the run's state (an error's state, a resume) holds
    one value per name and could not tell them apart. Inputs may share a name: both read it.
    """
    outer_of: dict[str, list[str]] = {}
    for name in dict.fromkeys((*(s.name for s in inner.inputs), *inner.provides)):
        outer_of.setdefault(renames.get(name, name), []).append(name)
    for outer, names in outer_of.items():
        if len(names) > 1 and any(n in inner.provides for n in names):
            msg = (
                f"renaming `{label}` gives its values {', '.join(f'`{n}`' for n in names)} one "
                f"name, `{outer}`, and it writes one of them: they would overwrite each other. "
                "Rename to a name the node doesn't use."
            )
            raise WiringError(msg, name=outer, producer=label)


# -- sequences -----------------------------------------------------------------------------


def wire_sequence(names: tuple[str, ...], nodes: Sequence[Wired]) -> Interface:
    """Wire nodes by name: check types, find the sequence's inputs and outputs.

    For each node in order, an input produced by an earlier node is fed from it; any other
    becomes an input of the sequence, required if its first reader requires it. Outputs are
    every name any node produces, in order of first production.
    """
    producer: dict[str, tuple[str, OutputSpec]] = {}
    maybe: set[str] = set()
    needed: dict[str, InputSpec] = {}
    first_reader: dict[str, str] = {}
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
            first = first_reader.setdefault(spec.name, child_name)
            _merge_need(needed, spec, first, child_name)
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


def _merge_need(needed: dict[str, InputSpec], spec: InputSpec, first: str, reader: str) -> None:
    earlier = needed.get(spec.name)
    if earlier is None:
        needed[spec.name] = spec
        return
    # The first reader describes the value and says whether it is required: later readers
    # that require it get its default (`fed_defaults`), unless it has none to give (a switch
    # that may skip its reader), and then they make it required. It is a component or config
    # if any reader declares it so.
    if _defaults_differ(earlier, spec):
        msg = (
            f"input `{spec.name}` has the default {earlier.default!r} in `{first}` and "
            f"{spec.default!r} in `{reader}`: when it is not given, each reads its own. Give "
            f"the value, make the defaults agree, or rename one of them."
        )
        warnings.warn(msg, DefaultsWarning, stacklevel=_stacklevel())
    kind = earlier.kind if earlier.kind != INPUT else spec.kind
    required = earlier.required or (spec.required and earlier.default is NOTHING)
    if kind != earlier.kind or required != earlier.required:
        needed[spec.name] = attrs.evolve(earlier, kind=kind, required=required)


def _stacklevel() -> int:
    """The stack level of the user's code that composed the nodes (outside modblocks)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("modblocks."):
        frame = frame.f_back
        level += 1
    return level


def _defaults_differ(a: InputSpec, b: InputSpec) -> bool:
    if a.required or b.required or a.default is NOTHING or b.default is NOTHING:
        return False
    return not same_value(a.default, b.default)


def same_value(a: Any, b: Any) -> bool:
    """Whether two defaults are the same value (of the same type); unsure means no."""
    if a is b:
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001 - values without a plain == (tensors) differ
        return False


def fed_defaults(nodes: Sequence[Wired]) -> list[tuple[tuple[str, Any], ...]]:
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


def check_declarations(children: Iterable[tuple[str, Wired]]) -> None:
    """Check that nodes agree on their components and configs, as a sequence does.

    A pipeline binds one value per name for every branch, so a name declared with incompatible
    types (or as a component in one branch and a config in another) is a `WiringError`.
    """
    declared: dict[str, tuple[str, InputSpec]] = {}
    for label, node in children:
        for spec in node._iface.inputs:
            if spec.kind != INPUT:
                _check_declared(declared, label, spec)


def reader_path(node: Wired, label: str, name: str) -> str:
    """The path to the block in *node* (called *label*) that reads *name* first."""
    return _within(node, label, name, writer=False)


def _within(node: Wired, label: str, name: str, *, writer: bool) -> str:
    """Return *label* and the path to the block in *node* that reads *name* first, for messages.

    With *writer*, the block that writes it last. Example: ``denoise > scheduler_step``.
    """
    name = node._inner_name(name)
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


# -- switches and loops --------------------------------------------------------------------


def switch_interface(
    branches: Sequence[Wired],
    *,
    has_default: bool,
    selectors: Sequence[tuple[str, Any]],
    label: str,
) -> Interface:
    """The interface of a switch over *branches* (the default last, when there is one).

    An input is required only when every branch requires it and there is a default (otherwise
    the switch can be skipped); *selectors* are the values that choose the branch, with the
    default each gets when absent.
    """
    ifaces = [node._iface for node in branches]
    inputs: dict[str, InputSpec] = {}
    for iface in ifaces:
        for spec in iface.inputs:
            first = inputs.setdefault(spec.name, spec)
            if first.type != spec.type and first is not spec:
                # Branches read it as different types: the switch takes either.
                either: Any = _union(first.type, spec.type)
                first = inputs[spec.name] = attrs.evolve(first, type=either)
            if not _same_default(first, spec):
                # Each branch keeps its own default; the switch itself promises none.
                note = "default depends on the branch"
                description = f"{first.description} ({note})" if first.description else note
                inputs[spec.name] = attrs.evolve(
                    first, default=NOTHING, required=False, description=description
                )
    required = {name for name in inputs if has_default and all(name in i.required for i in ifaces)}
    specs = {n: attrs.evolve(s, required=n in required) for n, s in inputs.items()}
    for name, default in selectors:
        if name in specs and not specs[name].required:
            # None selects no branch: a selector may always be None, whatever a branch reads.
            specs[name] = attrs.evolve(specs[name], type=_union(specs[name].type, None))
        if name not in specs:
            specs[name] = InputSpec(
                name, default=default, description=f"selects a branch of `{label}`"
            )
    outputs: dict[str, OutputSpec] = {}
    bound: dict[str, None] = {}
    for iface in ifaces:
        for out in iface.outputs:
            outputs.setdefault(out.name, out)
        bound.update(dict.fromkeys(iface.bound))
    everywhere: set[str] = set()
    if has_default:
        sets = [set(i.provides) - i.maybe for i in ifaces]
        everywhere = sets[0].intersection(*sets[1:])
    maybe = frozenset(n for n in (*outputs, *bound) if n not in everywhere)
    iface = Interface(
        tuple(specs.values()), tuple(outputs.values()), bound=tuple(bound), maybe=maybe
    )
    return _check_names(iface, label)


def _union(a: Any, b: Any) -> Any:
    """``a | b``, also for annotations ``|`` can't join (string forward references)."""
    if a is Any or b is Any:
        return Any
    try:
        return a | b
    except TypeError:
        return Any


def _same_default(a: InputSpec, b: InputSpec) -> bool:
    if a.required or b.required:
        return True
    return same_value(a.default, b.default)


def loop_interface(
    body: Interface, over: str, index: str | None, item: str | None, label: str
) -> Interface:
    """The interface of a loop: ``over`` and the body's inputs, less what the loop gives it."""
    given = {index, item} - {None}
    clash = given & set(body.provides)
    if clash or over in given:
        msg = (
            f"loop `{label}`: `{(clash or given).pop()}` is set by the loop each step, so "
            "the body can't output it and it can't be `over`. Choose other names."
        )
        raise WiringError(msg, consumer=label)
    if index is not None and index == item:
        msg = (
            f"loop `{label}`: `index` and `item` are both `{index}`; the step number and the "
            "element need two names (or None for the one the body doesn't read)."
        )
        raise WiringError(msg, name=index, consumer=label)
    over_spec = InputSpec(over, description="the values to loop over, one per step")
    inputs = [over_spec] + [s for s in body.inputs if s.name not in given and s.name != over]
    iface = Interface(tuple(inputs), body.outputs, bound=body.bound, maybe=body.maybe)
    return _check_names(iface, label)
