"""Stable Diffusion text-to-image: modblocks vs diffusers' classic StableDiffusionPipeline.

Every contender runs the same tiny random-weight components (`tiny_sd_components`: CLIP
text encoder, 2-level UNet, VAE; the models are shared, each contender gets its own copy of
the scheduler) on one prompt, 64x64 pixels, 50 steps, classifier-free guidance 7.5, with a
seeded generator, and returns a NumPy array (``output_type="np"``). Once with DDIM, once
with Euler. Contenders:

* **modblocks text2img**: ``mb.Pipeline(text2img, components=...)``, called as
  ``pipe(prompt=..., ..., output="images")``.
* **modblocks stable_diffusion**: the same with the auto node ``stable_diffusion`` (a
  switch that picks ``text2img`` here).
* **diffusers classic**: ``StableDiffusionPipeline(**components, safety_checker=None,
  feature_extractor=None, requires_safety_checker=False)``, progress bar disabled.

Reported per call, over interleaved rounds (each round calls every contender once, in an
order rotated every round, so that background load hits them alike):

* **wall time**: median, and the spread as the interquartile range over rounds;
* **model time**: the time spent inside the models' forward passes (text encoder, UNet, VAE
  decoder), summed by forward pre/post hooks on those modules (the hooks are there for every
  contender and every call);
* **glue**: wall time minus model time, i.e. everything the pipeline does around the models
  (tokenizing, the scheduler, guidance, latents, post-processing, the framework itself);
* **Δ**: contender minus diffusers, the median of the per-round differences, which cancels
  most of the load the contenders share;
* **peak memory**, three ways. *Peak RSS*: each contender in a fresh process, the rise of
  the peak resident set size during its first call over the RSS just before it (after
  loading the components and building the pipeline); ``/proc/self/clear_refs`` resets the
  peak (Linux only), the median of ``--memory-repeats`` processes. *Peak tensors*: the most
  bytes torch's CPU allocator held during one (warm) call beyond what it held before, from
  ``torch.profiler``'s memory events. *Peak Python heap*: `tracemalloc` during one call
  (it does not see tensor storage).

The images must be identical: the largest absolute difference from diffusers' is printed.

Run it from the repository root::

    python benchmarks/sd.py               # full run: 5 to 10 minutes on 2 cores
    python benchmarks/sd.py --quick       # smoke run (2 rounds, 10 steps), numbers are noisy
    python benchmarks/sd.py --clock cpu   # this process's CPU time only (busy machine)
    python benchmarks/sd.py --rounds 30 --steps 20 --memory-repeats 1
    python benchmarks/sd.py --no-memory   # skip the fresh processes that measure RSS
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import statistics
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging

import modblocks as mb
from modblocks.diffusion import stable_diffusion, text2img
from modblocks.diffusion.testing import tiny_sd_components

if TYPE_CHECKING:
    from benchmarks import _harness, _pipelines
else:
    try:  # run as `python benchmarks/sd.py`, or imported as `benchmarks.sd`
        from benchmarks import _harness, _pipelines
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness
        import _pipelines

DESCRIPTION = "Stable Diffusion text-to-image: modblocks vs diffusers' classic pipeline."
Thunk = Callable[[], np.ndarray]

PROMPT = "a photo of a cat"
SIZE = 64
GUIDANCE = 7.5
SCHEDULERS = ("ddim", "euler")
CONTENDERS = ("modblocks text2img", "modblocks stable_diffusion", "diffusers classic")
REFERENCE = "diffusers classic"
# diffusers' classic pipeline without a safety checker (its annotations don't admit the `None`s).
NO_SAFETY_CHECKER: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}


def inputs(steps: int) -> dict[str, Any]:
    """The call inputs shared by the pipelines (a fresh seeded generator each call)."""
    return {
        "prompt": PROMPT,
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(0),
    }


# --------------------------------------------------------------------------- contenders


def modblocks_pipeline(node: mb.Node) -> Callable[[Mapping[str, Any], int], Thunk]:
    """A builder of ``mb.Pipeline(node)`` called with the shared inputs."""

    def build(comps: Mapping[str, Any], steps: int) -> Thunk:
        pipe = mb.Pipeline(node, components=dict(comps))
        mb.progress(disable=True)  # as a call: from now on, for every loop (no bar either side)

        def call() -> np.ndarray:
            images: np.ndarray = pipe(**inputs(steps), output="images")
            return images

        return call

    return build


def classic_pipeline(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' classic ``StableDiffusionPipeline``, on its own copy of the scheduler."""
    pipe: Any = StableDiffusionPipeline(  # diffusers' pipelines are not typed
        **{**comps, "scheduler": copy.deepcopy(comps["scheduler"])}, **NO_SAFETY_CHECKER
    )
    pipe.set_progress_bar_config(disable=True)

    def call() -> np.ndarray:
        images: np.ndarray = pipe(**inputs(steps)).images
        return images

    return call


