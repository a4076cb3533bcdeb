"""The cache as a hook of the engine: units served from a `Cache` instead of running.

Blocks are cached one by one; a loop is cached as one unit (its steps' results are never
reused alone); a sequence is also cached as a whole, so a run whose inputs are unchanged is
served with one lookup per sequence instead of one per block; a renamed node sees its
values' keys under its own names. A value's key is the key of the unit output that produced
it (a Merkle chain), or a fingerprint of a value the caller gave.

What the cache keeps and what it serves are private copies (`private`): a caller or a later
block changing them in place changes nothing stored.
"""

from __future__ import annotations

from typing import Any

from ._cache import (
    Cache,
    Entry,
    Key,
    fingerprint,
    generators_in,
    is_plain,
    key_function,
    private,
)
from ._codegen import Cursor
from ._engine import Hook, Run, UnitCall, needs_hooks
from ._failure import BLOCK, ERROR, Failure
from ._fingerprint import PLAIN, fresh_key
from ._plan import LOOP, SCOPE, SEQUENCE, Call, Plan, Repeat, Scope
from ._specs import NOTHING
from .exceptions import CacheKeyError

__all__ = ["CacheHook", "cache_hooks"]

Values = dict[str, Any]


def cache_hooks(cache: Cache | None) -> tuple[Hook, ...]:
    """The hooks a run with *cache* needs (none without one)."""
    return () if cache is None else (CacheHook(cache),)


