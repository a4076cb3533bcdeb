"""The denoising loop: one UNet call per step on the batch `[negative, positive]`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from typing_extensions import Doc

import modblocks as mb

from ._scheduler import typed
from .vae import Generator

__all__ = [
    "add_inpaint_channels",
    "blend_masked_latents",
    "denoise",
    "denoise_inpaint",
    "predict_noise",
    "rescale_noise_cfg",
    "scale_model_input",
    "scheduler_step",
]

_T_DOC = Doc("the current timestep")


@mb.block(output="latent_model_input")
def scale_model_input(
    latents: Annotated[torch.Tensor, Doc("the current latents")],
    t: Annotated[torch.Tensor, _T_DOC],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    scheduler: mb.Component[SchedulerMixin],
) -> Annotated[torch.Tensor, Doc("the UNet's input: the latents, twice with guidance, scaled")]:
    """Make the UNet's input: the latents, twice with guidance, scaled by the scheduler."""
    latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
    return typed(scheduler).scale_model_input(latent_model_input, t)


@mb.block(output="latent_model_input")
def add_inpaint_channels(
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input latents")],
    mask: Annotated[torch.Tensor, Doc("the mask at the latents' size")],
    masked_image_latents: Annotated[torch.Tensor, Doc("latents of the masked image")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
) -> Annotated[torch.Tensor, Doc("the UNet's input, with the mask channels for a 9-channel UNet")]:
    """Append the mask and the masked image's latents as channels, for a 9-channel UNet.

    The legacy 4-channel inpainting UNet takes the latents alone.
    """
    if unet.config["in_channels"] == latent_model_input.shape[1]:
        return latent_model_input
    if do_cfg:
        mask, masked_image_latents = torch.cat([mask] * 2), torch.cat([masked_image_latents] * 2)
    return torch.cat([latent_model_input, mask, masked_image_latents], dim=1)


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Rescale guided noise towards the text prediction's std (arXiv 2305.08891, section 3.4).

    Args:
        noise_cfg: The guided noise prediction.
        noise_pred_text: The noise prediction for the prompt alone.
        guidance_rescale: How much of the rescaled prediction to take, from 0 to 1.

    Returns:
        The mix of the rescaled and the guided prediction.
    """
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    # Rescaling fixes overexposure; mixing back avoids plain-looking images.
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


@mb.block(output="noise_pred")
@torch.no_grad()  # inference only, also when run outside a Pipeline
def predict_noise(
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input")],
    t: Annotated[torch.Tensor, _T_DOC],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    guidance_scale: Annotated[float, Doc("classifier-free guidance weight")] = 7.5,
    guidance_rescale: Annotated[
        float, Doc("rescale guided noise to fix overexposure (0: off), arXiv 2305.08891")
    ] = 0.0,
) -> Annotated[torch.Tensor, Doc("the noise prediction, guided")]:
    """Predict the noise with one UNet call, and apply classifier-free guidance."""
    noise_pred: torch.Tensor = unet(
        latent_model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False
    )[0]
    return guide(noise_pred, do_cfg, guidance_scale, guidance_rescale)


def guide(
    noise_pred: torch.Tensor, do_cfg: bool, guidance_scale: float, guidance_rescale: float
) -> torch.Tensor:
    """Apply classifier-free guidance to a UNet output on the batch `[negative, positive]`.

    Args:
        noise_pred: The UNet's noise prediction, negative half first when *do_cfg*.
        do_cfg: Whether classifier-free guidance is on; if not, *noise_pred* is returned.
        guidance_scale: The guidance weight.
        guidance_rescale: How much to rescale the guided prediction (0: not at all).

    Returns:
        The guided noise prediction.
    """
    if not do_cfg:
        return noise_pred
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    if guidance_rescale > 0.0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale)
    return noise_pred


@functools.cache
def _parameters(method: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(method).parameters)


@mb.block(output="latents")
def scheduler_step(
    noise_pred: Annotated[torch.Tensor, Doc("the guided noise prediction")],
    t: Annotated[torch.Tensor, _T_DOC],
    latents: Annotated[torch.Tensor, Doc("the current latents")],
    scheduler: mb.Component[SchedulerMixin],
    generator: Annotated[Generator, Doc("random generator(s), for schedulers that sample")] = None,
    eta: Annotated[float, Doc("DDIM's η: 0 is deterministic, 1 is DDPM (DDIM only)")] = 0.0,
) -> Annotated[torch.Tensor, Doc("the latents of the next, less noisy timestep")]:
    """Compute the previous, less noisy latents x_t -> x_t-1."""
    # Only some schedulers take eta (DDIM) or a generator (the stochastic ones).
    sched = typed(scheduler)
    accepted = _parameters(type(sched).step)
    extra: dict[str, Any] = {}
    if "eta" in accepted:
        extra["eta"] = eta
    if "generator" in accepted:
        extra["generator"] = generator
    stepped: torch.Tensor = sched.step(noise_pred, t, latents, **extra, return_dict=False)[0]
    return stepped


@mb.block(output="latents")
def blend_masked_latents(
    latents: Annotated[torch.Tensor, Doc("the latents after this step")],
    i: Annotated[int, Doc("the index of the current step")],
    timesteps: Annotated[torch.Tensor, Doc("all timesteps of the run")],
    image_latents: Annotated[torch.Tensor | None, Doc("the image's latents (4-channel UNet)")],
    noise: Annotated[torch.Tensor, Doc("the noise the initial latents were made from")],
    mask: Annotated[torch.Tensor, Doc("the mask at the latents' size")],
    scheduler: mb.Component[SchedulerMixin],
    unet: mb.Component[UNet2DConditionModel],
) -> Annotated[torch.Tensor, Doc("the latents, with the unmasked area put back (4-channel UNet)")]:
    """Put back the unmasked area, noised to the next timestep (legacy 4-channel UNet only).

    A 9-channel inpainting UNet sees the mask and needs no blending: the latents pass through.
    """
    if unet.config["in_channels"] != latents.shape[1] or image_latents is None:
        return latents
    init_latents_proper = image_latents
    if i < len(timesteps) - 1:
        noise_timestep = torch.tensor([timesteps[i + 1]])
        init_latents_proper = typed(scheduler).add_noise(image_latents, noise, noise_timestep)
    return (1 - mask) * init_latents_proper + mask * latents


denoise = mb.loop(
    scale_model_input >> predict_noise >> scheduler_step, over="timesteps", index="i", item="t"
).named("denoise")
"""The denoising loop of text-to-image and image-to-image."""

denoise_inpaint = mb.loop(
    scale_model_input
    >> add_inpaint_channels
    >> predict_noise
    >> scheduler_step
    >> blend_masked_latents,
    over="timesteps",
    index="i",
    item="t",
).named("denoise")
"""The denoising loop of inpainting: adds the mask channels, or re-blends for 4-channel UNets."""
