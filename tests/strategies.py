"""Hypothesis strategies for the algebra of blocks, and a reference model to check it against.

A random *chain* is a list of `BlockSpec`: each block reads a few names (some required, some
with a default) and produces one or two names, new or already produced. `build_block` turns a
spec into a real block by generating the function's source, so the block has a real signature
and a real return annotation, exactly as a user would write it. Every value is an ``int``,
so any chain wires without type errors and its results are easy to predict.

`reference_wiring`, `reference_names` and `reference_run` compute, independently of
modblocks and as plainly as possible, what DESIGN §2 and §5 say a chain must do.
"""

from __future__ import annotations

import string
import typing
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from hypothesis import strategies as st

import modblocks as mb

VALUE_NAMES = ("a", "b", "c", "d", "e")
BLOCK_NAMES = ("f", "g", "h")


@attrs.frozen
class BlockSpec:
    """The shape of a generated block."""

    name: str
    required: tuple[str, ...]
    optional: tuple[tuple[str, int], ...]  # (name, default), keyword-only parameters
    writes: tuple[str, ...]
    single: bool  # built with ``output=...`` instead of a NamedTuple
    salt: int

    @property
    def reads(self) -> tuple[str, ...]:
        return self.required + tuple(name for name, _ in self.optional)

    def compute(self, args: Mapping[str, int]) -> tuple[int, ...]:
        """What the generated function returns for *args* (depends on every argument)."""
        base = sum((k + 1) * args[name] for k, name in enumerate(self.reads))
        return tuple((self.salt * 31 + j + base) % 10007 for j in range(len(self.writes)))


_BUILT: dict[BlockSpec, mb.Block[..., Any]] = {}


def build_block(spec: BlockSpec) -> mb.Block[..., Any]:
    """Return the block a user would write for *spec* (cached: equal specs, one block)."""
    if spec in _BUILT:
        return _BUILT[spec]
    out = typing.NamedTuple(f"{spec.name.capitalize()}Out", [(w, int) for w in spec.writes])  # type: ignore[misc]
    params = [f"{name}: int" for name in spec.required]
    if spec.optional:
        params.append("*")
        params += [f"{name}: int = {default}" for name, default in spec.optional]
    args = ", ".join(f"{name!r}: {name}" for name in spec.reads)
    result = "r[0]" if spec.single else "Out(*r)"
    source = (
        f"def {spec.name}({', '.join(params)}) -> {'int' if spec.single else 'Out'}:\n"
        f"    r = compute({{{args}}})\n"
        f"    return {result}\n"
    )
    namespace: dict[str, Any] = {"Out": out, "compute": spec.compute, "__name__": __name__}
    exec(compile(source, f"<block {spec.name}>", "exec", dont_inherit=True), namespace)  # noqa: S102
    fn = namespace[spec.name]
    blk = mb.block(fn, name=spec.name, output=spec.writes[0] if spec.single else None)
    _BUILT[spec] = blk
    return blk


@st.composite
def block_specs(
    draw: st.DrawFn,
    names: Sequence[str] = VALUE_NAMES,
    read_only: Sequence[str] = (),
    block_names: Sequence[str] = BLOCK_NAMES,
) -> BlockSpec:
    """A block that reads 0-3 of *names* + *read_only* and writes 1-2 of *names*."""
    reads = draw(st.lists(st.sampled_from((*names, *read_only)), unique=True, max_size=3))
    optional = draw(st.lists(st.booleans(), min_size=len(reads), max_size=len(reads)))
    required = tuple(name for name, opt in zip(reads, optional, strict=True) if not opt)
    defaults = tuple(
        (name, draw(st.integers(0, 9))) for name, opt in zip(reads, optional, strict=True) if opt
    )
    writes = tuple(draw(st.lists(st.sampled_from(names), unique=True, min_size=1, max_size=2)))
    single = len(writes) == 1 and draw(st.booleans())
    return BlockSpec(
        name=draw(st.sampled_from(block_names)),
        required=required,
        optional=defaults,
        writes=writes,
        single=single,
        salt=draw(st.integers(0, 99)),
    )


def chains(
    min_size: int = 1, max_size: int = 6, **kwargs: Any
) -> st.SearchStrategy[list[BlockSpec]]:
    """Lists of block specs (build them with `build_block`)."""
    return st.lists(block_specs(**kwargs), min_size=min_size, max_size=max_size)


def inputs_for(specs: Sequence[BlockSpec]) -> st.SearchStrategy[dict[str, int]]:
    """Values for every required input of the chain and for some of its optional ones."""
    wanted = reference_wiring(specs)[0]
    required = {name: st.integers(-50, 50) for name, req in wanted.items() if req}
    optional = {name: st.integers(-50, 50) for name, req in wanted.items() if not req}
    return st.fixed_dictionaries(required, optional=optional)


# -- the reference model ---------------------------------------------------------------------


