"""The VAE: images to latents and back, and the conversion of decoded images to outputs."""

from __future__ import annotations

import functools
import itertools
from typing import Annotated, Any, Literal, Protocol, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from typing_extensions import Doc

import modblocks as mb

__all__ = [
    "Generator",
    "Images",
    "OutputType",
    "decode_latents",
    "device_of",
    "encode_image",
    "image_processor",
    "postprocess",
    "sample_latents",
    "vae_scale_factor",
]

Generator: TypeAlias = torch.Generator | list[torch.Generator] | None
"""One generator for the whole batch, or one per image."""

Images: TypeAlias = list[PIL.Image.Image] | npt.NDArray[np.float32] | torch.Tensor
"""Generated images: PIL images, a `(batch, height, width, 3)` array, or a tensor."""

OutputType: TypeAlias = Literal["pil", "np", "pt", "latent"]


class _Codec(Protocol):
    """`AutoencoderKL.encode` and `decode`, whose decorator hides their types."""

    def encode(self, x: torch.Tensor) -> Any:
        """Return the latent distribution of *x*."""

    def decode(self, z: torch.Tensor, *, return_dict: bool, generator: Generator) -> Any:
        """Return images decoded from latents *z*."""


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


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Return how many pixels one latent pixel covers along each side (8 for SD)."""
    return int(2 ** (len(vae.config["block_out_channels"]) - 1))


@functools.cache
def image_processor(scale_factor: int, *, mask: bool = False) -> VaeImageProcessor:
    """Return diffusers' image processor for images, or for masks (binarized, grayscale).

    Processors hold only their configuration, so one per setting is shared by all runs.
    """
    processor: VaeImageProcessor
    if mask:
        processor = VaeImageProcessor(
            vae_scale_factor=scale_factor,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
    else:
        processor = VaeImageProcessor(vae_scale_factor=scale_factor)
    return processor


def encode_image(vae: AutoencoderKL, image: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Encode images in [-1, 1] into scaled latents, sampling with one generator per image.

    Images that already have the VAE's latent channels are taken as latents.
    """
    if image.shape[1] == vae.config["latent_channels"]:
        return image
    scaled: torch.Tensor = vae.config["scaling_factor"] * sample_latents(vae, image, generator)
    return scaled


def sample_latents(vae: AutoencoderKL, image: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Sample unscaled latents of images in [-1, 1], with one generator per image if a list."""
    codec = cast("_Codec", vae)
    if isinstance(generator, list):
        samples = [
            codec.encode(image[i : i + 1]).latent_dist.sample(generator[i])
            for i in range(image.shape[0])
        ]
        return torch.cat(samples)
    latents: torch.Tensor = codec.encode(image).latent_dist.sample(generator)
    return latents


@mb.block(output="decoded")
@torch.no_grad()  # inference only, also when run outside a Pipeline
def decode_latents(
    latents: Annotated[torch.Tensor, Doc("the denoised latents")],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, Doc("random generator(s), for VAEs that sample")] = None,
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('images in [-1, 1], or the latents for `output_type` "latent"')]:
    """Decode latents into images in [-1, 1] (for output type "latent", keep the latents)."""
    if output_type == "latent":
        return latents
    codec = cast("_Codec", vae)
    decoded: torch.Tensor = codec.decode(
        latents / vae.config["scaling_factor"], return_dict=False, generator=generator
    )[0]
    return decoded


@mb.block(output="images")
def postprocess(
    decoded: Annotated[torch.Tensor, Doc("decoded images in [-1, 1], or latents")],
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[Images, Doc("the generated images, of type `output_type`")]:
    """Convert decoded images to the output type: PIL images, a NumPy array or a tensor."""
    # The scale factor only matters for resizing, which postprocessing never does.
    images = image_processor(8).postprocess(
        decoded, output_type=output_type, do_denormalize=[True] * decoded.shape[0]
    )
    # diffusers annotates one PIL image, but "pil" gives a list of them.
    return cast("Images", images)
