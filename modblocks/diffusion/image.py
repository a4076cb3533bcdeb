"""Images in and out: the output size, images and masks as tensors, and the output images."""

from __future__ import annotations

import functools
from typing import Annotated, NamedTuple, cast

import torch
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from typing_extensions import Doc

import modblocks as mb

from .common import Images, OutputType
from .vae import vae_scale_factor

__all__ = [
    "Size",
    "default_size",
    "image_processor",
    "postprocess",
    "preprocess_image",
    "preprocess_mask",
]


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
    processed = image_processor(vae_scale_factor(vae)).preprocess(image, height=height, width=width)
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
    processor = image_processor(vae_scale_factor(vae), mask=True)
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
