"""Stable Diffusion XL: what it adds to the Stable Diffusion 1.x blocks, and its pipelines.

SDXL is SD 1.x with two text encoders (hidden states concatenated, pooled embeddings from
the second), "micro-conditioning" time ids, `denoising_start`/`denoising_end` for the
base + refiner split, and a VAE that may run in float32 (`force_upcast`). Everything else
(sizes, timesteps, noise, the scheduler step, inpainting channels, post-processing) is the
SD 1.x blocks, reused as they are. With the same components, scheduler and seeded
generators the nodes give the images of diffusers' `StableDiffusionXLPipeline`,
`StableDiffusionXLImg2ImgPipeline` and `StableDiffusionXLInpaintPipeline`.

Example:
    ```python
    from modblocks.diffusion import stable_diffusion_xl
    from modblocks.diffusion.testing import tiny_sdxl_components

    state = stable_diffusion_xl.run(
        **tiny_sdxl_components(), prompt="a cat", num_inference_steps=4
    )
    images = state["images"]
    ```

Not supported (as for SD 1.x): IP-Adapter, ControlNet, LoRA scales, textual inversion,
`cross_attention_kwargs`, `padding_mask_crop`, UNets with a guidance embedding
(`time_cond_proj_dim`) and the invisible watermark.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import threading
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple, cast

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor  # pyright: ignore[reportUnknownVariableType]
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from typing_extensions import Doc

import modblocks as mb

from ._scheduler import typed
from .denoise import (
    add_inpaint_channels,
    blend_masked_latents,
    guide,
    scale_model_input,
    scheduler_step,
)
from .image import default_size, preprocess_image, preprocess_mask
from .latents import (
    InpaintLatents,
    MaskLatents,
    _check_generators,
    _copies,
    mask_latents,
    prepare_latents,
)
from .text import _tokenize, _warn_if_truncated
from .timesteps import StrengthTimesteps, _skip_to_strength, set_timesteps
from .vae import Generator, OutputType, _Codec, postprocess, sample_latents, vae_scale_factor

__all__ = [
    "PromptEmbedsXL",
    "apply_denoising_end",
    "decode_latents_xl",
    "denoise_inpaint_xl",
    "denoise_xl",
    "encode_prompt_xl",
    "img2img_time_ids",
    "img2img_timesteps_xl",
    "inpaint_guidance_scale",
    "inpaint_timesteps_xl",
    "predict_noise_xl",
    "prepare_img2img_latents_xl",
    "prepare_inpaint_latents_xl",
    "prepare_mask_latents_xl",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_text2img",
    "stable_diffusion_xl",
    "text2img_time_ids",
]

Size2 = tuple[int, int]
_PROMPT = str | list[str] | None
_GENERATOR_DOC = Doc("a generator for the whole batch, or one per image, for reproducible runs")
_DTYPE_DOC = Doc("text embeddings (their dtype is the latents')")

# --- prompts -----------------------------------------------------------------------------


class PromptEmbedsXL(NamedTuple):
    """What `encode_prompt_xl` gives the UNet."""

    prompt_embeds: Annotated[
        torch.Tensor,
        Doc("both encoders' hidden states, concatenated; negative first with guidance"),
    ]
    add_text_embeds: Annotated[
        torch.Tensor, Doc("pooled embeddings of the second encoder; negative first with guidance")
    ]
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on (`guidance_scale > 1`)")]
    batch_size: Annotated[int, Doc("number of images: prompts × `num_images_per_prompt`")]


def _texts(text: str | list[str], batch_size: int, what: str) -> list[str]:
    """Return *text* as one text per prompt."""
    texts = [text] * batch_size if isinstance(text, str) else text
    if len(texts) != batch_size:
        msg = f"`{what}` has {len(texts)} texts for {batch_size} prompts. Give one per prompt."
        raise ValueError(msg)
    return texts


def _encode_both(
    encoders: Sequence[tuple[PreTrainedTokenizerBase, PreTrainedModel]],
    texts: Sequence[list[str]],
    max_length: int | None,
    layer: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode *texts* with each encoder; concatenate hidden states *layer*, pool the last."""
    hidden: list[torch.Tensor] = []
    pooled = torch.empty(0)
    for (tokenizer, encoder), text in zip(encoders, texts, strict=False):
        # transformers sets this attribute without an annotation.
        length = max_length or cast("int", tokenizer.model_max_length)
        ids, _ = _tokenize(tokenizer, text, length)
        if max_length is None:
            _warn_if_truncated(tokenizer, text, ids)
        output = encoder(ids.to(encoder.device), output_hidden_states=True)
        # The first output is the pooled projection for CLIPTextModelWithProjection only.
        if output[0].ndim == 2:
            pooled = output[0]
        hidden.append(output.hidden_states[layer])
    return torch.cat(hidden, dim=-1), pooled


