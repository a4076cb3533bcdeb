"""Initial latents for flow-matching models: noise, or an image mixed with noise (SD3).

Flow matching noises an image by mixing, `sigma * noise + (1 - sigma) * image`, which the
scheduler's `scale_noise` does; there is no initial sigma to scale pure noise by. Flux's
packed latents (`packing`) are made from the same pieces.
"""

from __future__ import annotations

from typing import Annotated

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor  # pyright: ignore[reportUnknownVariableType]
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from ._scheduler import typed
from .common import DTYPE_DOC, GENERATOR_DOC, Generator, check_generators, copies
from .vae import encode_image_flow, vae_scale_factor

__all__ = [
    "image_latents_flow",
    "noise_like",
    "prepare_img2img_latents_sd3",
    "prepare_latents_sd3",
    "repeat_to_batch",
    "scale_noise",
]


def repeat_to_batch(latents: torch.Tensor, batch_size: int, what: str = "images") -> torch.Tensor:
    """Repeat a batch of latents to *batch_size* rows (`[a, b, a, b]`), as diffusers' `cat`."""
    return torch.cat([latents] * copies(latents, batch_size, what))


def image_latents_flow(
    init_image: torch.Tensor,
    batch_size: int,
    like: torch.Tensor,
    vae: AutoencoderKL,
    generator: Generator,
) -> torch.Tensor:
    """Encode images (one generator per image if a list) and repeat them to fill the batch.

    *like* gives the device and dtype; latents (images with the VAE's latent channels) are
    taken as they are.
    """
    image = init_image.to(device=like.device, dtype=like.dtype)
    return repeat_to_batch(encode_image_flow(vae, image, generator), batch_size)


def noise_like(shape: tuple[int, ...], like: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Sample Gaussian noise of *shape* on *like*'s device and dtype."""
    noise: torch.Tensor = randn_tensor(
        shape, generator=generator, device=like.device, dtype=like.dtype
    )
    return noise


def scale_noise(
    latents: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor, scheduler: SchedulerMixin
) -> torch.Tensor:
    """Mix *latents* with *noise* at the first of *timesteps* (one per row)."""
    return typed(scheduler).scale_noise(latents, timesteps[:1].repeat(latents.shape[0]), noise)


@mb.block(output="latents")
def prepare_latents_sd3(
    batch_size: Annotated[int, Doc("number of images")],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    transformer: mb.Component[SD3Transformer2DModel],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("initial noise to start from, instead of sampling it")
    ] = None,
) -> Annotated[torch.Tensor, Doc("the initial noise")]:
    """Sample the initial noise (`StableDiffusion3Pipeline.prepare_latents`)."""
    if latents is not None:
        return latents.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
    factor = vae_scale_factor(vae)
    shape = (batch_size, transformer.config["in_channels"], height // factor, width // factor)
    check_generators(generator, batch_size)
    return noise_like(shape, prompt_embeds, generator)


@mb.block(output="latents")
@no_grad  # inference only, also when run outside a Pipeline
def prepare_img2img_latents_sd3(
    init_image: Annotated[torch.Tensor, Doc("the image(s) in [-1, 1], or their latents")],
    timesteps: Annotated[
        torch.Tensor, Doc("the timesteps to denoise at; the first sets the noise level")
    ],
    batch_size: Annotated[int, Doc("number of images")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    vae: mb.Component[AutoencoderKL],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, GENERATOR_DOC] = None,
    latents: Annotated[
        torch.Tensor | None, Doc("latents to start from as they are, instead of the image's")
    ] = None,
) -> Annotated[torch.Tensor, Doc("the image's latents, mixed with noise at the first timestep")]:
    """Encode the image and mix it with noise (`StableDiffusion3Img2ImgPipeline`)."""
    if latents is not None:
        return latents
    check_generators(generator, batch_size)
    image_latents = image_latents_flow(init_image, batch_size, prompt_embeds, vae, generator)
    noise = noise_like(tuple(image_latents.shape), prompt_embeds, generator)
    return scale_noise(image_latents, timesteps, noise, scheduler).to(prompt_embeds.dtype)
