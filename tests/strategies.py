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