BUILDERS: dict[str, Callable[[Mapping[str, Any], int], Thunk]] = {
    "modblocks text2img": modblocks_pipeline(text2img),
    "modblocks stable_diffusion": modblocks_pipeline(stable_diffusion),
    "diffusers classic": classic_pipeline,
}


# --------------------------------------------------------------------------- measuring


class ModelTime:
    """Sums the time spent in the forward passes of some modules (pre/post forward hooks)."""

    def __init__(self, modules: Sequence[torch.nn.Module], clock: Callable[[], int]) -> None:
        self.clock = clock
        self.total_ns = 0
        self._start = 0
        for module in modules:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)

    def _enter(self, _module: torch.nn.Module, _args: Any) -> None:
        self._start = self.clock()

    def _leave(self, _module: torch.nn.Module, _args: Any, _output: Any) -> None:
        self.total_ns += self.clock() - self._start


def model_modules(comps: Mapping[str, Any]) -> list[torch.nn.Module]:
    """The modules whose forward passes are the models' work (none inside another)."""
    vae = comps["vae"]
    modules = [comps["text_encoder"], comps["unet"], vae.decoder]
    if vae.post_quant_conv is not None:  # `vae.decode` runs it, then the decoder
        modules.append(vae.post_quant_conv)
    return modules


@dataclasses.dataclass(frozen=True)
class Samples:
    """Per-call wall and model times of one contender, one pair per round, in ns."""

    wall: tuple[int, ...]
    model: tuple[int, ...]

    @property
    def glue(self) -> tuple[int, ...]:
        """Wall time minus model time, per round."""
        return tuple(w - m for w, m in zip(self.wall, self.model, strict=True))


