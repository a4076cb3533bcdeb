"""Tiny random-weight components of every family (SD 1.x, SDXL, SD3, Flux), built offline.

The models are configured like the fast tests of diffusers
(`tests/pipelines/stable_diffusion/test_stable_diffusion.py`, `get_dummy_components`, and
their SDXL, SD3 and Flux siblings), so they run in milliseconds on a CPU. Tokenizers are
built from small vocabularies in memory (a byte-level BPE for CLIP, a Unigram word list for
T5) instead of being downloaded, because tests here never reach the Hugging Face Hub.

Examples:
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
import transformers
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import AutoencoderKLQwenImage
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
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
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    T5Config,
    T5EncoderModel,
)

__all__ = [
    "SCHEDULERS",
    "save_tiny_sd",
    "tiny_flux_components",
    "tiny_qwen_image_components",
    "tiny_qwen_tokenizer",
    "tiny_scheduler",
    "tiny_sd3_components",
    "tiny_sd_components",
    "tiny_sdxl_components",
    "tiny_t5_tokenizer",
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


# --- T5 (Flux, SD3) ------------------------------------------------------------------------

# Words of the prompts in tests and examples get a token each; any other text is spelled
# with single characters, so nothing is unknown.
_T5_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "photo",
    "painting",
    "picture",
    "cat",
    "dog",
    "squirrel",
    "eating",
    "burger",
    "red",
    "blue",
    "green",
    "bad",
    "quality",
    "blurry",
    "deformed",
    "different",
    "prompt",
    "another",
    "astronaut",
    "horse",
]
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!?.,;:'\"-()"
_T5_VOCAB_SIZE = 128


def tiny_t5_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerBase:
    """Build a T5 tokenizer (SentencePiece-style Unigram) over a small word list, in memory.

    Like T5's: `<pad>` is 0, `</s>` (appended to every text) 1, `<unk>` 2, and words start
    with `▁`. It saves and loads back (`save_pretrained`, `T5TokenizerFast.from_pretrained`)
    to the same tokenizer.
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in _T5_WORDS]
    pieces += [(char, -5.0) for char in _T5_CHARS]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    # The pre-tokenizer and decoder that transformers' T5 tokenizer sets when it loads.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    # `T5TokenizerFast` in transformers 4 and 5 (where it is another name of `T5Tokenizer`).
    name = "T5TokenizerFast"  # by name: the type stubs of transformers 5 lack it
    fast = cast("type[PreTrainedTokenizerBase]", getattr(transformers, name))
    return fast(tokenizer_object=tokenizer, extra_ids=0, model_max_length=model_max_length)


def _tiny_t5(width: int) -> T5EncoderModel:
    """Build a 2-layer T5 encoder of hidden size *width* (call under a seeded RNG)."""
    config = T5Config(
        vocab_size=_T5_VOCAB_SIZE,
        d_model=width,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
    )
    model = T5EncoderModel(config)
    torch.nn.Module.eval(model)
    return model


# As a dict because diffusers annotates these tuples as `tuple[int]` (one element).
_FLOW_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (4, 8),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 1,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5035,
}


def _flow_vae(seed: int) -> AutoencoderKL:
    """A tiny VAE with a scale factor of 2, 4 latent channels and a shift, as SD3's and Flux's."""
    torch.manual_seed(seed)
    vae: AutoencoderKL = AutoencoderKL(**_FLOW_VAE_CONFIG)
    torch.nn.Module.eval(vae)
    return vae


