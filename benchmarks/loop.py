# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false
"""Overhead of a denoising-like loop: three tiny sub-blocks per step, T = 50 and 1000 steps.

Each step runs the shape of a real denoising step on a (1, 4, 8, 8) tensor, with the
heavy parts replaced by one elementwise op each:

* ``scale_input``: ``latent_in = latents * 1.0``
* ``fake_unet``: ``noise_pred = latent_in * 0.5`` (it also takes the timestep ``t``, as a
  UNet does, and ignores it)
* ``scheduler_step``: ``latents = latents - 0.01 * noise_pred``

The timesteps are a float tensor (``torch.linspace(999, 0, T)``), like a scheduler's,
and every contender iterates the same one. Contenders:

* **hand-written**: ``for i, t in enumerate(timesteps)`` calling the three functions.
* **modblocks**: ``mb.loop(scale_input >> fake_unet >> scheduler_step, over="timesteps",
  index="i", item="t", progress=False)`` (or ``progress=True``), called as
  ``denoise.run(latents=x, timesteps=ts)["latents"]``.
* **diffusers**: a ``LoopSequentialPipelineBlocks`` subclass with the three sub-blocks,
  whose ``__call__`` follows the SDXL modular denoise loop (``get_block_state``, then
  ``with self.progress_bar(total=...)`` around ``self.loop_step(components, block_state,
  i=i, t=t)`` for each timestep, then ``set_block_state``). It is wrapped in a
  ``SequentialPipelineBlocks`` (as diffusers' pipelines wrap their denoise step), turned
  into a pipeline with ``init_pipeline()`` and called as ``pipe(latents=x, timesteps=ts,
  output="latents")``.

Both frameworks are measured with the progress bar disabled and enabled. Enabled bars
are real tqdm bars writing to a throwaway ``io.StringIO``: modblocks through
``mb.progress(file=...)``, diffusers through ``pipe.set_progress_bar_config(file=...)``.
``ModularPipeline.set_progress_bar_config`` only forwards to the *direct* sub-blocks of
the pipeline's top-level block, which is why the loop is wrapped in a
``SequentialPipelineBlocks``: a loop used as the top-level block, or nested one level
deeper, is not reached (compare diffusers issue #12386). The script checks that the
setting arrived.

The table reports milliseconds per run, the overhead per step (run time minus the
hand-written run time, divided by T) and how many times modblocks' per-step overhead
diffusers' is. All contenders run interleaved in one process (see ``_harness.py``). Times
per run are the median over rounds (``--statistic min`` for the minimum); overheads
are the median over rounds of the difference to the hand-written loop measured in the
same round. The torch ops cost far more than the frameworks here, so the overheads are
small differences of large numbers: on a busy machine, expect them to move by a few µs
between runs. Run it from the repository root::

    python benchmarks/loop.py            # full run, about a minute
    python benchmarks/loop.py --quick    # smoke run, numbers are noisy
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from diffusers.modular_pipelines.modular_pipeline import (
    BlockState,
    LoopSequentialPipelineBlocks,
    ModularPipeline,
    ModularPipelineBlocks,
    PipelineState,
    SequentialPipelineBlocks,
)
from diffusers.modular_pipelines.modular_pipeline_utils import InputParam, OutputParam
from diffusers.utils import logging as diffusers_logging

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # run as `python benchmarks/loop.py`, or imported as `benchmarks.loop`
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    class LoopState(BlockState):
        """The loop's `BlockState`, with the values its sub-blocks read and write.

        diffusers sets them as attributes at run time; at run time this name is `BlockState`.
        """

        latents: torch.Tensor
        latent_in: torch.Tensor
        noise_pred: torch.Tensor
else:
    LoopState = BlockState

STEP_COUNTS: tuple[int, ...] = (50, 1000)
SHAPE: tuple[int, ...] = (1, 4, 8, 8)
CONTENDERS: tuple[str, ...] = (
    "hand-written",
    "modblocks",
    "diffusers",
    "modblocks + bar",
    "diffusers + bar",
)

Thunk = Callable[[], torch.Tensor]


# --------------------------------------------------------------------------- the step


def scale_input(latents: torch.Tensor) -> torch.Tensor:
    """Scale the latents for the model (here: times one).

    Args:
        latents: The current latents.

    Returns:
        ``latent_in``, the model input.
    """
    return latents * 1.0


def fake_unet(latent_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 - a UNet takes t
    """Stand in for the denoiser.

    Args:
        latent_in: The model input.
        t: The current timestep (ignored).

    Returns:
        ``noise_pred``, the predicted noise.
    """
    return latent_in * 0.5


def scheduler_step(latents: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
    """Take one scheduler step.

    Args:
        latents: The current latents.
        noise_pred: The predicted noise.

    Returns:
        The updated latents.
    """
    return latents - 0.01 * noise_pred


def hand_loop(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Run the denoising loop by hand: the baseline.

    Args:
        latents: The initial latents.
        timesteps: The timesteps to loop over.

    Returns:
        The final latents.
    """
    for _i, t in enumerate(timesteps):
        latent_in = scale_input(latents)
        noise_pred = fake_unet(latent_in, t)
        latents = scheduler_step(latents, noise_pred)
    return latents


