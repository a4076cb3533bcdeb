# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false
"""Flux and SD3 text-to-image: modblocks vs diffusers' modular and classic pipelines.

Every contender runs the same tiny random-weight components (`tiny_flux_components`:
CLIP + T5, a 1+1-layer Flux transformer, FlowMatch Euler with dynamic shifting;
`tiny_sd3_components`: two CLIPs + T5, a 2-layer SD3 transformer) on one prompt, 32x32
pixels, and returns the latents (``output_type="latent"``: the VAE decode is the same work
everywhere). The transformer is **near-free**: a subclass whose ``forward`` returns zeros,
so that what a call and a step cost is the framework, the encoders and the scheduler.
Contenders:

* **hand-written**: one function doing exactly the work of the pipelines (tokenize and
  encode, sigmas and shift, noise and packing, then per step the transformer call, guidance
  and ``scheduler.step``). The baseline; its latents are checked to equal the others'.
* **modblocks**: ``mb.Pipeline(flux_text2img)`` / ``mb.Pipeline(sd3_text2img)``.
* **diffusers modular**: ``FluxAutoBlocks`` / ``StableDiffusion3AutoBlocks``
  ``.init_pipeline()`` with the components given by ``update_components`` (and for SD3 a
  ``ClassifierFreeGuidance(7.0)`` guider), progress bars off on its blocks. It runs
  offline with local components. SD3 contenders all get ``negative_prompt=""``: without
  one, the modular pipeline encodes no negative prompt at all.
* **diffusers classic**: ``FluxPipeline`` / ``StableDiffusion3Pipeline``.

Each contender runs with 1, 2 and 20 steps, all interleaved in one process (``_harness``),
reported by `_pipelines.overhead_table`: fixed overhead per call over the hand-written
code, cost per step and its overhead, peak Python heap and torch allocator memory.

``--lines`` prints the size of the code instead: the code modblocks' Flux (and SD3) nodes
run next to diffusers' modular ``flux/`` (and ``stable_diffusion_3/``) folder, counted by
one rule for both (`benchmarks/_lines.py`).

Run it from the repository root::

    python benchmarks/flux.py              # full run, a few minutes on a busy machine
    python benchmarks/flux.py --quick      # smoke run, numbers are noisy
    python benchmarks/flux.py --clock cpu  # time this process's CPU only (busy machine)
    python benchmarks/flux.py --lines      # line counts
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers.guiders.classifier_free_guidance import ClassifierFreeGuidance
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.modular_pipelines.flux.modular_blocks_flux import FluxAutoBlocks
from diffusers.modular_pipelines.stable_diffusion_3.modular_blocks_stable_diffusion_3 import (
    StableDiffusion3AutoBlocks,
)
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
    StableDiffusion3Pipeline,
)
from diffusers.utils import logging as diffusers_logging

if TYPE_CHECKING:
    from benchmarks import _harness, _lines, _pipelines
else:
    try:  # run as `python benchmarks/flux.py`, or imported as `benchmarks.flux`
        from benchmarks import _harness, _lines, _pipelines
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness
        import _lines
        import _pipelines

Thunk = _pipelines.Thunk
Builder = Callable[[Mapping[str, Any], int], Thunk]

PROMPT = "a photo of a cat"
SIZE = 32
MAX_SEQUENCE_LENGTH = 32
# Given to SD3 explicitly: diffusers' modular SD3 encodes no negative prompt without one
# (less work, other images), where the classic pipeline encodes the empty one.
NEGATIVE = ""
STEPS: tuple[int, ...] = (1, 2, 20)
CONTENDERS = ("hand-written", "modblocks", "diffusers modular", "diffusers classic")


class FreeFlux(FluxTransformer2DModel):
    """A Flux transformer whose forward returns zeros at once: the model costs nothing."""

    def forward(
        self, hidden_states: torch.Tensor, *_: Any, return_dict: bool = True, **__: Any
    ) -> Any:
        out = torch.zeros_like(hidden_states)
        return {"sample": out} if return_dict else (out,)


class FreeSD3(SD3Transformer2DModel):
    """An SD3 transformer whose forward returns zeros at once: the model costs nothing."""

    def forward(
        self, hidden_states: torch.Tensor, *_: Any, return_dict: bool = True, **__: Any
    ) -> Any:
        out = torch.zeros_like(hidden_states)
        return {"sample": out} if return_dict else (out,)


def free(comps: dict[str, Any], cls: type[Any]) -> dict[str, Any]:
    """*comps* with the transformer replaced by a near-free *cls* of the same config."""
    transformer = cls.from_config(comps["transformer"].config)
    return {**comps, "transformer": transformer.eval()}


def inputs(steps: int, **extra: Any) -> dict[str, Any]:
    """The call inputs shared by the pipelines (a fresh seeded generator each call)."""
    return {
        **extra,
        "prompt": PROMPT,
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": steps,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "output_type": "latent",
        "generator": torch.Generator().manual_seed(0),
    }


def _tokens(tokenizer: Any, max_length: int, text: str = PROMPT) -> torch.Tensor:
    """Tokenize *text*, and check it fits, as every pipeline does (to warn)."""
    ids = tokenizer(
        text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    untruncated = tokenizer(text, padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] >= ids.shape[-1] and not torch.equal(ids, untruncated):
        raise AssertionError("the benchmark's prompt is too long")
    return ids


def unpacked(latents: torch.Tensor) -> torch.Tensor:
    """Flux latents as `(batch, c, h, w)`: diffusers' modular pipeline returns them so."""
    from modblocks.diffusion.packing import unpack

    return unpack(latents, SIZE, SIZE, 2) if latents.ndim == 3 else latents