def tiny_flux_components(
    seed: int = 0, *, guidance_embeds: bool = True, dynamic_shifting: bool = True
) -> dict[str, Any]:
    """Build tiny random-weight Flux.1 components.

    Configured as diffusers' Flux fast tests (a 1 + 1 layer transformer, 32-wide CLIP and
    T5), with a VAE of two blocks (latents at half the image's size, 4 channels, so packing
    mixes channels) and FLUX.1-dev's scheduler configuration.

    Args:
        seed: Seed of the random weights; the same seed gives the same weights.
        guidance_embeds: Build a guidance-distilled transformer that reads `guidance_scale`
            (FLUX.1-dev); false builds one without (FLUX.1-schnell).
        dynamic_shifting: Shift the schedule by the image's size, as FLUX.1's scheduler;
            false gives the scheduler's defaults (a fixed shift of 1).

    Returns:
        `transformer`, `vae`, `text_encoder`, `tokenizer`, `text_encoder_2`, `tokenizer_2`
        and `scheduler`, the component names of diffusers' `FluxPipeline`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=(4, 4, 8),
            guidance_embeds=guidance_embeds,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**_SDXL_TEXT_CONFIG))
        torch.manual_seed(seed)
        text_encoder_2 = _tiny_t5(32)
        vae = _flow_vae(seed)
    shifting: dict[str, Any] = {}
    if dynamic_shifting:
        shifting = {
            "shift": 3.0,
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 1.15,
            "base_image_seq_len": 256,
            "max_image_seq_len": 4096,
        }
    return {
        "transformer": transformer.eval(),
        "vae": vae,
        "text_encoder": torch.nn.Module.eval(text_encoder),
        "tokenizer": _tiny_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tiny_t5_tokenizer(),
        "scheduler": FlowMatchEulerDiscreteScheduler(**shifting),
    }


def tiny_sd3_components(
    seed: int = 0, *, t5: bool = True, dynamic_shifting: bool = False
) -> dict[str, Any]:
    """Build tiny random-weight Stable Diffusion 3 components.

    Configured as diffusers' SD3 fast tests (a 1-layer transformer, two 32-wide CLIP
    encoders with projections), with a 64-wide T5 (so the CLIP states are padded to its
    width, as SD3's are), a VAE of two blocks and SD3's scheduler configuration (shift 3).

    Args:
        seed: Seed of the random weights; the same seed gives the same weights.
        t5: Build the T5 encoder; false leaves `text_encoder_3` and `tokenizer_3` `None`,
            which SD3 allows (its part of the text sequence is then zeros).
        dynamic_shifting: Shift the schedule by the image's size (`use_dynamic_shifting`)
            instead of SD3's fixed shift.

    Returns:
        `transformer`, `vae`, `text_encoder`, `tokenizer`, `text_encoder_2`, `tokenizer_2`,
        `text_encoder_3`, `tokenizer_3` and `scheduler`, the component names of diffusers'
        `StableDiffusion3Pipeline`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32,
            patch_size=1,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=64,
            pooled_projection_dim=64,
            out_channels=4,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**_SDXL_TEXT_CONFIG))
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_SDXL_TEXT_CONFIG))
        torch.manual_seed(seed)
        text_encoder_3 = _tiny_t5(64)
        vae = _flow_vae(seed)
    config: dict[str, Any] = {"shift": 3.0}
    if dynamic_shifting:
        config = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.16}
    return {
        "transformer": transformer.eval(),
        "vae": vae,
        "text_encoder": torch.nn.Module.eval(text_encoder),
        "tokenizer": _tiny_tokenizer(),
        "text_encoder_2": torch.nn.Module.eval(text_encoder_2),
        "tokenizer_2": _tiny_tokenizer(),
        "text_encoder_3": text_encoder_3 if t5 else None,
        "tokenizer_3": tiny_t5_tokenizer() if t5 else None,
        "scheduler": FlowMatchEulerDiscreteScheduler(**config),
    }


# --- Qwen-Image ----------------------------------------------------------------------------

# Qwen2's split of text into words (transformers' `PRETOKENIZE_REGEX`), before byte-level BPE.
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Whole-word pieces for Qwen-Image's chat template, so that its system part is 34 tokens as
# with Qwen2.5's vocabulary (the pipeline drops those 34), and for the prompts of the tests.
_QWEN_WORDS = [
    "system",
    "Describe",
    "Ġthe",
    "Ġimage",
    "Ġby",
    "Ġdetailing",
    "Ġcolor",
    "Ġshape",
    "Ġsize",
    "Ġtexture",
    "Ġquantity",
    "Ġtext",
    "Ġspatial",
    "Ġrelationships",
    "Ġof",
    "Ġobjects",
    "Ġand",
    "Ġbackground",
    "user",
    "assistant",
    "Ġcat",
    "Ġdog",
    "Ġeating",
    "Ġburger",
    "Ġphoto",
    "Ġbad",
    "Ġblurry",
    "Ġquality",
]
_QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_VOCAB_SIZE = 512


