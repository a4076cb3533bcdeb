"""The block-by-block path of a run: events, cancellation, caching and the in-place check.

Runs without any of these never come here: they take the compiled straight-line path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._cache import (
    PLAIN,
    Entry,
    Key,
    fingerprint,
    fresh_key,
    generators_in,
    is_plain,
    key_function,
    private,
    unit_key,
)
from ._run import BLOCK, Exec, Failure, Run, Values

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["cached_unit", "slow_block"]


def slow_block(block: Node, fast: Exec) -> Exec:
    """Wrap a block's compiled function with events, the cache and the in-place check."""
    bound: tuple[tuple[str, Any], ...] = getattr(block, "bound", ())
    # Bound values are keyed like inputs: a bound generator changes as it is drawn from.
    inputs = tuple(s.name for s in block._iface.inputs) + tuple(n for n, _ in bound)
    outputs = tuple(s.name for s in block.outputs)
    cacheable: bool = getattr(block, "cache", True)
    identity = b""  # the block's identity digest, read on the first cached run
    make_key = key_function(inputs)

    def run_slow(values: Values, run: Run) -> None:
        cache = run.cache
        if cache is None or run.uncached:
            if run.events is None and (cache is None or not cache.check_inplace):
                fast(values, run)
            else:
                check = cache if cache is not None and cache.check_inplace else None
                _timed(fast, values, run, inputs, check)
            return
        for name, value in bound:
            values[name] = value  # as running the block does first; keyed afresh below
            run.keys.pop(name, None)
        key = None
        if cacheable:
            nonlocal identity
            identity = identity or block._identity
            key = make_key(identity, run.keys, values, cache.hash_tensors)
            entry = None if key is None else cache.get(key)
            if entry is not None:
                _serve(run, entry, values, outputs, inputs)
                return
        generators = generators_in(values[n] for n in inputs if n in values)
        _timed(fast, values, run, inputs, cache if cache.check_inplace else None)
        _remember(run, key, values, outputs, (), generators)

    return run_slow


def cached_unit(node: Node, body: Exec, values: Values, run: Run) -> None:
    """Run a loop as one cached unit: served whole, or run with its insides uncached."""
    cache = run.cache
    assert cache is not None
    inputs = tuple(s.name for s in node._iface.inputs)
    outputs = tuple(s.name for s in node.outputs)
    key = unit_key(node._identity, inputs, run.keys, values, cache.hash_tensors)
    entry = None if key is None else cache.get(key)
    if entry is not None:
        _serve(run, entry, values, outputs, inputs)
        return
    generators = generators_in(values[n] for n in inputs if n in values)
    run.uncached += 1
    try:
        body(values, run)
    finally:
        run.uncached -= 1
    _remember(run, key, values, outputs, node._iface.bound, generators)


def _serve(
    run: Run, entry: Entry, values: Values, outputs: tuple[str, ...], inputs: tuple[str, ...]
) -> None:
    keys = run.keys
    for name, value, output_key in zip(outputs, entry.outputs, entry.keys):  # noqa: B905
        # The stored copy stays private (runs may change theirs); plain values are immutable.
        values[name] = value if type(value) in PLAIN else private(value)
        keys[name] = output_key
    if entry.generator_states:
        # Leave the generators as running the unit would have: later draws stay the same.
        generators = generators_in(values[n] for n in inputs if n in values)
        for generator, state in zip(generators, entry.generator_states, strict=False):
            generator.set_state(state)
    if run.events is not None:
        run.emit("cached")


def _remember(
    run: Run,
    key: Key | None,
    values: Values,
    outputs: tuple[str, ...],
    bound: tuple[str, ...],
    generators: list[Any],
) -> None:
    assert run.cache is not None
    for name in bound:
        run.keys.pop(name, None)
    if key is None:
        for name in outputs:
            # Not stored: what follows may still be served if the value is the same plain
            # value. Anything else is new on every run: fingerprinting it would be wasted.
            value = values.get(name)
            run.keys[name] = (fingerprint(value) if is_plain(value) else None) or fresh_key()
        return
    produced = tuple(values.get(name) for name in outputs)
    stored = run.cache.put(key, produced, tuple(g.get_state() for g in generators))
    run.keys.update(zip(outputs, stored, strict=True))


def _timed(fast: Exec, values: Values, run: Run, inputs: tuple[str, ...], check: Any) -> None:
    before = _contents(values, inputs) if check is not None else None
    if run.events is None:
        fast(values, run)
    else:
        run.emit("started")
        start = time.perf_counter()
        fast(values, run)
        run.emit("finished", seconds=time.perf_counter() - start)
    if before is not None:
        # The same tensor objects as before the block (an output may have replaced the name).
        changed = [n for n, (tensor, digest) in before.items() if _digest_of(tensor) != digest]
        if changed:
            listed = ", ".join(f"`{n}`" for n in changed)
            msg = (
                f"changed its input {listed} in place. Values are shared between states and "
                "cached results, so a block must return new tensors (use `x = x + 1`, not "
                "`x += 1`, or `.clone()` first)."
            )
            raise Failure(BLOCK, RuntimeError(msg), message=msg)


def _digest_of(tensor: Any) -> bytes | None:
    from ._cache import fingerprint

    return fingerprint(tensor, hash_tensors=True)


def _contents(values: Values, inputs: tuple[str, ...]) -> dict[str, tuple[Any, bytes | None]]:
    import torch

    return {
        name: (values[name], _digest_of(values[name]))
        for name in inputs
        if isinstance(values.get(name), torch.Tensor)
    }
