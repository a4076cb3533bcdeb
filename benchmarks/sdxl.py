# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false
"""SDXL text-to-image: modblocks vs diffusers' modular and classic SDXL pipelines.

All three run the same tiny random-weight SDXL components (`tiny_sdxl_components`: two
CLIP text encoders, a 2-level UNet, Euler) on one prompt, 32x32 pixels (16x16 latents),
classifier-free guidance, and return the latents (``output_type="latent"``: the VAE
decode is the same work everywhere and would hide the rest). Contenders:

* **hand-written**: one function doing exactly the work of the pipelines with the same
  components (tokenize and encode with both encoders, zero negative embeddings, time ids,
  ``scheduler.set_timesteps``, noise, then per step ``cat``, ``scale_model_input``, the
  UNet, guidance, ``scheduler.step``). The baseline: what the models and the scheduler
  cost without a framework. Its latents are checked to equal the others'.
* **modblocks**: ``mb.Pipeline(sdxl_text2img, components=...)``, called as
  ``pipe(prompt=..., ..., output="images")``.
* **diffusers modular**: ``StableDiffusionXLAutoBlocks().init_pipeline()`` with the
  components given by ``update_components`` and a ``ClassifierFreeGuidance(5.0)`` guider,
  called as ``pipe(prompt=..., ..., output="images")``. Its progress bar is disabled on the
  denoise loop block itself (``set_progress_bar_config`` on the pipeline does not reach it).
* **diffusers classic**: ``StableDiffusionXLPipeline(**components, add_watermarker=False)``.

Two sets of components: the **tiny** models as they are, and a **near-free UNet**: the same
components with a UNet subclass whose ``forward`` returns ``zeros_like(sample)``, so that
what a step costs is the framework and the scheduler, not the model.

Each contender runs with 1, 2 and 20 steps, all interleaved in one process (see
``_harness.py``). The table reports milliseconds per call at 1 step; the **fixed overhead**
per call: the 1-step time minus the hand-written 1-step time (median of the per-round
differences); the **per-step cost**: (20-step time - 2-step time) / 18, and its overhead
over the hand-written per-step cost. The **peak memory** column is the peak of Python
heap allocations during one 20-step call (``tracemalloc``; tensor storage is allocated by
torch outside the Python heap and is the same for all), after warm-up.

The **ControlNet** tables run the same three pipelines and baseline with a tiny ControlNet
(`tiny_controlnet`) and a 32x32 control image: modblocks' ``stable_diffusion_xl_controlnet``,
the modular ``StableDiffusionXLAutoBlocks`` given ``control_image``, and the classic
``StableDiffusionXLControlNetPipeline``; the hand-written baseline adds the control image's
preprocessing and one ControlNet call per step. The near-free set also makes the ControlNet
return zero residuals at once.

``--lines`` prints the size of the code instead: lines of the code modblocks' SDXL nodes run
next to diffusers' modular SDXL folder, and of each addition (ControlNet, IP-Adapter) next to
the modular classes for it, counted by one rule for both (`benchmarks/_lines.py`).

Run it from the repository root::

    python benchmarks/sdxl.py              # full run, a few minutes on a busy machine
    python benchmarks/sdxl.py --quick      # smoke run, numbers are noisy
    python benchmarks/sdxl.py --clock cpu  # time this process's CPU only (busy machine)
    python benchmarks/sdxl.py --lines      # line counts
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch
from diffusers.guiders.classifier_free_guidance import ClassifierFreeGuidance
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from diffusers.modular_pipelines.stable_diffusion_xl.modular_blocks_stable_diffusion_xl import (
    StableDiffusionXLAutoBlocks,
)
from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl import (
    StableDiffusionXLControlNetPipeline,
)
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging

if TYPE_CHECKING:
    from benchmarks import _harness, _lines, _pipelines
else:
    try:  # run as `python benchmarks/sdxl.py`, or imported as `benchmarks.sdxl`
        from benchmarks import _harness, _lines, _pipelines
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness
        import _lines
        import _pipelines

Thunk = _pipelines.Thunk

PROMPT = "a photo of a cat"
SIZE = 32
GUIDANCE = 5.0
STEPS: tuple[int, ...] = (1, 2, 20)
CONTENDERS = ("hand-written", "modblocks", "diffusers modular", "diffusers classic")


class FreeUNet(UNet2DConditionModel):
    """A UNet whose forward returns zeros at once: the model costs (almost) nothing."""

    def forward(self, sample: torch.Tensor, *_: Any, return_dict: bool = True, **__: Any) -> Any:
        out = torch.zeros_like(sample)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


class FreeControlNet(ControlNetModel):
    """A ControlNet whose forward returns zero residuals at once (shapes from one real call)."""

    def forward(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        zeros = self.__dict__.setdefault("_zeros", {})
        if sample.shape not in zeros:
            down, mid = super().forward(sample, *args, **{**kwargs, "return_dict": False})
            zeros[sample.shape] = ([torch.zeros_like(d) for d in down], torch.zeros_like(mid))
        return zeros[sample.shape]


CONTROL_IMAGE = PIL.Image.fromarray(
    np.random.default_rng(0).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
)


def components(*, free_unet: bool, controlnet: bool = False) -> dict[str, Any]:
    """Tiny SDXL components; with *free_unet*, the UNet is a `FreeUNet` of the same config.

    With *controlnet*, a tiny ControlNet too (a `FreeControlNet` with *free_unet*).
    """
    from modblocks.diffusion.testing import tiny_sdxl_components
    from modblocks.diffusion.testing_adapters import tiny_controlnet

    comps = tiny_sdxl_components()
    if controlnet:
        net = tiny_controlnet(comps)
        if free_unet:
            free = FreeControlNet.from_config(net.config)
            assert isinstance(free, FreeControlNet)
            net = free.eval()
        comps["controlnet"] = net
    if free_unet:
        unet = FreeUNet.from_config(comps["unet"].config)
        assert isinstance(unet, FreeUNet)  # not the `(model, unused_kwargs)` pair
        comps["unet"] = unet.eval()
    return comps


def inputs(steps: int, comps: Mapping[str, Any]) -> dict[str, Any]:
    """The call inputs shared by the pipelines (a fresh seeded generator each call)."""
    control = {"control_image": CONTROL_IMAGE} if "controlnet" in comps else {}
    return {
        "prompt": PROMPT,
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": steps,
        "output_type": "latent",
        "generator": torch.Generator().manual_seed(0),
        **control,
    }


# --------------------------------------------------------------------------- contenders


def hand_written(comps: Mapping[str, Any], steps: int) -> Thunk:
    """The work of the SDXL text2img pipelines written out, with no framework."""
    tokenizers = (comps["tokenizer"], comps["tokenizer_2"])
    encoders = (comps["text_encoder"], comps["text_encoder_2"])
    unet = comps["unet"]
    scheduler = copy.deepcopy(comps["scheduler"])
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
    shape = (1, 4, SIZE // 2, SIZE // 2)
    controlnet = comps.get("controlnet")
    processor = VaeImageProcessor(vae_scale_factor=2, do_convert_rgb=True, do_normalize=False)

    @torch.no_grad()
    def call() -> torch.Tensor:
        hidden: list[torch.Tensor] = []
        for tokenizer, encoder in zip(tokenizers, encoders, strict=True):
            ids = tokenizer(
                PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            ).input_ids
            # The pipelines all check for truncated prompts (to warn): so does this.
            untruncated = tokenizer(PROMPT, padding="longest", return_tensors="pt").input_ids
            if untruncated.shape[-1] >= ids.shape[-1] and not torch.equal(ids, untruncated):
                raise AssertionError("the benchmark's prompt is too long")
            output = encoder(ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        pooled = output[0]  # pyright: ignore[reportPossiblyUnboundVariable] - set by the loop
        embeds = torch.cat(hidden, dim=-1)
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
        added = {"text_embeds": torch.cat([torch.zeros_like(pooled), pooled]), "time_ids": time_ids}
        residuals: dict[str, Any] = {}
        if controlnet is not None:
            control = processor.preprocess(CONTROL_IMAGE, height=SIZE, width=SIZE)
            control = torch.cat([control.to(torch.float32)] * 2)
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            if controlnet is not None:
                down, mid = controlnet(
                    x,
                    t,
                    encoder_hidden_states=embeds,
                    controlnet_cond=control,  # pyright: ignore[reportPossiblyUnboundVariable]
                    conditioning_scale=1.0,
                    added_cond_kwargs=added,
                    return_dict=False,
                )
                residuals = {
                    "down_block_additional_residuals": down,
                    "mid_block_additional_residual": mid,
                }
            noise = unet(
                x,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added,
                return_dict=False,
                **residuals,
            )[0]
            uncond, cond = noise.chunk(2)
            noise = uncond + GUIDANCE * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents

    return call


def modblocks_pipeline(comps: Mapping[str, Any], steps: int) -> Thunk:
    """``mb.Pipeline(sdxl_text2img)`` (``stable_diffusion_xl_controlnet`` with a ControlNet)."""
    import modblocks as mb
    from modblocks.diffusion import sdxl_text2img, stable_diffusion_xl_controlnet

    node = stable_diffusion_xl_controlnet if "controlnet" in comps else sdxl_text2img
    pipe = mb.Pipeline(node, components=dict(comps))
    mb.progress(disable=True)  # as for diffusers' pipelines: time the pipeline, not tqdm

    def call() -> torch.Tensor:
        return pipe(**inputs(steps, comps), guidance_scale=GUIDANCE, output="images")

    return call


def modular_pipeline(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' ``StableDiffusionXLAutoBlocks`` pipeline, with a 5.0 guider."""
    pipe: Any = StableDiffusionXLAutoBlocks().init_pipeline()  # diffusers' calls are not typed
    scheduler = copy.deepcopy(comps["scheduler"])
    guider = ClassifierFreeGuidance(guidance_scale=GUIDANCE)
    pipe.update_components(**{**comps, "scheduler": scheduler}, guider=guider)
    if not _pipelines.disable_bars(
        pipe._blocks
    ):  # the blocks the pipeline runs (`pipe.blocks` is a copy)
        msg = "found no progress bar to disable in the modular pipeline"
        raise RuntimeError(msg)

    def call() -> torch.Tensor:
        return pipe(**inputs(steps, comps), output="images")

    return call