class CacheHook(Hook):
    """Serves unchanged units of one run from *cache*; keeps the run's keys."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.keys: dict[str, bytes] = {}  # the key of each value produced or fingerprinted
        self.uncached = 0  # > 0 inside a unit cached as a whole (a loop)
        self.copies: dict[int, Any] = {}  # what this run stored, copied once (see `private`)

    def wrap(self, call: UnitCall, run: Run) -> UnitCall:
        def cached(plan: Plan, values: Values, at: Cursor | None) -> None:
            kind = plan.kind
            if kind == BLOCK:
                assert isinstance(plan, Call)
                self._block(plan, values, at, call, run)
            elif kind in (LOOP, SEQUENCE):
                self._whole(plan, values, at, call, run)
            elif kind == SCOPE:
                assert isinstance(plan, Scope)
                self._scope(plan, values, at, call)
            else:
                call(plan, values, at)

        return cached

    # -- units ---------------------------------------------------------------------------

    def _block(
        self, plan: Call, values: Values, at: Cursor | None, call: UnitCall, run: Run
    ) -> None:
        check = self.cache.check_inplace
        if self.uncached:
            _checked(call, plan, values, at, check)
            return
        for name, value in plan.bound:
            values[name] = value  # as running the block does first; keyed afresh below
            self.keys.pop(name, None)
        key = self._lookup(plan, values, run) if plan.cacheable else None
        if key is True:
            return
        generators = generators_in(values[n] for n in plan.inputs if n in values)
        _checked(call, plan, values, at, check)
        self._remember(key, values, plan, generators)

    def _whole(
        self, plan: Plan, values: Values, at: Cursor | None, call: UnitCall, run: Run
    ) -> None:
        """A loop or a sequence, served or stored whole; a loop's insides are never cached."""
        if self.uncached:
            call(plan, values, at)
            return
        loop = isinstance(plan, Repeat)
        callbacks = bool(run.on_step) or run.sink is not None or needs_hooks(plan)
        key: Key | bool | None = None
        if plan.cacheable and at is None and not callbacks:
            # A resumed unit starts from a state mid-way, and callbacks may change values:
            # neither result may be filed under the unit's inputs.
            key = self._lookup(plan, values, run)
            if key is True:
                return
        elif not loop:
            call(plan, values, at)  # its blocks are cached one by one
            return
        generators = generators_in(values[n] for n in plan.inputs if n in values)
        if loop:
            self.uncached += 1
        try:
            call(plan, values, at)
        finally:
            if loop:
                self.uncached -= 1
        self._remember(key, values, plan, generators)

    def _scope(self, plan: Scope, values: Values, at: Cursor | None, call: UnitCall) -> None:
        keys = self.keys
        for name, _ in plan.bound:
            keys.pop(name, None)  # the bound value replaces whatever had the name
        if not plan.renamed:
            call(plan, values, at)
            return
        # The inner node sees its values' keys under its own names, and what it produced
        # goes back under the outer ones.
        self.keys = {i: keys[o] for i, o in plan.reads + plan.writes if o in keys}
        try:
            call(plan, values, at)
        finally:
            inner_keys, self.keys = self.keys, keys
            for i, o in plan.writes:
                if i in inner_keys:
                    keys[o] = inner_keys[i]
                else:
                    keys.pop(o, None)  # a new value: the old key no longer names it

    # -- serving and storing -------------------------------------------------------------

    def _lookup(self, plan: Plan, values: Values, run: Run) -> Key | bool | None:
        """The unit's key, or True when it was served from the cache (None: no key)."""
        function = plan.__dict__.get("_key_function")
        if function is None:
            function = plan.__dict__["_key_function"] = key_function(plan.inputs)
        try:
            key: Key | None = function(
                plan.node._identity, self.keys, values, self.cache.hash_tensors
            )
        except CacheKeyError as err:
            raise Failure(ERROR, err) from None
        entry = None if key is None else self.cache.get(key)
        if entry is None:
            return key
        self._serve(run, entry, values, plan)
        return True

    def _serve(self, run: Run, entry: Entry, values: Values, plan: Plan) -> None:
        keys = self.keys
        if entry.plain:  # immutable values: handed over as they are, at C speed
            values.update(zip(plan.outputs, entry.outputs))  # noqa: B905 - equal lengths
            keys.update(zip(plan.outputs, entry.keys))  # noqa: B905
        else:
            for name, value, output_key in zip(plan.outputs, entry.outputs, entry.keys):  # noqa: B905
                if value is NOTHING:
                    continue  # the unit did not make it (a branch that makes no such value)
                # A copy of the stored one (runs and callers may change theirs), once per run.
                values[name] = value if type(value) in PLAIN else private(value, self.copies)
                keys[name] = output_key
        if entry.generator_states:
            # Leave the generators as running the unit would have: later draws stay the same.
            generators = generators_in(values[n] for n in plan.inputs if n in values)
            for generator, state in zip(generators, entry.generator_states, strict=False):
                generator.set_state(state)
        run.emit("cached")

    def _remember(
        self, key: Key | bool | None, values: Values, plan: Plan, generators: list[Any]
    ) -> None:
        if not isinstance(key, tuple):
            for name in plan.outputs:
                if name not in values:
                    continue
                # Not stored: what follows may still be served if the value is the same plain
                # value. Anything else is new on every run: fingerprinting it would be wasted.
                value = values[name]
                self.keys[name] = (fingerprint(value) if is_plain(value) else None) or fresh_key()
            return
        produced = tuple(values.get(name, NOTHING) for name in plan.outputs)
        states = tuple(g.get_state() for g in generators)
        stored = self.cache.put(key, produced, states, self.copies)
        self.keys.update(zip(plan.outputs, stored, strict=True))


def _checked(call: UnitCall, plan: Call, values: Values, at: Cursor | None, check: bool) -> None:
    """Run a block; with *check*, fail when it changed one of its input tensors in place."""
    if not check:
        call(plan, values, at)
        return
    before = _contents(values, plan.inputs)
    call(plan, values, at)
    # The same tensor objects as before the block (an output may have replaced the name).
    changed = [n for n, (tensor, digest) in before.items() if _digest_of(tensor) != digest]
    if changed:
        listed = ", ".join(f"`{n}`" for n in changed)
        msg = (
            f"changed its input {listed} in place. Values are shared between states and "
            "cached results, so a block must return new tensors (use `x = x + 1`, not "
            "`x += 1`, or `.clone()` first)."
        )
        raise Failure(BLOCK, RuntimeError(msg), message=msg, block=plan.name)


def _digest_of(tensor: Any) -> bytes | None:
    return fingerprint(tensor, hash_tensors=True)


def _contents(values: Values, inputs: tuple[str, ...]) -> dict[str, tuple[Any, bytes | None]]:
    import torch

    return {
        name: (values[name], _digest_of(values[name]))
        for name in inputs
        if isinstance(values.get(name), torch.Tensor)
    }
