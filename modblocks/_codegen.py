"""The one code generator: a plan becomes Python functions that run it on a dict of values.

Each plan gets two functions, generated from the same description on first use:

- the *plain* one, ``f(v, run)``: straight-line code, with a sequence's blocks inlined as a
  hand-written pipeline would call them. Runs without hooks take it.
- the *hooked* one, ``f(v, run, at)``: the same steps, each unit handed to ``run.unit`` so the
  run's hooks (events, cache, cancellation, offloading, ...) wrap it, and able to start at a
  cursor ``at`` (resume). Runs with any hook or a ``resume=`` take it.

Both raise only `Failure`; each node adds its segment on the way up. The source is registered
with `linecache` (as attrs does), so tracebacks, pdb and coverage tools show it.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any, TypeAlias, cast

from ._failure import BLOCK, CANCELLED, MISSING, TYPE, Failure
from ._paths import Segment
from ._plan import Call, Choice, Plan, Repeat, Scope, Seq
from ._progress import open_bar
from ._specs import NOTHING

__all__ = ["Cursor", "Exec", "HookedExec", "fast", "hooked", "source_of"]

Values: TypeAlias = dict[str, Any]
Cursor: TypeAlias = tuple[int | None, tuple[Segment, ...]]
"""Where a resumed unit starts: its own loop step (or None), and the path below it."""
Exec: TypeAlias = Callable[[Values, Any], None]
HookedExec: TypeAlias = Callable[[Values, Any, "Cursor | None"], None]

_counter = itertools.count()


def fast(plan: Plan) -> Exec:
    """The plain function that runs *plan* (generated on first use, then kept on the plan)."""
    found: Exec | None = plan.__dict__.get("_fast")
    if found is None:
        made: Exec = _generate(plan, hooked=False)
        found = plan.__dict__["_fast"] = made
    return found


def hooked(plan: Plan) -> HookedExec:
    """The function that runs *plan* with the run's hooks around each unit, from a cursor."""
    found: HookedExec | None = plan.__dict__.get("_hooked")
    if found is None:
        made: HookedExec = _generate(plan, hooked=True)
        found = plan.__dict__["_hooked"] = made
    return found


def source_of(plan: Plan, *, with_hooks: bool = False) -> str:
    """The generated source of *plan*'s function (for debugging and the docs)."""
    function = hooked(plan) if with_hooks else fast(plan)
    filename = function.__code__.co_filename
    return "".join(linecache.getlines(filename))


def _generate(plan: Plan, *, hooked: bool) -> Any:
    if isinstance(plan, Call):
        lines, ns = _call_lines(plan, "")
        ns["explain"] = plan.explain
        return _define(_wrap_call(lines, hooked), ns, plan, "block")
    if isinstance(plan, Seq):
        return _sequence(plan, hooked=hooked)
    if isinstance(plan, Repeat):
        return _loop(plan, hooked=hooked)
    if isinstance(plan, Choice):
        return _switch(plan, hooked=hooked)
    assert isinstance(plan, Scope)
    return _scope(plan, hooked=hooked)


def _define(source: str, namespace: dict[str, Any], plan: Plan, what: str) -> Any:
    """Compile *source* (which defines ``run``) under a name that linecache can show."""
    filename = f"<modblocks {what} {plan.name} #{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace.update(Failure=Failure, NOTHING=NOTHING)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace["run"]


def _indent(lines: list[str], depth: int) -> str:
    pad = "    " * depth
    return "\n".join(pad + line for line in lines)


# -- blocks --------------------------------------------------------------------------------


