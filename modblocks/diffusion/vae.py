"""The VAE: images to latents and back.

SD 1.x scales latents by the VAE's `scaling_factor`. SDXL's VAE may run in float32
(`force_upcast`) and normalize latents by `latents_mean` and `latents_std`. The VAEs of
flow-matching models (SD3, Flux) shift latents by `shift_factor` before scaling them;
Qwen-Image's video VAE normalizes them by `latents_mean` and `latents_std`, one frame.
"""

from __future__ import annotations

import collections.abc
import contextlib
import threading
from typing import Annotated, Any, Protocol, TypeAlias, cast

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import AutoencoderKLQwenImage
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from .common import Generator, Images, OutputType, dtype_of

__all__ = [
    "Generator",
    "Images",  # kept importable from here, where it was first defined
    "OutputType",
    "PackedVAE",
    "decode_latents",
    "decode_latents_flow",
    "decode_latents_qwen",
    "decode_latents_xl",
    "encode_image",
    "encode_image_flow",
    "encode_image_xl",
    "sample_latents",
    "vae_decode",
    "vae_scale_factor",
]


PackedVAE: TypeAlias = AutoencoderKL | AutoencoderKLQwenImage
"""The VAEs of the models that pack 2x2 latent patches into tokens (Flux, Qwen-Image)."""


class _Codec(Protocol):
    """`AutoencoderKL.encode` and `decode`, whose decorator hides their types."""

    def encode(self, x: torch.Tensor) -> Any:
        """Return the latent distribution of *x*."""

    def decode(self, z: torch.Tensor, *, return_dict: bool, generator: Generator) -> Any:
        """Return images decoded from latents *z*."""


def vae_scale_factor(vae: PackedVAE) -> int:
    """Return how many pixels one latent pixel covers along each side (8 for SD)."""
    if "temperal_downsample" in vae.config:  # Qwen-Image's (video) VAE: one per downsampling
        return int(2 ** len(vae.config["temperal_downsample"]))
    return int(2 ** (len(vae.config["block_out_channels"]) - 1))


def sample_latents(
    vae: AutoencoderKL, image: torch.Tensor, generator: Generator, *, one_by_one: bool = True
) -> torch.Tensor:
    """Sample unscaled latents of images in [-1, 1], with one generator per image if a list.

    With *one_by_one* false, a list of generators samples the batch in one VAE call.
    """
    codec = cast("_Codec", vae)
    if isinstance(generator, list) and one_by_one:
        samples = [
            codec.encode(image[i : i + 1]).latent_dist.sample(generator[i])
            for i in range(image.shape[0])
        ]
        return torch.cat(samples)
    latents: torch.Tensor = codec.encode(image).latent_dist.sample(generator)
    return latents


def vae_decode(
    vae: AutoencoderKL, latents: torch.Tensor, generator: Generator = None
) -> torch.Tensor:
    """Decode unscaled latents into images in [-1, 1]."""
    decoded: torch.Tensor = cast("_Codec", vae).decode(
        latents, return_dict=False, generator=generator
    )[0]
    return decoded


def encode_image(vae: AutoencoderKL, image: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Encode images in [-1, 1] into scaled latents, sampling with one generator per image.

    Images that already have the VAE's latent channels are taken as latents.
    """
    if image.shape[1] == vae.config["latent_channels"]:
        return image
    scaled: torch.Tensor = vae.config["scaling_factor"] * sample_latents(vae, image, generator)
    return scaled


@mb.block(output="decoded")
@no_grad  # inference only, also when run outside a Pipeline
def decode_latents(
    latents: Annotated[torch.Tensor, Doc("the denoised latents")],
    vae: mb.Component[AutoencoderKL],
    generator: Annotated[Generator, Doc("random generator(s), for VAEs that sample")] = None,
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('images in [-1, 1], or the latents for `output_type` "latent"')]:
    """Decode latents into images in [-1, 1] (for output type "latent", keep the latents)."""
    if output_type == "latent":
        return latents
    decoded: torch.Tensor = vae_decode(vae, latents / vae.config["scaling_factor"], generator)
    return decoded


# --- SDXL: float32 VAEs, normalized latents -----------------------------------------------

# `force_upcast` runs a float16 VAE in float32, by casting the shared VAE and back, as
# diffusers does. Runs of a pipeline share its VAE, so they cast it one at a time.
_UPCAST_LOCK = threading.Lock()


@contextlib.contextmanager
def _float32(vae: AutoencoderKL, *, always: bool) -> collections.abc.Generator[bool]:
    """Run the VAE in float32 if its config says `force_upcast`; yield whether it was cast.

    Decoding upcasts float16 VAEs only (*always* false); encoding casts any VAE, as diffusers.
    """
    if not vae.config.get("force_upcast", False):
        yield False
        return
    with _UPCAST_LOCK:
        dtype = dtype_of(vae)
        upcast = always or dtype == torch.float16
        recast = upcast and dtype != torch.float32
        if recast:
            cast("torch.nn.Module", vae).to(dtype=torch.float32)
        try:
            yield upcast
        finally:
            if recast:
                cast("torch.nn.Module", vae).to(dtype=dtype)


def _latents_stats(
    vae: AutoencoderKL, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return the VAE's `latents_mean` and `latents_std` as tensors like *like*, if it has them."""
    mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
    if mean is None or std is None:
        return None
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean).view(shape).to(like.device, like.dtype),
        torch.tensor(std).view(shape).to(like.device, like.dtype),
    )


