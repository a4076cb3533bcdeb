"""A block is a plain function: inputs, outputs, components and configs come from its signature.

`encode_image` is the block of diffusers' Modular Diffusers guide, written as a function:
`Doc` descriptions on the parameters and on the NamedTuple fields, a model as an
`mb.Component`, a setting as an `mb.Config`. Calling it calls the function; `.run` runs it
on named values and returns a `State`.
"""

from typing import Annotated, NamedTuple

import torch
from typing_extensions import Doc

import modblocks as mb


class TinyVae(torch.nn.Module):
    """A stand-in for diffusers' `AutoencoderKL`: it only downsamples by 8."""

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Return 'latents': the image averaged over 8x8 patches."""
        return torch.nn.functional.avg_pool2d(image, 8)


class Latents(NamedTuple):
    batch_size: Annotated[int, Doc("batch size after duplication")]
    image_latents: Annotated[torch.Tensor, Doc("latents representing the image")]


@mb.block
def encode_image(
    image: Annotated[torch.Tensor, Doc("raw input image to process")],
    batch_size: Annotated[int, Doc("number of images to make")],
    vae: mb.Component[TinyVae],
    scale: mb.Config[float] = 0.18215,
) -> Latents:
    """Encode a raw image into its latent representation.

    The batch is doubled, for classifier-free guidance.
    """
    latents = vae.encode(image) * scale
    return Latents(batch_size * 2, latents.repeat(batch_size * 2, 1, 1, 1))


@mb.block(output="noisy")
def add_noise(image_latents: torch.Tensor, strength: float = 0.5) -> torch.Tensor:
    """Mix noise into the latents.

    Args:
        image_latents: the latents to noise.
        strength: how much noise, from 0 (none) to 1 (only noise).
    """
    noise = torch.randn_like(image_latents)
    return (1 - strength) * image_latents + strength * noise


if __name__ == "__main__":
    # A block is still the function: call it to unit test it.
    batch, latents = encode_image(torch.ones(1, 3, 16, 16), 2, vae=TinyVae())
    print(batch, tuple(latents.shape))

    # What decorating read from the signature.
    print([s.name for s in encode_image.inputs])
    print([s.name for s in encode_image.components], [s.name for s in encode_image.configs])
    print([(s.name, s.description) for s in encode_image.outputs])
    print()
    print(encode_image.doc)
    print()
    print(repr(encode_image))
    print()

    # Run it on named values: the result is a State holding inputs and outputs.
    state = encode_image.run(image=torch.ones(1, 3, 16, 16), batch_size=2, vae=TinyVae())
    print(state)
    print()

    # One value returned, named with `output=`; descriptions from the `Args:` section.
    print(add_noise.doc)
