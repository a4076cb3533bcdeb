"""SDXL's micro-conditioning: the UNet's time ids (sizes, crop corner, aesthetic score)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Any, cast

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from typing_extensions import Doc

import modblocks as mb

from .common import DTYPE_DOC
from .vae import vae_scale_factor

__all__ = ["img2img_time_ids", "text2img_time_ids"]

Size2 = tuple[int, int]


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
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
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
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
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
