"""Immutable records that describe the values a node reads and writes."""

from __future__ import annotations

import enum
from typing import Any, Final, Literal, TypeAlias

import attrs

__all__ = ["COMPONENT", "CONFIG", "INPUT", "NOTHING", "InputSpec", "NothingType", "OutputSpec"]


class _Nothing(enum.Enum):
    NOTHING = enum.auto()

    def __repr__(self) -> str:
        return "NOTHING"

    def __bool__(self) -> Literal[False]:
        return False


NOTHING: Final = _Nothing.NOTHING
"""Marks "no value": a required input's default, a value absent from the state."""
NothingType: TypeAlias = Literal[_Nothing.NOTHING]

INPUT: Final = "input"
COMPONENT: Final = "component"
CONFIG: Final = "config"


@attrs.frozen
class InputSpec:
    """A value a node reads.

    Attributes:
        name: the name it is read under from the state.
        type: its annotation (`typing.Any` when the function has none).
        default: the value used when it is absent, or `NOTHING` when it is required.
        description: from ``Annotated[..., Doc("...")]`` or the docstring's ``Args:``.
        kind: ``"input"``, ``"component"`` or ``"config"``.
        required: whether the node needs the value; by default, whether it has no default.
    """

    name: str
    type: Any = Any
    default: Any = attrs.field(default=NOTHING, eq=False, hash=False)
    description: str = ""
    kind: str = INPUT
    required: bool = attrs.field(
        default=attrs.Factory(lambda self: self.default is NOTHING, takes_self=True)
    )


@attrs.frozen
class OutputSpec:
    """A value a node writes.

    Attributes:
        name: the name it is written under in the state.
        type: its annotation.
        description: from ``Annotated[..., Doc("...")]`` on the NamedTuple field.
    """

    name: str
    type: Any = Any
    description: str = ""
