"""Shared timing and reporting helpers for the scripts in ``benchmarks/``.

The scripts time several *contenders* (zero-argument callables doing the same work)
in one process. `measure_interleaved` warms every contender up, calibrates how many
calls make one batch, then runs one batch of each contender per round, rotating the
order every round so that no contender always runs first or last. Each batch is
timed with `time.perf_counter_ns` (``--clock cpu``: `time.process_time_ns`) and reduced to
nanoseconds per call.

Two estimates come out of the per-round values:

* the time per call of one contender: the median (default) or the minimum over rounds;
* a *difference* between contenders (the overhead over the hand-written baseline):
  `paired_us` takes the difference within each round, where the batches ran next to
  each other under the same background load, and reports the median of those per-round
  differences. This cancels most of the load that the contenders share.

Many short rounds make both robust on a shared machine: a batch that another process
interrupts is an outlier the median ignores. The minimum (``--statistic min``) estimates
the cost on an idle machine, but under load it no longer matches the overheads, which
are medians.

The garbage collector stays enabled: allocating a lot (and so triggering collections)
is part of what a framework costs, and a batch spans many calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from types import ModuleType

__all__ = [
    "CLOCKS",
    "NA",
    "REPO_ROOT",
    "Settings",
    "Timing",
    "emit",
    "emit_notes",
    "environment",
    "fmt",
    "markdown_table",
    "measure_interleaved",
    "optional_import",
    "paired_us",
    "parse_settings",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout these scripts live in."""

NA = "n/a"
"""Table cell for a value that could not be measured."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long and how often to measure.

    Attributes:
        rounds: Number of interleaved rounds; each contender gets one batch per round.
        batch_ns: Target duration of one batch; sets how many calls a batch makes.
        warmup_ns: Time spent calling each contender before calibration.
        min_calls: Fewest calls in a batch, however slow the contender.
        statistic: How rounds reduce to one number: ``"min"`` or ``"median"``.
        clock: ``"wall"`` (`time.perf_counter_ns`, the default) or ``"cpu"``
            (`time.process_time_ns`: this process's CPU time, which leaves out the time
            other processes hold the CPU; useful on a busy machine).
    """

    rounds: int = 100
    batch_ns: int = 2_000_000
    warmup_ns: int = 50_000_000
    min_calls: int = 1
    statistic: Literal["min", "median"] = "median"
    clock: Literal["wall", "cpu"] = "wall"

    @classmethod
    def quick(cls) -> Settings:
        """Return settings for a fast smoke run (numbers are noisy)."""
        return cls(rounds=2, batch_ns=500_000, warmup_ns=0)

    def describe(self) -> str:
        """Summarise the settings in one line for the report."""
        return (
            f"time per call: {self.statistic} of {self.rounds} interleaved rounds "
            f"(batches of ≈{self.batch_ns / 1e6:g} ms, {self.clock} clock); "
            "overheads: median of the per-round differences"
        )


def parse_settings(
    argv: Sequence[str] | None, description: str, default: Settings | None = None
) -> Settings:
    """Parse the command line shared by the benchmark scripts.

    Options: ``--quick`` (few repetitions: a smoke run), ``--rounds R`` and
    ``--batch-ms MS`` (override the number of rounds and the batch length),
    ``--statistic {median,min}`` and ``--clock {wall,cpu}`` (see `Settings`).

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).
        description: The script's one-line description for ``--help``.
        default: Settings of a full run (default: `Settings()`).

    Returns:
        The settings to measure with.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few repetitions: a fast smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per contender")
    parser.add_argument("--batch-ms", type=float, help="target duration of one timed batch")
    parser.add_argument(
        "--statistic",
        choices=["min", "median"],
        help="how the rounds reduce to a time per call (default: median)",
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        help="wall: perf_counter_ns (default); cpu: process_time_ns, for a busy machine",
    )
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else (default or Settings())
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.batch_ms is not None:
        settings = dataclasses.replace(settings, batch_ns=int(args.batch_ms * 1e6))
    if args.statistic is not None:
        settings = dataclasses.replace(settings, statistic=args.statistic)
    if args.clock is not None:
        settings = dataclasses.replace(settings, clock=args.clock)
    return settings


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call durations of one contender, one value per round.

    Attributes:
        name: The contender's name.
        per_call_ns: Nanoseconds per call, one value per round.
        calls_per_batch: How many calls each timed batch made.
        statistic: Which statistic `us` reports: ``"min"`` or ``"median"``.
    """

    name: str
    per_call_ns: tuple[float, ...]
    calls_per_batch: int
    statistic: Literal["min", "median"] = "median"

    @property
    def median_ns(self) -> float:
        """Median over rounds of the nanoseconds per call."""
        return statistics.median(self.per_call_ns)

    @property
    def min_ns(self) -> float:
        """Fastest round's nanoseconds per call."""
        return min(self.per_call_ns)

    @property
    def us(self) -> float:
        """Microseconds per call: the chosen statistic over rounds."""
        return (self.min_ns if self.statistic == "min" else self.median_ns) / 1_000


CLOCKS: dict[str, Callable[[], int]] = {
    "wall": time.perf_counter_ns,
    "cpu": time.process_time_ns,
}
"""Clocks a batch can be timed with: wall time, or this process's CPU time."""


