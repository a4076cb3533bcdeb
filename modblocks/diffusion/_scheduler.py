"""A typed view of diffusers' schedulers.

Every scheduler derives from `SchedulerMixin`, but the methods the pipelines call
(`set_timesteps`, `step`, ...) are defined by each class, not by the mixin. Blocks take a
`SchedulerMixin` (what a pipeline checks components against) and call it through this view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

__all__ = ["Scheduler", "typed"]


class Scheduler(Protocol):
    """The part of a diffusers scheduler that the blocks use."""

    timesteps: torch.Tensor
    init_noise_sigma: float | torch.Tensor
    order: int
    config: Mapping[str, Any]

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        """Set the timesteps of a run."""

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """Scale the UNet's input for the current timestep."""
        ...

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Compute the latents of the previous timestep."""

    def scale_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Noise samples to the given timesteps (flow matching: a mix with the noise)."""
        ...

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Noise samples to the given timesteps."""
        ...


def typed(scheduler: SchedulerMixin) -> Scheduler:
    """Return *scheduler* as the `Scheduler` it is."""
    return cast("Scheduler", scheduler)
