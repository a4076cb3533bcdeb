"""Initial latents of UNet models: noise (text-to-image), a noised image, inpainting.

SD 1.x and SDXL share the computation; SDXL's blocks encode with its VAE (float32 upcast,
normalized latents), take given `latents` in image-to-image, and start from the image's
latents without noise at `denoising_start` (a refiner continuing a base's work).
"""

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

from ._grad import no_grad
from ._scheduler import typed
from .common import DTYPE_DOC, GENERATOR_DOC, Generator, check_generators, copies, device_of
from .vae import encode_image, encode_image_xl, vae_scale_factor

__all__ = [
    "InpaintLatents",
    "MaskLatents",
    "batch_image_latents",
    "mask_latents",
    "prepare_img2img_latents",
    "prepare_img2img_latents_xl",
    "prepare_inpaint_latents",
    "prepare_inpaint_latents_xl",
    "prepare_latents",
    "prepare_mask_latents",
    "prepare_mask_latents_xl",
]

Encode = Callable[[torch.Tensor], torch.Tensor]
"""Encodes images into latents (and passes latents through)."""

_INIT_IMAGE_DOC = Doc("the image(s) in [-1, 1], or their latents")
_TIMESTEPS_DOC = Doc("the timesteps to denoise at; the first sets the noise level")