def classic_pipeline(comps: Mapping[str, Any], steps: int) -> Thunk:
    """diffusers' classic ``StableDiffusionXLPipeline`` (or its ControlNet pipeline)."""
    scheduler = copy.deepcopy(comps["scheduler"])
    cls: Any = StableDiffusionXLPipeline
    if "controlnet" in comps:
        cls = StableDiffusionXLControlNetPipeline
    pipe: Any = cls(**{**comps, "scheduler": scheduler}, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)

    def call() -> torch.Tensor:
        given = inputs(steps, comps)
        if "control_image" in given:  # the classic ControlNet pipeline calls it `image`
            given["image"] = given.pop("control_image")
        return pipe(**given, guidance_scale=GUIDANCE).images

    return call


BUILDERS: dict[str, Callable[[Mapping[str, Any], int], Thunk]] = {
    "hand-written": hand_written,
    "modblocks": modblocks_pipeline,
    "diffusers modular": modular_pipeline,
    "diffusers classic": classic_pipeline,
}


# --------------------------------------------------------------------------- measuring


def table(comps: Mapping[str, Any], settings: _harness.Settings) -> str:
    """Measure every contender at every step count, interleaved; return the report text."""
    thunks = {(name, steps): BUILDERS[name](comps, steps) for name in CONTENDERS for steps in STEPS}
    return _pipelines.overhead_table(thunks, CONTENDERS, STEPS, settings)


