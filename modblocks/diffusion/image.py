"""Images in and out: the output size, images and masks as tensors, and the output images.

The size defaults to the denoiser's sample size (SD's UNet, SD3's transformer) or to
Flux's 128 latent pixels; images are resized to what the latents tile, which for Flux's
2x2 packed latents is twice the VAE's factor.
"""

from __future__ import annotations

import functools
import logging
from typing import Annotated, NamedTuple, cast

import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from typing_extensions import Doc

import modblocks as mb

from .common import Images, OutputType
from .vae import PackedVAE, vae_scale_factor

__all__ = [
    "Size",
    "default_size",
    "default_size_flux",
    "default_size_sd3",
    "image_processor",
    "postprocess",
    "preprocess_image",
    "preprocess_image_flux",
    "preprocess_mask",
    "preprocess_mask_flux",
]

logger = logging.getLogger(__name__)


@functools.cache
def image_processor(
    scale_factor: int, *, mask: bool = False, latent_channels: int = 4
) -> VaeImageProcessor:
    """Return diffusers' image processor for images, or for masks (binarized, grayscale).

    Images are resized to multiples of *scale_factor*; tensors with *latent_channels*
    channels are latents and pass through. Processors hold only their configuration, so
    one per setting is shared by all runs.
    """
    processor: VaeImageProcessor
    if mask:
        processor = VaeImageProcessor(
            vae_scale_factor=scale_factor,
            vae_latent_channels=latent_channels,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
    else:
        processor = VaeImageProcessor(
            vae_scale_factor=scale_factor, vae_latent_channels=latent_channels
        )
    return processor


def _processor(
    vae: AutoencoderKL, *, packed: bool = False, mask: bool = False
) -> VaeImageProcessor:
    """Return the processor for *vae*'s latents, or for Flux's 2x2 packed latents."""
    factor = vae_scale_factor(vae) * (2 if packed else 1)
    return image_processor(factor, mask=mask, latent_channels=vae.config["latent_channels"])


class Size(NamedTuple):
    """The size of the generated images, in pixels."""

    height: Annotated[int, Doc("image height in pixels")]
    width: Annotated[int, Doc("image width in pixels")]


@mb.block
def default_size(
    unet: mb.Component[UNet2DConditionModel],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[
        int | None, Doc("image height in pixels; the UNet's size if not given")
    ] = None,
    width: Annotated[int | None, Doc("image width in pixels; the UNet's size if not given")] = None,
) -> Size:
    """Default the image size to the UNet's sample size, and check that latents can tile it."""
    factor = vae_scale_factor(vae)
    sample_size: int | tuple[int, int] = unet.config["sample_size"]
    default = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
    height = height or default[0] * factor
    width = width or default[1] * factor
    if height % factor or width % factor:
        msg = f"`height` and `width` must be multiples of {factor}, but are {height} and {width}."
        raise ValueError(msg)
    return Size(height, width)


@mb.block(output="init_image")
def preprocess_image(
    image: Annotated[PipelineImageInput, Doc("the image(s) to start from: PIL, NumPy or torch")],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[
        int | None, Doc("resize to this height; the image's own if not given")
    ] = None,
    width: Annotated[int | None, Doc("resize to this width; the image's own if not given")] = None,
) -> Annotated[
    torch.Tensor, Doc("the image(s) as a float32 `(batch, 3, height, width)` tensor in [-1, 1]")
]:
    """Convert the image(s) to a float32 tensor in [-1, 1], sized to a multiple of the VAE's."""
    processed = _processor(vae).preprocess(image, height=height, width=width)
    return processed.to(dtype=torch.float32)


@mb.block(output="mask_condition")
def preprocess_mask(
    mask_image: Annotated[
        PipelineImageInput, Doc("where to paint: white (1) repaints, black keeps")
    ],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
) -> Annotated[torch.Tensor, Doc("the binary mask(s) as a `(batch, 1, height, width)` tensor")]:
    """Convert the mask(s) to a binary `(batch, 1, height, width)` tensor."""
    return _processor(vae, mask=True).preprocess(mask_image, height=height, width=width)


# --- transformers: SD3's sizes, Flux's 2x2 packed latents ---------------------------------


@mb.block
def default_size_sd3(
    transformer: mb.Component[SD3Transformer2DModel],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[
        int | None, Doc("image height in pixels; the model's size if not given")
    ] = None,
    width: Annotated[
        int | None, Doc("image width in pixels; the model's size if not given")
    ] = None,
) -> Size:
    """Default the image size to the transformer's sample size; check that patches tile it."""
    factor = vae_scale_factor(vae)
    sample_size: int = transformer.config["sample_size"]
    height, width = height or sample_size * factor, width or sample_size * factor
    multiple = factor * transformer.config["patch_size"]
    if height % multiple or width % multiple:
        msg = (
            f"`height` and `width` must be multiples of {multiple} (the VAE's factor times the "
            f"patch size), but are {height} and {width}."
        )
        raise ValueError(msg)
    return Size(height, width)


@mb.block
def default_size_flux(
    vae: mb.Component[PackedVAE],
    height: Annotated[
        int | None, Doc("image height in pixels; 128 latent pixels if not given")
    ] = None,
    width: Annotated[
        int | None, Doc("image width in pixels; 128 latent pixels if not given")
    ] = None,
) -> Size:
    """Default the image size to 128 latent pixels a side (1024 pixels with Flux's VAE).

    Sizes that 2x2 latent patches don't tile are rounded down, with a warning (as diffusers).
    """
    factor = vae_scale_factor(vae)
    height, width = height or 128 * factor, width or 128 * factor
    if height % (factor * 2) or width % (factor * 2):
        logger.warning(
            "`height` and `width` have to be divisible by %d but are %d and %d. Dimensions "
            "will be resized accordingly",
            factor * 2,
            height,
            width,
        )
    return Size(height, width)


@mb.block(output="init_image")
def preprocess_image_flux(
    image: Annotated[PipelineImageInput, Doc("the image(s) to start from: PIL, NumPy or torch")],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[int, Doc("resize to this height")],
    width: Annotated[int, Doc("resize to this width")],
) -> Annotated[
    torch.Tensor, Doc("the image(s) as a float32 `(batch, 3, height, width)` tensor in [-1, 1]")
]:
    """Convert the image(s) to a float32 tensor in [-1, 1], sized for 2x2 latent patches."""
    processed = _processor(vae, packed=True).preprocess(image, height=height, width=width)
    return processed.to(dtype=torch.float32)


@mb.block(output="mask_condition")
def preprocess_mask_flux(
    mask_image: Annotated[
        PipelineImageInput, Doc("where to paint: white (1) repaints, black keeps")
    ],
    vae: mb.Component[AutoencoderKL],
    height: Annotated[int, Doc("image height in pixels")],
    width: Annotated[int, Doc("image width in pixels")],
) -> Annotated[torch.Tensor, Doc("the binary mask(s) as a `(batch, 1, height, width)` tensor")]:
    """Convert the mask(s) to a binary tensor, sized for 2x2 latent patches."""
    processor = _processor(vae, packed=True, mask=True)
    return processor.preprocess(mask_image, height=height, width=width)


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
