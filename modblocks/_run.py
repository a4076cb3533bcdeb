"""The runner: checks before any block runs, a per-run context, and failures turned into errors.

A run threads one private ``dict`` through the compiled nodes (`Exec` functions); it is never
visible to callers. A `State` is made from it only where one can be observed (a step callback,
a stream, an error, the end of the run), always as a copy or a hand-over, so every observed
state is frozen and none is ever mutated.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

from ._events import Event, EventKind
from ._state import State
from .exceptions import (
    BlockError,
    CancelledError,
    MissingInputError,
    ModblocksError,
    OutputError,
    UnknownInputError,
)

if TYPE_CHECKING:
    from ._cache import Cache
    from ._node import Node

__all__ = [
    "BLOCK",
    "MISSING",
    "OUTPUT",
    "CancelToken",
    "Exec",
    "Failure",
    "Run",
    "Step",
    "check_inputs",
    "run_node",
]

Values: TypeAlias = dict[str, Any]
Exec: TypeAlias = "Callable[[Values, Run], None]"
OnStep: TypeAlias = "Callable[[Step], Mapping[str, Any] | None]"

BLOCK: Final = "block"
MISSING: Final = "missing"
OUTPUT: Final = "output"
CANCELLED: Final = "cancelled"


class CancelToken:
    """Cancels one run (or a few) from another thread, between blocks and between loop steps.

    Example:
        >>> token = CancelToken()
        >>> token.cancel()
        >>> token.cancelled
        True
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask every run holding this token to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` was called."""
        return self._event.is_set()


@attrs.define(eq=False)
class Step:
    """What a step callback sees after each step of a loop.

    Attributes:
        path: where the loop is, e.g. ``"text2img > denoise"``.
        index: the step number, counted from 0.
        item: the element of the loop's ``over`` value for this step.
        total: the number of steps.
        state: the state after the step.

    A callback returns None, or a mapping of values to change before the next step (as
    diffusers' ``callback_on_step_end`` returns ``callback_kwargs``). Calling `stop` ends the
    loop after this step, and the blocks after the loop still run (diffusers' ``interrupt``).
    """

    path: str
    index: int
    item: Any
    total: int
    state: State
    stopped: bool = False

    def stop(self) -> None:
        """End the loop after this step."""
        self.stopped = True


class Failure(Exception):
    """Carries a failure up through the nodes, each adding its place to the path."""

    def __init__(
        self, kind: str, cause: BaseException | None = None, message: str = "", **fields: Any
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.cause = cause
        self.message = message
        self.fields = fields
        self.segments: list[str] = []  # innermost first

    def add(self, segment: str) -> Failure:
        """Add the name of an enclosing node; ``[step i]`` joins the name added after it."""
        self.segments.append(segment)
        return self


def format_path(segments: list[str]) -> str:
    """Join path segments, innermost first, as ``outer > loop[step 3] > inner``."""
    parts: list[str] = []
    for segment in reversed(segments):
        if segment.startswith("[step") and parts:
            parts[-1] += segment
        else:
            parts.append(segment)
    # A loop with no name of its own (the root of a run) keeps its step as its own segment.
    return " > ".join(parts)


class Run:
    """Everything one run needs besides the values: callbacks, cancellation, cache, path.

    ``slow`` says whether nodes must go block by block keeping track of the path (for
    callbacks, events, streams, cancellation and caching); runs without any of these take the
    compiled straight-line path.
    """

    __slots__ = (
        "cache",
        "cancel",
        "events",
        "keys",
        "on_step",
        "path",
        "sink",
        "slow",
        "uncached",
        "views",
    )

    def __init__(
        self,
        *,
        on_step: tuple[OnStep, ...] = (),
        cancel: CancelToken | None = None,
        sink: Callable[[State], None] | None = None,
        events: Callable[[Event], None] | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.on_step = on_step
        self.cancel = cancel
        self.sink = sink
        self.events = events
        self.cache = cache
        self.path: list[str] = []
        self.keys: dict[str, bytes] = {}  # cache keys of the values produced so far
        self.uncached = 0  # > 0 inside a loop body: the loop is the unit that is cached
        # Renamed nodes run on their own dicts: (outer values, inner name -> outer name) for
        # each one we are inside, so step states can be shown as the whole run's state.
        self.views: list[tuple[Values, dict[str, str]]] = []
        self.slow = bool(on_step) or any(x is not None for x in (cancel, sink, events, cache))

    def where(self) -> str:
        """The current path, e.g. ``text2img > denoise[step 3] > unet``."""
        return " > ".join(self.path)  # loops put `[step i]` on their own entry

    def emit(self, kind: EventKind, **fields: Any) -> None:
        """Send an event for the current path, when someone listens."""
        if self.events is not None:
            self.events(Event(kind, self.where(), **fields))

    def check_cancel(self) -> None:
        """Stop the run when its token was cancelled."""
        if self.cancel is not None and self.cancel.cancelled:
            raise Failure(CANCELLED)


FAST: Final = Run()  # shared by every run without hooks; never mutated


def did_you_mean(name: str, choices: list[str]) -> str:
    """Return `` Did you mean `x`?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1)
    return f" Did you mean `{close[0]}`?" if close else ""


def check_inputs(
    node: Node, values: Mapping[str, Any], given: Mapping[str, Any], *, missing: bool = True
) -> None:
    """Reject unknown names in *given* and report every missing required input at once."""
    iface = node._iface
    if given and not iface.accepted.issuperset(given):
        unknown = tuple(name for name in given if name not in iface.accepted)
        choices = sorted(iface.accepted)
        hints = "".join(did_you_mean(name, choices) for name in unknown)
        listed = ", ".join(f"`{name}`" for name in unknown)
        what = "input" if len(unknown) == 1 else "inputs"
        accepted = ", ".join(f"`{name}`" for name in choices) or "nothing"
        msg = f"`{node._label}` has no {what} {listed}.{hints} It accepts: {accepted}."
        raise UnknownInputError(msg, node=node._label, names=unknown)
    if missing and not iface.required.issubset(values):
        names = tuple(
            spec.name for spec in iface.inputs if spec.required and spec.name not in values
        )
        label = node._label
        raise MissingInputError(missing_message(label, names), node=label, names=names)


def missing_message(node: str, missing: tuple[str, ...]) -> str:
    """Say which required inputs are missing and how to give them."""
    listed = ", ".join(f"`{name}`" for name in missing)
    what, it = ("input", "it") if len(missing) == 1 else ("inputs", "them")
    return (
        f"`{node}` is missing required {what} {listed}. "
        f"Pass {it} to `run(...)` or bind {it} with `.bind(...)`."
    )


def make_run(
    on_step: OnStep | None = None,
    events: Callable[[Event], None] | None = None,
    cancel: CancelToken | None = None,
    cache: Cache | None = None,
) -> Run:
    """The context for one run: the shared fast one when nothing is asked for."""
    if on_step is None and events is None and cancel is None and cache is None:
        return FAST
    return Run(
        on_step=() if on_step is None else (on_step,), events=events, cancel=cancel, cache=cache
    )


def run_node(
    node: Node,
    state: Mapping[str, Any] | None,
    inputs: Mapping[str, Any],
    run: Run = FAST,
    start: str | None = None,
) -> State:
    """Run *node* on a copy of *state* updated with *inputs*, and return the final state."""
    if state is None:
        values: Values = {}
    elif type(state) is State:
        values = state._values.copy()  # a State's dict: copying it is a C-level copy
    else:
        values = dict(state)
    if inputs:
        values.update(inputs)
    if start is not None:
        # A resumed run skips the blocks before *start*: only names are checked up front, and
        # a value the remaining blocks need but the state lacks is reported when it is read.
        exec_ = node._resume(start)
        check_inputs(node, values, inputs, missing=False)
    else:
        check_inputs(node, values, inputs)
        exec_ = node._exec
    if run.slow and node._named:
        run.path.append(node.name)
    try:
        if run.cancel is not None:
            run.check_cancel()  # a token cancelled before the run starts stops even one block
        exec_(values, run)
    except Failure as failure:
        if node._named:
            failure.add(node.name)
        raise to_error(failure, values) from failure.cause
    return State._adopt(values)


def to_error(failure: Failure, values: Values) -> ModblocksError:
    """Turn a failure that reached the top of a run into the public error."""
    path = format_path(failure.segments)
    state = State._adopt(values)
    if failure.kind == BLOCK:
        cause = failure.cause
        block = failure.fields.get("block") or path.rpartition(" > ")[2]
        what = failure.message or f"raised {type(cause).__name__}: {cause}"
        msg = (
            f"block `{block}` {what} (at `{path}`). "
            "`err.state` holds the values computed before it; fix the cause and resume with "
            "`node.run(err.state, resume=err.path, ...)`."
        )
        return BlockError(msg, block=block, path=path, state=state)
    if failure.kind == OUTPUT:
        block = failure.fields.get("block", "")
        msg = f"{failure.message} (at `{path}`). {failure.fields.get('fix', '')}".rstrip()
        return OutputError(msg, block=block, path=path, state=state)
    if failure.kind == MISSING:
        names = failure.fields["names"]
        where = failure.fields.get("node") or path
        why = failure.fields.get("why") or (
            f"no earlier block produced {'it' if len(names) == 1 else 'them'}"
        )
        msg = f"{missing_message(where, names)} (at `{path}`: {why})."
        return MissingInputError(msg, node=where, names=names, path=path, state=state)
    msg = f"the run was cancelled (at `{path}`). `err.state` holds the values computed so far."
    return CancelledError(msg, path=path, state=state)
