"""Shared timing and reporting helpers for the scripts in ``benchmarks/``.

The scripts time several *contenders* (zero-argument callables doing the same work)
in one process. `measure_interleaved` warms every contender up, calibrates how many
calls make one batch, then runs one batch of each contender per round, rotating the
order every round so that no contender always runs first or last. Each batch is
timed with `time.perf_counter_ns` and reduced to nanoseconds per call; a contender's
result is the median (and the minimum) of its per-round values.

The garbage collector stays enabled: allocating a lot (and so triggering collections)
is part of what a framework costs. The median keeps a stray collection from skewing a
result.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from types import ModuleType

__all__ = [
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
    """

    rounds: int = 15
    batch_ns: int = 20_000_000
    warmup_ns: int = 50_000_000
    min_calls: int = 1

    @classmethod
    def quick(cls) -> Settings:
        """Return settings for a fast smoke run (numbers are noisy)."""
        return cls(rounds=2, batch_ns=500_000, warmup_ns=0)

    def describe(self) -> str:
        """Summarise the settings in one line for the report."""
        return f"rounds={self.rounds}, batch≈{self.batch_ns / 1e6:g} ms, median of rounds"


def parse_settings(
    argv: Sequence[str] | None, description: str, default: Settings | None = None
) -> Settings:
    """Parse the command line shared by the benchmark scripts.

    Options: ``--quick`` (few repetitions: a smoke run), ``--rounds R`` and
    ``--batch-ms MS`` (override the number of rounds and the batch length).

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
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else (default or Settings())
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.batch_ms is not None:
        settings = dataclasses.replace(settings, batch_ns=int(args.batch_ms * 1e6))
    return settings


@dataclasses.dataclass(frozen=True)
class Timing:
    """Per-call durations of one contender, one value per round.

    Attributes:
        name: The contender's name.
        per_call_ns: Nanoseconds per call, one value per round.
        calls_per_batch: How many calls each timed batch made.
    """

    name: str
    per_call_ns: tuple[float, ...]
    calls_per_batch: int

    @property
    def median_ns(self) -> float:
        """Median over rounds of the nanoseconds per call."""
        return statistics.median(self.per_call_ns)

    @property
    def min_ns(self) -> float:
        """Fastest round's nanoseconds per call."""
        return min(self.per_call_ns)

    @property
    def median_us(self) -> float:
        """Median over rounds of the microseconds per call."""
        return self.median_ns / 1_000


def _time_batch(fn: Callable[[], object], calls: int) -> int:
    """Return the nanoseconds that ``calls`` back-to-back calls of ``fn`` take."""
    loop = range(calls)
    start = time.perf_counter_ns()
    for _ in loop:
        fn()
    return time.perf_counter_ns() - start


def _calibrate(fn: Callable[[], object], settings: Settings) -> int:
    """Warm ``fn`` up and return how many calls fill one batch of ``settings.batch_ns``."""
    deadline = time.perf_counter_ns() + settings.warmup_ns
    fn()
    while time.perf_counter_ns() < deadline:
        fn()
    calls = 1
    while True:
        elapsed = _time_batch(fn, calls)
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
    calls = {name: _calibrate(contenders[name], settings) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(settings.rounds):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            elapsed = _time_batch(contenders[name], calls[name])
            samples[name].append(elapsed / calls[name])
    return {name: Timing(name, tuple(samples[name]), calls[name]) for name in names}


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
        A line like ``Python 3.11.9, Linux x86_64, torch 2.13.0, ...``.
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
    parts.append(f"argv: {' '.join(sys.argv[1:]) or '(defaults)'}")
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