def _time_batch(fn: Callable[[], object], calls: int, clock: Callable[[], int]) -> int:
    """Return the nanoseconds that ``calls`` back-to-back calls of ``fn`` take on ``clock``."""
    loop = range(calls)
    start = clock()
    for _ in loop:
        fn()
    return clock() - start


def _calibrate(fn: Callable[[], object], settings: Settings) -> int:
    """Warm ``fn`` up and return how many calls fill one batch of ``settings.batch_ns``."""
    clock = CLOCKS[settings.clock]
    deadline = time.perf_counter_ns() + settings.warmup_ns
    fn()
    while time.perf_counter_ns() < deadline:
        fn()
    calls = 1
    while True:
        elapsed = _time_batch(fn, calls, clock)
        if elapsed >= settings.batch_ns // 4 or calls >= 1 << 24:
            break
        calls *= 4
    scaled = int(calls * settings.batch_ns / max(elapsed, 1))
    return max(settings.min_calls, scaled, 1)


def measure_interleaved(
    contenders: Mapping[str, Callable[[], object]],
    settings: Settings,
) -> dict[str, Timing]:
    """Time every contender over interleaved rounds.

    Args:
        contenders: Contender name to a zero-argument callable doing one unit of work.
        settings: Rounds, batch length and warm-up time.

    Returns:
        Contender name to its `Timing`, in the order of ``contenders``.
    """
    names = list(contenders)
    clock = CLOCKS[settings.clock]
    calls = {name: _calibrate(contenders[name], settings) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(settings.rounds):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            elapsed = _time_batch(contenders[name], calls[name], clock)
            samples[name].append(elapsed / calls[name])
    return {
        name: Timing(name, tuple(samples[name]), calls[name], settings.statistic) for name in names
    }


def paired_us(timings: Mapping[str, Timing], weights: Mapping[str, float]) -> float | None:
    """Return the median over rounds of a weighted sum of per-call times, in microseconds.

    ``paired_us(t, {"modblocks": 1, "hand-written": -1})`` is modblocks' overhead over the
    hand-written code, taken round by round (see the module docstring).

    Args:
        timings: Result of `measure_interleaved`.
        weights: Contender name to its coefficient in the sum.

    Returns:
        The median of the per-round sums, or ``None`` if a contender was not measured.
    """
    if any(name not in timings for name in weights):
        return None
    rounds = zip(*(timings[name].per_call_ns for name in weights), strict=True)
    sums = [sum(w * ns for w, ns in zip(weights.values(), row, strict=True)) for row in rounds]
    return statistics.median(sums) / 1_000


def optional_import(name: str, attributes: Iterable[str] = ()) -> tuple[ModuleType | None, str]:
    """Import a module that may not exist (yet), or may lack some attributes.

    Args:
        name: The module to import.
        attributes: Attribute names the module must have to count as usable.

    Returns:
        The module and ``""``, or ``None`` and why it is unusable.
    """
    try:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # `python benchmarks/x.py` puts benchmarks/ on sys.path, not the checkout's root:
            # fall back to the checkout's copy of the package when it is not installed.
            if exc.name != name or str(REPO_ROOT) in sys.path:
                raise
            sys.path.append(str(REPO_ROOT))
            module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure just marks the column n/a
        return None, f"`import {name}` failed: {type(exc).__name__}: {exc}"
    missing = [attr for attr in attributes if not hasattr(module, attr)]
    if missing:
        return None, f"`{name}` has no {', '.join(missing)}"
    return module, ""


def fmt(value: float | None, digits: int = 2) -> str:
    """Format a number for a table cell, or `NA` for ``None``.

    Args:
        value: The number, or ``None`` when it could not be measured.
        digits: Digits after the decimal point.

    Returns:
        The cell text.
    """
    if value is None:
        return NA
    return f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Render a GitHub-flavoured markdown table with aligned columns.

    The first column is left-aligned; the others are right-aligned (they hold numbers).

    Args:
        headers: Column titles.
        rows: One sequence of cells per row; cells are turned into text with `str`.

    Returns:
        The table, one line per row, without a trailing newline.
    """
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for col, cell in enumerate(row):
            widths[col] = max(widths[col], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(widths[col]) if col == 0 else cell.rjust(widths[col])
            for col, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * widths[0]] + ["-" * (w - 1) + ":" for w in widths[1:]]
    return "\n".join([line(headers), line(rule), *(line(row) for row in text_rows)])


def environment(packages: Iterable[str]) -> str:
    """Describe the interpreter, machine and package versions in one line.

    Args:
        packages: Distribution names whose installed versions to report.

    Returns:
        A line like ``Python 3.11.9, Linux x86_64, torch 2.13.0, ..., load average 0.3 on
        8 CPUs``. A load average near or above the CPU count means noisy numbers.
    """
    parts = [
        f"Python {platform.python_version()}",
        f"{platform.system()} {platform.machine()}",
    ]
    for package in packages:
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{package} not installed")
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return ", ".join(parts)


def emit(text: str = "") -> None:
    """Write one block of report text, plus a newline, to standard output.

    Args:
        text: The text; may span several lines.
    """
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def emit_notes(notes: Mapping[str, str]) -> None:
    """Report why some contenders show `NA`, if any do.

    Args:
        notes: Contender name to the reason it could not be measured.
    """
    if notes:
        emit("\nn/a:\n" + "\n".join(f"- {name}: {reason}" for name, reason in notes.items()))