def _qwen_merges() -> list[tuple[str, str]]:
    """Merges that build each of `_QWEN_WORDS` from its first character, left to right."""
    merges: list[tuple[str, str]] = []
    for word in _QWEN_WORDS:
        for end in range(2, len(word) + 1):
            pair = (word[: end - 1], word[end - 1])
            if pair not in merges:
                merges.append(pair)
    return merges


def tiny_qwen_tokenizer() -> PreTrainedTokenizerBase:
    """Build a Qwen2 tokenizer (byte-level BPE, chat special tokens) in memory.

    Its pieces are the 256 bytes and the words of Qwen-Image's chat template (whose system
    part is then 34 tokens, as with Qwen2.5's vocabulary) and of a few prompts;
    `<|endoftext|>` (also padding), `<|im_start|>` and `<|im_end|>` are special tokens, as in
    Qwen2.5's. It saves and loads
    back (`save_pretrained`, `Qwen2TokenizerFast.from_pretrained`) to the same tokenizer.
    """
    vocab = {char: index for index, char in enumerate(_bytes_to_unicode())}
    merges = _qwen_merges()
    for first, second in merges:
        vocab.setdefault(first + second, len(vocab))
    # The model, normalizer, pre-tokenizer and decoder that transformers' Qwen2 tokenizer sets.
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in _QWEN_SPECIAL])
    name = "Qwen2TokenizerFast"  # by name: the type stubs of transformers 5 lack it
    fast = cast("type[PreTrainedTokenizerBase]", getattr(transformers, name))
    # Qwen2's: `<|endoftext|>` is the unknown, end and padding token, and there is no start.
    specials = dict.fromkeys(("unk_token", "eos_token", "pad_token"), _QWEN_SPECIAL[0])
    return fast(tokenizer_object=tokenizer, bos_token=None, **specials)


def tiny_qwen_image_components(seed: int = 0, *, dynamic_shifting: bool = True) -> dict[str, Any]:
    """Build tiny random-weight Qwen-Image components.

    Configured as diffusers' Qwen-Image fast tests (a 2-layer transformer, a 16-wide
    Qwen2.5-VL, a video VAE with 4 latent channels and a scale factor of 4), with a
    Qwen2.5-VL vocabulary the size of the in-memory tokenizer's and Qwen-Image's scheduler
    configuration.

    Args:
        seed: Seed of the random weights; the same seed gives the same weights.
        dynamic_shifting: Shift the schedule by the image's size, as Qwen-Image's
            scheduler; false gives the scheduler's defaults.

    Returns:
        `transformer`, `vae`, `text_encoder`, `tokenizer` and `scheduler`, the component
        names of diffusers' `QwenImagePipeline`.
    """
    tokenizer = tiny_qwen_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIAL}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=16,
            out_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=3,
            joint_attention_dim=16,
            guidance_embeds=False,
            axes_dims_rope=(8, 4, 4),
        )
        torch.manual_seed(seed)
        vae: AutoencoderKLQwenImage = AutoencoderKLQwenImage(
            base_dim=24,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
        torch.manual_seed(seed)
        text = {
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": _QWEN_VOCAB_SIZE,
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": ids["<|endoftext|>"],
        }
        vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2}
        # transformers 4 reads these at the top of the config, 5 from `text_config`.
        top: dict[str, Any] = {
            key: text[key] for key in ("hidden_size", "vocab_size", "bos_token_id", "eos_token_id")
        }
        config = Qwen2_5_VLConfig(
            text_config=text, vision_config={**vision, "out_hidden_size": 16}, **top
        )
        text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    shifting: dict[str, Any] = {}
    if dynamic_shifting:
        shifting = {
            "shift": 1.0,
            "use_dynamic_shifting": True,
            "base_shift": 0.5,
            "max_shift": 0.9,
            "base_image_seq_len": 256,
            "max_image_seq_len": 8192,
            "shift_terminal": 0.02,
        }
    torch.nn.Module.eval(vae)
    return {
        "transformer": transformer.eval(),
        "vae": vae,
        "text_encoder": torch.nn.Module.eval(text_encoder),
        "tokenizer": tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler(**shifting),
    }