# --------------------------------------------------------------------------- line counts


def lines_table() -> str:
    """Lines of the code modblocks' SDXL nodes run next to diffusers' modular SDXL folder."""
    import diffusers.modular_pipelines.stable_diffusion_xl as modular

    theirs = sorted(Path(modular.__file__).parent.glob("*.py"))

    def total(files: list[Path], *, docstrings: bool) -> tuple[int, int]:
        counts = [
            _lines.count_lines(
                f.read_text(encoding="utf-8"),
                docstrings=docstrings,
                extra=("ControlNet", "IPAdapter"),
            )
            for f in files
        ]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    family, sd = ["modblocks.diffusion.families.sdxl"], ["modblocks.diffusion.families.sd"]
    mine = _lines.reached_lines(family, docstrings=True)
    mine_bare = _lines.reached_lines(family, docstrings=False)
    own = _lines.reached_lines(family, docstrings=True, excluding=sd)
    own_bare = _lines.reached_lines(family, docstrings=False, excluding=sd)
    (full, extra), (full_bare, extra_bare) = (
        total(theirs, docstrings=True),
        total(theirs, docstrings=False),
    )
    core, core_bare = full - extra, full_bare - extra_bare
    rows: list[list[object]] = [
        ["modblocks: all the code the SDXL nodes run", mine, mine_bare],
        ["  of which SDXL's own (not run by SD 1.x)", own, own_bare],
        [
            f"diffusers `modular_pipelines/stable_diffusion_xl/` ({len(theirs)} files)",
            full,
            full_bare,
        ],
        ["  without its ControlNet and IP-Adapter classes", core, core_bare],
        ["modblocks / diffusers", f"{mine / full:.0%}", f"{mine_bare / full_bare:.0%}"],
        [
            "modblocks / diffusers without ControlNet, IP-Adapter",
            f"{mine / core:.0%}",
            f"{mine_bare / core_bare:.0%}",
        ],
    ]
    headers = ["code", "lines, docstrings counted", "lines, docstrings not counted"]
    return _harness.markdown_table(headers, rows)