def _check_prompts(
    prompt: bool,
    prompt_2: bool,
    embeds: bool,
    pooled: bool,
    negative: bool,
    negative_embeds: bool,
    negative_pooled: bool,
) -> None:
    """Check which prompts and embeddings were given (each flag: given), as diffusers does."""
    if prompt == embeds or (prompt_2 and not prompt):
        msg = "give exactly one of `prompt` (and `prompt_2`) and `prompt_embeds`."
        raise ValueError(msg)
    if embeds and not pooled:
        msg = "with `prompt_embeds`, give `pooled_prompt_embeds` too (from the same encoder)."
        raise ValueError(msg)
    if negative_embeds and (negative or not negative_pooled):
        msg = (
            "with `negative_prompt_embeds`, give `negative_pooled_prompt_embeds` and no "
            "`negative_prompt` or `negative_prompt_2`."
        )
        raise ValueError(msg)


@mb.block
@torch.no_grad()  # inference only, also when run outside a Pipeline
def encode_prompt_xl(
    text_encoder_2: mb.Component[CLIPTextModelWithProjection],
    tokenizer_2: mb.Component[PreTrainedTokenizerBase],
    text_encoder: mb.Component[CLIPTextModel | None] = None,
    tokenizer: mb.Component[PreTrainedTokenizerBase | None] = None,
    prompt: Annotated[_PROMPT, Doc("the prompt or prompts; or give `prompt_embeds`")] = None,
    prompt_2: Annotated[
        _PROMPT, Doc("the prompt(s) for the second text encoder; `prompt` if not given")
    ] = None,
    negative_prompt: Annotated[
        _PROMPT, Doc("what not to draw; without it the negative embeddings are zeros")
    ] = None,
    negative_prompt_2: Annotated[
        _PROMPT,
        Doc("the negative prompt(s) for the second encoder; `negative_prompt` if not given"),
    ] = None,
    prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed text embeddings, instead of `prompt`")
    ] = None,
    negative_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed negative embeddings, instead of `negative_prompt`")
    ] = None,
    pooled_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed pooled embeddings (with `prompt_embeds`)")
    ] = None,
    negative_pooled_prompt_embeds: Annotated[
        torch.Tensor | None,
        Doc("precomputed negative pooled embeddings (with `negative_prompt_embeds`)"),
    ] = None,
    num_images_per_prompt: Annotated[int, Doc("number of images to make per prompt")] = 1,
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 5.0,
    clip_skip: Annotated[
        int | None, Doc("number of final CLIP layers to skip, after SDXL's usual one")
    ] = None,
    force_zeros_for_empty_prompt: mb.Config[bool] = True,
) -> PromptEmbedsXL:
    """Encode the prompt with both text encoders, and the negative prompt for guidance.

    `StableDiffusionXLPipeline.encode_prompt`, followed by the pipeline's concatenation
    `[negative, positive]`. Without a refiner's first encoder (`text_encoder=None`), only
    the second one encodes.
    """
    _check_prompts(
        prompt is not None,
        prompt_2 is not None,
        prompt_embeds is not None,
        pooled_prompt_embeds is not None,
        negative_prompt is not None or negative_prompt_2 is not None,
        negative_prompt_embeds is not None,
        negative_pooled_prompt_embeds is not None,
    )
    encoders: list[tuple[PreTrainedTokenizerBase, PreTrainedModel]] = [
        (tokenizer_2, text_encoder_2)
    ]
    if text_encoder is not None and tokenizer is not None:
        encoders.insert(0, (tokenizer, text_encoder))
    # Without a first encoder, the second one reads `prompt`, not `prompt_2` (as diffusers).
    if prompt is not None:
        texts = [prompt] if isinstance(prompt, str) else prompt
        texts_2 = _texts(prompt_2 or prompt, len(texts), "prompt_2")
        layer = -2 if clip_skip is None else -(clip_skip + 2)  # SDXL skips one layer already
        prompt_embeds, pooled = _encode_both(encoders, [texts, texts_2], None, layer)
        pooled_prompt_embeds = pooled if pooled_prompt_embeds is None else pooled_prompt_embeds
    assert prompt_embeds is not None
    assert pooled_prompt_embeds is not None
    batch_size = prompt_embeds.shape[0]
    do_cfg = guidance_scale > 1
    if do_cfg and negative_prompt_embeds is None:
        if negative_prompt is None and force_zeros_for_empty_prompt:
            # diffusers' SDXL default: zeros, even when `negative_prompt_2` is given.
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        else:
            negative = _texts(negative_prompt or "", batch_size, "negative_prompt")
            negative_2 = _texts(negative_prompt_2 or negative, batch_size, "negative_prompt_2")
            negative_prompt_embeds, negative_pooled_prompt_embeds = _encode_both(
                encoders, [negative, negative_2], prompt_embeds.shape[1], -2
            )

    def per_image(embeds: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        embeds = embeds.to(dtype=dtype or embeds.dtype, device=text_encoder_2.device)
        return embeds.repeat_interleave(num_images_per_prompt, dim=0)

    # diffusers casts the hidden states to the second encoder's dtype, not the pooled ones.
    embeds = per_image(prompt_embeds, text_encoder_2.dtype)
    pooled = per_image(pooled_prompt_embeds)
    if do_cfg:
        assert negative_prompt_embeds is not None
        assert negative_pooled_prompt_embeds is not None
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            msg = (
                f"`negative_prompt_embeds` has shape {tuple(negative_prompt_embeds.shape)}, but "
                f"`prompt_embeds` has {tuple(prompt_embeds.shape)}. Give them the same shape."
            )
            raise ValueError(msg)
        embeds = torch.cat([per_image(negative_prompt_embeds, text_encoder_2.dtype), embeds])
        pooled = torch.cat([per_image(negative_pooled_prompt_embeds), pooled])
    return PromptEmbedsXL(embeds, pooled, do_cfg, batch_size * num_images_per_prompt)


# --- micro-conditioning ------------------------------------------------------------------


def _time_ids(
    unet: UNet2DConditionModel,
    values: Sequence[float],
    projection_dim: int,
    dtype: torch.dtype,
    *,
    aesthetic: bool | None = None,
) -> torch.Tensor:
    """Return *values* as a `(1, n)` tensor, after checking that the UNet expects n of them."""
    per_id: int = unet.config["addition_time_embed_dim"]
    passed = per_id * len(values) + projection_dim
    expected = int(cast("Any", unet).add_embedding.linear_1.in_features)
    if expected != passed:
        hint = "Check `unet.config` and `text_encoder_2.config.projection_dim`."
        if aesthetic is not None and abs(expected - passed) == per_id:
            # A refiner's UNet reads an aesthetic score instead of the target size (one id less).
            hint = f"Set the config `requires_aesthetics_score={not aesthetic}`."
        msg = (
            f"the UNet expects an added time embedding of length {expected}, but {passed} "
            f"were made. {hint}"
        )
        raise ValueError(msg)
    return torch.tensor([list(values)], dtype=dtype)


_SIZE_DOC = Doc("the size `(height, width)` the image is conditioned on; the image's if not given")
_CROP_DOC = Doc("the top-left corner `(y, x)` of the crop the image is conditioned on")


@mb.block(output="add_time_ids")
def text2img_time_ids(
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, _DTYPE_DOC],
    add_text_embeds: Annotated[torch.Tensor, Doc("pooled text embeddings")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    original_size: Annotated[Size2 | None, _SIZE_DOC] = None,
    crops_coords_top_left: Annotated[Size2, _CROP_DOC] = (0, 0),
    target_size: Annotated[Size2 | None, _SIZE_DOC] = None,
    negative_original_size: Annotated[
        Size2 | None, Doc("`original_size` for the negative prompt (with `negative_target_size`)")
    ] = None,
    negative_crops_coords_top_left: Annotated[
        Size2, Doc("`crops_coords_top_left` for the negative prompt")
    ] = (0, 0),
    negative_target_size: Annotated[
        Size2 | None, Doc("`target_size` for the negative prompt (with `negative_original_size`)")
    ] = None,
) -> Annotated[torch.Tensor, Doc("the UNet's time ids: sizes and crop, one row per UNet input")]:
    """Make SDXL's micro-conditioning time ids: original size, crop corner, target size.

    As `StableDiffusionXLPipeline`: negative ids only when both negative sizes are given, and
    the `[negative, positive]` pair repeated per image (so, unlike the embeddings,
    alternating when they differ).
    """
    original_size = original_size or (height, width)
    target_size = target_size or (height, width)
    make = functools.partial(
        _time_ids, unet, projection_dim=add_text_embeds.shape[-1], dtype=prompt_embeds.dtype
    )
    ids = make((*original_size, *crops_coords_top_left, *target_size))
    if do_cfg:
        negative = ids
        if negative_original_size is not None and negative_target_size is not None:
            crop = negative_crops_coords_top_left
            negative = make((*negative_original_size, *crop, *negative_target_size))
        ids = torch.cat([negative, ids])
    return ids.to(prompt_embeds.device).repeat(batch_size, 1)


@mb.block(output="add_time_ids")
def img2img_time_ids(
    latents: Annotated[torch.Tensor, Doc("the initial latents (their size is the image's)")],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, _DTYPE_DOC],
    add_text_embeds: Annotated[torch.Tensor, Doc("pooled text embeddings")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    original_size: Annotated[Size2 | None, _SIZE_DOC] = None,
    crops_coords_top_left: Annotated[Size2, _CROP_DOC] = (0, 0),
    target_size: Annotated[Size2 | None, _SIZE_DOC] = None,
    negative_original_size: Annotated[
        Size2 | None, Doc("`original_size` for the negative prompt; `original_size` if not given")
    ] = None,
    negative_crops_coords_top_left: Annotated[
        Size2, Doc("`crops_coords_top_left` for the negative prompt (aesthetic-score UNets)")
    ] = (0, 0),
    negative_target_size: Annotated[
        Size2 | None, Doc("`target_size` for the negative prompt; `target_size` if not given")
    ] = None,
    aesthetic_score: Annotated[
        float, Doc("the aesthetic score to condition on (aesthetic-score UNets: refiners)")
    ] = 6.0,
    negative_aesthetic_score: Annotated[
        float, Doc("the aesthetic score of the negative prompt (aesthetic-score UNets)")
    ] = 2.5,
    requires_aesthetics_score: mb.Config[bool] = False,
) -> Annotated[torch.Tensor, Doc("the UNet's time ids, negative rows first with guidance")]:
    """Make the time ids of image-to-image and inpainting, with a refiner's aesthetic score.

    As `StableDiffusionXLImg2ImgPipeline`: with `requires_aesthetics_score` the ids end with
    the aesthetic score instead of the target size. Without it the negative ids use the
    positive crop corner, as diffusers does.
    """
    factor = vae_scale_factor(vae)
    size = (latents.shape[-2] * factor, latents.shape[-1] * factor)
    original_size = original_size or size
    target_size = target_size or size
    negative_original_size = negative_original_size or original_size
    negative_target_size = negative_target_size or target_size
    values: tuple[float, ...]
    negative_values: tuple[float, ...]
    if requires_aesthetics_score:
        values = (*original_size, *crops_coords_top_left, aesthetic_score)
        negative = (*negative_original_size, *negative_crops_coords_top_left)
        negative_values = (*negative, negative_aesthetic_score)
    else:
        values = (*original_size, *crops_coords_top_left, *target_size)
        negative_values = (*negative_original_size, *crops_coords_top_left, *negative_target_size)
    make = functools.partial(
        _time_ids, unet, projection_dim=add_text_embeds.shape[-1], dtype=prompt_embeds.dtype
    )
    ids = make(values, aesthetic=requires_aesthetics_score).repeat(batch_size, 1)
    if do_cfg:
        negative_ids = make(negative_values, aesthetic=requires_aesthetics_score)
        ids = torch.cat([negative_ids.repeat(batch_size, 1), ids])
    return ids.to(prompt_embeds.device)


# --- timesteps ---------------------------------------------------------------------------


def _fraction(value: float | None) -> float | None:
    """Return *value* if it is a float strictly between 0 and 1 (else diffusers ignores it)."""
    return value if isinstance(value, float) and 0 < value < 1 else None


def _cutoff(scheduler: SchedulerMixin, fraction: float) -> int:
    """Return the training timestep at *fraction* of the way from noise to image."""
    steps: int = typed(scheduler).config["num_train_timesteps"]
    return round(steps - fraction * steps)


def _start_timesteps(
    scheduler: SchedulerMixin,
    num_inference_steps: int,
    strength: float,
    denoising_start: float | None,
    denoising_end: float | None,
) -> StrengthTimesteps:
    """Skip to `strength`, or to `denoising_start` if given (diffusers' SDXL `get_timesteps`)."""
    start, end = _fraction(denoising_start), _fraction(denoising_end)
    if start is not None and end is not None and start >= end:
        msg = f"`denoising_start` {start} must be smaller than `denoising_end` {end}."
        raise ValueError(msg)
    if start is None:
        return _skip_to_strength(scheduler, num_inference_steps, strength)
    all_timesteps = typed(scheduler).timesteps
    steps = int((all_timesteps < _cutoff(scheduler, start)).sum())
    if typed(scheduler).order == 2 and steps % 2 == 0:
        steps += 1  # end after a second-order step's second half, not between its halves
    begin = len(all_timesteps) - steps
    set_begin_index = getattr(scheduler, "set_begin_index", None)
    if set_begin_index is not None:
        set_begin_index(begin)
    return StrengthTimesteps(scheduler, all_timesteps[begin:], steps)


_START_DOC = Doc("start at this fraction of the schedule instead (a refiner's, with latents)")
_END_DOC = Doc("stop at this fraction of the schedule, leaving noisy latents (a base's)")


@mb.block
def img2img_timesteps_xl(
    scheduler: mb.Component[SchedulerMixin],
    num_inference_steps: Annotated[int, Doc("the number of steps of the full schedule")],
    strength: Annotated[
        float, Doc("how much to change the image, from 0 (not at all) to 1 (pure noise)")
    ] = 0.3,
    denoising_start: Annotated[float | None, _START_DOC] = None,
    denoising_end: Annotated[float | None, _END_DOC] = None,
) -> StrengthTimesteps:
    """Keep the last `strength` part of the schedule, or start at `denoising_start`."""
    return _start_timesteps(
        scheduler, num_inference_steps, strength, denoising_start, denoising_end
    )


@mb.block
def inpaint_timesteps_xl(
    scheduler: mb.Component[SchedulerMixin],
    num_inference_steps: Annotated[int, Doc("the number of steps of the full schedule")],
    strength: Annotated[
        float, Doc("how much to change the masked area, from 0 (not at all) to 1 (pure noise)")
    ] = 0.9999,
    denoising_start: Annotated[float | None, _START_DOC] = None,
    denoising_end: Annotated[float | None, _END_DOC] = None,
) -> StrengthTimesteps:
    """Keep the last `strength` part of the schedule (default 0.9999), or `denoising_start`."""
    return _start_timesteps(
        scheduler, num_inference_steps, strength, denoising_start, denoising_end
    )


@mb.block(output="timesteps")
def apply_denoising_end(
    timesteps: Annotated[torch.Tensor, Doc("the timesteps to denoise at")],
    scheduler: mb.Component[SchedulerMixin],
    denoising_end: Annotated[float | None, _END_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the timesteps before `denoising_end`")]:
    """Drop the timesteps after `denoising_end`, for a refiner to finish (base + refiner)."""
    end = _fraction(denoising_end)
    if end is None:
        return timesteps
    return timesteps[: int((timesteps >= _cutoff(scheduler, end)).sum())]


# --- the VAE -----------------------------------------------------------------------------

# Devices and dtypes: diffusers' `ModelMixin.device` and `.dtype` look for offloading and
# casting hooks in every submodule (milliseconds for a UNet, on every call). These blocks
# take the device of the text embeddings (where diffusers puts every tensor of a run) and
# the dtype of the VAE's first floating-point parameter.


def _dtype(model: torch.nn.Module) -> torch.dtype:
    """Return the dtype of *model*'s first floating-point parameter."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


# `force_upcast` runs a float16 VAE in float32, by casting the shared VAE and back, as
# diffusers does. Runs of a pipeline share its VAE, so they cast it one at a time.
_UPCAST_LOCK = threading.Lock()


@contextlib.contextmanager
def _float32(vae: AutoencoderKL, *, always: bool) -> collections.abc.Generator[bool]:
    """Run the VAE in float32 if its config says `force_upcast`; yield whether it was cast.

    Decoding upcasts float16 VAEs only (*always* false); encoding casts any VAE, as diffusers.
    """
    if not vae.config.get("force_upcast", False):
        yield False
        return
    with _UPCAST_LOCK:
        dtype = _dtype(vae)
        upcast = always or dtype == torch.float16
        recast = upcast and dtype != torch.float32
        if recast:
            cast("torch.nn.Module", vae).to(dtype=torch.float32)
        try:
            yield upcast
        finally:
            if recast:
                cast("torch.nn.Module", vae).to(dtype=dtype)


def _latents_stats(
    vae: AutoencoderKL, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return the VAE's `latents_mean` and `latents_std` as tensors like *like*, if it has them."""
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is None or std is None:
        return None
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean).view(shape).to(like.device, like.dtype),
        torch.tensor(std).view(shape).to(like.device, like.dtype),
    )


def _encode(
    vae: AutoencoderKL, image: torch.Tensor, generator: Generator, *, normalize: bool = False
) -> torch.Tensor:
    """Encode images into latents (diffusers' SDXL `_encode_vae_image`).

    The latents get the image's dtype; they are scaled, or with *normalize* (image-to-image)
    normalized by the VAE's `latents_mean` and `latents_std` when it has them.
    """
    dtype = image.dtype
    with _float32(vae, always=True) as upcast:
        latents = sample_latents(vae, image.float() if upcast else image, generator).to(dtype)
    scale: float = vae.config["scaling_factor"]
    stats = _latents_stats(vae, latents) if normalize else None
    if stats is None:
        return scale * latents
    return (latents - stats[0]) * scale / stats[1]


@mb.block(output="decoded")
@torch.no_grad()  # inference only, also when run outside a Pipeline
def decode_latents_xl(
    latents: Annotated[torch.Tensor, Doc("the denoised latents")],
    vae: mb.Component[AutoencoderKL],
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('images in [-1, 1], or the latents for `output_type` "latent"')]:
    """Decode latents into images in [-1, 1], in float32 for a float16 `force_upcast` VAE."""
    if output_type == "latent":
        return latents
    scale: float = vae.config["scaling_factor"]
    with _float32(vae, always=False) as upcast:
        if upcast:
            latents = latents.to(torch.float32)
        stats = _latents_stats(vae, latents)
        latents = latents / scale if stats is None else latents * stats[1] / scale + stats[0]
        decoded: torch.Tensor = cast("_Codec", vae).decode(
            latents, return_dict=False, generator=None
        )[0]
    return decoded


# --- latents -----------------------------------------------------------------------------


@mb.block(output="latents")
@torch.no_grad()  # inference only, also when run outside a Pipeline
def prepare_img2img_latents_xl(
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1], or their latents")],
    timesteps: Annotated[
        torch.Tensor, Doc("the timesteps to denoise at; the first sets the noise level")
    ],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, _DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("latents to start from as they are, instead of the image's")
    ] = None,
    denoising_start: Annotated[
        float | None, Doc("if given, the image's latents are used without adding noise")
    ] = None,
) -> Annotated[torch.Tensor, Doc("the image's latents, noised to the first timestep")]:
    """Encode the image and noise it to the first timestep (`StableDiffusionXLImg2ImgPipeline`).

    Given `latents` are used as they are. With `denoising_start` (a refiner continuing a
    base's latents) no noise is added.
    """
    if latents is not None:
        return latents
    dtype, device = prompt_embeds.dtype, prompt_embeds.device
    image = init_image.to(device=device, dtype=dtype)
    if image.shape[1] == vae.config["latent_channels"]:
        init_latents = image
    else:
        _check_generators(generator, batch_size)
        if isinstance(generator, list):
            # With one generator per image, each copy of an image gets its own latent sample.
            image = torch.cat([image] * _copies(image, batch_size, "images"))
        init_latents = _encode(vae, image, generator, normalize=True)
    init_latents = torch.cat([init_latents] * _copies(init_latents, batch_size, "images"))
    if denoising_start is not None:
        return init_latents
    noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=dtype)
    return typed(scheduler).add_noise(init_latents, noise, timesteps[:1].repeat(batch_size))


