"""The denoising loop and its parts: one UNet call per step on the batch `[negative, positive]`.

Each loop runs `scale_model_input`, `predict_noise` (the model call and guidance) and
`scheduler_step`; inpainting adds the mask channels before the model call, and re-blends the
unmasked area after the step for legacy 4-channel UNets.
"""

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

from ._grad import no_grad
from ._scheduler import typed
from .common import Generator
from .guidance import guide

__all__ = [
    "add_inpaint_channels",
    "blend_masked_latents",
    "denoise",
    "denoise_inpaint",
    "denoise_inpaint_xl",
    "denoise_xl",
    "predict_noise",
    "predict_noise_xl",
    "scale_model_input",
    "scheduler_step",
]

_T_DOC = Doc("the current timestep")
_DOWN_DOC = Doc("residuals a ControlNet adds to the UNet's down blocks (None: no ControlNet)")
_MID_DOC = Doc("the residual a ControlNet adds to the UNet's middle block")
# A ControlNet block inserted before the noise prediction gives these two; without one they
# stay None and the UNet runs as usual.
Residuals = tuple[torch.Tensor, ...] | None
_IMAGE_EMBEDS_DOC = Doc("IP-Adapter image embeddings, one per adapter (None: no image prompt)")


@mb.block(output="latent_model_input")
def scale_model_input(
    latents: Annotated[torch.Tensor, Doc("the current latents")],
    t: Annotated[torch.Tensor, _T_DOC],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    scheduler: mb.Component[SchedulerMixin],
) -> Annotated[torch.Tensor, Doc("the UNet's input: the latents, twice with guidance, scaled")]:
    """Make the UNet's input: the latents, twice with guidance, scaled by the scheduler.

    Flow-matching schedulers don't scale: they have no `scale_model_input`.
    """
    latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
    scale = getattr(scheduler, "scale_model_input", None)
    if scale is None:
        return latent_model_input
    scaled: torch.Tensor = scale(latent_model_input, t)
    return scaled


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


@mb.block(output="noise_pred")
@no_grad  # inference only, also when run outside a Pipeline
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
    down_block_res_samples: Annotated[Residuals, _DOWN_DOC] = None,
    mid_block_res_sample: Annotated[torch.Tensor | None, _MID_DOC] = None,
    image_embeds: Annotated[list[torch.Tensor] | None, _IMAGE_EMBEDS_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the noise prediction, guided")]:
    """Predict the noise with one UNet call, and apply classifier-free guidance."""
    noise_pred: torch.Tensor = unet(
        latent_model_input,
        t,
        encoder_hidden_states=prompt_embeds,
        added_cond_kwargs=None if image_embeds is None else {"image_embeds": image_embeds},
        down_block_additional_residuals=down_block_res_samples,
        mid_block_additional_residual=mid_block_res_sample,
        return_dict=False,
    )[0]
    return guide(noise_pred, do_cfg, guidance_scale, guidance_rescale)


@mb.block(output="noise_pred")
@no_grad  # inference only, also when run outside a Pipeline
def predict_noise_xl(
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input")],
    t: Annotated[torch.Tensor, _T_DOC],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    add_text_embeds: Annotated[torch.Tensor, Doc("pooled text embeddings")],
    add_time_ids: Annotated[torch.Tensor, Doc("micro-conditioning time ids")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    guidance_scale: Annotated[float, Doc("classifier-free guidance weight")] = 5.0,
    guidance_rescale: Annotated[
        float, Doc("rescale guided noise to fix overexposure (0: off), arXiv 2305.08891")
    ] = 0.0,
    down_block_res_samples: Annotated[Residuals, _DOWN_DOC] = None,
    mid_block_res_sample: Annotated[torch.Tensor | None, _MID_DOC] = None,
    image_embeds: Annotated[list[torch.Tensor] | None, _IMAGE_EMBEDS_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the noise prediction, guided")]:
    """Predict the noise with one UNet call conditioned on SDXL's extra inputs, and guide it."""
    added_cond_kwargs: dict[str, Any] = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}
    if image_embeds is not None:
        added_cond_kwargs["image_embeds"] = image_embeds
    noise_pred: torch.Tensor = unet(
        latent_model_input,
        t,
        encoder_hidden_states=prompt_embeds,
        added_cond_kwargs=added_cond_kwargs,
        down_block_additional_residuals=down_block_res_samples,
        mid_block_additional_residual=mid_block_res_sample,
        return_dict=False,
    )[0]
    return guide(noise_pred, do_cfg, guidance_scale, guidance_rescale)


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


_loop = functools.partial(mb.loop, over="timesteps", index="i", item="t")

denoise = _loop(scale_model_input >> predict_noise >> scheduler_step).named("denoise")
"""The denoising loop of text-to-image and image-to-image."""

denoise_inpaint = _loop(
    scale_model_input
    >> add_inpaint_channels
    >> predict_noise
    >> scheduler_step
    >> blend_masked_latents
).named("denoise")
"""The denoising loop of inpainting: adds the mask channels, or re-blends for 4-channel UNets."""

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