def measure(
    thunks: Mapping[str, Thunk], model_time: ModelTime, settings: _harness.Settings
) -> dict[str, Samples]:
    """Call every contender once per round, in an order rotated every round."""
    names = list(thunks)
    clock = model_time.clock
    samples: dict[str, list[tuple[int, int]]] = {name: [] for name in names}
    for round_index in range(settings.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            model_time.total_ns = 0
            start = clock()
            thunks[name]()
            elapsed = clock() - start
            samples[name].append((elapsed, model_time.total_ns))
    return {
        name: Samples(tuple(w for w, _ in pairs), tuple(m for _, m in pairs))
        for name, pairs in samples.items()
    }


def median_ms(values: Sequence[float]) -> float:
    """The median of nanosecond values, in milliseconds."""
    return statistics.median(values) / 1e6


def spread_ms(values: Sequence[float]) -> str:
    """The interquartile range of nanosecond values, in milliseconds, as ``low-high``."""
    if len(values) < 2:
        return _harness.NA
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return f"{low / 1e6:,.1f}–{high / 1e6:,.1f}"


def paired_ms(ours: Sequence[int], theirs: Sequence[int]) -> float:
    """The median over rounds of ``ours - theirs``, in milliseconds."""
    return statistics.median(a - b for a, b in zip(ours, theirs, strict=True)) / 1e6


def python_heap_kib(thunk: Thunk) -> float:
    """Peak Python heap allocated during one call of *thunk*, in KiB."""
    tracemalloc.start()
    try:
        thunk()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1024


# --------------------------------------------------------------------------- peak RSS

_STATUS = re.compile(r"^(VmHWM|VmRSS):\s+(\d+) kB$", re.MULTILINE)


def _rss_kib() -> dict[str, int]:
    """The current (`VmRSS`) and peak (`VmHWM`) resident set size of this process, in KiB."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    return {key: int(value) for key, value in _STATUS.findall(status)}


def memory_child(name: str, scheduler: str, steps: int) -> None:
    """In a fresh process: print the rise of the peak RSS during a first call, in KiB."""
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    thunk = BUILDERS[name](tiny_sd_components(scheduler=scheduler), steps)
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")  # resets VmHWM to VmRSS
    before = _rss_kib()["VmRSS"]
    thunk()
    sys.stdout.write(f"{_rss_kib()['VmHWM'] - before}\n")


def peak_rss_kib(name: str, scheduler: str, steps: int, repeats: int) -> float | None:
    """The median of `memory_child` over fresh interpreters; None without Linux's `/proc`."""
    if repeats < 1 or not Path("/proc/self/clear_refs").exists():
        return None
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, scheduler]
    results: list[int] = []
    for _ in range(repeats):
        done = subprocess.run(  # noqa: S603 - this script, with fixed arguments
            [*command, "--steps", str(steps)], capture_output=True, text=True, check=True
        )
        results.append(int(done.stdout.split()[-1]))
    return statistics.median(results)


# --------------------------------------------------------------------------- report


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run, beyond the timing settings."""

    steps: int
    memory_repeats: int
    settings: _harness.Settings


@dataclasses.dataclass(frozen=True)
class Result:
    """Everything measured for one contender with one scheduler."""

    samples: Samples
    rss_kib: float | None
    tensor_kib: float
    heap_kib: float
    max_diff: float


def measure_all(scheduler: str, options: Options) -> dict[str, Result]:
    """Measure every contender with *scheduler*."""
    settings, steps = options.settings, options.steps
    comps = tiny_sd_components(scheduler=scheduler)
    model_time = ModelTime(model_modules(comps), _harness.CLOCKS[settings.clock])
    thunks = {name: BUILDERS[name](comps, steps) for name in CONTENDERS}
    images = {name: thunk() for name, thunk in thunks.items()}  # also the warm-up call
    samples = measure(thunks, model_time, settings)
    return {
        name: Result(
            samples=samples[name],
            rss_kib=peak_rss_kib(name, scheduler, steps, options.memory_repeats),
            tensor_kib=_pipelines.tensor_peak_kib(thunk),
            heap_kib=python_heap_kib(thunk),
            max_diff=float(np.abs(images[name] - images[REFERENCE]).max()),
        )
        for name, thunk in thunks.items()
    }


def report(results: Mapping[str, Result]) -> str:
    """The table of one scheduler's results."""
    ref = results[REFERENCE].samples
    rows: list[list[str]] = []
    for name, result in results.items():
        got = result.samples
        other = name != REFERENCE
        rows.append(
            [
                name,
                _harness.fmt(median_ms(got.wall), 1),
                spread_ms(got.wall),
                _harness.fmt(median_ms(got.model), 1),
                _harness.fmt(median_ms(got.glue), 1),
                spread_ms(got.glue),
                _harness.fmt(paired_ms(got.wall, ref.wall) if other else None, 1),
                _harness.fmt(paired_ms(got.glue, ref.glue) if other else None, 1),
                _harness.fmt(result.rss_kib, 0),
                _harness.fmt(result.tensor_kib, 0),
                _harness.fmt(result.heap_kib, 0),
                f"{result.max_diff:g}",
            ]
        )
    headers = [
        "contender",
        "wall ms",
        "wall IQR",
        "model ms",
        "glue ms",
        "glue IQR",
        "Δ wall ms",
        "Δ glue ms",
        "peak RSS KiB",
        "peak tensors KiB",
        "peak Python heap KiB",
        "max abs diff",
    ]
    return _harness.markdown_table(headers, rows)


