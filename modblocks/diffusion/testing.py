"""Tiny random-weight Stable Diffusion components, built offline.

The models are configured exactly like the fast tests of diffusers
(`tests/pipelines/stable_diffusion/test_stable_diffusion.py`, `get_dummy_components`), so
they run in milliseconds on a CPU. The tokenizer is written from a small byte-level BPE
vocabulary instead of being downloaded, because tests here never reach the Hugging Face Hub.

Example:
    ```python
    from modblocks.diffusion import text2img
    from modblocks.diffusion.testing import tiny_sd_components

    state = text2img.run(**tiny_sd_components(), prompt="a cat", num_inference_steps=2)
    ```
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

__all__ = [
    "SCHEDULERS",
    "save_tiny_sd",
    "tiny_scheduler",
    "tiny_sd_components",
    "tiny_sdxl_components",
]

#: Scheduler classes by the short name that `tiny_sd_components(scheduler=...)` accepts.
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpm_multistep": DPMSolverMultistepScheduler,
}

# Stable Diffusion 1.x's scheduler configuration. `steps_offset=1` and `clip_sample=False`
# matter: with other values, diffusers' pipelines rewrite the scheduler's config in place
# (with a deprecation warning), and a scheduler shared with them would change under us.
_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}

# As a dict because diffusers annotates these tuples as `tuple[int]` (one element).
_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 2,
}
# Without a safety checker, as diffusers' fast tests build the pipelines.
_NO_SAFETY_CHECKER: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}

_CROSS_ATTENTION_DIM = 32
_VOCAB_SIZE = 1000
# A few merges are enough for prompts to tokenize into more than single bytes.
_MERGES = (
    "a n",
    "c a",
    "ca t</w>",
    "t h",
    "th e</w>",
    "d o",
    "do g</w>",
    "o f</w>",
    "p h",
    "ph o",
    "pho t",
    "phot o</w>",
    "r e",
    "i n",
    "o n</w>",
)


def tiny_scheduler(name: str = "ddim", **config: Any) -> SchedulerMixin:
    """Build the scheduler *name* (a key of `SCHEDULERS`) with Stable Diffusion's config.

    Args:
        name: One of `"ddim"`, `"pndm"`, `"euler"`, `"euler_ancestral"` or
            `"dpm_multistep"`.
        **config: Settings that replace or add to Stable Diffusion's (e.g.
            `timestep_spacing="leading"`, as SDXL's schedulers have).

    Returns:
        A new scheduler.

    Raises:
        ValueError: If *name* is not a key of `SCHEDULERS`.
    """
    if name not in SCHEDULERS:
        msg = f"unknown scheduler {name!r}. Choose one of {', '.join(map(repr, SCHEDULERS))}."
        raise ValueError(msg)
    # Every scheduler is also a ConfigMixin, whose from_config drops the keys a class does not
    # know (e.g. skip_prk_steps for DDIM).
    cls = cast("type[ConfigMixin]", SCHEDULERS[name])
    return cast("SchedulerMixin", cls.from_config({**_SCHEDULER_CONFIG, **config}))


def _bytes_to_unicode() -> list[str]:
    """Return the 256 printable characters that byte-level BPE uses for the 256 bytes (GPT-2)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _tiny_tokenizer() -> CLIPTokenizer:
    """Build a CLIP tokenizer over a byte-level vocabulary that fits `_VOCAB_SIZE`."""
    chars = _bytes_to_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in _MERGES)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) > _VOCAB_SIZE:  # pragma: no cover - guards an edit of _MERGES
        msg = f"the tiny vocabulary has {len(vocab)} tokens, more than {_VOCAB_SIZE}."
        raise AssertionError(msg)
    # Files rather than in-memory dicts: that constructor is the same in transformers 4 and 5.
    with tempfile.TemporaryDirectory(prefix="modblocks-tiny-clip-") as folder:
        vocab_file = Path(folder, "vocab.json")
        merges_file = Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def tiny_sd_components(
    seed: int = 0, *, inpaint_unet: bool = False, scheduler: str = "ddim"
) -> dict[str, Any]:
    """Build tiny random-weight Stable Diffusion 1.x components.

    Args:
        seed: Seed of the random weights; the same seed gives the same weights.
        inpaint_unet: Build a 9-channel inpainting UNet (latents, mask, masked image latents)
            instead of the 4-channel one.
        scheduler: Name of the scheduler, a key of `SCHEDULERS`.

    Returns:
        `unet`, `vae`, `text_encoder`, `tokenizer` and `scheduler`, the component names of
        diffusers' Stable Diffusion pipelines and of `modblocks.diffusion`.
    """
    # Seed a forked generator so that building components leaves the caller's RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8),
            layers_per_block=1,
            sample_size=32,
            in_channels=9 if inpaint_unet else 4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=_CROSS_ATTENTION_DIM,
            norm_num_groups=2,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(**_VAE_CONFIG)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=0,
                eos_token_id=2,
                hidden_size=_CROSS_ATTENTION_DIM,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=5,
                pad_token_id=1,
                vocab_size=_VOCAB_SIZE,
            )
        )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": torch.nn.Module.eval(text_encoder),
        "tokenizer": _tiny_tokenizer(),
        "scheduler": tiny_scheduler(scheduler),
    }


