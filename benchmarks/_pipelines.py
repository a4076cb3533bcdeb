"""Shared pieces of the pipeline benchmarks (`sdxl.py`, `flux.py`): contenders that run the
same denoising at several step counts, timed interleaved, and their overhead table.

A contender at a step count is a *thunk*: a zero-argument callable returning the latents.
`overhead_table` checks that every contender computes the hand-written latents, times them
all in one interleaved run, and reports per contender: milliseconds per 1-step call, the
**fixed overhead** (the 1-step time minus the hand-written one, median of the per-round
differences), the **per-step cost** ((last - second step count) / their difference) and its
overhead over the hand-written step, and the **peak memory** of one call at the largest
step count: Python heap (``tracemalloc``) and torch's CPU allocator (``torch.profiler``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # imported as `benchmarks._pipelines`, or next to a script run as a file
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

Thunk = Callable[[], torch.Tensor]
HAND = "hand-written"


def disable_bars(block: Any) -> int:
    """Disable the progress bar of a modular *block* and every block under it; count them."""
    count = 0
    if hasattr(block, "set_progress_bar_config"):
        block.set_progress_bar_config(disable=True)
        count += 1
    for sub in getattr(block, "sub_blocks", {}).values():
        count += disable_bars(sub)
    return count


def compare(
    thunks: Mapping[str, Thunk], normalize: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
) -> None:
    """Check that every contender computes the hand-written latents (float32 rounding).

    *normalize* brings each result to one layout first (e.g. unpacks Flux's tokens).
    """
    expected = normalize(thunks[HAND]())
    for name, thunk in thunks.items():
        got = normalize(thunk())
        if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            continue
        diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("nan")
        msg = f"{name} computes other latents than the hand-written code (max diff {diff})"
        raise AssertionError(msg)


def peak_kib(thunk: Callable[[], object]) -> float:
    """Peak Python heap allocated during one call of *thunk*, in KiB (after a warm-up call)."""
    thunk()
    tracemalloc.start()
    try:
        thunk()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1024


@contextlib.contextmanager
def quiet_stderr() -> Generator[None]:
    """Send what this process writes to file descriptor 2 to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with Path(os.devnull).open("w", encoding="ascii") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensor_peak_kib(thunk: Callable[[], object]) -> float:
    """Peak of the bytes torch's CPU allocator held during one call, beyond those before it.

    ``torch.profiler`` records every allocation and free with the running total of the
    bytes allocated since it started ("Total Allocated").
    """
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder, "trace.json")
        with (
            quiet_stderr(),  # the profiler logs its start and stop there, from C++
            torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            ) as profiler,
        ):
            thunk()
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text(encoding="utf-8"))["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0) / 1024


def overhead_table(
    thunks: Mapping[tuple[str, int], Thunk],
    contenders: Sequence[str],
    steps: Sequence[int],
    settings: _harness.Settings,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    tensor_memory: bool = False,
) -> str:
    """Measure every contender at every step count, interleaved; return the report text.

    *thunks* maps `(contender, steps)` to a thunk; ``steps[0]`` must be 1. The first
    contender is `HAND`. With *tensor_memory*, a column gives torch's peak too.
    """
    for count in steps:
        compare({name: thunks[name, count] for name in contenders}, normalize)
    timings = _harness.measure_interleaved(
        {f"{name} @{count}": thunk for (name, count), thunk in thunks.items()}, settings
    )
    lo, hi = steps[1], steps[-1]

    def slope(name: str) -> dict[str, float]:
        return {f"{name} @{hi}": 1 / (hi - lo), f"{name} @{lo}": -1 / (hi - lo)}

    def negated(weights: dict[str, float]) -> dict[str, float]:
        return {key: -weight for key, weight in weights.items()}

    fixed: dict[str, float | None] = {}
    rows: list[list[str]] = []
    for name in contenders:
        step_over = None
        if name != HAND:
            fixed[name] = _harness.paired_us(timings, {f"{name} @1": 1, f"{HAND} @1": -1})
            step_over = _harness.paired_us(timings, {**slope(name), **negated(slope(HAND))})
        row = [
            name,
            _harness.fmt(timings[f"{name} @1"].us / 1000),
            _harness.fmt(fixed.get(name), 0),
            _harness.fmt(_harness.paired_us(timings, slope(name)), 0),
            _harness.fmt(step_over, 0),
            _harness.fmt(peak_kib(thunks[name, hi]), 0),
        ]
        if tensor_memory:
            row.append(_harness.fmt(tensor_peak_kib(thunks[name, hi]), 0))
        rows.append(row)
    headers = [
        "contender",
        "ms / call (1 step)",
        "fixed overhead µs",
        "µs / step",
        "step overhead µs",
        f"peak Python KiB ({hi} steps)",
    ]
    if tensor_memory:
        headers.append(f"peak torch KiB ({hi} steps)")
    lines = [_harness.markdown_table(headers, rows), ""]
    ours = fixed.get("modblocks")
    for other in contenders:
        theirs = fixed.get(other)
        if other in (HAND, "modblocks") or ours is None or theirs is None:
            continue
        # An overhead within the noise of the hand-written time has no meaningful ratio.
        ratio = f"{theirs / ours:.0f}x modblocks'" if ours > 0 else "modblocks' is within noise"
        lines.append(f"fixed overhead of {other}: {theirs / 1000:.1f} ms ({ratio})")
    return "\n".join(lines)