def encode_image_xl(
    vae: AutoencoderKL, image: torch.Tensor, generator: Generator, *, normalize: bool = False
) -> torch.Tensor:
    """Encode images into latents (diffusers' SDXL `_encode_vae_image`).

    The latents get the image's dtype; they are scaled, or with *normalize* (image-to-image)
    normalized by the VAE's `latents_mean` and `latents_std` when it has them.
    """
    dtype = image.dtype
    with _float32(vae, always=True) as upcast:
        latents = sample_latents(vae, image.float() if upcast else image, generator).to(dtype)
    scale: float = vae.config["scaling_factor"]
    stats = _latents_stats(vae, latents) if normalize else None
    if stats is None:
        return scale * latents
    return (latents - stats[0]) * scale / stats[1]


@mb.block(output="decoded")
@no_grad  # inference only, also when run outside a Pipeline
def decode_latents_xl(
    latents: Annotated[torch.Tensor, Doc("the denoised latents")],
    vae: mb.Component[AutoencoderKL],
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('images in [-1, 1], or the latents for `output_type` "latent"')]:
    """Decode latents into images in [-1, 1], in float32 for a float16 `force_upcast` VAE."""
    if output_type == "latent":
        return latents
    scale: float = vae.config["scaling_factor"]
    with _float32(vae, always=False) as upcast:
        if upcast:
            latents = latents.to(torch.float32)
        stats = _latents_stats(vae, latents)
        latents = latents / scale if stats is None else latents * stats[1] / scale + stats[0]
        decoded: torch.Tensor = vae_decode(vae, latents)
    return decoded


# --- flow matching: shifted latents ---------------------------------------------------------


def encode_image_flow(
    vae: AutoencoderKL, image: torch.Tensor, generator: Generator, *, one_by_one: bool = True
) -> torch.Tensor:
    """Encode images in [-1, 1] into latents shifted by `shift_factor`, then scaled.

    Images that already have the VAE's latent channels are taken as latents.
    """
    if image.shape[1] == vae.config["latent_channels"]:
        return image
    latents = sample_latents(vae, image, generator, one_by_one=one_by_one)
    shifted: torch.Tensor = (latents - vae.config["shift_factor"]) * vae.config["scaling_factor"]
    return shifted


@mb.block(output="decoded")
@no_grad  # inference only, also when run outside a Pipeline
def decode_latents_flow(
    latents: Annotated[torch.Tensor, Doc("the denoised latents")],
    vae: mb.Component[AutoencoderKL],
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('images in [-1, 1], or the latents for `output_type` "latent"')]:
    """Decode latents, unscaled and shifted back by `shift_factor`, into images in [-1, 1]."""
    if output_type == "latent":
        return latents
    latents = latents / vae.config["scaling_factor"] + vae.config["shift_factor"]
    return vae_decode(vae, latents)


@mb.block(output="decoded")
@no_grad  # inference only, also when run outside a Pipeline
def decode_latents_qwen(
    latents: Annotated[torch.Tensor, Doc("the denoised latents `(batch, c, h, w)`")],
    vae: mb.Component[AutoencoderKLQwenImage],
    output_type: Annotated[OutputType, Doc('"pil", "np", "pt" or "latent"')] = "pil",
) -> Annotated[torch.Tensor, Doc('images in [-1, 1], or the latents for `output_type` "latent"')]:
    """Denormalize the latents as one video frame and decode it (Qwen-Image's VAE)."""
    if output_type == "latent":
        return latents
    latents = latents.unsqueeze(2).to(dtype_of(vae))  # (batch, c, frames=1, h, w)
    shape = (1, vae.config["z_dim"], 1, 1, 1)
    mean = torch.tensor(vae.config["latents_mean"]).view(shape).to(latents.device, latents.dtype)
    # As diffusers: divide by the reciprocal of the std (the same value, other rounding).
    inverse_std = 1.0 / torch.tensor(vae.config["latents_std"]).view(shape)
    latents = latents / inverse_std.to(latents.device, latents.dtype) + mean
    codec = cast("Any", vae)  # its `decode` takes no generator
    decoded: torch.Tensor = codec.decode(latents, return_dict=False)[0][:, :, 0]
    return decoded
