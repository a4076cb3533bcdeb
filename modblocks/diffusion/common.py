"""What every stage shares: the generator type, batch checks, devices and dtypes."""

from __future__ import annotations

import itertools
from typing import Any, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import PIL.Image
import torch
from typing_extensions import Doc

__all__ = [
    "DTYPE_DOC",
    "GENERATOR_DOC",
    "Generator",
    "Images",
    "OutputType",
    "check_generators",
    "copies",
    "device_of",
    "dtype_of",
]

Generator: TypeAlias = torch.Generator | list[torch.Generator] | None
"""One generator for the whole batch, or one per image."""

Images: TypeAlias = list[PIL.Image.Image] | npt.NDArray[np.float32] | torch.Tensor
"""Generated images: PIL images, a `(batch, height, width, 3)` array, or a tensor."""

OutputType: TypeAlias = Literal["pil", "np", "pt", "latent"]

GENERATOR_DOC = Doc("a generator for the whole batch, or one per image, for reproducible runs")
DTYPE_DOC = Doc("text embeddings (their dtype is the latents')")


def check_generators(generator: Generator, batch_size: int) -> None:
    """Raise if *generator* is a list whose length is not the number of images."""
    if isinstance(generator, list) and len(generator) != batch_size:
        msg = (
            f"{len(generator)} generators were given for {batch_size} images. "
            "Give one generator, or one per image (prompts × `num_images_per_prompt`)."
        )
        raise ValueError(msg)


def copies(tensor: torch.Tensor, batch_size: int, what: str) -> int:
    """Return how many copies of a batch of *what* fill *batch_size* rows (`[a, b, a, b]`)."""
    if batch_size % tensor.shape[0]:
        msg = (
            f"{tensor.shape[0]} {what} can't fill a batch of {batch_size} images. "
            f"Give a number of {what} that divides {batch_size}."
        )
        raise ValueError(msg)
    return batch_size // tensor.shape[0]


def device_of(model: torch.nn.Module) -> torch.device:
    """Return diffusers' `model.device`, without its cost for models that have no hooks.

    `ModelMixin.device` looks for a group-offloading hook with `hasattr` on every submodule,
    on every call: 2 ms for a tiny UNet, more for SDXL's. Hooks are set as plain attributes,
    so a walk over the modules' `__dict__` finds them in a tenth of the time or less; a model
    without any is on the device of its first parameter, which is what diffusers returns.
    """
    stack = [model]
    while stack:
        module = stack.pop()
        if "_diffusers_hook" in module.__dict__:
            device: torch.device = cast("Any", model).device  # hooked: diffusers decides
            return device
        stack.extend(child for child in module._modules.values() if child is not None)
    return next(itertools.chain(model.parameters(), model.buffers())).device


def dtype_of(model: torch.nn.Module) -> torch.dtype:
    """Return the dtype of *model*'s first floating-point parameter."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
