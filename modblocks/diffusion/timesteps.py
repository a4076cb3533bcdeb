"""Timesteps: a per-run copy of the scheduler, set for this run's schedule.

Text-to-image runs the whole schedule; image-to-image and inpainting skip to `strength`;
SDXL's base and refiner split it at `denoising_end` / `denoising_start`.
"""

from __future__ import annotations

import copy
import inspect
from typing import Annotated, NamedTuple

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from typing_extensions import Doc

import modblocks as mb

from ._scheduler import typed
from .common import device_of

__all__ = [
    "StrengthTimesteps",
    "Timesteps",
    "apply_denoising_end",
    "img2img_timesteps",
    "img2img_timesteps_xl",
    "inpaint_timesteps",
    "inpaint_timesteps_xl",
    "set_timesteps",
]


class Timesteps(NamedTuple):
    """The schedule of one run."""

    scheduler: Annotated[
        SchedulerMixin, Doc("a copy of the scheduler, set for this run (it keeps per-run state)")
    ]
    timesteps: Annotated[torch.Tensor, Doc("the timesteps to denoise at, in order")]
    num_inference_steps: Annotated[int, Doc("the number of denoising steps")]


class StrengthTimesteps(NamedTuple):
    """The part of the schedule that image-to-image runs through."""

    scheduler: Annotated[SchedulerMixin, Doc("the run's scheduler, told where the schedule starts")]
    timesteps: Annotated[torch.Tensor, Doc("the last `strength` part of the timesteps")]
    num_inference_steps: Annotated[int, Doc("the number of denoising steps actually run")]


@mb.block
def set_timesteps(
    scheduler: mb.Component[SchedulerMixin],
    unet: mb.Component[UNet2DConditionModel],
    num_inference_steps: Annotated[int, Doc("the number of denoising steps")] = 50,
    timesteps: Annotated[
        list[int] | None, Doc("custom timesteps, in decreasing order, if the scheduler takes them")
    ] = None,
    sigmas: Annotated[list[float] | None, Doc("custom sigmas, if the scheduler takes them")] = None,
) -> Timesteps:
    """Copy the scheduler and set its timesteps (diffusers' `retrieve_timesteps`).

    Schedulers keep state (`timesteps`, `step_index`), so each run works on its own copy:
    one pipeline can then serve concurrent runs.
    """
    # Deep, because `step` changes state in place (PNDM and DPM-Solver fill lists of past
    # outputs) and no scheduler promises that `set_timesteps` replaces all of it. It costs
    # under a millisecond, a fifth of `from_config`.
    scheduler = copy.deepcopy(scheduler)
    if timesteps is not None and sigmas is not None:
        msg = "give at most one of `timesteps` and `sigmas`."
        raise ValueError(msg)
    custom: dict[str, list[int] | list[float]] = {}
    if timesteps is not None:
        custom = {"timesteps": timesteps}
    elif sigmas is not None:
        custom = {"sigmas": sigmas}
    sched = typed(scheduler)
    for name in custom:
        if name not in inspect.signature(sched.set_timesteps).parameters:
            msg = (
                f"{type(scheduler).__name__}.set_timesteps does not take custom `{name}`. "
                "Use a scheduler that does, or give `num_inference_steps`."
            )
            raise ValueError(msg)
    if custom:
        sched.set_timesteps(device=device_of(unet), **custom)
        return Timesteps(scheduler, sched.timesteps, len(sched.timesteps))
    sched.set_timesteps(num_inference_steps, device=device_of(unet))
    return Timesteps(scheduler, sched.timesteps, num_inference_steps)


def _skip_to_strength(
    scheduler: SchedulerMixin, num_inference_steps: int, strength: float
) -> StrengthTimesteps:
    """Keep the last *strength* part of the schedule (diffusers' `get_timesteps`)."""
    if not 0 <= strength <= 1:
        msg = f"`strength` is {strength}, but it must be between 0 and 1."
        raise ValueError(msg)
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    # Multistep schedulers (e.g. PNDM) have `order` timesteps per step.
    begin = t_start * typed(scheduler).order
    timesteps = typed(scheduler).timesteps[begin:]
    # Schedulers that count steps must know where this run starts.
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
    # The scheduler is an output too: a cached run must get it in the state this one left.
    return StrengthTimesteps(scheduler, timesteps, steps)


@mb.block
def img2img_timesteps(
    scheduler: mb.Component[SchedulerMixin],
    num_inference_steps: Annotated[int, Doc("the number of steps of the full schedule")],
    strength: Annotated[
        float,
        Doc("how much to change the image, from 0 (not at all) to 1 (start from pure noise)"),
    ] = 0.8,
) -> StrengthTimesteps:
    """Keep the last `strength` part of the schedule, to start from the noised image."""
    return _skip_to_strength(scheduler, num_inference_steps, strength)


@mb.block
def inpaint_timesteps(
    scheduler: mb.Component[SchedulerMixin],
    num_inference_steps: Annotated[int, Doc("the number of steps of the full schedule")],
    strength: Annotated[
        float,
        Doc("how much to change the masked area, from 0 (not at all) to 1 (pure noise)"),
    ] = 1.0,
) -> StrengthTimesteps:
    """Keep the last `strength` part of the schedule; inpainting's default is all of it."""
    return _skip_to_strength(scheduler, num_inference_steps, strength)


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
