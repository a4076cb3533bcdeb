"""Per-block framework overhead of a chain of N trivial blocks (N = 1, 10, 100).

Every block is ``def f_k(x_k: int) -> int: return x_k + 1``: block ``k`` reads ``x_k`` and
writes ``x_{k+1}``, so a chain of N blocks turns ``x0=1`` into ``x_N = N + 1``. The work is
a single integer addition, so what is measured is the framework itself. Contenders:

* **hand-written**: the N functions called directly, one after the other, in one
  generated function (``x1 = f0(x0); x2 = f1(x1); ...``). This is the baseline.
* **modblocks**: ``mb.block(f_k, output="x_{k+1}")`` chained with ``>>`` (N = 1:
  ``mb.Sequential([blk0])``); one call is ``seq.run(x0=1)["x_N"]``.
* **diffusers**: N ``ModularPipelineBlocks`` subclasses written the way diffusers' own
  blocks are (``inputs`` / ``intermediate_outputs`` properties, ``get_block_state`` /
  ``set_block_state`` in ``__call__``), in a ``SequentialPipelineBlocks`` built with
  ``from_blocks_dict``; one call is ``pipe(x0=1, output="x_N")`` on
  ``blocks.init_pipeline()``.
* **pipefunc**: a ``Pipeline`` of N ``PipeFunc(f_k, output_name="x_{k+1}")`` with default
  options; one call is ``pipeline.run("x_N", kwargs={"x0": 1})``, the method that
  ``pipeline("x_N", x0=1)`` and ``pipeline.func("x_N")(x0=1)`` both end up in.

Table 1 reports microseconds per call, the overhead per block (per-call time minus the
hand-written time, divided by N; the difference is taken round by round, see
``_harness.paired_us``) and how many times modblocks' per-block overhead the other
frameworks' is.

Table 2 asks whether a state step gets dearer as the state grows: a chain of N = 10
(and N = 50, to get the marginal cost of one more block) starts from a state that
already holds S = 10, 100, 1000 unrelated values. modblocks gets them as an initial
``mb.State`` built once (``seq.run(state, x0=1)``); diffusers gets them as a
``PipelineState`` filled once and passed as ``pipe(state=..., x0=1, output="x_N")``
(diffusers warns about and drops unknown keyword inputs, so the ``state=`` argument is
its only way in; ``ModularPipeline.__call__`` deep-copies that state on every call, and
that copy is part of what is measured). The amortised column divides the whole overhead
of a call by N; the marginal column is the extra cost of one more block, from the
difference between the N = 50 and N = 10 chains.
Table 3 times ``mb.State.evolve(x=...)`` at those sizes, next to a plain ``dict`` copy.

All contenders run interleaved in one process (see ``_harness.py``). Times per call are
the median over rounds (``--statistic min`` for the minimum); overheads are the median
over rounds of the difference to the hand-written code measured in the same round. Run it
from the repository root::

    python benchmarks/overhead.py            # full run, about a minute
    python benchmarks/overhead.py --quick    # smoke run, numbers are noisy
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from diffusers.modular_pipelines.modular_pipeline import (
    ModularPipelineBlocks,
    PipelineState,
    SequentialPipelineBlocks,
)
from diffusers.modular_pipelines.modular_pipeline_utils import InputParam, OutputParam
from diffusers.utils import logging as diffusers_logging
from pipefunc import PipeFunc, Pipeline

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # run as `python benchmarks/overhead.py`, or imported as `benchmarks.overhead`
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

if TYPE_CHECKING:
    from collections.abc import Sequence

CHAIN_LENGTHS: tuple[int, ...] = (1, 10, 100)
STATE_SIZES: tuple[int, ...] = (10, 100, 1000)
STATE_CHAIN: int = 10
MARGINAL_CHAIN: int = 50
START: int = 1

IntFn = Callable[[int], int]
Thunk = Callable[[], object]


# --------------------------------------------------------------------------- functions


def make_functions(n: int) -> list[IntFn]:
    """Generate ``f0 .. f{n-1}``, where ``f_k(x_k)`` returns ``x_k + 1``.

    The parameter names differ (``x0``, ``x1``, ...) because frameworks that wire blocks
    by parameter name need them to.

    Args:
        n: How many functions.

    Returns:
        The functions, in chain order.
    """
    namespace: dict[str, Any] = {}
    for k in range(n):
        exec(f"def f{k}(x{k}: int) -> int:\n    return x{k} + 1\n", namespace)
    return [namespace[f"f{k}"] for k in range(n)]


def make_hand_chain(functions: Sequence[IntFn]) -> IntFn:
    """Generate a function that calls ``functions`` in sequence, as one would by hand.

    Args:
        functions: The chain ``f0 .. f{n-1}``.

    Returns:
        ``chain(x0)``, whose body is ``x1 = f0(x0)``, ``x2 = f1(x1)``, ..., ``return x_n``.
    """
    n = len(functions)
    body = "".join(f"    x{k + 1} = f{k}(x{k})\n" for k in range(n))
    namespace: dict[str, Any] = {f"f{k}": fn for k, fn in enumerate(functions)}
    exec(f"def chain(x0):\n{body}    return x{n}\n", namespace)
    return namespace["chain"]


# --------------------------------------------------------------------------- contenders


def build_hand(n: int) -> Thunk:
    """Return a thunk running the hand-written chain of ``n`` functions."""
    chain = make_hand_chain(make_functions(n))

    def call() -> int:
        return chain(START)

    return call


def modblocks_chain(mb: Any, n: int) -> Any:
    """Build the modblocks chain of ``n`` blocks.

    Args:
        mb: The ``modblocks`` module.
        n: Number of blocks.

    Returns:
        ``blk0 >> blk1 >> ...``, a ``mb.Sequential`` (``mb.Sequential([blk0])`` when
        ``n == 1``: there is nothing to chain).
    """
    blocks = [mb.block(fn, output=f"x{k + 1}") for k, fn in enumerate(make_functions(n))]
    if n == 1:
        return mb.Sequential(blocks)
    return functools.reduce(lambda a, b: a >> b, blocks)


def _ignore_step(_step: Any) -> None:
    """A step callback that does nothing (its cost is the engine's)."""


def build_modblocks_listened(mb: Any, n: int, option: str) -> Thunk:
    """Return a thunk running the chain with an ``events=`` listener or an ``on_step`` callback.

    Either option takes the hooked path (each block handed to the run's hooks); the events
    listener hears a start and a finish per block.
    """
    seq = modblocks_chain(mb, n)
    key = f"x{n}"
    run = seq.run
    heard: list[Any] = []
    options: dict[str, Any] = (
        {"events": heard.append} if option == "events" else {"on_step": _ignore_step}
    )

    def call() -> int:
        heard.clear()
        return run(x0=START, **options)[key]

    return call


def build_modblocks(mb: Any, n: int) -> Thunk:
    """Return a thunk running ``seq.run(x0=1)["x_n"]`` on a modblocks chain."""
    seq = modblocks_chain(mb, n)
    key = f"x{n}"
    run = seq.run

    def call() -> int:
        return run(x0=START)[key]

    return call


_DIFFUSERS_BLOCK = '''
class AddOne{k}(ModularPipelineBlocks):
    """Reads x{k}, writes x{k1} = x{k} + 1."""

    @property
    def inputs(self):
        return [InputParam("x{k}", required=True)]

    @property
    def intermediate_outputs(self):
        return [OutputParam("x{k1}")]

    def __call__(self, components, state):
        block_state = self.get_block_state(state)
        block_state.x{k1} = f{k}(block_state.x{k})
        self.set_block_state(state, block_state)
        return components, state
'''


def quiet_diffusers() -> None:
    """Silence diffusers' logging (errors only) and its download progress bars."""
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


@functools.cache
def diffusers_pipeline(n: int) -> Any:
    """Build (once per ``n``) a diffusers ``ModularPipeline`` chaining ``n`` blocks.

    The block classes are generated from source so that each ``__call__`` reads and
    writes its attributes by name (``block_state.x4 = f3(block_state.x3)``), exactly as a
    hand-written diffusers block would, and calls the same ``f_k`` as the other
    contenders.

    Args:
        n: Number of blocks.

    Returns:
        The pipeline made by ``SequentialPipelineBlocks.from_blocks_dict(...).init_pipeline()``.
    """
    quiet_diffusers()
    namespace: dict[str, Any] = {
        "ModularPipelineBlocks": ModularPipelineBlocks,
        "InputParam": InputParam,
        "OutputParam": OutputParam,
    }
    for k, fn in enumerate(make_functions(n)):
        namespace[f"f{k}"] = fn
        exec(_DIFFUSERS_BLOCK.format(k=k, k1=k + 1), namespace)
    blocks = SequentialPipelineBlocks.from_blocks_dict(
        {f"add_one_{k}": namespace[f"AddOne{k}"]() for k in range(n)}
    )
    return blocks.init_pipeline()


def build_diffusers(n: int) -> Thunk:
    """Return a thunk running ``pipe(x0=1, output="x_n")`` on a diffusers pipeline."""
    pipe = diffusers_pipeline(n)
    key = f"x{n}"

    def call() -> int:
        return pipe(x0=START, output=key)

    return call


def build_pipefunc(n: int) -> Thunk:
    """Return a thunk running ``pipeline.run("x_n", kwargs={"x0": 1})`` on a pipefunc chain."""
    pipeline = Pipeline(
        [PipeFunc(fn, output_name=f"x{k + 1}") for k, fn in enumerate(make_functions(n))]
    )
    key = f"x{n}"
    run = pipeline.run

    def call() -> int:
        return run(key, kwargs={"x0": START})

    return call


# --------------------------------------------------------------------------- measuring


def _build_all(
    builders: dict[str, Callable[[], Thunk]],
    expected: object,
    notes: dict[str, str],
) -> dict[str, Thunk]:
    """Build every contender, check its result, and drop (with a note) those that fail.

    Args:
        builders: Contender name to a function building its thunk.
        expected: The value every thunk must return.
        notes: Collects ``name -> reason`` for contenders that could not run.

    Returns:
        Contender name to its checked thunk.
    """
    thunks: dict[str, Thunk] = {}
    for name, build in builders.items():
        try:
            thunk = build()
            result = thunk()
        except Exception as exc:  # noqa: BLE001 - report and carry on with the others
            notes.setdefault(name, f"{type(exc).__name__}: {exc}")
            continue
        if result != expected:
            notes.setdefault(name, f"returned {result!r}, expected {expected!r}")
            continue
        thunks[name] = thunk
    return thunks


def chain_table(mb: Any, settings: _harness.Settings, notes: dict[str, str]) -> str:
    """Measure the chains of `CHAIN_LENGTHS` blocks and render table 1.

    Args:
        mb: The ``modblocks`` module, or ``None`` when it is not usable.
        settings: Measurement settings.
        notes: Collects reasons why a contender is ``n/a``.

    Returns:
        The markdown table.
    """
    rows: list[list[str]] = []
    for n in CHAIN_LENGTHS:
        builders: dict[str, Callable[[], Thunk]] = {
            "hand-written": functools.partial(build_hand, n)
        }
        if mb is not None:
            builders["modblocks"] = functools.partial(build_modblocks, mb, n)
            for option in ("events", "on_step"):
                builders[f"modblocks + {option}"] = functools.partial(
                    build_modblocks_listened, mb, n, option
                )
        builders["diffusers"] = functools.partial(build_diffusers, n)
        builders["pipefunc"] = functools.partial(build_pipefunc, n)
        thunks = _build_all(builders, n + START, notes)
        timings = _harness.measure_interleaved(thunks, settings)
        per_block: dict[str, float | None] = {
            name: _per_unit(_harness.paired_us(timings, {name: 1, "hand-written": -1}), n)
            for name in timings
        }
        reference = per_block.get("modblocks")
        names = ("hand-written", "modblocks", "modblocks + events", "modblocks + on_step")
        for name in (*names, "diffusers", "pipefunc"):
            if name not in timings:
                rows.append([f"N={n} {name}", _harness.NA, _harness.NA, _harness.NA])
                continue
            rows.append(
                [
                    f"N={n} {name}",
                    _harness.fmt(timings[name].us),
                    "baseline" if name == "hand-written" else _harness.fmt(per_block[name], 3),
                    _harness.fmt(_ratio(per_block[name], reference))
                    if name != "hand-written"
                    else _harness.NA,
                ]
            )
    return _harness.markdown_table(
        ["chain", "µs/call", "overhead µs/block", "ratio to modblocks (per block)"], rows
    )


def _per_unit(total: float | None, units: int) -> float | None:
    """Divide ``total`` by ``units``, passing ``None`` through."""
    return None if total is None else total / units


def _ratio(value: float | None, reference: float | None) -> float | None:
    """Return ``value / reference``, or ``None`` when either is missing or not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def _extra_values(size: int) -> dict[str, int]:
    """Return ``size`` unrelated values to pre-fill a state with."""
    return {f"extra_{j}": j for j in range(size)}


def build_modblocks_with_state(mb: Any, n: int, size: int) -> Thunk:
    """Return a thunk running a modblocks chain from a state pre-filled with ``size`` values."""
    seq = modblocks_chain(mb, n)
    initial = mb.State(_extra_values(size))
    key = f"x{n}"
    run = seq.run

    def call() -> int:
        return run(initial, x0=START)[key]

    return call


def build_diffusers_with_state(n: int, size: int) -> Thunk:
    """Return a thunk running a diffusers chain from a ``PipelineState`` holding ``size`` values."""
    pipe = diffusers_pipeline(n)
    initial = PipelineState()
    for name, value in _extra_values(size).items():
        initial.set(name, value)
    key = f"x{n}"

    def call() -> int:
        return pipe(state=initial, x0=START, output=key)

    return call


def state_tables(mb: Any, settings: _harness.Settings, notes: dict[str, str]) -> tuple[str, str]:
    """Measure state-step cost and ``State.evolve`` cost against state size.

    Args:
        mb: The ``modblocks`` module, or ``None`` when it is not usable.
        settings: Measurement settings.
        notes: Collects reasons why a contender is ``n/a``.

    Returns:
        Table 2 (chain from a pre-filled state) and table 3 (``evolve``), as markdown.
    """
    long_chain = MARGINAL_CHAIN
    chain_rows: list[list[str]] = []
    evolve_rows: list[list[str]] = []
    for size in STATE_SIZES:
        builders: dict[str, Callable[[], Thunk]] = {}
        for n in (STATE_CHAIN, long_chain):
            builders[f"hand-written/{n}"] = functools.partial(build_hand, n)
            if mb is not None:
                builders[f"modblocks/{n}"] = functools.partial(
                    build_modblocks_with_state, mb, n, size
                )
            builders[f"diffusers/{n}"] = functools.partial(build_diffusers_with_state, n, size)
        thunks: dict[str, Thunk] = {}
        for n in (STATE_CHAIN, long_chain):
            chosen = {name: build for name, build in builders.items() if name.endswith(f"/{n}")}
            thunks |= _build_all(chosen, n + START, notes)
        timings = _harness.measure_interleaved(thunks, settings)
        short, long_ = STATE_CHAIN, long_chain
        for contender in ("modblocks", "diffusers"):
            call = timings.get(f"{contender}/{short}")
            amortised = _harness.paired_us(
                timings, {f"{contender}/{short}": 1, f"hand-written/{short}": -1}
            )
            marginal = _harness.paired_us(
                timings,
                {
                    f"{contender}/{long_}": 1,
                    f"hand-written/{long_}": -1,
                    f"{contender}/{short}": -1,
                    f"hand-written/{short}": 1,
                },
            )
            chain_rows.append(
                [
                    f"S={size} {contender}",
                    _harness.fmt(None if call is None else call.us),
                    _harness.fmt(_per_unit(amortised, short), 3),
                    _harness.fmt(_per_unit(marginal, long_ - short), 3),
                ]
            )

        evolve_rows.append([f"S={size}", *_evolve_cells(mb, size, settings, notes)])
    chain_table_md = _harness.markdown_table(
        [
            "state size",
            f"µs/call (N={STATE_CHAIN})",
            f"µs/block, amortised (N={STATE_CHAIN})",
            f"µs/block, marginal (N={long_chain} vs {STATE_CHAIN})",
        ],
        chain_rows,
    )
    evolve_md = _harness.markdown_table(
        [
            "state size",
            "mb.State.evolve(x=…) µs",
            "dict copy {**d, 'x': …} µs (reference)",
        ],
        evolve_rows,
    )
    return chain_table_md, evolve_md


def _evolve_thunk(mb: Any, extra: dict[str, int]) -> Thunk:
    """Return a thunk calling ``evolve(x=1)`` on a ``mb.State`` holding ``extra``.

    Raises:
        ValueError: If the evolved state does not hold the new value.
    """
    evolve = mb.State(extra).evolve
    if evolve(x=START)["x"] != START:
        msg = "State(...).evolve(x=1)['x'] != 1"
        raise ValueError(msg)

    def state_evolve() -> object:
        return evolve(x=START)

    return state_evolve


def _evolve_cells(
    mb: Any, size: int, settings: _harness.Settings, notes: dict[str, str]
) -> list[str]:
    """Time ``State.evolve(x=1)`` and a plain dict copy on ``size`` values; return the cells."""
    extra = _extra_values(size)

    def dict_copy() -> object:
        return {**extra, "x": START}

    thunks: dict[str, Thunk] = {"dict": dict_copy}
    if mb is not None:
        try:
            thunks["evolve"] = _evolve_thunk(mb, extra)
        except Exception as exc:  # noqa: BLE001 - report and carry on
            notes.setdefault("mb.State.evolve", f"{type(exc).__name__}: {exc}")
    timings = _harness.measure_interleaved(thunks, settings)
    evolve_us = timings["evolve"].us if "evolve" in timings else None
    return [_harness.fmt(evolve_us, 3), _harness.fmt(timings["dict"].us, 3)]


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    settings = _harness.parse_settings(argv, (__doc__ or "").partition("\n")[0])
    mb, why = _harness.optional_import("modblocks", ("block", "State"))
    notes: dict[str, str] = {}
    if mb is None:
        notes["modblocks"] = why

    _harness.emit(_harness.environment(["modblocks", "diffusers", "pipefunc", "torch"]))
    _harness.emit(f"{settings.describe()}\n")
    _harness.emit("## Chain of N trivial blocks\n")
    _harness.emit(chain_table(mb, settings, notes))
    table2, table3 = state_tables(mb, settings, notes)
    _harness.emit(
        f"\n## Chain of {STATE_CHAIN} blocks starting from a state that already holds S values\n"
    )
    _harness.emit(table2)
    _harness.emit("\n## Copying a state of S values with one key changed\n")
    _harness.emit(table3)
    _harness.emit_notes(notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