def save_tiny_sd(
    path: str | Path, seed: int = 0, *, inpaint_unet: bool = False, scheduler: str = "ddim"
) -> Path:
    """Write tiny components as a diffusers-format folder (`model_index.json` + subfolders).

    The folder loads with `StableDiffusionPipeline.from_pretrained(path)` (or the inpainting
    pipeline when *inpaint_unet* is true), and with each model class's `from_pretrained(path,
    subfolder=...)`.

    Args:
        path: The folder to write; created if missing.
        seed: Seed of the random weights.
        inpaint_unet: Write a 9-channel inpainting UNet.
        scheduler: Name of the scheduler, a key of `SCHEDULERS`.

    Returns:
        The folder, as a `Path`.
    """
    components = tiny_sd_components(seed, inpaint_unet=inpaint_unet, scheduler=scheduler)
    pipeline_class = StableDiffusionInpaintPipeline if inpaint_unet else StableDiffusionPipeline
    pipeline = pipeline_class(**components, **_NO_SAFETY_CHECKER)
    folder = Path(path)
    pipeline.save_pretrained(folder)
    return folder


# SDXL's fast-test configuration (diffusers' `tests/pipelines/stable_diffusion_xl`): two
# 32-wide CLIP encoders whose hidden states are concatenated (64 = the UNet's cross-attention
# width), the second with a 32-wide projection for the pooled embeddings.
_SDXL_TEXT_CONFIG: dict[str, Any] = {
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_size": 32,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-05,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "pad_token_id": 1,
    "vocab_size": _VOCAB_SIZE,
    "hidden_act": "gelu",
    "projection_dim": 32,
}
_SDXL_UNET_CONFIG: dict[str, Any] = {
    "block_out_channels": (2, 4),
    "layers_per_block": 2,
    "sample_size": 32,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "norm_num_groups": 1,
}
_SDXL_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": 128,
}


def tiny_sdxl_components(
    seed: int = 0,
    *,
    inpaint_unet: bool = False,
    scheduler: str = "euler",
    requires_aesthetics_score: bool = False,
) -> dict[str, Any]:
    """Build tiny random-weight Stable Diffusion XL components.

    Args:
        seed: Seed of the random weights; the same seed gives the same weights.
        inpaint_unet: Build a 9-channel inpainting UNet instead of the 4-channel one.
        scheduler: Name of the scheduler, a key of `SCHEDULERS`; it gets SDXL's
            `timestep_spacing="leading"`.
        requires_aesthetics_score: Build a refiner: no first text encoder and tokenizer (they
            are `None`), and a UNet conditioned on an aesthetic score instead of the target
            size (5 time ids instead of 6).

    Returns:
        `unet`, `vae`, `text_encoder`, `text_encoder_2`, `tokenizer`, `tokenizer_2` and
        `scheduler`, the component names of diffusers' SDXL pipelines and of
        `modblocks.diffusion`'s SDXL nodes.
    """
    time_ids = 5 if requires_aesthetics_score else 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **_SDXL_UNET_CONFIG,
            in_channels=9 if inpaint_unet else 4,
            projection_class_embeddings_input_dim=time_ids * 8 + 32,
            cross_attention_dim=32 if requires_aesthetics_score else 64,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(**_SDXL_VAE_CONFIG)
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**_SDXL_TEXT_CONFIG))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_SDXL_TEXT_CONFIG))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": None if requires_aesthetics_score else torch.nn.Module.eval(text_encoder),
        "text_encoder_2": torch.nn.Module.eval(text_encoder_2),
        "tokenizer": None if requires_aesthetics_score else _tiny_tokenizer(),
        "tokenizer_2": _tiny_tokenizer(),
        "scheduler": tiny_scheduler(scheduler, timestep_spacing="leading"),
    }
