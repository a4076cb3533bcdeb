"""Initial latents: pure noise (text-to-image), a noised image (image-to-image), inpainting."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, NamedTuple

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor  # pyright: ignore[reportUnknownVariableType]
from typing_extensions import Doc

import modblocks as mb

from ._scheduler import typed
from .vae import Generator, device_of, encode_image, vae_scale_factor

__all__ = [
    "InpaintLatents",
    "MaskLatents",
    "prepare_img2img_latents",
    "prepare_inpaint_latents",
    "prepare_latents",
    "prepare_mask_latents",
]

_GENERATOR_DOC = Doc("a generator for the whole batch, or one per image, for reproducible runs")


def _check_generators(generator: Generator, batch_size: int) -> None:
    if isinstance(generator, list) and len(generator) != batch_size:
        msg = (
            f"{len(generator)} generators were given for {batch_size} images. "
            "Give one generator, or one per image (prompts × `num_images_per_prompt`)."
        )
        raise ValueError(msg)


def _copies(tensor: torch.Tensor, batch_size: int, what: str) -> int:
    """Return how many copies of a batch of *what* fill *batch_size* rows (`[a, b, a, b]`)."""
    if batch_size % tensor.shape[0]:
        msg = (
            f"{tensor.shape[0]} {what} can't fill a batch of {batch_size} images. "
            f"Give a number of {what} that divides {batch_size}."
        )
        raise ValueError(msg)
    return batch_size // tensor.shape[0]


@mb.block(output="latents")
def prepare_latents(
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings (their dtype is the latents')")],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("initial noise to start from, instead of sampling it")
    ] = None,
) -> Annotated[torch.Tensor, Doc("the initial noise, scaled by the scheduler's initial sigma")]:
    """Sample the initial noise, scaled by the scheduler's initial sigma."""
    factor = vae_scale_factor(vae)
    shape = (batch_size, unet.config["in_channels"], height // factor, width // factor)
    _check_generators(generator, batch_size)
    if latents is None:
        latents = randn_tensor(
            shape, generator=generator, device=device_of(unet), dtype=prompt_embeds.dtype
        )
    else:
        latents = latents.to(device_of(unet))
    return latents * typed(scheduler).init_noise_sigma


@mb.block(output="latents")
@torch.no_grad()  # inference only, also when run outside a Pipeline
def prepare_img2img_latents(
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1], or their latents")],
    timesteps: Annotated[
        torch.Tensor, Doc("the timesteps to denoise at; the first sets the noise level")
    ],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings (their dtype is the latents')")],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the image's latents, noised to the first timestep")]:
    """Encode the image and noise it to the first timestep (`StableDiffusionImg2ImgPipeline`)."""
    dtype = prompt_embeds.dtype
    device = device_of(vae)
    image = init_image.to(device=device, dtype=dtype)
    _check_generators(generator, batch_size)
    # torch.cat rather than repeat, as in diffusers: cat keeps the memory layout of the VAE's
    # output, and the UNet's convolutions round differently on another layout.
    if isinstance(generator, list):
        # With one generator per image, each copy of an image gets its own latent sample.
        image = torch.cat([image] * _copies(image, batch_size, "images"))
    init_latents = encode_image(vae, image, generator)
    init_latents = torch.cat([init_latents] * _copies(init_latents, batch_size, "images"))
    noise = randn_tensor(init_latents.shape, generator=generator, device=device, dtype=dtype)
    latent_timestep = timesteps[:1].repeat(batch_size)
    return typed(scheduler).add_noise(init_latents, noise, latent_timestep)


class InpaintLatents(NamedTuple):
    """Inpainting's initial latents, and what its legacy 4-channel UNet re-blends with."""

    latents: Annotated[torch.Tensor, Doc("the initial latents")]
    noise: Annotated[torch.Tensor, Doc("the noise the latents were made from")]
    image_latents: Annotated[torch.Tensor | None, Doc("the image's latents, if they were needed")]


@mb.block
@torch.no_grad()  # inference only, also when run outside a Pipeline
def prepare_inpaint_latents(
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1], or their latents")],
    timesteps: Annotated[
        torch.Tensor, Doc("the timesteps to denoise at; the first sets the noise level")
    ],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings (their dtype is the latents')")],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    strength: Annotated[float, Doc("how much to change the masked area, from 0 to 1")] = 1.0,
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("initial noise to start from, instead of sampling it")
    ] = None,
) -> InpaintLatents:
    """Start from pure noise (`strength` 1) or from the noised image, as inpainting does.

    The legacy 4-channel inpainting UNet re-blends the unmasked area from the image's
    latents after every step, so they are encoded for it even at `strength` 1.
    """
    dtype, device = prompt_embeds.dtype, device_of(unet)
    factor = vae_scale_factor(vae)
    shape = (batch_size, vae.config["latent_channels"], height // factor, width // factor)
    _check_generators(generator, batch_size)
    is_strength_max = strength == 1.0
    image_latents = None
    if unet.config["in_channels"] == 4 or (latents is None and not is_strength_max):
        image_latents = encode_image(vae, init_image.to(device=device, dtype=dtype), generator)
        image_latents = image_latents.repeat(batch_size // image_latents.shape[0], 1, 1, 1)
    init_noise_sigma = typed(scheduler).init_noise_sigma
    if latents is not None:
        noise = latents.to(device)
        return InpaintLatents(noise * init_noise_sigma, noise, image_latents)
    noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if image_latents is None or is_strength_max:
        return InpaintLatents(noise * init_noise_sigma, noise, image_latents)
    latent_timestep = timesteps[:1].repeat(batch_size)
    noised = typed(scheduler).add_noise(image_latents, noise, latent_timestep)
    return InpaintLatents(noised, noise, image_latents)


class MaskLatents(NamedTuple):
    """The mask and the masked image, at the latents' size."""

    mask: Annotated[torch.Tensor, Doc("the mask resized to the latents, one per image")]
    masked_image_latents: Annotated[
        torch.Tensor, Doc("latents of the image with the masked area blanked, one per image")
    ]


@mb.block
@torch.no_grad()  # inference only, also when run outside a Pipeline
def prepare_mask_latents(
    mask_condition: Annotated[torch.Tensor, Doc("the binary mask, at the image's size")],
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1]")],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings (their dtype is the latents')")],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, _GENERATOR_DOC] = None,
    masked_image_latents: Annotated[
        torch.Tensor | None, Doc("precomputed latents of the masked image")
    ] = None,
) -> MaskLatents:
    """Resize the mask to the latents and encode the masked image, for the inpainting UNet."""
    encode = functools.partial(encode_image, generator=generator)
    return mask_latents(
        mask_condition,
        init_image,
        batch_size,
        (height, width),
        prompt_embeds.dtype,
        vae,
        encode,
        masked_image_latents,
    )


