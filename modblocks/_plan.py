"""Plans: the one description of a node that every run executes.

A node builds its plan once: a `Call` for a block, a `Seq` for a sequence, a `Choice` for a
switch, a `Repeat` for a loop and a `Scope` for renamed or bound values. `_codegen` turns a plan
into Python functions (a plain one, and one with the run's hooks around each unit); the engine
runs them. Hooks see plans as the units they wrap: their ``kind``, ``name``, ``node``,
``inputs``, ``outputs`` and ``components``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, NamedTuple

import attrs

__all__ = [
    "BLOCK",
    "LOOP",
    "SCOPE",
    "SEQUENCE",
    "SWITCH",
    "Arg",
    "Call",
    "Choice",
    "Plan",
    "Repeat",
    "Scope",
    "Seq",
]

BLOCK: Final = "block"
SEQUENCE: Final = "sequence"
SWITCH: Final = "switch"
LOOP: Final = "loop"
SCOPE: Final = "scope"


@attrs.frozen(slots=False, eq=False, repr=False)
class Plan:
    """What every unit shows the hooks that wrap it.

    Attributes:
        node: the node the plan was made from (a `Block`, `Sequential`, `Switch`, `Loop`, ...).
        name: its name in messages.
        inputs: the state names it reads (components and configs included).
        outputs: the state names it writes (outputs, then bound values).
        components: the names of the components it reads.
        cacheable: whether a cache may serve it (False when a block inside says ``cache=False``).
    """

    kind: ClassVar[str]
    node: Any
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    components: tuple[str, ...]
    cacheable: bool

    def __repr__(self) -> str:
        return f"<{self.kind} plan {self.name}>"


class Arg(NamedTuple):
    """How a block's parameter gets its value."""

    param: str  # the function's parameter name
    key: str  # the state name it is read from
    default: Any  # the default, or NOTHING for a required one
    keyword: bool  # passed by keyword (keyword-only parameters)
    bound: int | None  # position in `Call.bound` when the value is bound


@attrs.frozen(slots=False, eq=False, repr=False)
class Call(Plan):
    """A block: read the arguments from the state, call the function, write the results."""

    kind: ClassVar[str] = BLOCK
    fn: Callable[..., Any]
    args: tuple[Arg, ...]
    bound: tuple[tuple[str, Any], ...]  # (state name, value), put in the state first
    single: bool  # the function returns one value, written to `outputs[0]`
    result: type | None  # the NamedTuple class (or NoneType) the function returns
    bad_result: Callable[[object], None]  # raises the `OUTPUT` failure for a wrong result
    explain: Callable[[Exception, Mapping[str, Any]], Exception]  # the failure for an exception


@attrs.frozen(slots=False, eq=False, repr=False)
class Seq(Plan):
    """Children run in order on one dict of values."""

    kind: ClassVar[str] = SEQUENCE
    children: tuple[Plan, ...]
    labels: tuple[str, ...]  # each child's segment in paths
    feeds: tuple[tuple[tuple[str, Any], ...], ...]  # per child: defaults it is fed

    @property
    def positions(self) -> Mapping[str, int]:
        """The position of each child by label."""
        found: dict[str, int] | None = self.__dict__.get("_positions")
        if found is None:
            found = self.__dict__["_positions"] = {n: i for i, n in enumerate(self.labels)}
        return found


@attrs.frozen(slots=False, eq=False, repr=False)
class Choice(Plan):
    """One branch runs, chosen from the values (or none)."""

    kind: ClassVar[str] = SWITCH
    branches: tuple[Plan, ...]
    labels: tuple[str, ...]
    required: tuple[frozenset[str], ...]  # per branch: the inputs it can't run without
    choose: Callable[[Mapping[str, Any]], int | None]  # may raise: the select function failed


@attrs.frozen(slots=False, eq=False, repr=False)
class Repeat(Plan):
    """The body runs once per element of a value; what it outputs carries to the next step."""

    kind: ClassVar[str] = LOOP
    body: Plan
    body_label: str | None  # a named body (a block, a named node) adds its own segment
    over: str
    index: str | None
    item: str | None
    progress: Any  # the loop's progress option (see `progress`)
    on_step: Callable[..., Any] | None  # the loop's own step callback


@attrs.frozen(slots=False, eq=False, repr=False)
class Scope(Plan):
    """A node seen through renamed values and bound inputs (`rename`, `bind`)."""

    kind: ClassVar[str] = SCOPE
    inner: Plan
    bound: tuple[tuple[str, Any], ...]  # (outer name, value)
    reads: tuple[tuple[str, str], ...]  # (inner name, outer name) of what it reads
    writes: tuple[tuple[str, str], ...]  # (inner name, outer name) of what it writes
    renamed: bool  # whether the inner node runs on its own dict (renames)