def _faster(field: str) -> Callable[[Result, Result], bool]:
    """A check that the median per-round difference of a time (``wall``, ``glue``) is ≤ 0."""

    def check(ours: Result, theirs: Result) -> bool:
        ours_ns, theirs_ns = getattr(ours.samples, field), getattr(theirs.samples, field)
        return paired_ms(ours_ns, theirs_ns) <= 0

    return check


def _smaller_rss(ours: Result, theirs: Result) -> bool:
    if ours.rss_kib is None or theirs.rss_kib is None:
        return True
    return ours.rss_kib <= theirs.rss_kib


def targets(name: str, results: Sequence[Mapping[str, Result]]) -> list[str]:
    """Whether contender *name* met the targets against diffusers, with every scheduler."""
    checks: dict[str, Callable[[Result, Result], bool]] = {
        "wall time ≤ diffusers'": _faster("wall"),
        "glue ≤ diffusers'": _faster("glue"),
        "peak tensors ≤ diffusers'": lambda ours, theirs: ours.tensor_kib <= theirs.tensor_kib,
        "peak Python heap ≤ diffusers'": lambda ours, theirs: ours.heap_kib <= theirs.heap_kib,
        "identical images": lambda ours, _: ours.max_diff == 0,
    }
    if all(r[name].rss_kib is not None for r in results):
        checks["peak RSS ≤ diffusers'"] = _smaller_rss
    return [
        f"- {label}: {'yes' if all(check(r[name], r[REFERENCE]) for r in results) else 'no'}"
        for label, check in checks.items()
    ]


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Options]:
    """Parse this script's own options, then the shared timing options."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--memory-repeats", type=int)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("CONTENDER", "SCHEDULER"))
    own, rest = parser.parse_known_args(argv)
    default = _harness.Settings(rounds=15, warmup_ns=0)
    settings = _harness.parse_settings(rest, DESCRIPTION, default)
    quick = "--quick" in rest
    steps = (10 if quick else 50) if own.steps is None else own.steps
    repeats = (1 if quick else 3) if own.memory_repeats is None else own.memory_repeats
    return own, Options(steps, 0 if own.no_memory else repeats, settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    own, options = parse(list(sys.argv[1:] if argv is None else argv))
    if own.memory_child:
        contender, scheduler = own.memory_child
        memory_child(contender, scheduler, options.steps)
        return 0
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and least noisy
    settings = options.settings
    _harness.emit(_harness.environment(["modblocks", "diffusers", "transformers", "torch"]))
    _harness.emit("torch threads: 1")
    _harness.emit(
        f"\ntime per call: median and interquartile range of {settings.rounds} interleaved "
        f"rounds of one call each ({settings.clock} clock); model: forward passes of the text "
        "encoder, UNet and VAE decoder (hooks); glue = wall − model; Δ: median over rounds of "
        "(contender − diffusers classic). Peak RSS: rise during the first call in a fresh "
        f"process (median of {options.memory_repeats}); peak tensors: "
        "torch.profiler's allocated bytes during a warm call; peak Python heap: tracemalloc. "
        "Max abs diff: largest difference from diffusers' image."
    )
    results: list[dict[str, Result]] = []
    for scheduler in SCHEDULERS:
        _harness.emit(
            f"\n## SD text2img, tiny components, {SIZE}x{SIZE}, {options.steps} steps, "
            f"{scheduler}\n"
        )
        results.append(measure_all(scheduler, options))
        _harness.emit(report(results[-1]))
    for name in CONTENDERS:
        if name != REFERENCE:
            _harness.emit(f"\n{name} vs diffusers classic, with every scheduler:")
            _harness.emit("\n".join(targets(name, results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