def additions_table() -> str:
    """Lines of each addition in modblocks next to diffusers' modular SDXL classes for it."""
    import diffusers.modular_pipelines.stable_diffusion_xl as modular

    theirs = sorted(Path(modular.__file__).parent.glob("*.py"))
    families = ["modblocks.diffusion.families.sd", "modblocks.diffusion.families.sdxl"]

    def diffusers_lines(word: str, *, docstrings: bool, without: str = "\0") -> int:
        total = 0
        for path in theirs:
            source = path.read_text(encoding="utf-8")
            total += _lines.count_lines(source, docstrings=docstrings, extra=(word,))[1]
            total -= _lines.count_lines(source, docstrings=docstrings, extra=(without,))[1]
        return total

    def ours(module: str, *, docstrings: bool) -> int:
        return _lines.reached_lines(
            [f"modblocks.diffusion.{module}"], docstrings=docstrings, excluding=families
        )

    rows: list[list[object]] = []
    for feature, module, word, without in (
        ("ControlNet (SD 1.x and SDXL, 3 modes)", "controlnet", "ControlNet", "ControlNetUnion"),
        ("IP-Adapter (SD 1.x and SDXL)", "ip_adapter", "IPAdapter", "\0"),
    ):
        mine = [ours(module, docstrings=d) for d in (True, False)]
        modular_lines = [
            diffusers_lines(word, docstrings=d, without=without) for d in (True, False)
        ]
        rows.append([f"modblocks {feature}", *mine])
        rows.append([f"  diffusers modular SDXL `*{word}*` classes", *modular_lines])
    headers = ["addition", "lines, docstrings counted", "lines, docstrings not counted"]
    note = (
        "\nmodblocks' counts are the additions' own definitions (what the plain SD 1.x and "
        "SDXL nodes don't reach); diffusers' exclude its ControlNet-Union classes, which "
        "modblocks does not have."
    )
    return _harness.markdown_table(headers, rows) + note


@dataclasses.dataclass(frozen=True)
class Config:
    """One set of components to measure."""

    title: str
    free_unet: bool
    settings: _harness.Settings
    controlnet: bool = False


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
        _harness.emit("")
        _harness.emit(additions_table())
        return 0
    settings = _harness.parse_settings(
        args, (__doc__ or "").partition("\n")[0], _harness.Settings(rounds=30, batch_ns=20_000_000)
    )
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and least noisy
    # The real tiny UNet makes a 20-step call take ~0.5 s: fewer rounds of single calls.
    tiny = dataclasses.replace(settings, rounds=max(2, settings.rounds // 6), batch_ns=1_000_000)
    configs = [
        Config("near-free UNet (framework cost)", free_unet=True, settings=settings),
        Config("tiny components (real tiny UNet)", free_unet=False, settings=tiny),
        Config("ControlNet, near-free UNet and ControlNet", True, settings, controlnet=True),
        Config("ControlNet, tiny components", False, tiny, controlnet=True),
    ]
    _harness.emit(_harness.environment(["modblocks", "diffusers", "transformers", "torch"]))
    _harness.emit("torch threads: 1")
    for config in configs:
        _harness.emit(f"\n## SDXL text2img, {config.title}\n")
        _harness.emit(f"{config.settings.describe()}\n")
        comps = components(free_unet=config.free_unet, controlnet=config.controlnet)
        _harness.emit(table(comps, config.settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
