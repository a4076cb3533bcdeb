"""`Node`: what blocks, sequences, switches and loops share — composing, adapting, running."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs

from ._events import Event
from ._run import (
    CancelToken,
    Exec,
    OnStep,
    Run,
    Values,
    did_you_mean,
    make_run,
    run_node,
)
from ._specs import COMPONENT, CONFIG, INPUT, InputSpec, OutputSpec
from ._state import State
from .exceptions import WiringError

if TYPE_CHECKING:
    from ._cache import Cache
    from ._sequential import Sequential

__all__ = ["PRODUCED", "Adapted", "Interface", "Node"]

PRODUCED: Any = object()  # stands for a value an earlier block will produce, when resolving


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


class Node:
    """A step of a pipeline: a `Block`, `Sequential`, `Switch` or `Loop`.

    Every node is immutable and compared by identity. ``a >> b`` composes nodes into a
    `Sequential`; `rename`, `bind` and `named` return adapted copies; `run` executes.
    """

    # Set by subclasses (attrs fields or properties).
    name: str
    _iface: Interface

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
        from ._sequential import Sequential

        if not isinstance(cast("object", other), Node):
            return NotImplemented
        return Sequential((self, other))

    def named(self, name: str) -> Node:
        """Return a copy of this node called *name* (a named sequence stays one sub-block)."""
        _check_identifier(name, self.name)
        return attrs.evolve(self, name=name)  # type: ignore[misc]

    def rename(self, **names: str) -> Node:
        """Return a copy whose inputs and outputs ``old`` are read and written as ``new``.

        Example: ``encode.rename(image="mask_image")`` reuses one block for another value.
        """
        self._check_names(names, "rename")
        for new in names.values():
            _check_identifier(new, self.name)
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
                    f"{did_you_mean(name, known)} Known: {', '.join(f'`{k}`' for k in known)}."
                )
                raise WiringError(msg, name=name, consumer=self._label)

    # -- running -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # The compiled function is rebuilt on first use after unpickling; it can't be pickled.
        state = dict(self.__dict__)
        for name in ("_exec", "_slow_exec", "_compiled"):
            state.pop(name, None)
        state.pop("_identity", None)  # made of per-process object tokens
        return state

    @functools.cached_property
    def _exec(self) -> Exec:
        """The compiled function that runs this node on a run's values (built on first use)."""
        return self._compile()

    def _compile(self) -> Exec:
        raise NotImplementedError

    @functools.cached_property
    def _slow_exec(self) -> Exec:
        """The function for runs that go node by node (`Run.slow`); blocks skip a check."""
        return self._exec

    @functools.cached_property
    def _identity(self) -> bytes:
        """A digest of what this node does: its code, structure and names (for caching)."""
        from ._cache import identity_digest

        parts: list[Any] = [type(self).__name__, self._label]
        parts += [(name, child._identity) for name, child in self._children()]
        parts += self._identity_parts()
        return identity_digest(*parts)

    def _identity_parts(self) -> list[Any]:
        return []

    def _resume(self, start: str) -> Exec:
        msg = f"`{self._label}` can't start at `{start}`: only a sequence or a loop can resume."
        raise WiringError(msg, name=start, consumer=self.name)

    def run(
        self,
        state: Mapping[str, Any] | None = None,
        /,
        *,
        on_step: OnStep | None = None,
        events: Callable[[Event], None] | None = None,
        cancel: CancelToken | None = None,
        cache: Cache | None = None,
        resume: str | None = None,
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
            resume: start at a sub-block, skipping those before it: a name, or the ``.path``
                of a `BlockError` (``name[step 12]`` resumes a loop at that step).
            **inputs: the node's inputs by name.

        Raises:
            MissingInputError: a required input is missing (all are listed at once).
            UnknownInputError: an input name the node does not read.
            BlockError: a block raised; ``err.state`` holds the values computed before.
        """
        run = make_run(on_step, events, cancel, cache)
        return run_node(self, state, inputs, run, start=resume)

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
        """The named sub-nodes shown in the tree `repr`."""
        return ()

    def __repr__(self) -> str:
        from ._render import render_tree

        return render_tree(self)

    def _repr_markdown_(self) -> str:
        from ._render import render_markdown

        return render_markdown(self)


def _check_identifier(name: str, node: str) -> None:
    if not isinstance(cast("object", name), str) or not name.isidentifier():
        msg = f"`{node}`: {name!r} is not a valid name. Use a Python identifier."
        raise WiringError(msg, name=str(name), consumer=node)


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
        outer = dict(self.renames)
        inner = self.node._iface
        bound = {name for name, _ in self.bound}
        inputs: dict[str, InputSpec] = {}
        for spec in inner.inputs:
            name = outer.get(spec.name, spec.name)
            if name not in bound:
                inputs.setdefault(name, attrs.evolve(spec, name=name))
        outputs = [attrs.evolve(s, name=outer.get(s.name, s.name)) for s in inner.outputs]
        seen: set[str] = set()
        for out in outputs:
            if out.name in seen:
                msg = f"renaming `{self.node.name}` gives two outputs the name `{out.name}`."
                raise WiringError(msg, name=out.name, producer=self.node.name)
            seen.add(out.name)
        iface = Interface(
            tuple(inputs.values()),
            tuple(outputs),
            bound=tuple(outer.get(n, n) for n in inner.bound) + tuple(n for n, _ in self.bound),
            maybe=frozenset(outer.get(n, n) for n in inner.maybe),
        )
        object.__setattr__(self, "_iface", iface)

    @property
    def description(self) -> str:
        return self.node.description

    @property
    def _named(self) -> bool:
        return self.node._named

    def named(self, name: str) -> Node:
        _check_identifier(name, self.name)
        return Adapted(self.node.named(name), name=name, renames=self.renames, bound=self.bound)

    def rename(self, **names: str) -> Node:
        # Fold a rename of a rename into one adapter: outer names map back to inner ones.
        self._check_names(names, "rename")
        renames = dict(self.renames)
        inner_of = {outer: inner for inner, outer in renames.items()}
        for old, new in names.items():
            _check_identifier(new, self.name)
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

    def _identity_parts(self) -> list[Any]:
        return [self.node._identity, self.renames, self.bound]

    def _compile(self) -> Exec:
        inner_exec = self.node._exec
        bound = self.bound
        if not self.renames:

            def run_bound(values: Values, run: Run) -> None:
                values.update(bound)
                inner_exec(values, run)

            return run_bound
        outer = dict(self.renames)
        reads = tuple((s.name, outer.get(s.name, s.name)) for s in self.node._iface.inputs)
        writes = tuple((n, outer.get(n, n)) for n in self.node._iface.provides)

        def run_renamed(values: Values, run: Run) -> None:
            # The inner node runs on its own dict holding just its inputs under inner names,
            # so a renamed value can never shadow another one of the outer state.
            values.update(bound)
            inner = {i: values[o] for i, o in reads if o in values}
            if not run.slow:
                try:
                    inner_exec(inner, run)
                finally:
                    for i, o in writes:
                        if i in inner:
                            values[o] = inner[i]
                return
            # Cache keys are kept by name too: the inner node sees its values' keys under the
            # inner names, and what it produced goes back under the outer ones.
            outer_keys = run.keys
            run.keys = {i: outer_keys[o] for i, o in reads if o in outer_keys}
            run.views.append((values, outer))
            try:
                inner_exec(inner, run)
            finally:
                run.views.pop()
                inner_keys, run.keys = run.keys, outer_keys
                for i, o in writes:
                    if i in inner_keys:
                        outer_keys[o] = inner_keys[i]
                    elif i in inner:
                        outer_keys.pop(o, None)  # a new value: the old key no longer names it
                for i, o in writes:
                    if i in inner:
                        values[o] = inner[i]

        return run_renamed
