"""Is a produced value's annotation compatible with a consumer's? Checked when composing.

The check is deliberately forgiving: it catches the mistakes a reader would call wrong
(`str` into `torch.Tensor`) and lets through whatever it can't decide (`Any`, type
variables, unresolved names, protocols, type arguments).
"""

from __future__ import annotations

import functools
import sys
import types
import typing
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

__all__ = ["Check", "is_compatible", "or_none", "runtime_check", "type_name"]

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

    Examples:
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

    Examples:
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


Check = tuple[type, ...] | typing.Callable[[Any], bool]
"""How to check a value at run time: classes for `isinstance`, or a predicate."""

_NUMERIC: dict[type, tuple[type, ...]] = {float: (float, int), complex: (complex, float, int)}


def runtime_check(tp: Any) -> Check | None:
    """How to check that a value fits the annotation *tp*, cheaply; None when it can't be.

    Checked: plain classes (with PEP 484's numeric tower), ``Optional``/``Union``, ``Literal``,
    and generic containers by their origin (``list[int]``: a list; its items are not read).
    Not checked: ``Any``, type variables, unresolved names, non-runtime protocols.

    Examples:
        >>> runtime_check(int | None), runtime_check(float)
        ((<class 'int'>, <class 'NoneType'>), (<class 'float'>, <class 'int'>))
        >>> check = runtime_check(typing.Literal["np", "pil"])
        >>> check("np"), check("png")
        (True, False)
    """
    try:
        return _cached_check(tp)
    except TypeError:  # an unhashable annotation: work it out each time
        return _check_for(tp)


@functools.cache
def _cached_check(tp: Any) -> Check | None:
    return _check_for(tp)


def _check_for(tp: Any) -> Check | None:
    tp = _strip(tp)
    if _undecidable(tp) or tp is object:
        return None
    if _is_union(tp):
        members = [runtime_check(arg) for arg in get_args(tp)]
        if any(m is None for m in members):
            return None
        if all(isinstance(m, tuple) for m in members):
            classes: list[type] = []
            for member in members:
                classes += [c for c in cast("tuple[type, ...]", member) if c not in classes]
            return tuple(classes)
        checks = [cast("Check", m) for m in members]
        return lambda value: any(_passes(value, check) for check in checks)
    if get_origin(tp) is Literal:
        allowed: tuple[tuple[type, Any], ...] = tuple(
            (type(cast("object", a)), a) for a in get_args(tp)
        )
        return lambda value: (type(value), value) in allowed
    cls = get_origin(tp) or tp
    if not isinstance(cls, type):
        return None
    if getattr(cls, "_is_protocol", False) and not getattr(cls, "_is_runtime_protocol", False):
        return None
    try:
        isinstance(None, cls)
    except TypeError:  # classes isinstance can't decide
        return None
    return _NUMERIC.get(cls, (cls,))


def or_none(check: Check) -> Check:
    """*check*, also passing None."""
    if isinstance(check, tuple):
        classes = cast("tuple[type, ...]", check)  # type: ignore[redundant-cast] # for pyright
        return classes if type(None) in classes else (*classes, type(None))
    predicate = check
    return lambda value: value is None or predicate(value)


def _passes(value: Any, check: Check) -> bool:
    if isinstance(check, tuple):
        return isinstance(value, check)
    return check(value)
