"""The VAE: images to latents and back, and the conversion of decoded images to outputs."""

from __future__ import annotations

import functools
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
    "encode_image",
    "image_processor",
    "postprocess",
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
    codec = cast("_Codec", vae)
    if isinstance(generator, list):
        samples = [
            codec.encode(image[i : i + 1]).latent_dist.sample(generator[i])
            for i in range(image.shape[0])
        ]
        latents = torch.cat(samples)
    else:
        latents = codec.encode(image).latent_dist.sample(generator)
    scaled: torch.Tensor = vae.config["scaling_factor"] * latents
    return scaled


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
