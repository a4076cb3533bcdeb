"""Flux's packed latents: 2x2 latent patches as tokens, with their position ids.

The transformer sees latents `(batch, channels, h, w)` as a sequence of `h/2 * w/2` tokens
of `4 * channels` values, and each token's `(0, row, column)` as its position. Sizes that
2x2 patches don't tile are rounded down. Noise and images are made as for any
flow-matching model (`flow_latents`), then packed.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple, TypeAlias

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from .common import DTYPE_DOC, GENERATOR_DOC, Generator, OutputType, check_generators, copies
from .flow_latents import image_latents_flow, noise_like, scale_noise
from .latents import MaskLatents
from .vae import PackedVAE, encode_image_flow, vae_scale_factor

__all__ = [
    "PackedInpaintLatents",
    "PackedLatents",
    "PackedTransformer",
    "latent_image_ids",
    "pack_latents",
    "prepare_img2img_latents_flux",
    "prepare_img_shapes_qwen",
    "prepare_inpaint_latents_flux",
    "prepare_latents_flux",
    "prepare_mask_latents_flux",
    "unpack",
    "unpack_latents",
]

PackedTransformer: TypeAlias = FluxTransformer2DModel | QwenImageTransformer2DModel
"""The transformers that read 2x2 latent patches as tokens."""

_INIT_IMAGE_DOC = Doc("the image(s) in [-1, 1], or their latents")
_TIMESTEPS_DOC = Doc("the timesteps to denoise at; the first sets the noise level")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Pack `(batch, c, h, w)` latents into `(batch, h/2 * w/2, 4c)` tokens of 2x2 patches."""
    batch, channels, height, width = latents.shape
    latents = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    latents = latents.permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(latents: torch.Tensor, height: int, width: int, factor: int) -> torch.Tensor:
    """Unpack tokens into `(batch, c, h, w)` latents of a *height* x *width* pixel image."""
    batch, _, channels = latents.shape
    height, width = 2 * (height // (factor * 2)), 2 * (width // (factor * 2))
    latents = latents.view(batch, height // 2, width // 2, channels // 4, 2, 2)
    latents = latents.permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(batch, channels // 4, height, width)


def latent_image_ids(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Return the `(0, row, column)` position of each of *height* x *width* tokens."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


def _shape(
    batch_size: int, height: int, width: int, transformer: PackedTransformer, factor: int
) -> tuple[int, int, int, int]:
    """Return the unpacked latents' shape for an image, rounded down to whole patches."""
    channels = transformer.config["in_channels"] // 4
    return (batch_size, channels, 2 * (height // (factor * 2)), 2 * (width // (factor * 2)))


class PackedLatents(NamedTuple):
    """Flux's initial latents, and the position of each token."""

    latents: Annotated[torch.Tensor, Doc("the initial latents, packed: `(batch, tokens, 4c)`")]
    latent_image_ids: Annotated[torch.Tensor, Doc("each token's position `(0, row, column)`")]


def _ids(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return latent_image_ids(shape[2] // 2, shape[3] // 2, like.device, like.dtype)


@mb.block
def prepare_latents_flux(
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    transformer: mb.Component[PackedTransformer],
    vae: mb.Component[PackedVAE],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("packed initial noise to start from, instead of sampling it")
    ] = None,
) -> PackedLatents:
    """Sample the initial noise and pack it (`FluxPipeline.prepare_latents`, Qwen-Image's)."""
    shape = _shape(batch_size, height, width, transformer, vae_scale_factor(vae))
    ids = _ids(shape, prompt_embeds)
    if latents is not None:
        return PackedLatents(latents.to(prompt_embeds.device, prompt_embeds.dtype), ids)
    check_generators(generator, batch_size)
    return PackedLatents(pack_latents(noise_like(shape, prompt_embeds, generator)), ids)


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_img2img_latents_flux(
    init_image: Annotated[torch.Tensor, _INIT_IMAGE_DOC],
    timesteps: Annotated[torch.Tensor, _TIMESTEPS_DOC],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    transformer: mb.Component[FluxTransformer2DModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("packed latents to start from as they are, instead of the image's")
    ] = None,
) -> PackedLatents:
    """Encode the image, mix it with noise and pack it (`FluxImg2ImgPipeline.prepare_latents`)."""
    check_generators(generator, batch_size)
    shape = _shape(batch_size, height, width, transformer, vae_scale_factor(vae))
    ids = _ids(shape, prompt_embeds)
    if latents is not None:
        return PackedLatents(latents.to(prompt_embeds.device, prompt_embeds.dtype), ids)
    image_latents = image_latents_flow(init_image, batch_size, prompt_embeds, vae, generator)
    noise = noise_like(shape, prompt_embeds, generator)
    return PackedLatents(pack_latents(scale_noise(image_latents, timesteps, noise, scheduler)), ids)


class PackedInpaintLatents(NamedTuple):
    """Flux inpainting's initial latents, what they are re-blended with, and token positions."""

    latents: Annotated[torch.Tensor, Doc("the initial latents, packed")]
    noise: Annotated[torch.Tensor, Doc("the noise the latents were made from, packed")]
    image_latents: Annotated[torch.Tensor | None, Doc("the image's latents, packed")]
    latent_image_ids: Annotated[torch.Tensor, Doc("each token's position `(0, row, column)`")]


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_inpaint_latents_flux(
    init_image: Annotated[torch.Tensor, _INIT_IMAGE_DOC],
    timesteps: Annotated[torch.Tensor, _TIMESTEPS_DOC],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    transformer: mb.Component[FluxTransformer2DModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("unpacked initial noise to start from, instead of sampling it")
    ] = None,
) -> PackedInpaintLatents:
    """Mix the image's latents with noise, and keep both for re-blending after every step.

    `FluxInpaintPipeline.prepare_latents`: given `latents` are the noise, and the start.
    """
    check_generators(generator, batch_size)
    shape = _shape(batch_size, height, width, transformer, vae_scale_factor(vae))
    image_latents = image_latents_flow(init_image, batch_size, prompt_embeds, vae, generator)
    if latents is None:
        noise = noise_like(shape, prompt_embeds, generator)
        latents = scale_noise(image_latents, timesteps, noise, scheduler)
    else:
        noise = latents = latents.to(prompt_embeds.device)
    return PackedInpaintLatents(
        pack_latents(latents),
        pack_latents(noise),
        pack_latents(image_latents),
        _ids(shape, prompt_embeds),
    )


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_mask_latents_flux(
    mask_condition: Annotated[torch.Tensor, Doc("the binary mask, at the image's size")],
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1]")],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    transformer: mb.Component[FluxTransformer2DModel],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    masked_image_latents: Annotated[
        torch.Tensor | None, Doc("precomputed latents of the masked image")
    ] = None,
) -> MaskLatents:
    """Resize the mask to the latents, encode the masked image, and pack both.

    `FluxInpaintPipeline.prepare_mask_latents`: the mask gets one copy per latent channel.
    """
    shape = _shape(batch_size, height, width, transformer, vae_scale_factor(vae))
    dtype, device = prompt_embeds.dtype, prompt_embeds.device
    mask = torch.nn.functional.interpolate(mask_condition, size=shape[2:])
    mask = mask.to(device=device, dtype=dtype)
    if masked_image_latents is None:
        masked_image = init_image * (mask_condition < 0.5)
    else:
        masked_image = masked_image_latents  # latents pass through the encoder unchanged
    masked = masked_image.to(device=device, dtype=dtype)
    # One VAE call for the batch, as diffusers: a list of generators samples row by row.
    masked = encode_image_flow(vae, masked, generator, one_by_one=False)
    mask = mask.repeat(copies(mask, batch_size, "masks"), 1, 1, 1)
    masked = masked.repeat(copies(masked, batch_size, "images"), 1, 1, 1)
    return MaskLatents(
        pack_latents(mask.repeat(1, shape[1], 1, 1)),
        pack_latents(masked.to(device=device, dtype=dtype)),
    )


@mb.block(output="img_shapes")
def prepare_img_shapes_qwen(
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    batch_size: Annotated[int, Doc("number of images")],
    vae: mb.Component[PackedVAE],
    num_images_per_prompt: Annotated[int, Doc("number of images to make per prompt")] = 1,
) -> Annotated[
    list[list[tuple[int, int, int]]], Doc("the token grid `(frames, rows, columns)`, per prompt")
]:
    """Give Qwen-Image's transformer the grid of latent tokens, for its position embedding."""
    factor = vae_scale_factor(vae)
    grid = (1, height // factor // 2, width // factor // 2)
    # One per prompt, not per image, as diffusers: the transformer reads the first.
    return [[grid]] * (batch_size // num_images_per_prompt)


@mb.block(output="latents")
def unpack_latents(
    latents: Annotated[torch.Tensor, Doc("the denoised latents, packed")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    vae: mb.Component[PackedVAE],
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('the latents as `(batch, c, h, w)`; packed for output "latent"')]:
    """Unpack the latents for the VAE (for output type "latent", keep them packed)."""
    if output_type == "latent":
        return latents
    return unpack(latents, height, width, vae_scale_factor(vae))
