"""Is a produced value's annotation compatible with a consumer's? Checked when composing.

The check is deliberately forgiving: it catches the mistakes a reader would call wrong
(`str` into `torch.Tensor`) and lets through whatever it can't decide (`Any`, type
variables, unresolved names, protocols, type arguments).
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin

__all__ = ["is_compatible", "type_name"]

_NONE = type(None)
# PEP 484's numeric tower: an int (so also a bool) is acceptable where a float is, both
# where a complex is. Checked with issubclass, so subclasses of int and float pass too.
_PROMOTIONS: dict[type, tuple[type, ...]] = {float: (int,), complex: (int, float)}


def _strip(tp: Any) -> Any:
    while True:
        if tp is None:
            return _NONE
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif hasattr(tp, "__supertype__"):  # typing.NewType
            tp = tp.__supertype__
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _undecidable(tp: Any) -> bool:
    return (
        tp is Any
        or isinstance(tp, (str, typing.ForwardRef, typing.TypeVar, typing.ParamSpec))
        or tp is typing.Self
    )


def is_compatible(produced: Any, expected: Any) -> bool:
    """Return whether a value annotated *produced* may feed an input annotated *expected*.

    Example:
        >>> is_compatible(int, float), is_compatible(bool, complex), is_compatible(str, int | None)
        (True, True, False)
        >>> is_compatible(list[int], list), is_compatible(list[int], dict[str, int])
        (True, False)
    """
    produced, expected = _strip(produced), _strip(expected)
    if _undecidable(produced) or _undecidable(expected):
        return True
    if _is_union(produced):
        return all(is_compatible(arg, expected) for arg in get_args(produced))
    if _is_union(expected):
        return any(is_compatible(produced, arg) for arg in get_args(expected))
    if get_origin(expected) is Literal:
        return True
    if get_origin(produced) is Literal:
        return all(is_compatible(type(arg), expected) for arg in get_args(produced))
    produced_cls = get_origin(produced) or produced
    expected_cls = get_origin(expected) or expected
    if expected_cls is object:
        return True
    if not isinstance(produced_cls, type) or not isinstance(expected_cls, type):
        return True
    try:
        if issubclass(produced_cls, _PROMOTIONS.get(expected_cls, ())):
            return True
        return issubclass(produced_cls, expected_cls)
    except TypeError:  # non-runtime protocols and other classes issubclass can't decide
        return True


def type_name(tp: Any) -> str:
    """Spell an annotation the way a user wrote it: ``torch.Tensor``, ``list[int] | None``.

    Example:
        >>> import collections.abc
        >>> type_name(int), type_name(collections.abc.Sequence), type_name(list[int] | None)
        ('int', 'collections.abc.Sequence', 'list[int] | None')
    """
    if tp is None or tp is _NONE:
        return "None"
    if tp is Any:
        return "Any"
    if isinstance(tp, type) and not get_args(tp):
        cls: type[object] = tp
        if cls.__module__ == "builtins":
            return cls.__qualname__
        # Prefer the public spelling: torch.nn.Linear, diffusers.UNet2DModel.
        parts = cls.__module__.split(".")
        for end in range(1, len(parts)):
            shorter = ".".join(parts[:end])
            if getattr(sys.modules.get(shorter), cls.__qualname__, None) is cls:
                return f"{shorter}.{cls.__qualname__}"
        return f"{cls.__module__}.{cls.__qualname__}"
    if _is_union(tp):
        return " | ".join(type_name(arg) for arg in get_args(tp))
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(origin, type) and args:
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{type_name(origin)}[{inner}]"
    return repr(tp).replace("typing.", "")