# --------------------------------------------------------------------------- Flux


def flux_hand_written(comps: Mapping[str, Any], steps: int) -> Thunk:
    """The work of the Flux text2img pipelines written out, with no framework."""
    from modblocks.diffusion.flow_timesteps import calculate_shift
    from modblocks.diffusion.packing import latent_image_ids, pack_latents

    transformer, scheduler = comps["transformer"], copy.deepcopy(comps["scheduler"])
    side = SIZE // 2  # the tiny VAE halves the image
    ids = latent_image_ids(side // 2, side // 2, torch.device("cpu"), torch.float32)
    mu = calculate_shift((side // 2) ** 2, 256, 4096, 0.5, 1.15)
    sigmas = np.linspace(1.0, 1 / steps, steps)

    @torch.no_grad()
    def call() -> torch.Tensor:
        pooled = comps["text_encoder"](_tokens(comps["tokenizer"], 77)).pooler_output
        embeds = comps["text_encoder_2"](_tokens(comps["tokenizer_2"], MAX_SEQUENCE_LENGTH))[0]
        text_ids = torch.zeros(embeds.shape[1], 3)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)
        generator = torch.Generator().manual_seed(0)
        latents = pack_latents(torch.randn((1, 4, side, side), generator=generator))
        guidance = torch.full([1], 3.5).expand(1)
        for t in scheduler.timesteps:
            noise = transformer(
                hidden_states=latents,
                timestep=t.expand(1) / 1000,
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=ids,
                return_dict=False,
            )[0]
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents

    return call


def flux_modblocks(comps: Mapping[str, Any], steps: int) -> Thunk:
    """``mb.Pipeline(flux_text2img)`` called with the shared inputs."""
    import modblocks as mb
    from modblocks.diffusion import flux_text2img

    pipe = mb.Pipeline(flux_text2img, components=dict(comps))

    def call() -> torch.Tensor:
        return pipe(**inputs(steps), output="images")

    return call


def flux_modular(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' ``FluxAutoBlocks`` pipeline."""
    pipe: Any = FluxAutoBlocks().init_pipeline()  # diffusers' calls are not typed
    pipe.update_components(**{**comps, "scheduler": copy.deepcopy(comps["scheduler"])})
    if not _pipelines.disable_bars(pipe._blocks):
        msg = "found no progress bar to disable in the modular pipeline"
        raise RuntimeError(msg)

    def call() -> torch.Tensor:
        return pipe(**inputs(steps), output="images")

    return call


def flux_classic(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' classic ``FluxPipeline``."""
    pipe: Any = FluxPipeline(**{**comps, "scheduler": copy.deepcopy(comps["scheduler"])})
    pipe.set_progress_bar_config(disable=True)

    def call() -> torch.Tensor:
        return pipe(**inputs(steps)).images

    return call


# --------------------------------------------------------------------------- SD3


def sd3_hand_written(comps: Mapping[str, Any], steps: int) -> Thunk:
    """The work of the SD3 text2img pipelines written out, with no framework."""
    transformer, scheduler = comps["transformer"], copy.deepcopy(comps["scheduler"])

    def encode(text_ids: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], []
        clips = (comps["text_encoder"], comps["text_encoder_2"])
        for ids, encoder in zip(text_ids[:2], clips, strict=True):
            output = encoder(ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled.append(output[0])
        t5 = comps["text_encoder_3"](text_ids[2])[0]
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def tokens(text: str) -> list[torch.Tensor]:
        names, lengths = ("tokenizer", "tokenizer_2", "tokenizer_3"), (77, 77, MAX_SEQUENCE_LENGTH)
        return [_tokens(comps[n], length, text) for n, length in zip(names, lengths, strict=True)]

    @torch.no_grad()
    def call() -> torch.Tensor:
        embeds, pooled = encode(tokens(PROMPT))
        negative, negative_pooled = encode(tokens(NEGATIVE))
        embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=generator)
        for t in scheduler.timesteps:
            noise = transformer(
                hidden_states=torch.cat([latents] * 2),
                timestep=t.expand(2),
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
            uncond, cond = noise.chunk(2)
            noise = uncond + 7.0 * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents

    return call


def sd3_modblocks(comps: Mapping[str, Any], steps: int) -> Thunk:
    """``mb.Pipeline(sd3_text2img)`` called with the shared inputs."""
    import modblocks as mb
    from modblocks.diffusion import sd3_text2img

    pipe = mb.Pipeline(sd3_text2img, components=dict(comps))

    def call() -> torch.Tensor:
        return pipe(**inputs(steps, negative_prompt=NEGATIVE), output="images")

    return call


def sd3_modular(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' ``StableDiffusion3AutoBlocks`` pipeline, with a 7.0 guider."""
    pipe: Any = StableDiffusion3AutoBlocks().init_pipeline()  # diffusers' calls are not typed
    scheduler = copy.deepcopy(comps["scheduler"])
    pipe.update_components(
        **{**comps, "scheduler": scheduler}, guider=ClassifierFreeGuidance(guidance_scale=7.0)
    )
    if not _pipelines.disable_bars(pipe._blocks):
        msg = "found no progress bar to disable in the modular pipeline"
        raise RuntimeError(msg)

    def call() -> torch.Tensor:
        return pipe(**inputs(steps, negative_prompt=NEGATIVE), output="images")

    return call


def sd3_classic(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' classic ``StableDiffusion3Pipeline``."""
    pipe: Any = StableDiffusion3Pipeline(
        **{**comps, "scheduler": copy.deepcopy(comps["scheduler"])}
    )
    pipe.set_progress_bar_config(disable=True)

    def call() -> torch.Tensor:
        return pipe(**inputs(steps, negative_prompt=NEGATIVE)).images

    return call


@dataclasses.dataclass(frozen=True)
class Family:
    """One family to measure: its components and the four contenders."""

    title: str
    components: Callable[[], dict[str, Any]]
    builders: Mapping[str, Builder]


def _flux_components() -> dict[str, Any]:
    from modblocks.diffusion.testing import tiny_flux_components

    return free(tiny_flux_components(), FreeFlux)


def _sd3_components() -> dict[str, Any]:
    from modblocks.diffusion.testing import tiny_sd3_components

    return free(tiny_sd3_components(), FreeSD3)


FAMILIES = (
    Family(
        "Flux text2img, near-free transformer",
        _flux_components,
        {
            "hand-written": flux_hand_written,
            "modblocks": flux_modblocks,
            "diffusers modular": flux_modular,
            "diffusers classic": flux_classic,
        },
    ),
    Family(
        "SD3 text2img, near-free transformer",
        _sd3_components,
        {
            "hand-written": sd3_hand_written,
            "modblocks": sd3_modblocks,
            "diffusers modular": sd3_modular,
            "diffusers classic": sd3_classic,
        },
    ),
)


def table(family: Family, settings: _harness.Settings) -> str:
    """Measure every contender of *family* at every step count, interleaved."""
    comps = family.components()
    thunks = {
        (name, steps): family.builders[name](comps, steps) for name in CONTENDERS for steps in STEPS
    }
    return _pipelines.overhead_table(
        thunks,
        CONTENDERS,
        STEPS,
        settings,
        normalize=unpacked,
        tensor_memory=True,
    )


# --------------------------------------------------------------------------- line counts


def lines_table() -> str:
    """Lines of the code modblocks' Flux and SD3 nodes run next to diffusers' modular folders."""
    import diffusers.modular_pipelines.flux as modular_flux
    import diffusers.modular_pipelines.stable_diffusion_3 as modular_sd3

    older = ["modblocks.diffusion.families.sd", "modblocks.diffusion.families.sdxl"]
    rows: list[list[object]] = []

    def add(label: str, counts: dict[bool, int], of: dict[bool, int] | None = None) -> None:
        """Add a row of line counts, or of their ratios to *of*'s."""
        cells = [counts[d] if of is None else f"{counts[d] / of[d]:.0%}" for d in (True, False)]
        rows.append([label, *cells])

    for name, module, package, extra in (
        ("Flux", "flux", modular_flux, ("Kontext",)),
        ("SD3", "sd3", modular_sd3, ()),
    ):
        family = [f"modblocks.diffusion.families.{module}"]
        theirs = sorted(Path(str(package.__file__)).parent.glob("*.py"))
        counts = {
            docstrings: [
                _lines.count_lines(
                    f.read_text(encoding="utf-8"), docstrings=docstrings, extra=extra
                )
                for f in theirs
            ]
            for docstrings in (True, False)
        }
        full = {d: sum(c[0] for c in counts[d]) for d in counts}
        core = {d: full[d] - sum(c[1] for c in counts[d]) for d in counts}
        mine = {d: _lines.reached_lines(family, docstrings=d) for d in (True, False)}
        own = {
            d: _lines.reached_lines(family, docstrings=d, excluding=older) for d in (True, False)
        }
        folder = Path(str(package.__file__)).parent.name
        add(f"modblocks: all the code the {name} nodes run", mine)
        add("  of which not run by SD 1.x or SDXL", own)
        add(f"diffusers `modular_pipelines/{folder}/` ({len(theirs)} files)", full)
        if extra:
            add(f"  without its {', '.join(extra)} classes", core)
        add(f"{name}: modblocks / diffusers", mine, full)
        add(f"{name}: modblocks' own / diffusers", own, full)
        if extra:
            add(f"{name}: modblocks / diffusers without {', '.join(extra)}", mine, core)
    headers = ["code", "lines, docstrings counted", "lines, docstrings not counted"]
    return _harness.markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--lines" in args:
        _harness.emit(lines_table())
        return 0
    settings = _harness.parse_settings(
        args, (__doc__ or "").partition("\n")[0], _harness.Settings(rounds=30, batch_ns=20_000_000)
    )
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and least noisy
    import modblocks as mb

    mb.progress(disable=True)  # as for diffusers' pipelines: time the pipeline, not tqdm
    _harness.emit(_harness.environment(["modblocks", "diffusers", "transformers", "torch"]))
    _harness.emit("torch threads: 1")
    for family in FAMILIES:
        _harness.emit(f"\n## {family.title}\n")
        _harness.emit(f"{settings.describe()}\n")
        _harness.emit(table(family, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