def mask_latents(
    mask_condition: torch.Tensor,
    init_image: torch.Tensor,
    batch_size: int,
    size: tuple[int, int],
    dtype: torch.dtype,
    vae: AutoencoderKL,
    encode: Callable[[AutoencoderKL, torch.Tensor], torch.Tensor],
    masked_image_latents: torch.Tensor | None = None,
) -> MaskLatents:
    """Compute `prepare_mask_latents`, encoding the masked image with *encode*."""
    device = device_of(vae)
    factor = vae_scale_factor(vae)
    mask = torch.nn.functional.interpolate(
        mask_condition, size=(size[0] // factor, size[1] // factor)
    )
    mask = mask.to(device=device, dtype=dtype)
    # Encoded even for the 4-channel UNet, which doesn't read it: diffusers does, and the
    # generator must be drawn from exactly as there for the same images.
    if masked_image_latents is None:
        masked_image = init_image * (mask_condition < 0.5)
    else:
        masked_image = masked_image_latents  # latents pass through encode_image unchanged
    masked_image_latents = encode(vae, masked_image.to(device=device, dtype=dtype))
    return MaskLatents(
        mask.repeat(_copies(mask, batch_size, "masks"), 1, 1, 1),
        masked_image_latents.repeat(_copies(masked_image_latents, batch_size, "images"), 1, 1, 1),
    )
