"""The engine: every run of every node goes through `execute`.

`execute` checks what it is given before any block runs (input names, resume path), then runs
the node's plan on one private dict of values: the plain generated function when the run asks
for nothing else, the hooked one otherwise (callbacks, events, cancellation, a cache, a
stream, a resume, pipeline hooks). Run features are hooks (`Hook`) around the units of the
plan; without any, none of their code runs. A `State` is made from the dict only where one can be
observed (a step callback, a stream, an error, the end), always as a copy or a hand-over, so
every observed state is frozen and none is ever mutated.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

import attrs

from ._cache import Cache
from ._codegen import Cursor, Exec, fast, hooked
from ._events import Event, EventKind, make_event
from ._failure import BLOCK, CANCELLED, Failure, missing_message, to_error
from ._names import did_you_mean, listed
from ._paths import Path, Segment, parse
from ._plan import Call, Choice, Plan, Repeat, Scope, Seq
from ._specs import COMPONENT, NOTHING
from ._state import State, summarize
from ._typecheck import Check, type_name
from .exceptions import InputTypeError, MissingInputError, PathError, UnknownInputError

if TYPE_CHECKING:
    from ._wiring import Interface

__all__ = [
    "CancelToken",
    "Hook",
    "OnStep",
    "Run",
    "Runnable",
    "Step",
    "check_options",
    "execute",
    "fork",
    "needs_hooks",
    "run_plain",
]

Values: TypeAlias = dict[str, Any]
OnStep: TypeAlias = "Callable[[Step], Mapping[str, Any] | None]"
UnitCall: TypeAlias = Callable[[Plan, Values, "Cursor | None"], None]


class CancelToken:
    """Cancels one run (or a few) from another thread, between blocks and between loop steps.

    Examples:
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
        index: the step number, counted from 0 (a resumed loop goes on counting from its step).
        item: the element of the loop's ``over`` value for this step.
        total: the number of steps.
        state: the state after the step (a frozen `State`: it never changes).

    A callback returns None, or a mapping of values to change before the next step (as
    diffusers' ``callback_on_step_end`` returns ``callback_kwargs``); the callbacks after it
    see a new state with the changes. Calling `stop` ends the loop after this step, and the
    blocks after the loop still run (diffusers' ``interrupt``).
    """

    path: Path
    index: int
    item: Any
    total: int
    state: State
    stopped: bool = False

    def stop(self) -> None:
        """End the loop after this step."""
        self.stopped = True


class Hook:
    """Wraps the units of a run: blocks, loops, sequences, switches and scopes.

    Subclass it and override `around`; a `Pipeline` runs its hooks around every unit of every
    run (``mb.Pipeline(..., hooks=[...])``). Offloading policies are hooks. The *unit* is the
    plan of the node about to run: ``unit.kind`` (``"block"``, ``"loop"``, ...),
    ``unit.name``, ``unit.node``, ``unit.inputs``, ``unit.outputs``, ``unit.components``.
    """

    def around(
        self,
        unit: Plan,  # noqa: ARG002 - the base hook runs every unit as it is
        values: MutableMapping[str, Any],  # noqa: ARG002
        proceed: Callable[[], None],
    ) -> None:
        """Run the unit by calling *proceed* (or don't, after putting its outputs in *values*)."""
        proceed()

    def wrap(self, call: UnitCall, run: Run) -> UnitCall:  # noqa: ARG002 - for hooks that need it
        """The engine's form of `around`: return a function that runs a unit."""
        around = self.around

        def wrapped(plan: Plan, values: Values, at: Cursor | None) -> None:
            around(plan, values, lambda: call(plan, values, at))

        return wrapped


# Segments and paths are made once and shared (immutable): events and hooks ask for them per
# block. Bounded, as loop steps make new ones; losing them costs only their remaking.
_SEGMENTS: dict[str, Segment] = {}
_PATHS: dict[tuple[Segment, ...], Path] = {}
_KEPT_PATHS = 4096


class Run:
    """One hooked run: its path, callbacks, token and the chain of hooks around each unit."""

    __slots__ = ("_chain", "cancel", "events", "on_step", "path", "sink", "views")

    def __init__(
        self,
        *,
        on_step: tuple[OnStep, ...] = (),
        events: Callable[[Event], None] | None = None,
        cancel: CancelToken | None = None,
        sink: Callable[[State], None] | None = None,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.on_step = on_step
        self.events = events
        self.cancel = cancel
        self.sink = sink
        self.path: list[Segment] = []
        # Renamed nodes run on their own dicts: (outer values, inner name -> outer name) for
        # each one we are inside, so step states can be shown as the whole run's state.
        self.views: list[tuple[Values, dict[str, str]]] = []

        where, clock = self.where, time.perf_counter

        def base(plan: Plan, values: Values, at: Cursor | None) -> None:
            function = plan.__dict__.get("_hooked") or hooked(plan)
            if events is None or plan.kind != "block":
                function(values, self, at)
                return
            # The listener hears blocks as they really run, inside every hook (a block served
            # from the cache is heard as "cached", from the cache hook).
            path = where()
            _send(events, make_event("started", path))
            start = clock()
            function(values, self, at)
            _send(events, make_event("finished", path, seconds=clock() - start))

        chain: UnitCall = base
        for hook in reversed(tuple(hooks)):  # the first hook is the outermost
            chain = hook.wrap(chain, self)
        self._chain = chain

    def unit(self, plan: Plan, label: str | None, values: Values, at: Cursor | None) -> None:
        """Run *plan* (under *label* in paths, if any) through the hooks."""
        if label is None:  # the inner node of a scope, an anonymous root: its children check
            self._chain(plan, values, at)
            return
        path = self.path
        segment = _SEGMENTS.get(label)
        if segment is None:
            if len(_SEGMENTS) >= _KEPT_PATHS:
                _SEGMENTS.clear()
            segment = _SEGMENTS[label] = Segment(label)
        path.append(segment)
        try:
            if self.cancel is not None and self.cancel.cancelled:
                raise Failure(CANCELLED)  # before it starts (and before a cache looks it up)
            self._chain(plan, values, at)
        finally:
            path.pop()

    def where(self) -> Path:
        """The current path, e.g. ``text2img > denoise[step 3] > unet``.

        At the top of a run of an anonymous sequence (which has no segment of its own), the
        path is ``sequence``, as the sequence calls itself in messages.
        """
        key = tuple(self.path) or (Segment("sequence"),)
        found = _PATHS.get(key)
        if found is None:
            if len(_PATHS) >= _KEPT_PATHS:
                _PATHS.clear()
            found = _PATHS[key] = Path.of(key)
        return found

    def emit(self, kind: EventKind, **fields: Any) -> None:
        """Send an event for the current path, when someone listens."""
        if self.events is not None:
            _send(self.events, make_event(kind, self.where(), **fields))

    def after_step(
        self, plan: Repeat, index: int, element: Any, total: int, values: Values
    ) -> bool:
        """Report a finished loop step; call step callbacks and the stream. True: stop."""
        callbacks = self.on_step if plan.on_step is None else (plan.on_step, *self.on_step)
        if self.events is None and not callbacks and self.sink is None:
            return False
        where = Path.of([*self.path[:-1], Segment(self.path[-1].name)])  # the loop, not its step
        if self.events is not None:
            _send(self.events, make_event("step", where, index=index, total=total))
        if not callbacks and self.sink is None:
            return False
        hidden = (plan.index, plan.item)
        snapshot = self._whole_state({k: v for k, v in values.items() if k not in hidden})
        step = Step(where, index, element, total, State._adopt(snapshot))
        for callback in callbacks:
            try:
                changes = callback(step)
            except Exception as exc:  # noqa: BLE001 - reported as a failure of the callback
                failure = Failure(BLOCK, exc, block="on_step")
                raise failure.add("on_step") from None
            if changes:
                if not isinstance(cast("object", changes), Mapping):
                    msg = (
                        "a step callback returns None or a mapping of values to change, not "
                        f"{type(changes).__name__} {summarize(changes)}."
                    )
                    failure = Failure(BLOCK, TypeError(msg), block="on_step")
                    raise failure.add("on_step")
                values.update(self._inner_names(changes))
                # A new state for the callbacks after this one: the one handed out stays.
                snapshot = {**snapshot, **changes}
                step.state = State._adopt(snapshot)
        if self.sink is not None:
            self.sink(step.state)
        return step.stopped

    def _whole_state(self, snapshot: Values) -> Values:
        """See values of a renamed node's own dict as the run's state, under the run's names."""
        for outer, names in reversed(self.views):
            merged = dict(outer)
            merged.update({names.get(k, k): v for k, v in snapshot.items()})
            snapshot = merged
        return snapshot

    def _inner_names(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Translate changes named as in the run's state to the names inside renamed nodes."""
        translated = dict(changes)
        for _, names in self.views:
            inverse = {o: i for i, o in names.items()}
            translated = {inverse.get(k, k): v for k, v in translated.items()}
        return translated


def _send(listener: Callable[[Event], None], event: Event) -> None:
    try:
        listener(event)
    except Exception as exc:  # noqa: BLE001 - a failure of the listener, not of a block
        message = f"raised {type(exc).__name__}: {exc} (the `events=` callback)"
        raise Failure(BLOCK, exc, message=message, block="events") from None


# -- running a node ------------------------------------------------------------------------


class Runnable(Protocol):
    """What the engine needs of a node."""

    __dict__: dict[str, Any]  # where `run_plain` keeps what it gathered

    @property
    def _plan(self) -> Plan: ...
    @property
    def _iface(self) -> Interface: ...
    @property
    def _label(self) -> str: ...
    @property
    def _named(self) -> bool: ...
    @property
    def _input_checks(self) -> dict[str, Check]: ...
    def _missing_hint(self, names: tuple[str, ...]) -> str: ...
    def _reader(self, name: str) -> tuple[str, Any]: ...


def execute(
    node: Runnable,
    state: Mapping[str, Any] | None,
    inputs: Mapping[str, Any],
    *,
    base: Mapping[str, Any] | None = None,
    on_step: OnStep | None = None,
    events: Callable[[Event], None] | None = None,
    cancel: CancelToken | None = None,
    resume: str | Path | None = None,
    sink: Callable[[State], None] | None = None,
    hooks: Iterable[Hook] = (),
    check_types: bool = True,
) -> State:
    """Run *node* on *base*, then *state*, then *inputs*; return the final state.

    Everything that can be checked is checked before any block runs: the names of *inputs*,
    their values against the type their first reader declares (unless *check_types* is
    False), the required inputs (all missing ones at once) and the *resume* path. With *resume*,
    the values of *state* that runs change in place (generators, schedulers ...) are copied
    first, so the same state can be resumed again.
    """
    values: Values = {} if base is None else dict(base)
    if state is not None:
        given = _as_mapping(state, node)
        values.update(fork(given, node._iface) if resume is not None else given)
    if inputs:
        values.update(inputs)
    check_names(node, values, inputs, missing=resume is None)
    if check_types and inputs:
        check_values(node, inputs)
    plan = node._plan
    label = node._label if node._named else None
    at = None if resume is None else cursor(plan, label, resume, values)
    hook_list = tuple(hooks)
    plain = (
        at is None
        and on_step is None
        and events is None
        and cancel is None
        and sink is None
        and not hook_list
        and not needs_hooks(plan)
    )
    try:
        if plain:
            (plan.__dict__.get("_fast") or fast(plan))(values, None)
        else:
            run = Run(
                on_step=() if on_step is None else (on_step,),
                events=events,
                cancel=cancel,
                sink=sink,
                hooks=hook_list,
            )
            run.unit(plan, label, values, at)
    except Failure as failure:
        if label is not None:
            failure.add(label)
        raise to_error(failure, State._adopt(values)) from failure.cause
    return State._adopt(values)


def run_plain(node: Runnable, values: Values) -> State:
    """Run *node* on *values* (a dict the caller hands over) with no hooks: the common case.

    What `execute` does for a run without options, in fewer steps: a call per block is all
    that this path adds to the blocks' own work.
    """
    entry: _Plain | None = node.__dict__.get("_plain")
    if entry is None:
        entry = _plain_entry(node)
    accepted, required, checks, function, label = entry
    if function is None or not values.keys() <= accepted or not required <= values.keys():
        return execute(node, None, values)  # it reports the names, or runs the hooked path
    if checks:
        check_values(node, values, checks)
    try:
        function(values, None)
    except Failure as failure:
        if label is not None:
            failure.add(label)
        raise to_error(failure, State._adopt(values)) from failure.cause
    return State._adopt(values)


_Plain: TypeAlias = (
    "tuple[frozenset[str], frozenset[str], dict[str, Check], Exec | None, str | None]"
)


def _plain_entry(node: Runnable) -> _Plain:
    """What `run_plain` needs of *node*, gathered once and kept on the node."""
    iface, plan = node._iface, node._plan
    function = None if needs_hooks(plan) else fast(plan)
    label = node._label if node._named else None
    entry = (iface.accepted, iface.required, node._input_checks, function, label)
    node.__dict__["_plain"] = entry
    return entry


def _as_mapping(state: object, node: Runnable) -> Mapping[str, Any]:
    if type(state) is State:
        return state._values
    if not isinstance(state, Mapping):
        msg = (
            f"`{node._label}.run(...)` takes a state (a `State` or a mapping of names to "
            f"values) as its only positional argument, not {type(state).__name__} "
            f"{summarize(state)}. Give inputs by name: `run(x=1)`."
        )
        raise InputTypeError(msg, node=node._label)
    mapping = cast("Mapping[object, Any]", state)
    bad = [k for k in mapping if not isinstance(k, str)]
    if bad:
        msg = (
            f"the state given to `{node._label}` has names that are not strings: "
            f"{', '.join(repr(k) for k in bad[:3])}. Values are named by strings."
        )
        raise InputTypeError(msg, node=node._label)
    return cast("Mapping[str, Any]", mapping)


def needs_hooks(plan: Plan) -> bool:
    """Whether the plan has a loop with its own step callback (it needs the hooked path)."""
    found: bool | None = plan.__dict__.get("_needs_hooks")
    if found is None:
        if isinstance(plan, Repeat):
            found = plan.on_step is not None or needs_hooks(plan.body)
        elif isinstance(plan, Seq):
            found = any(needs_hooks(c) for c in plan.children)
        elif isinstance(plan, Choice):
            found = any(needs_hooks(c) for c in plan.branches)
        elif isinstance(plan, Scope):
            found = needs_hooks(plan.inner)
        else:
            found = False
        plan.__dict__["_needs_hooks"] = found
    return found


def check_names(
    node: Runnable, values: Mapping[str, Any], given: Mapping[str, Any], *, missing: bool = True
) -> None:
    """Reject unknown names in *given* and report every missing required input at once."""
    iface = node._iface
    if given and not iface.accepted.issuperset(given):
        unknown = tuple(name for name in given if name not in iface.accepted)
        choices = sorted(iface.accepted)
        hints = "".join(did_you_mean(name, choices) for name in unknown)
        what = "input" if len(unknown) == 1 else "inputs"
        msg = (
            f"`{node._label}` has no {what} {listed(unknown)}.{hints} "
            f"It accepts: {listed(choices)}."
        )
        raise UnknownInputError(msg, node=node._label, names=unknown)
    if missing and not iface.required.issubset(values):
        names = tuple(
            spec.name for spec in iface.inputs if spec.required and spec.name not in values
        )
        label = node._label
        msg = missing_message(label, names) + node._missing_hint(names)
        raise MissingInputError(msg, node=label, names=names)


def check_options(
    label: str,
    on_step: object = None,
    events: object = None,
    cancel: object = None,
    cache: object = None,
) -> None:
    """Check the options of `run` before anything runs, naming the one that is wrong."""
    options: tuple[tuple[str, object, bool, str], ...] = (
        ("on_step", on_step, callable(on_step), "a function taking an `mb.Step`"),
        ("events", events, callable(events), "a function taking an `mb.Event` (an `mb.Report`)"),
        ("cancel", cancel, isinstance(cancel, CancelToken), "an `mb.CancelToken`"),
        ("cache", cache, isinstance(cache, Cache), "an `mb.Cache`"),
    )
    wrong = [
        (name, value, what) for name, value, fits, what in options if value is not None and not fits
    ]
    if wrong:
        name, value, what = wrong[0]
        msg = f"`{label}.run({name}=...)` takes {what}, not {type(value).__name__} {value!r:.60}."
        raise InputTypeError(msg, node=label, name=name)


def check_values(
    node: Runnable, given: Mapping[str, Any], checks: Mapping[str, Check] | None = None
) -> None:
    """Check each given value against the type its first reader declares (where cheap)."""
    if checks is None:
        checks = node._input_checks
    for name, value in given.items():
        check = checks.get(name)
        if check is None:
            continue
        if isinstance(check, tuple):
            if isinstance(value, check):
                continue
        elif check(value):
            continue
        reader, expected = node._reader(name)
        msg = (
            f"input `{name}` is {type(value).__name__} {summarize(value)}, but `{reader}` reads "
            f"it as {type_name(expected)}. Pass {type_name(expected)}, or convert it first."
        )
        raise InputTypeError(msg, node=node._label, name=name, expected=expected)


# -- resuming ------------------------------------------------------------------------------


def cursor(plan: Plan, label: str | None, resume: str | Path, values: Mapping[str, Any]) -> Cursor:
    """Where a resumed run starts, checked against the plan before anything runs.

    The path may start with the node's own name (as ``err.path`` does) or below it.
    """
    segments = parse(resume)
    if not segments:
        msg = "`resume=` is empty: give a path such as `err.path` or a sub-block's name."
        raise PathError(msg, path=str(resume))
    at: Cursor = (None, segments)
    first = segments[0]
    if label is not None and first.name == label:
        own = (first.step, segments[1:])
        if _fits(plan, own, values) or not _fits(plan, at, values):
            at = own
    _locate(plan, at, values, str(resume))
    return at


def _fits(plan: Plan, at: Cursor, values: Mapping[str, Any]) -> bool:
    try:
        _locate(plan, at, values, "")
    except PathError:
        return False
    return True


def _locate(plan: Plan, at: Cursor, values: Mapping[str, Any], text: str) -> None:
    """Check that *at* names a place in *plan*; raise `PathError` saying what is wrong."""
    step, rest = at
    while isinstance(plan, Scope):
        plan = plan.inner
    if isinstance(plan, Repeat):
        if step is not None:
            _check_step(plan, step, values, text)
        if not rest:
            return
        if plan.body_label is not None:
            _expect(rest[0].name, (plan.body_label,), plan, text)
            _locate(plan.body, (rest[0].step, rest[1:]), values, text)
        else:
            _locate(plan.body, (None, rest), values, text)
        return
    if step is not None:
        msg = f"`{plan.name}` is not a loop, so `resume={text!r}` can't give it a step."
        raise PathError(msg, path=text, node=plan.name)
    if not rest:
        return
    if isinstance(plan, Seq):
        _expect(rest[0].name, plan.labels, plan, text)
        _locate(plan.children[plan.positions[rest[0].name]], (rest[0].step, rest[1:]), values, text)
    elif isinstance(plan, Choice):
        _expect(rest[0].name, plan.labels, plan, text)
        branch = plan.branches[plan.labels.index(rest[0].name)]
        _locate(branch, (rest[0].step, rest[1:]), values, text)
    else:
        assert isinstance(plan, Call)
        msg = f"block `{plan.name}` has no sub-blocks, so `resume={text!r}` goes past it."
        raise PathError(msg, path=text, node=plan.name)


def _expect(name: str, labels: tuple[str, ...], plan: Plan, text: str) -> None:
    if name not in labels:
        msg = (
            f"`{plan.name}` has no sub-block `{name}` (in `resume={text!r}`)."
            f"{did_you_mean(name, labels)} Its sub-blocks are: {listed(labels)}."
        )
        raise PathError(msg, path=text, node=plan.name)


def _check_step(plan: Repeat, step: int, values: Mapping[str, Any], text: str) -> None:
    items = values.get(plan.over, NOTHING)
    try:
        total = len(items)
    except TypeError:
        return  # not given yet, or not sized: reported when the loop starts
    if step >= total:
        steps = "1 step (step 0)" if total == 1 else f"{total} steps (0 to {total - 1})"
        msg = (
            f"loop `{plan.name}` has {steps}, so it can't resume at step {step} "
            f"(`resume={text!r}`)."
        )
        raise PathError(msg, path=text, node=plan.name)


_SHARED_TYPES: tuple[type, ...] = (int, float, complex, str, bytes, bool, type(None), type)


def fork(values: Mapping[str, Any], iface: Interface) -> Values:
    """Copy what a resumed run would change in place, so *values* can be resumed again.

    Generators are cloned (same state), schedulers and other objects deep-copied. Shared as
    they are: plain values, tensors, arrays and images (blocks return new ones instead of
    changing their inputs), modules, and components the node only reads (tokenizers ...).
    """
    read_only = {s.name for s in iface.inputs if s.kind == COMPONENT} - set(iface.provides)
    memo: dict[int, Any] = {}
    return {k: v if k in read_only else _fork_value(v, memo) for k, v in values.items()}


def _fork_value(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, _SHARED_TYPES):
        return value
    found = memo.get(id(value))
    if found is not None:
        return found
    kind = type(cast("object", value))
    if kind in (list, tuple):
        items = [_fork_value(v, memo) for v in value]
        copied: Any = items if kind is list else tuple(items)
    elif kind is dict:
        copied = {k: _fork_value(v, memo) for k, v in value.items()}
    elif _is_shared(value):
        copied = value
    elif _is_generator(value):
        import torch

        copied = torch.Generator(device=value.device)
        copied.set_state(value.get_state())
    else:
        try:
            copied = copy.deepcopy(value)
        except Exception:  # noqa: BLE001 - what can't be copied is shared (and said in docs)
            copied = value
    memo[id(value)] = copied
    return copied


def _is_generator(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Generator)


def _is_shared(value: Any) -> bool:
    """Values that runs never change in place: tensors, modules, arrays, images."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(
        value, torch.Tensor | torch.nn.Module | torch.dtype | torch.device
    ):
        return True
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray | numpy.generic):
        return True
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)
