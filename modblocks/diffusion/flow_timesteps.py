"""Flow-matching timesteps: sigmas from 1 towards 0, shifted by the image's resolution.

Flux passes sigmas `linspace(1, 1/n, n)` and shifts them by `mu`, which grows with the
number of latent patches (`calculate_shift`). SD3 lets its scheduler make the sigmas, and
computes `mu` only for a scheduler with `use_dynamic_shifting`. Image-to-image keeps the
last `strength` part of the schedule, computed in floating point (unlike SD's `int`).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from typing_extensions import Doc

import modblocks as mb

from ._scheduler import typed
from .common import DTYPE_DOC
from .timesteps import StrengthTimesteps, Timesteps, retrieve_timesteps
from .vae import PackedVAE, vae_scale_factor

__all__ = [
    "calculate_shift",
    "img2img_timesteps_flow",
    "set_timesteps_flux",
    "set_timesteps_sd3",
]

_STEPS_DOC = Doc("the number of denoising steps")
_SIGMAS_DOC = Doc("custom sigmas, instead of the default schedule")


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Return `mu`: the shift for *image_seq_len* patches, linear between two known points."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def _mu(scheduler: SchedulerMixin, image_seq_len: int, max_shift: float) -> float:
    """Return `mu` from the scheduler's configuration (*max_shift* where it has none)."""
    config = typed(scheduler).config
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift),
    )


def _from_start(schedule: Timesteps) -> Timesteps:
    # Counting steps from the first timestep spares the scheduler a search for it.
    set_begin_index = getattr(schedule.scheduler, "set_begin_index", None)
    if set_begin_index is not None:
        set_begin_index(0)
    return schedule


@mb.block
def set_timesteps_flux(
    scheduler: mb.Component[SchedulerMixin],
    vae: mb.Component[PackedVAE],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings (their device is the run's)")],
    num_inference_steps: Annotated[int, _STEPS_DOC] = 28,
    sigmas: Annotated[list[float] | None, _SIGMAS_DOC] = None,
) -> Timesteps:
    """Copy the scheduler and set Flux's (and Qwen-Image's) sigmas, shifted for the image's size."""
    steps: list[float] | None = sigmas
    if steps is None:
        steps = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()
    if typed(scheduler).config.get("use_flow_sigmas", False):
        steps = None  # the scheduler makes its own
    factor = vae_scale_factor(vae)
    mu = _mu(scheduler, (height // factor // 2) * (width // factor // 2), 1.15)
    schedule = retrieve_timesteps(
        scheduler, prompt_embeds.device, num_inference_steps, sigmas=steps, mu=mu
    )
    return _from_start(schedule)


@mb.block
def set_timesteps_sd3(
    scheduler: mb.Component[SchedulerMixin],
    transformer: mb.Component[SD3Transformer2DModel],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
    prompt_embeds: Annotated[torch.Tensor, DTYPE_DOC],
    num_inference_steps: Annotated[int, _STEPS_DOC] = 28,
    sigmas: Annotated[list[float] | None, _SIGMAS_DOC] = None,
    mu: Annotated[
        float | None,
        Doc("the shift of a `use_dynamic_shifting` scheduler; from the size if not given"),
    ] = None,
) -> Timesteps:
    """Copy the scheduler and set its timesteps, shifted for the size if it shifts dynamically."""
    if typed(scheduler).config.get("use_dynamic_shifting", False) and mu is None:
        factor, patch = vae_scale_factor(vae), transformer.config["patch_size"]
        mu = _mu(scheduler, (height // factor // patch) * (width // factor // patch), 1.16)
    return retrieve_timesteps(
        scheduler, prompt_embeds.device, num_inference_steps, sigmas=sigmas, mu=mu
    )


@mb.block
def img2img_timesteps_flow(
    scheduler: mb.Component[SchedulerMixin],
    num_inference_steps: Annotated[int, Doc("the number of steps of the full schedule")],
    strength: Annotated[
        float,
        Doc("how much to change the image, from 0 (not at all) to 1 (start from pure noise)"),
    ] = 0.6,
) -> StrengthTimesteps:
    """Keep the last `strength` part of the schedule (Flux's and SD3's `get_timesteps`)."""
    if not 0 <= strength <= 1:
        msg = f"`strength` is {strength}, but it must be between 0 and 1."
        raise ValueError(msg)
    init_timestep = min(num_inference_steps * strength, num_inference_steps)
    t_start = int(max(num_inference_steps - init_timestep, 0))
    begin = t_start * typed(scheduler).order
    set_begin_index = getattr(scheduler, "set_begin_index", None)
    if set_begin_index is not None:
        set_begin_index(begin)
    steps = num_inference_steps - t_start
    if steps < 1:
        msg = (
            f"`strength` {strength} leaves {steps} of the {num_inference_steps} steps. "
            "Raise `strength` or `num_inference_steps`."
        )
        raise ValueError(msg)
    return StrengthTimesteps(scheduler, typed(scheduler).timesteps[begin:], steps)