def make_inputs(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the initial latents and ``steps`` timesteps."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(SHAPE, generator=generator), torch.linspace(999, 0, steps)


# --------------------------------------------------------------------------- modblocks


def modblocks_loop(mb: Any, *, progress: bool) -> Any:
    """Build the modblocks denoising loop.

    Args:
        mb: The ``modblocks`` module.
        progress: Whether the loop shows a progress bar.

    Returns:
        ``mb.loop(scale_input >> fake_unet >> scheduler_step, over="timesteps", ...)``.
    """
    body = (
        mb.block(scale_input, output="latent_in")
        >> mb.block(fake_unet, output="noise_pred")
        >> mb.block(scheduler_step, output="latents")
    )
    return mb.loop(body, over="timesteps", index="i", item="t", progress=progress)


def build_modblocks(mb: Any, steps: int, sink: io.StringIO | None) -> Thunk:
    """Return a thunk running the modblocks loop over ``steps`` timesteps.

    Args:
        mb: The ``modblocks`` module.
        steps: Number of timesteps.
        sink: ``None`` for a loop without a bar (``progress=False``); else the file that
            ``mb.progress(file=...)`` sent the bars to, checked to really receive one.

    Returns:
        A thunk calling ``denoise.run(latents=x, timesteps=ts)["latents"]``.
    """
    denoise = modblocks_loop(mb, progress=sink is not None)
    latents, timesteps = make_inputs(steps)
    run = denoise.run

    def call() -> torch.Tensor:
        return run(latents=latents, timesteps=timesteps)["latents"]

    _check_bar(call, sink or io.StringIO(), progress=sink is not None)
    return call


def _check_bar(call: Thunk, sink: io.StringIO, *, progress: bool) -> None:
    """Run ``call`` once and check that a bar was drawn into ``sink`` exactly when expected.

    Raises:
        RuntimeError: If a bar was drawn though disabled, or not drawn though enabled.
    """
    before = sink.tell()
    call()
    if (sink.tell() > before) != progress:
        msg = f"progress bar {'not ' if progress else ''}drawn with progress={progress}"
        raise RuntimeError(msg)


# --------------------------------------------------------------------------- diffusers


def quiet_diffusers() -> None:
    """Silence diffusers' logging (errors only) and its download progress bars."""
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


class ScaleInput(ModularPipelineBlocks):
    """Loop sub-block: ``latent_in = scale_input(latents)``."""

    @property
    def inputs(self) -> list[InputParam]:
        """The value this step reads."""
        return [InputParam("latents", required=True)]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        """The value this step writes."""
        return [OutputParam("latent_in")]

    def __call__(
        self,
        components: ModularPipeline,
        block_state: LoopState,
        i: int,  # noqa: ARG002 - diffusers' loop-step signature
        t: torch.Tensor,  # noqa: ARG002 - diffusers' loop-step signature
    ) -> tuple[ModularPipeline, LoopState]:
        """Run the step on the loop's shared block state."""
        block_state.latent_in = scale_input(block_state.latents)
        return components, block_state


class FakeUnet(ModularPipelineBlocks):
    """Loop sub-block: ``noise_pred = fake_unet(latent_in, t)``."""

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        """The value this step writes."""
        return [OutputParam("noise_pred")]

    def __call__(
        self,
        components: ModularPipeline,
        block_state: LoopState,
        i: int,  # noqa: ARG002 - diffusers' loop-step signature
        t: torch.Tensor,
    ) -> tuple[ModularPipeline, LoopState]:
        """Run the step on the loop's shared block state."""
        block_state.noise_pred = fake_unet(block_state.latent_in, t)
        return components, block_state


class SchedulerStep(ModularPipelineBlocks):
    """Loop sub-block: ``latents = scheduler_step(latents, noise_pred)``."""

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        """The value this step writes."""
        return [OutputParam("latents")]

    def __call__(
        self,
        components: ModularPipeline,
        block_state: LoopState,
        i: int,  # noqa: ARG002 - diffusers' loop-step signature
        t: torch.Tensor,  # noqa: ARG002 - diffusers' loop-step signature
    ) -> tuple[ModularPipeline, LoopState]:
        """Run the step on the loop's shared block state."""
        block_state.latents = scheduler_step(block_state.latents, block_state.noise_pred)
        return components, block_state


class DenoiseLoop(LoopSequentialPipelineBlocks):
    """The loop, written like diffusers' ``StableDiffusionXLDenoiseLoopWrapper``."""

    # Not `ClassVar`s: diffusers' base class declares them as plain (instance) attributes.
    block_classes: list[type[ModularPipelineBlocks]] = [  # noqa: RUF012
        ScaleInput,
        FakeUnet,
        SchedulerStep,
    ]
    block_names: list[str] = ["scale_input", "fake_unet", "scheduler_step"]  # noqa: RUF012

    @property
    def description(self) -> str:
        """One line for diffusers' docs and repr."""
        return "Denoise the latents over the timesteps."

    @property
    def loop_inputs(self) -> list[InputParam]:
        """The value the loop iterates over."""
        return [InputParam("timesteps", required=True)]

    def __call__(
        self, components: ModularPipeline, state: PipelineState
    ) -> tuple[ModularPipeline, PipelineState]:
        """Run the three sub-blocks once per timestep, updating a progress bar."""
        # diffusers' annotations of these methods don't fit how its own loops use them
        # (`get_block_state` says it returns a dict): the block state is untyped here.
        block_state: Any = self.get_block_state(state)
        # `progress_bar` is wrapped in `torch.compiler.disable`, whose type pyright misreads.
        with self.progress_bar(total=len(block_state.timesteps)) as progress_bar:  # pyright: ignore[reportCallIssue]
            for i, t in enumerate(block_state.timesteps):
                components, block_state = self.loop_step(components, block_state, i=i, t=t)
                progress_bar.update()
        self.set_block_state(state, block_state)
        return components, state


def build_diffusers(steps: int, *, progress: bool) -> Thunk:
    """Return a thunk running the diffusers loop over ``steps`` timesteps.

    Args:
        steps: Number of timesteps.
        progress: Whether the tqdm bar is enabled (writing to an ``io.StringIO``).

    Returns:
        A thunk calling ``pipe(latents=x, timesteps=ts, output="latents")``.

    Raises:
        RuntimeError: If ``set_progress_bar_config`` did not reach the loop block, or the
            bar is not drawn (or drawn) as configured.
    """
    quiet_diffusers()
    blocks = SequentialPipelineBlocks.from_blocks_dict({"denoise": DenoiseLoop()})
    pipe: Any = blocks.init_pipeline()  # diffusers' pipeline calls are not typed
    sink = io.StringIO()
    config: dict[str, Any] = {"file": sink} if progress else {"disable": True}
    pipe.set_progress_bar_config(**config)
    # `pipe.blocks` is a deep copy; look at the blocks the pipeline really runs.
    if getattr(pipe._blocks.sub_blocks["denoise"], "_progress_bar_config", None) != config:
        msg = "pipe.set_progress_bar_config did not reach the loop block"
        raise RuntimeError(msg)
    latents, timesteps = make_inputs(steps)

    def call() -> torch.Tensor:
        return pipe(latents=latents, timesteps=timesteps, output="latents")

    _check_bar(call, sink, progress=progress)
    return call


# --------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _no_progress(**_options: object) -> Generator[None]:
    """Stand in for ``mb.progress`` when modblocks lacks it."""
    yield


def measure(
    mb: Any, steps: int, settings: _harness.Settings, notes: dict[str, str]
) -> dict[str, _harness.Timing]:
    """Time every contender for one step count.

    modblocks' bars go to a throwaway file through its global ``mb.progress(file=...)``,
    used as a context manager so that the setting is restored afterwards.

    Args:
        mb: The ``modblocks`` module, or ``None`` when it is not usable.
        steps: Number of timesteps.
        settings: Measurement settings.
        notes: Collects reasons why a contender is ``n/a``.

    Returns:
        Contender name to its timing (contenders that failed are absent).
    """
    latents, timesteps = make_inputs(steps)
    expected = hand_loop(latents, timesteps)

    def hand() -> torch.Tensor:
        return hand_loop(latents, timesteps)

    sink = io.StringIO()
    # Thunks as the frameworks make them: what they return is checked below.
    builders: dict[str, Callable[[], Callable[[], object]]] = {}
    if mb is not None:
        builders["modblocks"] = functools.partial(build_modblocks, mb, steps, None)
        if hasattr(mb, "progress"):
            builders["modblocks + bar"] = functools.partial(build_modblocks, mb, steps, sink)
        else:
            notes["modblocks + bar"] = "`modblocks` has no `progress`"
    builders["diffusers"] = functools.partial(build_diffusers, steps, progress=False)
    builders["diffusers + bar"] = functools.partial(build_diffusers, steps, progress=True)

    configure = mb.progress if mb is not None and hasattr(mb, "progress") else _no_progress
    with configure(file=sink):
        thunks: dict[str, Callable[[], object]] = {"hand-written": hand}
        for name, build in builders.items():
            try:
                thunk = build()
                result = thunk()
            except Exception as exc:  # noqa: BLE001 - report and carry on with the others
                notes.setdefault(name, f"{type(exc).__name__}: {exc}")
                continue
            if not (isinstance(result, torch.Tensor) and torch.equal(result, expected)):
                notes.setdefault(name, "result differs from the hand-written loop's")
                continue
            thunks[name] = thunk
        return _harness.measure_interleaved(thunks, settings)


def loop_table(mb: Any, settings: _harness.Settings, notes: dict[str, str]) -> str:
    """Measure all step counts and render the table.

    Args:
        mb: The ``modblocks`` module, or ``None`` when it is not usable.
        settings: Measurement settings.
        notes: Collects reasons why a contender is ``n/a``.

    Returns:
        The markdown table.
    """
    rows: list[list[str]] = []
    for steps in STEP_COUNTS:
        timings = measure(mb, steps, settings, notes)
        per_step: dict[str, float] = {}
        for name in timings:
            overhead = _harness.paired_us(timings, {name: 1, "hand-written": -1})
            if overhead is not None:
                per_step[name] = overhead / steps
        for name in CONTENDERS:
            reference = per_step.get(name.replace("diffusers", "modblocks"))
            ratio = None
            if name in per_step and name != "hand-written" and reference and reference > 0:
                ratio = per_step[name] / reference
            timing = timings.get(name)
            rows.append(
                [
                    f"T={steps} {name}",
                    _harness.fmt(None if timing is None else timing.us / 1_000, 3),
                    "baseline" if name == "hand-written" else _harness.fmt(per_step.get(name)),
                    _harness.fmt(ratio),
                ]
            )
    return _harness.markdown_table(
        ["loop", "ms/run", "overhead µs/step", "ratio to modblocks (per step)"], rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    settings = _harness.parse_settings(
        argv, (__doc__ or "").partition("\n")[0], _harness.Settings(rounds=40, batch_ns=5_000_000)
    )
    mb, why = _harness.optional_import("modblocks", ("block", "loop"))
    notes: dict[str, str] = {}
    if mb is None:
        notes["modblocks"] = why

    _harness.emit(_harness.environment(["modblocks", "diffusers", "torch", "tqdm"]))
    _harness.emit(f"{settings.describe()}\n")
    _harness.emit(f"## Denoising-like loop, 3 sub-blocks per step, latents {tuple(SHAPE)}\n")
    with torch.no_grad():  # diffusers runs its blocks under no_grad; so does everyone here
        _harness.emit(loop_table(mb, settings, notes))
    _harness.emit_notes(notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