def reference_wiring(specs: Sequence[BlockSpec]) -> tuple[dict[str, bool], list[str]]:
    """Return the chain's inputs (name → required, in order of first need) and outputs.

    DESIGN §2: an input produced by an earlier block is fed from it; any other input is an
    input of the chain, required if the first consumer requires it. Outputs: every produced
    name, in order of first production.
    """
    produced: set[str] = set()
    inputs: dict[str, bool] = {}
    outputs: list[str] = []
    for spec in specs:
        for name in spec.required:
            if name not in produced:
                inputs.setdefault(name, True)
        for name, _ in spec.optional:
            if name not in produced:
                inputs.setdefault(name, False)
        for name in spec.writes:
            produced.add(name)
            if name not in outputs:
                outputs.append(name)
    return inputs, outputs


def reference_run(specs: Sequence[BlockSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Run the chain by hand: a dict updated by each block in turn.

    A block that requires a value nobody gave or produced gets the default of its first
    consumer (which had one, or the chain would have required it).
    """
    values = dict(given)
    first_read: dict[str, tuple[bool, Any]] = {}  # name -> (had a default, the default)
    for spec in specs:
        for name in spec.required:
            had_default, default = first_read.setdefault(name, (False, None))
            if name not in values and had_default:
                values[name] = default
        for name, default in spec.optional:
            first_read.setdefault(name, (True, default))
        args = {name: values[name] for name in spec.required}
        args.update({name: values.get(name, default) for name, default in spec.optional})
        values.update(zip(spec.writes, spec.compute(args), strict=True))
    return values


def reference_names(names: Sequence[str]) -> tuple[str, ...]:
    """Unique sub-block names for names without underscores: ``f, f_2, f_3``."""
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return tuple(out)


# -- states ----------------------------------------------------------------------------------

identifiers = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=4)
plain_values = st.one_of(
    st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)
)
value_dicts = st.dictionaries(identifiers, plain_values, max_size=6)


# -- nested nodes, with failures injected ----------------------------------------------------

NESTED_VALUES = ("a", "b", "c")
LOOP_GIVES = ("i", "t")
NODE_NAMES = ("p", "q", "r")
NESTED_DEFAULTS = {"a": 1, "b": 2, "c": 3, "i": 0, "t": 0}


class Injector:
    """Counts block calls across a run; the call numbered `fail_at` raises before any work."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_at: int | None = None

    def reset(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def enter(self, name: str) -> None:
        call = self.calls
        self.calls += 1
        if call == self.fail_at:
            msg = f"injected failure in {name} (call {call})"
            raise RuntimeError(msg)


INJECTOR = Injector()


def _nested_block(
    name: str, reads: tuple[str, ...], writes: tuple[str, ...], salt: int, draws: bool
) -> mb.Block[..., Any]:
    """A block reading *reads* (each with a default), writing *writes*; with *draws*, it also
    draws from the torch generator ``rng`` (state that a resumed run must not share)."""
    params = [f"{n}: int = {NESTED_DEFAULTS[n]}" for n in reads]
    if draws:
        params.append("rng: 'torch.Generator | None' = None")
    out = typing.NamedTuple(f"{name.capitalize()}Out", [(w, int) for w in writes])  # type: ignore[misc]
    args = ", ".join(f"{n!r}: {n}" for n in reads)
    source = (
        f"def {name}({'*, ' if params else ''}{', '.join(params)}) -> Out:\n"
        f"    INJECTOR.enter({name!r})\n"
        f"    base = sum((k + 1) * v for k, v in enumerate({{{args}}}.values()))\n"
        + (
            "    if rng is not None:\n"
            "        base += int(torch.randint(0, 1000, (1,), generator=rng))\n"
            if draws
            else ""
        )
        + f"    return Out(*((({salt} * 31 + j + base) % 10007) for j in range({len(writes)})))\n"
    )
    import torch

    namespace: dict[str, Any] = {
        "Out": out,
        "INJECTOR": INJECTOR,
        "torch": torch,
        "__name__": __name__,
    }
    exec(compile(source, f"<nested block {name}>", "exec", dont_inherit=True), namespace)  # noqa: S102
    return mb.block(namespace[name], name=name)


@st.composite
def nested_nodes(draw: st.DrawFn, depth: int = 0) -> mb.Node:
    """A random tree of blocks, sequences (anonymous and named), switches, loops and adapters.

    Every input has a default, so any tree runs; ``flag`` picks switch branches, loops go over
    ``ts`` giving ``i`` and ``t``, and some blocks draw from the generator ``rng``.
    """
    kinds = ["block", "block"]
    if depth < 3:
        kinds += ["seq", "named", "switch", "loop", "bind", "rename"]
    kind = draw(st.sampled_from(kinds))
    if kind == "block":
        reads = tuple(
            draw(st.lists(st.sampled_from(NESTED_VALUES + LOOP_GIVES), unique=True, max_size=3))
        )
        writes = tuple(
            draw(st.lists(st.sampled_from(NESTED_VALUES), unique=True, min_size=1, max_size=2))
        )
        return _nested_block(
            draw(st.sampled_from(BLOCK_NAMES)),
            reads,
            writes,
            draw(st.integers(0, 99)),
            draw(st.booleans()),
        )
    if kind in ("seq", "named"):
        children = draw(st.lists(nested_nodes(depth + 1), min_size=1, max_size=3))
        seq = mb.Sequential(children)
        return seq.named(draw(st.sampled_from(NODE_NAMES))) if kind == "named" else seq
    if kind == "switch":
        branch, default = draw(nested_nodes(depth + 1)), draw(nested_nodes(depth + 1))
        return mb.switch({"flag": branch}, default=default, name=draw(st.sampled_from(NODE_NAMES)))
    if kind == "loop":
        return mb.loop(
            draw(nested_nodes(depth + 1)),
            over="ts",
            progress=False,
            name=draw(st.sampled_from(NODE_NAMES)),
        )
    inner = draw(nested_nodes(depth + 1))
    if kind == "bind":
        names = [s.name for s in inner.inputs if s.name in NESTED_VALUES]
        if not names:
            return inner
        return inner.bind(**{draw(st.sampled_from(names)): draw(st.integers(0, 9))})
    old = draw(st.sampled_from(NESTED_VALUES))
    new = draw(st.sampled_from([n for n in NESTED_VALUES if n != old]))
    known = {s.name for s in (*inner.inputs, *inner.outputs)}
    if old not in known or new in known:
        return inner
    try:
        return inner.rename(**{old: new})
    except mb.WiringError:  # the new name aliases a value bound inside: refused, rightly
        return inner


# -- chains with switches ----------------------------------------------------------------------

SWITCH_DEFAULT = 4  # every optional input of a switch chain has this default, so branches agree


@attrs.frozen
class SwitchSpec:
    """A switch in a chain: `branch` runs when ``flag`` is given, else `default` (or nothing)."""

    branch: BlockSpec
    default: BlockSpec | None

    @property
    def branches(self) -> tuple[BlockSpec, ...]:
        return (self.branch,) if self.default is None else (self.branch, self.default)


def _same_defaults(spec: BlockSpec) -> BlockSpec:
    return attrs.evolve(spec, optional=tuple((n, SWITCH_DEFAULT) for n, _ in spec.optional))


@st.composite
def switch_chains(draw: st.DrawFn, max_size: int = 5) -> list[BlockSpec | SwitchSpec]:
    """Chains of blocks and switches of blocks (optional inputs all defaulting alike)."""
    specs = block_specs().map(_same_defaults)
    element = st.one_of(specs, st.builds(SwitchSpec, specs, st.one_of(st.none(), specs)))
    return draw(st.lists(element, min_size=1, max_size=max_size))


def build_element(element: BlockSpec | SwitchSpec) -> mb.Node:
    """The block, or the switch, a user would write for *element*."""
    if isinstance(element, BlockSpec):
        return build_block(element)
    default = None if element.default is None else build_block(element.default)
    return mb.switch({"flag": build_block(element.branch)}, default=default, name="sw")


def reference_switch_wiring(
    elements: Sequence[BlockSpec | SwitchSpec],
) -> tuple[dict[str, bool], list[str]]:
    """The chain's inputs (name → required) and outputs, from DESIGN §2 and §3 alone.

    A switch reads what any branch reads; a name is required by it only when every branch
    requires it and there is a default. It surely produces only what every branch produces
    (with a default); a name it may not produce stays an input of the chain, not required.
    """
    definite: set[str] = set()  # produced for sure by an earlier element
    maybe: set[str] = set()  # produced by an earlier switch's branch only
    needs: dict[str, tuple[bool, bool]] = {}  # name -> (required, first reader has a default)
    outputs: list[str] = []
    for element in elements:
        reads: dict[str, tuple[bool, bool]] = {}  # name -> (required, has a default)
        if isinstance(element, BlockSpec):
            reads = dict.fromkeys(element.required, (True, False))
            reads |= {n: (False, True) for n, _ in element.optional}
            writes, sure = list(element.writes), set(element.writes)
        else:
            branches = element.branches
            for branch in branches:
                for name in branch.reads:
                    reads.setdefault(name, (False, name not in branch.required))
            every = element.default is not None
            for name in reads:
                required = every and all(name in b.required for b in branches)
                reads[name] = (required, reads[name][1])
            reads.setdefault("flag", (False, True))
            writes = [w for b in branches for w in b.writes]
            sure = set.intersection(*(set(b.writes) for b in branches)) if every else set()
        for name, (required, has_default) in reads.items():
            if name in definite:
                continue
            if name in maybe:
                required = False
            if name not in needs:
                needs[name] = (required, has_default)
            elif required and not needs[name][0] and not needs[name][1]:
                needs[name] = (True, False)  # the first reader had no default to give
        for name in writes:
            if name not in outputs:
                outputs.append(name)
            if name in sure:
                definite.add(name)
                maybe.discard(name)
            elif name not in definite:
                maybe.add(name)
    return {n: r for n, (r, _) in needs.items()}, outputs
