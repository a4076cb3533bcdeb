"""Control flow: `switch` (diffusers' AutoPipelineBlocks) and `loop` (the denoising loop)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import attrs

from ._cache import fresh_key
from ._node import PRODUCED, Composite, Interface, Node, _check_identifier
from ._progress import open_bar
from ._run import BLOCK, CANCELLED, MISSING, Exec, Failure, OnStep, Run, Step, Values, format_path
from ._sequential import _check_declared, unique_names
from ._slow import cached_unit
from ._specs import INPUT, NOTHING, InputSpec, OutputSpec
from ._state import State
from .exceptions import WiringError

__all__ = ["Loop", "Switch", "loop", "switch"]


@attrs.frozen(slots=False, eq=False, repr=False)
class Switch(Composite):
    """Runs one of several branches, chosen at run time (diffusers' AutoPipelineBlocks).

    Made by `switch`. Inputs are the union of the branches' inputs; one is required only when
    every branch requires it and there is a default. Outputs are the union of the branches'.
    """

    branches: tuple[tuple[str, Node], ...]  # (label, node), in the order they are tried
    triggers: tuple[str, ...] | None = None  # the input that selects each branch
    select: Callable[..., str | None] | None = None
    default: Node | None = None
    name: str = "switch"
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        _check_identifier(self.name, self.name)
        nodes = [node for _, node in self.branches]
        if self.default is not None:
            nodes.append(self.default)
        if not nodes:
            msg = f"switch `{self.name}` needs at least one branch."
            raise WiringError(msg, consumer=self.name)
        labels = [label for label, _ in self.branches]
        self.__dict__["_labels"] = tuple(labels) + (
            (unique_names([*labels, self.default._label])[-1],) if self.default is not None else ()
        )
        _check_declarations(self._children())
        self.__dict__["_iface"] = _switch_interface(self, nodes)

    @property
    def description(self) -> str:
        if self.triggers is not None:
            rules = [
                f"`{t}` given: `{label}`"
                for t, (label, _) in zip(self.triggers, self.branches, strict=True)
            ]
        else:
            rules = [
                f"`{getattr(self.select, '__name__', 'select')}` returns {label!r}: `{label}`"
                for label, _ in self.branches
            ]
        if self.default is not None:
            rules.append(f"otherwise: `{self.__dict__['_labels'][-1]}`")
        else:
            rules.append("otherwise: skipped")
        return "Runs one branch: " + "; ".join(rules) + "."

    def _children(self) -> tuple[tuple[str, Node], ...]:
        labels: tuple[str, ...] = self.__dict__["_labels"]
        nodes = [node for _, node in self.branches]
        if self.default is not None:
            nodes.append(self.default)
        return tuple(zip(labels, nodes, strict=True))

    def _choose(self, values: Mapping[str, Any]) -> int | None:
        """Return the position of the branch to run (the default is last), or None."""
        if self.triggers is not None:
            for pos, trigger in enumerate(self.triggers):
                if values.get(trigger) is not None:
                    return pos
        else:
            assert self.select is not None
            params: tuple[tuple[str, Any], ...] = self.__dict__["_select_params"]
            label = self.select(**{p: values.get(p, d) for p, d in params})
            if label is not None:
                for pos, (name, _) in enumerate(self.branches):
                    if name == label:
                        return pos
                known = ", ".join(repr(name) for name, _ in self.branches)
                msg = (
                    f"switch `{self.name}`: `select` returned {label!r}, which is not a branch "
                    f"({known})."
                )
                raise ValueError(msg)
        return len(self.branches) if self.default is not None else None

    def resolve(self, **inputs: Any) -> Node | None:
        """Return the node that would run with *inputs* (None when the switch is skipped)."""
        return self._resolve(dict(inputs))

    def _resolve(self, known: dict[str, Any]) -> Node | None:
        pos = self._choose(known)
        if pos is None:
            return None
        return self._children()[pos][1]._resolve(known)

    def _identity_parts(self) -> list[Any]:
        return [self.triggers, self.select]

    def _compile(self) -> Exec:
        table = [
            (label, frozenset(node._iface.required), node._exec) for label, node in self._children()
        ]
        choose = self._choose

        def run_switch(values: Values, run: Run) -> None:
            try:
                pos = choose(values)
            except Exception as exc:  # noqa: BLE001 - the select function failed
                raise Failure(BLOCK, exc, block=f"{self.name}.select") from None
            if pos is None:
                return
            segment, required, exec_ = table[pos]
            if not required.issubset(values):
                names = tuple(sorted(required.difference(values)))
                why = f"switch `{self.name}` chose branch `{segment}`, which needs it"
                raise Failure(MISSING, names=names, node=segment, why=why).add(segment)
            if run.slow:
                run.path.append(segment)
            try:
                exec_(values, run)
            except Failure as failure:
                raise failure.add(segment) from None
            finally:
                if run.slow:
                    run.path.pop()

        return run_switch


def _check_declarations(children: tuple[tuple[str, Node], ...]) -> None:
    """Check that the branches agree on their components and configs, as a sequence does.

    A pipeline binds one value per name for every branch, so a name declared with incompatible
    types (or as a component in one branch and a config in another) is a `WiringError`.
    """
    declared: dict[str, tuple[str, InputSpec]] = {}
    for label, node in children:
        for spec in node._iface.inputs:
            if spec.kind != INPUT:
                _check_declared(declared, label, spec)


def _switch_interface(sw: Switch, nodes: list[Node]) -> Interface:
    ifaces = [node._iface for node in nodes]
    inputs: dict[str, InputSpec] = {}
    for iface in ifaces:
        for spec in iface.inputs:
            first = inputs.setdefault(spec.name, spec)
            if not _same_default(first, spec):
                # Each branch keeps its own default; the switch itself promises none.
                note = "default depends on the branch"
                description = f"{first.description} ({note})" if first.description else note
                inputs[spec.name] = attrs.evolve(
                    first, default=NOTHING, required=False, description=description
                )
    required = {
        name
        for name in inputs
        if sw.default is not None and all(name in i.required for i in ifaces)
    }
    specs = {n: attrs.evolve(s, required=n in required) for n, s in inputs.items()}
    extra: list[str] = list(sw.triggers or ())
    if sw.select is not None:
        params: list[tuple[str, Any]] = []
        for p in inspect.signature(sw.select).parameters.values():
            default = None if p.default is inspect.Parameter.empty else p.default
            params.append((p.name, default))
        sw.__dict__["_select_params"] = tuple(params)
        extra += [p for p, _ in params]
    for name in extra:
        if name not in specs:
            specs[name] = InputSpec(
                name, default=None, description=f"selects a branch of `{sw.name}`"
            )
    outputs: dict[str, OutputSpec] = {}
    bound: dict[str, None] = {}
    for iface in ifaces:
        for out in iface.outputs:
            outputs.setdefault(out.name, out)
        bound.update(dict.fromkeys(iface.bound))
    everywhere: set[str] = set()
    if sw.default is not None:
        sets = [set(i.provides) - i.maybe for i in ifaces]
        everywhere = sets[0].intersection(*sets[1:])
    maybe = frozenset(n for n in (*outputs, *bound) if n not in everywhere)
    return Interface(
        tuple(specs.values()), tuple(outputs.values()), bound=tuple(bound), maybe=maybe
    )


def _same_default(a: InputSpec, b: InputSpec) -> bool:
    if a.required or b.required or a.default is b.default:
        return True
    try:
        return bool(a.default == b.default) and type(a.default) is type(b.default)
    except Exception:  # noqa: BLE001 - values without a plain == (tensors) differ
        return False


def switch(
    branches: Mapping[str, Node],
    *,
    select: Callable[..., str | None] | None = None,
    default: Node | None = None,
    name: str = "switch",
) -> Switch:
    """Choose a branch at run time, like diffusers' AutoPipelineBlocks.

    With triggers, ``switch({"mask_image": inpaint, "image": img2img}, default=text2img)``
    runs the first branch whose trigger value is present and not None (``0``, ``False`` and
    empty values count as given), else *default*, else nothing. With ``select=fn``, the keys
    of *branches* are branch names and ``fn`` — a plain function whose parameters are read from
    the state (absent ones get their default, or None) — returns one of them, or None.

    Args:
        branches: trigger input (or branch name, with *select*) → node, in the order tried;
            by position or by keyword (``switch(select=fn, branches={...})``).
        select: a function choosing the branch by name.
        default: the node to run when no branch is chosen.
        name: the switch's name in paths and docs.
    """
    items = tuple(branches.items())
    for key, node in items:
        if not isinstance(cast("object", node), Node):
            msg = f"switch `{name}`: branch {key!r} is {node!r}, not a node. Pass a block."
            raise WiringError(msg, name=key, consumer=name)
    if select is not None:
        return Switch(items, select=select, default=default, name=name)
    labels = unique_names([node.name or "branch" for _, node in items])
    return Switch(
        tuple(zip(labels, (node for _, node in items), strict=True)),
        triggers=tuple(key for key, _ in items),
        default=default,
        name=name,
    )


@attrs.frozen(slots=False, eq=False, repr=False)
class Loop(Composite):
    """Runs a body once per element of a value (diffusers' LoopSequentialPipelineBlocks).

    Made by `loop`. What the body outputs is carried into the next step and left in the state
    after the loop; the step number and element (``index``, ``item``) are not.
    """

    body: Node
    over: str
    index: str | None = "i"
    item: str | None = "t"
    name: str = "loop"
    progress: bool | Mapping[str, Any] | None = None
    on_step: OnStep | None = attrs.field(default=None, repr=False)
    _iface: Interface = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for label in (self.over, self.index, self.item, self.name):
            if label is not None:
                _check_identifier(label, self.name)
        given = {self.index, self.item} - {None}
        body = self.body._iface
        clash = given & set(body.provides)
        if clash or self.over in given:
            msg = (
                f"loop `{self.name}`: `{(clash or given).pop()}` is set by the loop each step, so "
                "the body can't output it and it can't be `over`. Choose other names."
            )
            raise WiringError(msg, consumer=self.name)
        over_spec = InputSpec(self.over, description="the values to loop over, one per step")
        inputs = [over_spec] + [
            s for s in body.inputs if s.name not in given and s.name != self.over
        ]
        self.__dict__["_iface"] = Interface(
            tuple(inputs), body.outputs, bound=body.bound, maybe=body.maybe
        )

    @property
    def description(self) -> str:
        named = [f"`{n}`" for n in (self.index, self.item) if n is not None]
        gives = f", giving the body {' and '.join(named)}" if named else ""
        body = f"`{self.body.name}`" if self.body._named else "the body"
        return f"Runs {body} once per element of `{self.over}`{gives}."

    def _children(self) -> tuple[tuple[str, Node], ...]:
        if self.body._named:
            return ((self.body.name, self.body),)
        return self.body._children()

    def _resolve(self, known: dict[str, Any]) -> Node | None:
        body = self.body._resolve(dict(known))
        known.update(dict.fromkeys(self._iface.provides, PRODUCED))
        if body is None or body is self.body:
            return self
        return attrs.evolve(self, body=body)

    def _identity_parts(self) -> list[Any]:
        return [self.over, self.index, self.item, self.on_step]

    def _compile(self) -> Exec:
        return self._make_exec(0)

    def _resume(self, start: str) -> Exec:
        # `denoise[step 3] > unet` resumes at step 3 (the body then starts from its beginning).
        segment = start.split(">", maxsplit=1)[0].strip()
        step = segment.partition("[step")[2].rstrip("] ")
        if not step.strip().isdigit():
            msg = (
                f"loop `{self.name}` resumes at a step, like `{self.name}[step 3]`, not `{start}`."
            )
            raise WiringError(msg, name=start, consumer=self.name)
        return self._make_exec(int(step))

    def _make_exec(self, start: int) -> Exec:
        body = self.body._exec
        over, index, item, name = self.over, self.index, self.item, self.name
        outs = tuple(self.body._iface.provides)
        nothing = (NOTHING,) * len(outs)
        option, own = self.progress, self.on_step
        body_name = self.body.name if self.body._named else None  # a single block, a named node

        def run_loop(values: Values, run: Run) -> None:
            if over not in values:
                raise Failure(MISSING, names=(over,), node=name)
            items: Any = values[over]
            total = len(items)
            callbacks = run.on_step if own is None else (own, *run.on_step)
            bar = open_bar(total - start, name, option) if total > start else None
            before = [(key, values.get(key, NOTHING)) for key in (index, item) if key is not None]
            get = values.get
            steps: Iterator[Any] = itertools.islice(items, start, None)
            try:
                if bar is None and not run.slow and not callbacks:
                    # The hot path: nothing to do between steps but run the body.
                    for i, element in enumerate(steps, start):
                        if index is not None:
                            values[index] = i
                        if item is not None:
                            values[item] = element
                        saved = tuple(map(get, outs, nothing))  # for a failure's state
                        try:
                            body(values, run)
                        except Failure as failure:
                            raise _step_failure(
                                failure, values, outs, saved, body_name, i
                            ) from None
                    return
                for i, element in enumerate(steps, start):
                    if index is not None:
                        values[index] = i
                    if item is not None:
                        values[item] = element
                    saved = tuple(map(get, outs, nothing))
                    try:
                        if run.slow and run.path:
                            _slow_step(body, body_name, values, run, i)
                        else:
                            body(values, run)
                    except Failure as failure:
                        raise _step_failure(failure, values, outs, saved, body_name, i) from None
                    if bar is not None:
                        bar.update(1)
                    if run.events is not None:
                        run.emit("step", index=i, total=total)
                    if (callbacks or run.sink is not None) and _after_step(
                        values, run, callbacks, i, element, total, (index, item)
                    ):
                        break
                    if run.cancel is not None and run.cancel.cancelled:
                        raise Failure(CANCELLED).add(f"[step {i}]")
            finally:
                if bar is not None:
                    bar.close()
                _restore(values, [k for k, _ in before], [v for _, v in before])

        if start:
            return run_loop

        provides = self._iface.provides

        def dispatch(values: Values, run: Run) -> None:
            if run.cache is None or run.uncached:
                run_loop(values, run)
            elif run.sink is None and own is None and not run.on_step:
                # A loop is cached as one unit: its steps' results are never reused alone.
                cached_unit(self, run_loop, values, run)
            else:  # callbacks may change the values: run it, and trust nothing it made
                run.uncached += 1
                try:
                    run_loop(values, run)
                finally:
                    run.uncached -= 1
                for name in provides:
                    run.keys[name] = fresh_key()

        return dispatch


def _step_failure(
    failure: Failure,
    values: Values,
    outs: tuple[str, ...],
    saved: tuple[Any, ...],
    body_name: str | None,
    index: int,
) -> Failure:
    """Put the values back as the last completed step left them, and say where it failed."""
    _restore(values, outs, saved)
    if body_name is not None:
        failure.add(body_name)
    return failure.add(f"[step {index}]")


def _slow_step(body: Exec, body_name: str | None, values: Values, run: Run, index: int) -> None:
    """Run one step keeping the path up to date: ``denoise[step 3] > unet``."""
    path = run.path
    base = path[-1]
    path[-1] = f"{base}[step {index}]"
    if body_name is not None:
        path.append(body_name)
    try:
        body(values, run)
    finally:
        if body_name is not None:
            path.pop()
        path[-1] = base


def _restore(values: Values, keys: Any, saved: Any) -> None:
    for key, old in zip(keys, saved, strict=True):
        if old is NOTHING:
            values.pop(key, None)
        else:
            values[key] = old


def _after_step(
    values: Values,
    run: Run,
    callbacks: tuple[OnStep, ...],
    index: int,
    element: Any,
    total: int,
    hidden: tuple[str | None, str | None],
) -> bool:
    """Call step callbacks and the stream; return whether the loop must stop."""
    snapshot = _whole_state({k: v for k, v in values.items() if k not in hidden}, run)
    step = Step(
        format_path(list(reversed(run.path))), index, element, total, State._adopt(snapshot)
    )
    for callback in callbacks:
        try:
            changes = callback(step)
        except Exception as exc:  # noqa: BLE001 - reported as a failure of the callback
            raise (
                Failure(BLOCK, exc, block="on_step").add("on_step").add(f"[step {index}]")
            ) from None
        if changes:
            values.update(_inner_names(changes, run))
            snapshot.update(changes)
            step.state = State._adopt(dict(snapshot))
    if run.sink is not None:
        run.sink(step.state)
    return step.stopped


def _whole_state(snapshot: Values, run: Run) -> Values:
    """See values of a renamed node's own dict as the run's state, under the run's names."""
    for outer, names in reversed(run.views):
        merged = dict(outer)
        merged.update({names.get(k, k): v for k, v in snapshot.items()})
        snapshot = merged
    return snapshot


def _inner_names(changes: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """Translate changes named as in the run's state to the names inside renamed nodes."""
    translated = dict(changes)
    for _, names in run.views:
        inverse = {o: i for i, o in names.items()}
        translated = {inverse.get(k, k): v for k, v in translated.items()}
    return translated


def loop(
    body: Node,
    *,
    over: str,
    index: str | None = "i",
    item: str | None = "t",
    name: str = "loop",
    progress: bool | Mapping[str, Any] | None = None,
    on_step: OnStep | None = None,
) -> Loop:
    """Run *body* once per element of the state value *over* (the denoising loop).

    Args:
        body: any node: a block, a sequence (with switches inside), another loop.
        over: the name of the value to iterate over (e.g. ``"timesteps"``).
        index: the name under which the body gets the step number (from 0); None for none.
        item: the name under which the body gets the element; None for none.
        name: the loop's name in paths (``denoise[step 12]``), docs and its progress bar.
        progress: None follows `progress` (a bar for loops of ``min_steps`` or more), False
            hides the bar, True shows it, a mapping passes options to tqdm.
        on_step: called after every step of this loop (see `Step`), before run-wide callbacks.
    """
    if not isinstance(cast("object", body), Node):
        msg = f"loop `{name}`: the body is {body!r}, not a node. Pass a block or a sequence."
        raise WiringError(msg, consumer=name)
    return Loop(body, over, index, item, name, progress, on_step)