@mb.block
@torch.no_grad()  # inference only, also when run outside a Pipeline
def prepare_inpaint_latents_xl(
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1], or their latents")],
    timesteps: Annotated[
        torch.Tensor, Doc("the timesteps to denoise at; the first sets the noise level")
    ],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, _DTYPE_DOC],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    strength: Annotated[float, Doc("how much to change the masked area, from 0 to 1")] = 0.9999,
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("initial noise to start from, instead of sampling it")
    ] = None,
    denoising_start: Annotated[
        float | None, Doc("if given, start from the image's latents without adding noise")
    ] = None,
) -> InpaintLatents:
    """Start from noise (`strength` 1), the noised image, or the image (`denoising_start`).

    `StableDiffusionXLInpaintPipeline.prepare_latents`: the legacy 4-channel UNet re-blends
    the unmasked area from the image's latents after every step, so they are encoded for it.
    """
    dtype, device = prompt_embeds.dtype, prompt_embeds.device
    factor = vae_scale_factor(vae)
    shape = (batch_size, vae.config["latent_channels"], height // factor, width // factor)
    _check_generators(generator, batch_size)
    is_strength_max = strength == 1.0
    add_noise = denoising_start is None
    image_latents = None
    if init_image.shape[1] == vae.config["latent_channels"]:
        image_latents = init_image.to(device=device, dtype=dtype)
    elif (
        unet.config["in_channels"] == 4
        or not add_noise
        or (latents is None and not is_strength_max)
    ):
        image_latents = _encode(vae, init_image.to(device=device, dtype=dtype), generator)
    if image_latents is not None:
        image_latents = image_latents.repeat(batch_size // image_latents.shape[0], 1, 1, 1)
    init_noise_sigma = typed(scheduler).init_noise_sigma
    if latents is not None and add_noise:
        noise = latents.to(device)
        return InpaintLatents(noise * init_noise_sigma, noise, image_latents)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if image_latents is not None and not add_noise:
        return InpaintLatents(image_latents, noise, image_latents)
    if image_latents is None or is_strength_max:
        return InpaintLatents(noise * init_noise_sigma, noise, image_latents)
    noised = typed(scheduler).add_noise(image_latents, noise, timesteps[:1].repeat(batch_size))
    return InpaintLatents(noised, noise, image_latents)


@mb.block
@torch.no_grad()  # inference only, also when run outside a Pipeline
def prepare_mask_latents_xl(
    mask_condition: Annotated[torch.Tensor, Doc("the binary mask, at the image's size")],
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1]")],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, _DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
    masked_image_latents: Annotated[
        torch.Tensor | None, Doc("precomputed latents of the masked image")
    ] = None,
) -> MaskLatents:
    """Resize the mask to the latents and encode the masked image (in float32 if upcast)."""

    def encode(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == vae.config["latent_channels"]:
            return image
        return _encode(vae, image, generator)

    size = (height, width)
    dtype = prompt_embeds.dtype
    return mask_latents(
        mask_condition, init_image, batch_size, size, dtype, vae, encode, masked_image_latents
    )


# --- denoising ---------------------------------------------------------------------------


@mb.block(output="noise_pred")
@torch.no_grad()  # inference only, also when run outside a Pipeline
def predict_noise_xl(
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input")],
    t: Annotated[torch.Tensor, Doc("the current timestep")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    add_text_embeds: Annotated[torch.Tensor, Doc("pooled text embeddings")],
    add_time_ids: Annotated[torch.Tensor, Doc("micro-conditioning time ids")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    guidance_scale: Annotated[float, Doc("classifier-free guidance weight")] = 5.0,
    guidance_rescale: Annotated[
        float, Doc("rescale guided noise to fix overexposure (0: off), arXiv 2305.08891")
    ] = 0.0,
) -> Annotated[torch.Tensor, Doc("the noise prediction, guided")]:
    """Predict the noise with one UNet call conditioned on SDXL's extra inputs, and guide it."""
    added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
    noise_pred: torch.Tensor = unet(
        latent_model_input,
        t,
        encoder_hidden_states=prompt_embeds,
        added_cond_kwargs=added_cond_kwargs,
        return_dict=False,
    )[0]
    return guide(noise_pred, do_cfg, guidance_scale, guidance_rescale)


_loop = functools.partial(mb.loop, over="timesteps", index="i", item="t")

denoise_xl = _loop(scale_model_input >> predict_noise_xl >> scheduler_step).named("denoise")
"""The denoising loop of SDXL text-to-image and image-to-image."""

denoise_inpaint_xl = _loop(
    scale_model_input
    >> add_inpaint_channels
    >> predict_noise_xl
    >> scheduler_step
    >> blend_masked_latents
).named("denoise")
"""The denoising loop of SDXL inpainting: 9-channel UNets, or re-blending for 4-channel ones."""


@mb.block(output="guidance_scale")
def inpaint_guidance_scale(
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 7.5,
) -> Annotated[float, Doc("the guidance weight")]:
    """Default the guidance weight to 7.5, as `StableDiffusionXLInpaintPipeline` does (not 5)."""
    return guidance_scale


# --- pipelines ---------------------------------------------------------------------------

sdxl_text2img = (
    encode_prompt_xl
    >> default_size
    >> set_timesteps
    >> prepare_latents
    >> text2img_time_ids
    >> apply_denoising_end
    >> denoise_xl
    >> decode_latents_xl
    >> postprocess
).named("sdxl_text2img")
"""Text-to-image, as `StableDiffusionXLPipeline`."""

sdxl_img2img = (
    encode_prompt_xl
    >> preprocess_image
    >> set_timesteps
    >> img2img_timesteps_xl
    >> prepare_img2img_latents_xl
    >> img2img_time_ids
    >> apply_denoising_end
    >> denoise_xl
    >> decode_latents_xl
    >> postprocess
).named("sdxl_img2img")
"""Image-to-image (and refining), as `StableDiffusionXLImg2ImgPipeline`."""

sdxl_inpaint = (
    inpaint_guidance_scale
    >> encode_prompt_xl
    >> default_size
    >> set_timesteps
    >> inpaint_timesteps_xl
    >> preprocess_image
    >> preprocess_mask
    >> prepare_inpaint_latents_xl
    >> prepare_mask_latents_xl
    >> img2img_time_ids
    >> apply_denoising_end
    >> denoise_inpaint_xl
    >> decode_latents_xl
    >> postprocess
).named("sdxl_inpaint")
"""Inpainting, as `StableDiffusionXLInpaintPipeline` (9-channel or 4-channel UNet)."""

stable_diffusion_xl = mb.switch(
    {"mask_image": sdxl_inpaint, "image": sdxl_img2img}, default=sdxl_text2img
).named("stable_diffusion_xl")
"""Inpainting if `mask_image` is given, else image-to-image if `image` is, else text-to-image."""