def _call_lines(
    plan: Call, tag: str, known: dict[str, str] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Python lines that run the block *plan* on the values ``v`` (inlined by sequences).

    *known* maps the names that earlier lines of the same straight-line code wrote to the
    locals holding them: those are read from the locals (a dict lookup saved per read), and
    the values this block writes are added to it.
    """
    ns: dict[str, Any] = {f"f{tag}": plan.fn, f"bad{tag}": plan.bad_result}
    lines: list[str] = []
    local = {} if known is None else known
    for pos, (key, value) in enumerate(plan.bound):
        ns[f"b{tag}_{pos}"] = value
        lines.append(f"v[{key!r}] = b{tag}_{pos}")
        local.pop(key, None)
    args: list[str] = []
    for pos, arg in enumerate(plan.args):
        if arg.bound is not None:
            expr = f"b{tag}_{arg.bound}"
        elif arg.key in local:
            expr = local[arg.key]
        elif arg.default is NOTHING:
            expr = f"v[{arg.key!r}]"
        else:
            ns[f"d{tag}_{pos}"] = arg.default
            expr = f"v.get({arg.key!r}, d{tag}_{pos})"
        args.append(f"{arg.param}={expr}" if arg.keyword else expr)
    call = f"f{tag}({', '.join(args)})"
    if plan.single:
        name = plan.outputs[0]
        if known is None:
            lines.append(f"v[{name!r}] = {call}")
        else:
            lines.append(f"v[{name!r}] = {_local(known, name, tag, 0)} = {call}")
        return lines, ns
    lines.append(f"r = {call}")
    if plan.result is type(None):
        lines.append(f"if r is not None: bad{tag}(r)")
        return lines, ns
    ns[f"T{tag}"] = plan.result
    written = plan.outputs[: len(plan.outputs) - len(plan.bound)]
    lines.append(f"if r.__class__ is not T{tag} and not isinstance(r, T{tag}): bad{tag}(r)")
    if known is None:
        lines.append(f"{', '.join(f'v[{name!r}]' for name in written)}, = r")
        return lines, ns
    names = [_local(known, name, tag, pos) for pos, name in enumerate(written)]
    lines.append(f"{', '.join(names)}, = r")
    lines += [f"v[{name!r}] = {held}" for name, held in zip(written, names, strict=True)]
    return lines, ns


def _local(known: dict[str, str], name: str, tag: str, pos: int) -> str:
    """The local that holds *name* from here on (the value is also written to ``v``)."""
    held = known[name] = f"o{tag}_{pos}"
    return held


def _wrap_call(lines: list[str], hooked: bool) -> str:
    params = "v, run, at" if hooked else "v, run"
    return (
        f"def run({params}):\n"
        "    try:\n"
        f"{_indent(lines, 2)}\n"
        "    except Failure:\n"
        "        raise\n"
        "    except Exception as exc:\n"
        "        raise explain(exc, v) from None\n"
    )


# -- sequences -----------------------------------------------------------------------------


class _Body:
    """Lines of generated code, each remembering which child of a sequence it runs."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.owners: list[int] = []  # per line: the child it belongs to
        self.ns = namespace
        # Names written so far by the pasted blocks, and the locals holding them: valid while
        # the code runs straight on (a called child may write any name; it clears them).
        self.known: dict[str, str] = {}

    def add(self, owner: int, *lines: str) -> None:
        self.lines += lines
        self.owners += [owner] * len(lines)

    def inline(self, plan: Seq | Call, prefix: str) -> None:
        """The plain code of a block, or of a sequence of blocks, as straight-line lines."""
        children: tuple[Plan, ...] = plan.children if isinstance(plan, Seq) else (plan,)
        for k, child in enumerate(children):
            tag = f"{prefix}_{k}"
            if isinstance(plan, Seq):
                for j, (name, default) in enumerate(plan.feeds[k]):
                    self.ns[f"fd{tag}_{j}"] = default
                    self.add(k, f"if {name!r} not in v: v[{name!r}] = fd{tag}_{j}")
                    self.known.pop(name, None)
            if isinstance(child, Call):
                call_lines, call_ns = _call_lines(child, tag, self.known)
                self.ns.update(call_ns)
                self.add(k, *call_lines)
            else:
                self.ns[f"x{tag}"] = fast(child)
                self.add(k, f"x{tag}(v, run)")
                self.known.clear()

    def owner_of(self, first_line: int) -> dict[int, int]:
        """Source line number → child, for lines starting at *first_line*."""
        return {first_line + n: owner for n, owner in enumerate(self.owners)}


def _inlinable(plan: Plan) -> bool:
    """A block, or an anonymous sequence: code that can be pasted into its parent's."""
    return isinstance(plan, Call) or (isinstance(plan, Seq) and not plan.node._named)


def _attribute(children: tuple[Plan, ...], labels: tuple[str, ...], *, hooked: bool = False) -> Any:
    """A function turning an exception raised by child *k* into its `Failure`, path and all.

    In hooked code a block's own exceptions arrive as `Failure` (its function wraps them), so
    anything else was raised around it, by a hook: the message says so.
    """

    def fail(exc: Exception, k: int, values: Values) -> Failure:
        if isinstance(exc, Failure):
            return exc.add(labels[k])
        if hooked:
            message = (
                f"raised {type(exc).__name__}: {exc}, in a hook around it (`hooks=`, an "
                "offloading policy, step batching ...), not in the block itself"
            )
            return Failure(BLOCK, exc, message=message, block=labels[k]).add(labels[k])
        child = children[k]
        failure = child.explain(exc, values) if isinstance(child, Call) else None
        if not isinstance(failure, Failure):  # a hook raised: say so with its own error
            failure = Failure(BLOCK, exc, block=labels[k])
        return failure.add(labels[k])

    return fail


def _line(exc: BaseException) -> int:
    """The line of the generated function where *exc* passed (the frame handling it)."""
    tb = exc.__traceback__
    assert tb is not None
    return tb.tb_lineno


def _sequence(plan: Seq, *, hooked: bool) -> Any:
    """A sequence: its blocks inlined (plain), or each child handed to the hooks (hooked).

    The plain function keeps no count of where it is: a failure finds its block from the line
    of the generated code it passed through.
    """
    ns: dict[str, Any] = {}
    fail = _attribute(plan.children, plan.labels, hooked=hooked)
    positions = plan.positions

    def enter(at: Cursor) -> tuple[int, Cursor | None]:
        rest = at[1]
        if not rest:
            return 0, None
        return positions[rest[0].name], (rest[0].step, rest[1:])

    ns.update(fail=fail, enter=enter, line=_line)
    if not hooked:
        body = _Body(ns)
        body.inline(plan, "")
        ns["owner"] = body.owner_of(3)  # the body starts on line 3: `def`, `try:`, then it
        source = (
            "def run(v, run):\n"
            "    try:\n"
            f"{_indent(body.lines, 2)}\n"
            "    except Exception as exc:\n"
            "        raise fail(exc, owner[line(exc)], v) from None\n"
        )
        return _define(source, ns, plan, "sequence")
    lines: list[str] = []
    for k, child in enumerate(plan.children):
        lines += [f"if j <= {k}:", f"    k = {k}"]
        for j, (name, default) in enumerate(plan.feeds[k]):
            ns[f"fd_{k}_{j}"] = default
            lines.append(f"    if {name!r} not in v: v[{name!r}] = fd_{k}_{j}")
        ns[f"P_{k}"] = child
        ns[f"L_{k}"] = plan.labels[k]
        lines.append(f"    u(P_{k}, L_{k}, v, sub if j == {k} else None)")
    source = (
        "def run(v, run, at):\n"
        "    u = run.unit\n"
        "    j, sub = (0, None) if at is None else enter(at)\n"
        "    k = j\n"
        "    try:\n"
        f"{_indent(lines, 2)}\n"
        "    except Exception as exc:\n"
        "        raise fail(exc, k, v) from None\n"
    )
    return _define(source, ns, plan, "sequence")


# -- loops ---------------------------------------------------------------------------------


def _length(items: Any, plan: Repeat) -> int:
    try:
        return len(items)
    except TypeError:
        msg = (
            f"loop `{plan.name}` runs once per element of `{plan.over}`, which must be a sized "
            f"collection (a list, tuple, tensor ...), but it is {type(items).__name__} "
            f"{items!r:.60}"
        )
        fix = f"Give `{plan.over}` as a list (e.g. `list(...)` of an iterator)."
        raise Failure(TYPE, message=msg, node=plan.name, name=plan.over, fix=fix) from None


def _loop(plan: Repeat, *, hooked: bool) -> Any:
    """A loop: the body once per element of ``over``; the step numbers and elements hidden after.

    Generated so that a loop that gives its body only ``t`` never spends a store on ``i``.
    """
    over, index, item = plan.over, plan.index, plan.item
    hidden = [name for name in (index, item) if name is not None]
    ns: dict[str, Any] = {
        "BODY": plan.body if hooked else None,
        "BODY_LABEL": plan.body_label,
        "PLAN": plan,
        "OPTION": plan.progress,
        "open_bar": open_bar,
        "length": _length,
        "islice": itertools.islice,
        "Segment": Segment,
        "MISSING": MISSING,
        "CANCELLED": CANCELLED,
    }
    sets: list[str] = []
    if index is not None:
        sets.append(f"v[{index!r}] = i")
    if item is not None:
        sets.append(f"v[{item!r}] = element")
    saves = "".join(f"    s_{n} = v.get({n!r}, NOTHING)\n" for n in hidden)
    restores = "".join(
        f"        if s_{n} is NOTHING: v.pop({n!r}, None)\n        else: v[{n!r}] = s_{n}\n"
        for n in hidden
    )
    named = plan.body_label is not None
    add_body = "        f.add(BODY_LABEL)\n" if named else ""
    if not hooked:
        return _plain_loop(plan, ns, sets, saves, restores)
    # The body's own cursor: past a named body's segment, or the path inside an anonymous one.
    sub = "(rest[0].step, rest[1:])" if named else "(None, rest)"
    step = [
        "path[-1] = Segment(base.name, i)",
        *sets,
        "u(BODY, BODY_LABEL, v, sub)",
        "sub = None",
        "if bar is not None: bar.update(1)",
        "if after(PLAN, i, element, total, v): break",
        "if cancel is not None and cancel.cancelled and i + 1 < total:",
        "    stop = i + 1",
        "    break",
    ]
    source = (
        "def run(v, run, at):\n"
        "    u, after, cancel, path = run.unit, run.after_step, run.cancel, run.path\n"
        "    base = path[-1]\n"
        "    start, sub = 0, None\n"
        "    if at is not None:\n"
        "        start, rest = at[0] or 0, at[1]\n"
        f"        sub = {sub} if rest else None\n"
        f"    if {over!r} not in v:\n"
        f"        raise Failure(MISSING, names=({over!r},), node=PLAN.name)\n"
        f"    items = v[{over!r}]\n"
        "    total = length(items, PLAN)\n"
        "    bar = open_bar(total, PLAN.name, OPTION, initial=start)\n"
        "    steps = enumerate(islice(items, start, None) if start else items, start)\n"
        f"{saves}"
        "    i, stop = start, None\n"
        "    try:\n"
        "        for i, element in steps:\n"
        f"{_indent(step, 3)}\n"
        "    except Failure as f:\n"
        f"{add_body}"
        "        raise f.at_step(i) from None\n"
        "    finally:\n"
        "        path[-1] = base\n"
        "        if bar is not None: bar.close()\n"
        f"{restores}"
        "    if stop is not None:\n"
        "        raise Failure(CANCELLED).at_step(stop)\n"
    )
    return _define(source, ns, plan, "loop")


def _plain_loop(
    plan: Repeat, ns: dict[str, Any], sets: list[str], saves: str, restores: str
) -> Any:
    """The plain loop, with a body of blocks pasted into it: no call per step to get there.

    A failure finds its block from the line it passed through, as in sequences; a body that
    can't be pasted (a named sequence, a switch, a loop) is called.
    """
    over = plan.over
    body = _Body(ns)
    if _inlinable(plan.body):
        body.inline(cast("Seq | Call", plan.body), "_b")
        body_plan = plan.body
        children = body_plan.children if isinstance(body_plan, Seq) else (body_plan,)
        labels = body_plan.labels if isinstance(body_plan, Seq) else (plan.body_label or "",)
        fail = _attribute(children, labels)
    else:
        ns["BODY"] = fast(plan.body)
        body.add(-1, "BODY(v, run)")
        fail = None
    header = (
        "def run(v, run):\n"
        f"    if {over!r} not in v:\n"
        f"        raise Failure(MISSING, names=({over!r},), node=PLAN.name)\n"
        f"    items = v[{over!r}]\n"
        "    total = length(items, PLAN)\n"
        "    bar = open_bar(total, PLAN.name, OPTION)\n"
        f"{saves}"
        "    i = 0\n"
        "    try:\n"
        "        for i, element in enumerate(items):\n"
        f"{_indent(sets, 3)}\n"
    )
    owner = body.owner_of(header.count("\n") + 1)

    def step_failure(exc: Exception, at: int, values: Values, index: int) -> Failure:
        k = owner.get(at, -1)
        if k >= 0 and fail is not None:
            failure: Failure = fail(exc, k, values)
        else:  # the called body: it raised a Failure, with its own path
            failure = exc if isinstance(exc, Failure) else Failure(BLOCK, exc, block=plan.name)
            if plan.body_label is not None:
                failure.add(plan.body_label)
        return failure.at_step(index)

    ns.update(step_failure=step_failure, line=_line)
    source = (
        f"{header}"
        f"{_indent(body.lines, 3)}\n"
        "            if bar is not None: bar.update(1)\n"
        "    except Exception as exc:\n"
        "        raise step_failure(exc, line(exc), v, i) from None\n"
        "    finally:\n"
        "        if bar is not None: bar.close()\n"
        f"{restores}"
    )
    return _define(source, ns, plan, "loop")


# -- switches and scopes -------------------------------------------------------------------


def _switch(plan: Choice, *, hooked: bool) -> Any:
    """A switch: choose a branch (or the one a cursor names), check it can run, run it."""
    labels, required, choose = plan.labels, plan.required, plan.choose

    def pick(values: Values) -> int | None:
        try:
            return choose(values)
        except Failure:
            raise
        except Exception as exc:  # noqa: BLE001 - the select function failed
            raise Failure(BLOCK, exc, block=f"{plan.name}.select") from None

    def check(pos: int, values: Values) -> None:
        if not required[pos].issubset(values):
            names = tuple(sorted(required[pos].difference(values)))
            why = f"switch `{plan.name}` chose branch `{labels[pos]}`, which needs it"
            raise Failure(MISSING, names=names, node=labels[pos], why=why).add(labels[pos])

    if not hooked:
        branches = [fast(b) for b in plan.branches]

        def run_switch(values: Values, run: Any) -> None:
            pos = pick(values)
            if pos is None:
                return
            check(pos, values)
            try:
                branches[pos](values, run)
            except Failure as failure:
                raise failure.add(labels[pos]) from None

        return run_switch

    def run_switch_hooked(values: Values, run: Any, at: Cursor | None) -> None:
        sub: Cursor | None = None
        if at is not None and at[1]:
            # Resumed inside a branch: the one that ran, whatever the values say now.
            pos = labels.index(at[1][0].name)
            sub = (at[1][0].step, at[1][1:])
        else:
            chosen = pick(values)
            if chosen is None:
                return
            pos = chosen
        check(pos, values)
        try:
            run.unit(plan.branches[pos], labels[pos], values, sub)
        except Failure as failure:
            raise failure.add(labels[pos]) from None

    return run_switch_hooked


def _scope(plan: Scope, *, hooked: bool) -> Any:
    """Bound values enter the state; with renames, the inner node runs on its own dict.

    The inner dict holds just what the node reads, under its own names, so a renamed value
    never shadows another one of the outer state. What it wrote goes back under the outer
    names, also when it fails, so the error's state holds everything computed.
    """
    bound, reads, writes = plan.bound, plan.reads, plan.writes
    inner_fast = None if hooked else fast(plan.inner)
    outer_names = dict(plan.reads + plan.writes)

    def write_back(inner: Values, values: Values) -> None:
        for i, o in writes:
            if i in inner:
                values[o] = inner[i]

    if not hooked:
        assert inner_fast is not None
        if not plan.renamed:

            def run_bound(values: Values, run: Any) -> None:
                values.update(bound)
                inner_fast(values, run)

            return run_bound

        def run_renamed(values: Values, run: Any) -> None:
            values.update(bound)
            inner = {i: values[o] for i, o in reads if o in values}
            try:
                inner_fast(inner, run)
            finally:
                write_back(inner, values)

        return run_renamed

    def run_hooked(values: Values, run: Any, at: Cursor | None) -> None:
        if at is None:
            values.update(bound)
        else:
            # Resumed inside: the values were bound when the node started, and what it has
            # written since (under those names too) is in the state: keep it.
            values.update((k, v) for k, v in bound if k not in values)
        if not plan.renamed:
            run.unit(plan.inner, None, values, at)
            return
        # A resumed node also reads back what it had written before it stopped.
        names = reads if at is None else reads + writes
        inner = {i: values[o] for i, o in names if o in values}
        run.views.append((values, outer_names))
        try:
            run.unit(plan.inner, None, inner, at)
        finally:
            run.views.pop()
            write_back(inner, values)

    return run_hooked
