"""Stacking model calls: which calls can share one batched call, and how its result splits.

Calls stack when every argument either has the call's rows along its first dimension
(tensors, also inside lists, tuples and dicts: they are concatenated) or is the same in each
call (equal plain values, the same object, equal scalar tensors). A scalar tensor passed
under a name in *per_row* (a timestep) may differ between calls: it is repeated once per row
of its call. Anything else — a tensor whose first dimension is not the rows, a generator, an
object of unknown kind — is compared by identity, so calls that differ in it never stack.

Torch is imported by the caller; this module only finds it in `sys.modules`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, cast

__all__ = ["Unstackable", "layout", "parameter_names", "split", "stack"]

_PLAIN: frozenset[type] = frozenset({int, float, complex, str, bytes, bool, type(None)})


class Unstackable(Exception):
    """The calls can't share one call, or its result can't be split back."""


_names: dict[type, tuple[str, ...]] = {}


def parameter_names(model: object) -> tuple[str, ...]:
    """The names of the positional parameters of the *model*'s ``forward`` (by its class)."""
    kind = type(model)
    found = _names.get(kind)
    if found is None:
        found = _names[kind] = _positional(getattr(kind, "forward", None))
    return found


def _positional(forward: object) -> tuple[str, ...]:
    if not callable(forward):
        return ()
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read: positional scalars must be equal
        return ()
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in parameters[1:] if p.kind in positional)  # after `self`


def layout(
    args: Sequence[Any], kwargs: Mapping[str, Any], names: Sequence[str], per_row: frozenset[str]
) -> tuple[Hashable, int] | None:
    """The key that stackable calls share, and the call's rows; None if it can't stack.

    *names* are the names of the positional parameters (for *per_row*).
    """
    torch: Any = sys.modules["torch"]
    tensor = torch.Tensor
    rows: set[int] = set()

    def part(value: Any, name: str | None) -> Hashable:
        if isinstance(value, tensor):
            if value.ndim == 0:
                if name in per_row:
                    return ("row", value.dtype, value.device, value.requires_grad)
                return ("scalar", value.dtype, value.device, value.requires_grad, value.item())
            rows.add(int(value.shape[0]))
            return ("rows", tuple(value.shape[1:]), value.dtype, value.device, value.requires_grad)
        kind = type(cast("object", value))
        if kind in _PLAIN:
            return (kind, value)
        if kind is list or kind is tuple:
            return (kind, tuple(part(v, None) for v in value))
        if kind is dict:
            items = cast("dict[Hashable, Any]", value).items()
            return (dict, tuple((k, part(v, None)) for k, v in items))
        return ("same", id(value))  # the caller keeps the call's arguments alive

    positional = tuple(
        part(value, names[i] if i < len(names) else None) for i, value in enumerate(args)
    )
    named = tuple((name, part(kwargs[name], name)) for name in sorted(kwargs))
    if len(rows) != 1:
        return None  # no tensor to stack, or tensors that disagree on the rows
    return (positional, named), rows.pop()


def stack(
    calls: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
    counts: Sequence[int],
    names: Sequence[str],
    per_row: frozenset[str],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of one call for *calls* that share a `layout` key (*counts*: their rows)."""
    torch: Any = sys.modules["torch"]
    tensor = torch.Tensor

    def merge(values: Sequence[Any], name: str | None) -> Any:
        first = values[0]
        if isinstance(first, tensor):
            if first.ndim > 0:
                return torch.cat(list(values))
            if name in per_row and not all(torch.equal(first, v) for v in values[1:]):
                return torch.cat(
                    [v.reshape(1).expand(n) for v, n in zip(values, counts, strict=True)]
                )
            return first
        kind = type(cast("object", first))
        if kind is list or kind is tuple:
            size = len(first)
            merged = [merge([v[i] for v in values], None) for i in range(size)]
            return merged if kind is list else tuple(merged)
        if kind is dict:
            return {k: merge([v[k] for v in values], None) for k in first}
        return first  # equal (or the same object) in every call: the key says so

    first_args = calls[0][0]
    args = tuple(
        merge([c[0][i] for c in calls], names[i] if i < len(names) else None)
        for i in range(len(first_args))
    )
    kwargs = {name: merge([c[1][name] for c in calls], name) for name in calls[0][1]}
    return args, kwargs


def split(value: Any, counts: Sequence[int]) -> list[Any]:
    """*value*, the result of a stacked call, as one result per call (*counts*: their rows).

    Raises `Unstackable` for a result that doesn't split: a tensor without the stacked rows
    along its first dimension, or an object of unknown kind.
    """
    torch: Any = sys.modules["torch"]
    total = sum(counts)
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != total:
            raise Unstackable
        return list(value.split(list(counts)))
    kind = type(cast("object", value))
    if kind in _PLAIN:
        return [value] * len(counts)
    if kind is list or kind is tuple or (kind.__base__ is tuple and hasattr(kind, "_fields")):
        columns = [split(v, counts) for v in cast("Sequence[Any]", value)]
        rows = [[c[i] for c in columns] for i in range(len(counts))]
        if kind is list:
            return rows
        if kind is tuple:
            return [tuple(r) for r in rows]
        return [cast("Callable[..., Any]", kind)(*r) for r in rows]  # a named tuple
    if isinstance(value, Mapping):  # dicts, and diffusers' output classes (`BaseOutput`)
        mapping = cast("Mapping[str, Any]", value)
        columns_by_key = {k: split(v, counts) for k, v in mapping.items()}
        parts = [{k: c[i] for k, c in columns_by_key.items()} for i in range(len(counts))]
        return parts if kind is dict else [kind(**p) for p in parts]
    raise Unstackable
