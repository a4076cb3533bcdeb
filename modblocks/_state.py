"""`State`: the frozen mapping of values that a run threads through its blocks."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, KeysView, Mapping, Sequence
from typing import Any, cast

import attrs

from .exceptions import FrozenStateError, InputTypeError, UnknownValueError

__all__ = ["State", "summarize"]

_MAX_REPR = 60


def summarize(value: Any) -> str:
    """Describe a value in a line: tensors by shape and dtype, long values by type.

    Examples:
        >>> summarize(3), summarize("x" * 100)
        ('3', 'str(len=100)')
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        device = getattr(value, "device", None)
        where = f", device={device}" if device is not None and str(device) != "cpu" else ""
        return f"{type(value).__name__}(shape={tuple(shape)}, dtype={dtype}{where})"
    if type(value) in (list, tuple):
        seq = cast("Sequence[Any]", value)
        if seq and len(repr(seq)) > _MAX_REPR:
            return f"{type(seq).__name__}[{summarize(seq[0])}, ...](len={len(seq)})"
    text = repr(value)
    if len(text) <= _MAX_REPR:
        return text
    cls: type[object] = type(cast("object", value))
    try:
        return f"{cls.__name__}(len={len(value)})"
    except TypeError:
        return f"<{cls.__module__}.{cls.__qualname__}>"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


@attrs.frozen(eq=False, repr=False, init=False)
class State(Mapping[str, Any]):
    """An immutable mapping of named values, copied forward by each block of a run.

    ``state["x"]`` and ``state.x`` read a value (``state["keys"]`` for names that collide with
    methods); `evolve` returns a new state. Values are shared between states, never copied.

    Examples:
        >>> s = State({"prompt": "a cat"}, steps=2)
        >>> s.steps, s.evolve(steps=3).steps, s.steps
        (2, 3, 2)
    """

    _values: dict[str, Any]

    def __init__(self, mapping: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        data = dict(mapping) if mapping is not None else {}
        bad = [k for k in cast("dict[object, Any]", data) if not isinstance(k, str)]
        if bad:
            msg = (
                f"a State names its values with strings, not {', '.join(map(repr, bad[:3]))}. "
                "Use the names the blocks read."
            )
            raise InputTypeError(msg)
        data.update(values)
        object.__setattr__(self, "_values", data)

    def __delitem__(self, name: str) -> None:
        _no_delattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        msg = (
            f"a State never changes, so `state[{name!r}] = ...` can't set it: make a new one "
            f"with `state.evolve({{{name!r}: ...}})`."
        )
        raise FrozenStateError(msg, name=name)

    @staticmethod
    def _adopt(values: dict[str, Any]) -> State:
        """Wrap a dict that nobody else will mutate, without copying it."""
        state = _new(State)
        _set_values(state, values)  # the slot's own setter: the cheapest way past `frozen`
        return state

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise self._unknown(name, f"state[{name!r}]") from None

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> KeysView[str]:
        """The names of the values, inputs first, then outputs in order of production."""
        return self._values.keys()

    def get(self, key: str, /, default: Any = None) -> Any:
        """Return the value called *key*, or *default* when there is none."""
        return self._values.get(key, default)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_values":
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise self._unknown(name, f"state.{name}") from None

    def _unknown(self, name: object, spelled: str) -> UnknownValueError:
        names = list(self._values)
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        held = ", ".join(f"`{k}`" for k in names[:12]) + (", ..." if len(names) > 12 else "")
        msg = f"`{spelled}`: the state has no value `{name}`.{hint} It holds: {held or 'nothing'}."
        return UnknownValueError(msg, name=str(name))

    def evolve(self, mapping: Mapping[str, Any] | None = None, /, **changes: Any) -> State:
        """Return a new state with *changes* applied; this one is left as it is."""
        values = {**self._values}
        if mapping is not None:
            values.update(mapping)
        values.update(changes)
        return State._adopt(values)

    def __repr__(self) -> str:
        if not self._values:
            return "State()"
        items = ",\n".join(f"    {k}={summarize(v)}" for k, v in self._values.items())
        return f"State(\n{items},\n)"

    def _repr_html_(self) -> str:
        """The values as an HTML table in Jupyter: tensor summaries, image thumbnails."""
        from ._html import render_state_html

        return render_state_html(self._values)

    def _repr_markdown_(self) -> str:
        rows = "\n".join(f"| `{k}` | {_cell(summarize(v))} |" for k, v in self._values.items())
        return f"| value | summary |\n|---|---|\n{rows}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (State, (self._values,))


def _no_setattr(self: State, name: str, value: Any) -> None:  # noqa: ARG001 - as __setattr__
    msg = (
        f"a State never changes, so `state.{name} = ...` can't set `{name}`: make a new one "
        f"with `state.evolve({name}=...)`."
    )
    raise FrozenStateError(msg, name=name)


def _no_delattr(self: State, name: str) -> None:  # noqa: ARG001 - as __delattr__
    msg = (
        f"a State never changes, so `{name}` can't be deleted from it: make a new one "
        "without it, e.g. `mb.State({k: v for k, v in state.items() if k != ...})`."
    )
    raise FrozenStateError(msg, name=name)


# attrs refuses a frozen class with its own __setattr__, so its frozen guards are replaced
# after the fact by ones that say what to do instead (attrs' error is the base class).
State.__setattr__ = _no_setattr  # type: ignore[method-assign,assignment]
State.__delattr__ = _no_delattr  # type: ignore[method-assign,assignment]


_new: Callable[[type[State]], State] = object.__new__
_set_values: Callable[[State, dict[str, Any]], None] = State.__dict__["_values"].__set__