@mb.block(output="latents")
def prepare_latents(
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("initial noise to start from, instead of sampling it")
    ] = None,
) -> Annotated[torch.Tensor, Doc("the initial noise, scaled by the scheduler's initial sigma")]:
    """Sample the initial noise, scaled by the scheduler's initial sigma."""
    factor = vae_scale_factor(vae)
    shape = (batch_size, unet.config["in_channels"], height // factor, width // factor)
    check_generators(generator, batch_size)
    if latents is None:
        latents = randn_tensor(
            shape, generator=generator, device=device_of(unet), dtype=prompt_embeds.dtype
        )
    else:
        latents = latents.to(device_of(unet))
    return latents * typed(scheduler).init_noise_sigma


# --- image-to-image ------------------------------------------------------------------------


def batch_image_latents(
    image: torch.Tensor, batch_size: int, generator: Generator, encode: Encode
) -> torch.Tensor:
    """Encode images and repeat their latents to fill the batch (`[a, b, a, b]`).

    With one generator per image, each copy of an image gets its own latent sample.
    """
    check_generators(generator, batch_size)
    # torch.cat rather than repeat, as in diffusers: cat keeps the memory layout of the VAE's
    # output, and the UNet's convolutions round differently on another layout.
    if isinstance(generator, list):
        image = torch.cat([image] * copies(image, batch_size, "images"))
    latents = encode(image)
    return torch.cat([latents] * copies(latents, batch_size, "images"))


def _noised(
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    scheduler: SchedulerMixin,
    generator: Generator,
) -> torch.Tensor:
    """Noise *latents* to the first of *timesteps*."""
    noise = randn_tensor(
        latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
    )
    return typed(scheduler).add_noise(latents, noise, timesteps[:1].repeat(latents.shape[0]))


@mb.block(output="latents")
@no_grad  # inference only, also when run outside a Pipeline
def prepare_img2img_latents(
    init_image: Annotated[torch.Tensor, _INIT_IMAGE_DOC],
    timesteps: Annotated[torch.Tensor, _TIMESTEPS_DOC],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the image's latents, noised to the first timestep")]:
    """Encode the image and noise it to the first timestep (`StableDiffusionImg2ImgPipeline`)."""
    image = init_image.to(device=device_of(vae), dtype=prompt_embeds.dtype)
    encode = functools.partial(encode_image, vae, generator=generator)
    init_latents = batch_image_latents(image, batch_size, generator, encode)
    return _noised(init_latents, timesteps, scheduler, generator)


@mb.block(output="latents")
@no_grad  # inference only, also when run outside a Pipeline
def prepare_img2img_latents_xl(
    init_image: Annotated[torch.Tensor, _INIT_IMAGE_DOC],
    timesteps: Annotated[torch.Tensor, _TIMESTEPS_DOC],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
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
    image = init_image.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
    encode = _xl_encoder(vae, generator, normalize=True)
    init_latents = batch_image_latents(image, batch_size, generator, encode)
    if denoising_start is not None:
        return init_latents
    return _noised(init_latents, timesteps, scheduler, generator)


def _xl_encoder(vae: AutoencoderKL, generator: Generator, *, normalize: bool = False) -> Encode:
    """Return SDXL's encoder of images, which passes latents through."""

    def encode(image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == vae.config["latent_channels"]:
            return image
        return encode_image_xl(vae, image, generator, normalize=normalize)

    return encode


# --- inpainting ----------------------------------------------------------------------------


class InpaintLatents(NamedTuple):
    """Inpainting's initial latents, and what its legacy 4-channel UNet re-blends with."""

    latents: Annotated[torch.Tensor, Doc("the initial latents")]
    noise: Annotated[torch.Tensor, Doc("the noise the latents were made from")]
    image_latents: Annotated[torch.Tensor | None, Doc("the image's latents, if they were needed")]


def _inpaint_latents(
    init_image: torch.Tensor,
    timesteps: torch.Tensor,
    shape: tuple[int, int, int, int],
    like: torch.Tensor,
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    strength: float,
    generator: Generator,
    latents: torch.Tensor | None,
    encode: Encode,
    *,
    add_noise: bool = True,
) -> InpaintLatents:
    """Start from noise (`strength` 1), the noised image, or the image (not *add_noise*).

    *like* gives the latents' device and dtype. The legacy 4-channel UNet re-blends the
    unmasked area from the image's latents after every step, so they are encoded for it.
    """
    batch_size = shape[0]
    dtype, device = like.dtype, like.device
    check_generators(generator, batch_size)
    is_strength_max = strength == 1.0
    image_latents = None
    if init_image.shape[1] == shape[1]:
        image_latents = init_image.to(device=device, dtype=dtype)
    elif (
        unet.config["in_channels"] == 4
        or not add_noise
        or (latents is None and not is_strength_max)
    ):
        image_latents = encode(init_image.to(device=device, dtype=dtype))
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


def _latents_shape(
    vae: AutoencoderKL, batch_size: int, height: int, width: int
) -> tuple[int, int, int, int]:
    factor = vae_scale_factor(vae)
    return (batch_size, vae.config["latent_channels"], height // factor, width // factor)


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_inpaint_latents(
    init_image: Annotated[torch.Tensor, _INIT_IMAGE_DOC],
    timesteps: Annotated[torch.Tensor, _TIMESTEPS_DOC],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    strength: Annotated[float, Doc("how much to change the masked area, from 0 to 1")] = 1.0,
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("initial noise to start from, instead of sampling it")
    ] = None,
) -> InpaintLatents:
    """Start from pure noise (`strength` 1) or from the noised image, as inpainting does.

    The legacy 4-channel inpainting UNet re-blends the unmasked area from the image's
    latents after every step, so they are encoded for it even at `strength` 1.
    """
    like = torch.empty(0, dtype=prompt_embeds.dtype, device=device_of(unet))
    encode = functools.partial(encode_image, vae, generator=generator)
    shape = _latents_shape(vae, batch_size, height, width)
    return _inpaint_latents(
        init_image, timesteps, shape, like, unet, scheduler, strength, generator, latents, encode
    )


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_inpaint_latents_xl(
    init_image: Annotated[torch.Tensor, _INIT_IMAGE_DOC],
    timesteps: Annotated[torch.Tensor, _TIMESTEPS_DOC],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    strength: Annotated[float, Doc("how much to change the masked area, from 0 to 1")] = 0.9999,
    generator: Annotated[Generator, GENERATOR_DOC] = None,
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
    shape = _latents_shape(vae, batch_size, height, width)
    return _inpaint_latents(
        init_image,
        timesteps,
        shape,
        prompt_embeds,
        unet,
        scheduler,
        strength,
        generator,
        latents,
        _xl_encoder(vae, generator),
        add_noise=denoising_start is None,
    )


class MaskLatents(NamedTuple):
    """The mask and the masked image, at the latents' size."""

    mask: Annotated[torch.Tensor, Doc("the mask resized to the latents, one per image")]
    masked_image_latents: Annotated[
        torch.Tensor, Doc("latents of the image with the masked area blanked, one per image")
    ]


def mask_latents(
    mask_condition: torch.Tensor,
    init_image: torch.Tensor,
    batch_size: int,
    size: tuple[int, int],
    dtype: torch.dtype,
    vae: AutoencoderKL,
    encode: Encode,
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
        masked_image = masked_image_latents  # latents pass through the encoders unchanged
    masked_image_latents = encode(masked_image.to(device=device, dtype=dtype))
    return MaskLatents(
        mask.repeat(copies(mask, batch_size, "masks"), 1, 1, 1),
        masked_image_latents.repeat(copies(masked_image_latents, batch_size, "images"), 1, 1, 1),
    )


_MASK_DOC = Doc("the binary mask, at the image's size")
_MASKED_DOC = Doc("precomputed latents of the masked image")


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_mask_latents(
    mask_condition: Annotated[torch.Tensor, _MASK_DOC],
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1]")],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    masked_image_latents: Annotated[torch.Tensor | None, _MASKED_DOC] = None,
) -> MaskLatents:
    """Resize the mask to the latents and encode the masked image, for the inpainting UNet."""
    encode = functools.partial(encode_image, vae, generator=generator)
    size, dtype = (height, width), prompt_embeds.dtype
    return mask_latents(
        mask_condition, init_image, batch_size, size, dtype, vae, encode, masked_image_latents
    )


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def prepare_mask_latents_xl(
    mask_condition: Annotated[torch.Tensor, _MASK_DOC],
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1]")],
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    masked_image_latents: Annotated[torch.Tensor | None, _MASKED_DOC] = None,
) -> MaskLatents:
    """Resize the mask to the latents and encode the masked image (in float32 if upcast)."""
    encode = _xl_encoder(vae, generator)
    size, dtype = (height, width), prompt_embeds.dtype
    return mask_latents(
        mask_condition, init_image, batch_size, size, dtype, vae, encode, masked_image_latents
    )
