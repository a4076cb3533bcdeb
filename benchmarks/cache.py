# pyright: reportUnknownVariableType=false
"""Incremental re-execution: what a fully cached run costs, and what a new seed re-runs.

(a) Key overhead: a chain of N = 10, 100, 300 trivial blocks run with an `mb.Cache` that
already holds every result, so each block only computes its key (a digest of its identity
and its inputs' producer keys) and is served. Reported: µs per call and per block, next to
the same chain without a cache (compiled straight-line path) in the same run. A key costs
O(inputs), so the per-block cost must stay flat in N (target: 300 cached blocks < 1 ms).

(b) Stable Diffusion with tiny random-weight components (``modblocks.diffusion``), 20
steps: the first call, a second call with only a new seed (only latents, the loop and the
decoder re-run; the prompt encoding is served), and a second call with only a new prompt,
next to diffusers' classic ``StableDiffusionPipeline``, which re-runs everything.

Run it from the repository root::

    python benchmarks/cache.py            # full run
    python benchmarks/cache.py --quick    # smoke run, numbers are noisy
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

import modblocks as mb

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # run as `python benchmarks/cache.py`, or imported as `benchmarks.cache`
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

CHAINS = (10, 100, 300)


def trivial_chain(n: int) -> mb.Sequential:
    """A chain of *n* blocks, block k reading ``x{k}`` and producing ``x{k+1}``."""
    blocks: list[mb.Node] = []
    for k in range(n):
        namespace: dict[str, Any] = {}
        exec(f"def f{k}(x{k}):\n    return x{k} + 1", namespace)
        blocks.append(mb.block(namespace[f"f{k}"], output=f"x{k + 1}"))
    return mb.Sequential(blocks)


def key_table(settings: _harness.Settings) -> str:
    """Per-call and per-block cost of a fully cached chain vs the uncached compiled chain."""
    rows: list[tuple[str, ...]] = []
    for n in CHAINS:
        chain = trivial_chain(n)
        cache = mb.Cache(max_entries=None)
        chain.run(x0=1, cache=cache)  # fill the cache: every later call is all hits
        assert chain.run(x0=1, cache=cache)[f"x{n}"] == n + 1
        hits_before = cache.stats().hits

        def cached_run(chain: mb.Sequential = chain, cache: mb.Cache = cache) -> object:
            return chain.run(x0=1, cache=cache)

        def uncached_run(chain: mb.Sequential = chain) -> object:
            return chain.run(x0=1)

        contenders: dict[str, Callable[[], object]] = {
            "cached": cached_run,
            "uncached": uncached_run,
        }
        timings = _harness.measure_interleaved(contenders, settings)
        assert cache.stats().misses == n + 1  # only the first call missed (n blocks, 1 chain)
        assert cache.stats().hits > hits_before
        cached, plain = timings["cached"].us, timings["uncached"].us
        rows.append(
            (
                f"N={n}",
                _harness.fmt(cached),
                _harness.fmt(cached / n, 3),
                _harness.fmt(plain),
                _harness.fmt(plain / n, 3),
            )
        )
    headers = (
        "chain",
        "all cached µs/call",
        "µs/block",
        "no cache µs/call",
        "µs/block",
    )
    return _harness.markdown_table(headers, rows)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


SCENARIOS = (  # label, the call that fills the cache (or None), the timed call
    ("first call", None, ("a cat", 0)),
    ("new seed only", ("a cat", 0), ("a cat", 1)),
    ("new prompt only", ("a cat", 0), ("a dog", 0)),
    ("same call again", ("a cat", 0), ("a cat", 0)),
)


def sd_table(settings: _harness.Settings) -> str:
    """First call, new seed, new prompt: modblocks with a cache vs diffusers' classic pipeline.

    Each round runs every scenario for both, interleaved: the cache is emptied, filled by
    the scenario's first call, and the second call is timed. Torch uses one thread, so the
    shared machine's load disturbs the figures less. Reported: the median of the rounds.
    """
    diffusion, why = _harness.optional_import("modblocks.diffusion", ("text2img",))
    testing, why2 = _harness.optional_import("modblocks.diffusion.testing", ("tiny_sd_components",))
    if diffusion is None or testing is None:
        return f"(skipped: {why or why2})"
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    components = testing.tiny_sd_components(seed=0)
    steps = 5 if settings.rounds <= 2 else 20
    rounds = 1 if settings.rounds <= 2 else 7
    # Without a safety checker (diffusers' annotations don't admit the `None`s it accepts).
    no_safety_checker: dict[str, Any] = {
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
    classic = StableDiffusionPipeline(**components, **no_safety_checker)
    classic.set_progress_bar_config(disable=True)
    cache = mb.Cache()
    pipe = mb.Pipeline(diffusion.text2img, components=components, cache=cache)
    args: dict[str, Any] = {
        "num_inference_steps": steps,
        "output_type": "np",
        "height": 32,
        "width": 32,
    }

    def ours(prompt: str, seed: int, events: mb.Report | None = None) -> object:
        generator = torch.Generator().manual_seed(seed)
        return pipe(prompt=prompt, generator=generator, events=events, **args)

    def theirs(prompt: str, seed: int) -> object:
        return classic(prompt=prompt, generator=torch.Generator().manual_seed(seed), **args)

    times: dict[str, tuple[list[float], list[float]]] = {s[0]: ([], []) for s in SCENARIOS}
    reran: dict[str, str] = {}
    try:
        with mb.progress(disable=True):
            ours("a cat", 0)  # warm up both
            theirs("a cat", 0)
            for _ in range(rounds):
                for label, fill, call in SCENARIOS:
                    cache.clear()
                    if fill is not None:
                        ours(*fill)

                    def ours_again(c: tuple[str, int] = call) -> object:
                        return ours(*c)

                    def theirs_again(c: tuple[str, int] = call) -> object:
                        return theirs(*c)

                    times[label][0].append(_seconds(ours_again))
                    times[label][1].append(_seconds(theirs_again))
            for label, fill, call in SCENARIOS:
                cache.clear()
                if fill is not None:
                    ours(*fill)
                report = mb.Report()
                ours(*call, events=report)
                ran = {path.split(" > ")[1].split("[")[0] for path in report.ran}
                reran[label] = ", ".join(sorted(ran)) or "nothing"
    finally:
        torch.set_num_threads(threads)
    rows: list[tuple[str, ...]] = []
    for label, (mine, reference) in times.items():
        ms, ref = statistics.median(mine) * 1e3, statistics.median(reference) * 1e3
        rows.append((label, _harness.fmt(ms), _harness.fmt(ref), f"{ref / ms:.1f}x", reran[label]))
    headers = (
        "call",
        "modblocks + Cache ms",
        "diffusers classic ms",
        "speed-up",
        "modblocks re-ran",
    )
    note = f"{steps} steps, 32x32, median of {rounds} interleaved rounds, torch on 1 thread\n\n"
    return note + _harness.markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    settings = _harness.parse_settings(argv, (__doc__ or "").partition("\n")[0])
    _harness.emit(_harness.environment(["modblocks", "diffusers", "torch"]))
    _harness.emit(f"{settings.describe()}\n")
    _harness.emit("## (a) Fully cached chain of N trivial blocks\n")
    _harness.emit(key_table(settings))
    _harness.emit("\n## (b) Tiny Stable Diffusion: what a second call re-runs\n")
    _harness.emit(sd_table(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
