"""Compose two blocks, as in diffusers' Modular Diffusers guide: inputs are detected for you.

`input_block` turns a prompt into a batch size; `image_encoder` reads that batch size, doubles
it and encodes an image. Composed, the sequence asks only for what no block produces.
"""

from typing import Annotated, NamedTuple

import torch
from typing_extensions import Doc

import modblocks as mb


class BatchSize(NamedTuple):
    batch_size: Annotated[int, Doc("number of prompts times images per prompt")]


class Latents(NamedTuple):
    batch_size: Annotated[int, Doc("batch size after duplication")]
    image_latents: Annotated[torch.Tensor, Doc("latents representing the image")]


@mb.block
def input_block(
    prompt: Annotated[str | list[str], Doc("the prompt or prompts to guide generation")],
    num_images_per_prompt: Annotated[int, Doc("images to make for each prompt")] = 1,
) -> BatchSize:
    """Count how many images one call makes."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    return BatchSize(len(prompts) * num_images_per_prompt)


@mb.block
def image_encoder(
    image: Annotated[torch.Tensor, Doc("raw input image to process")],
    batch_size: int,
) -> Latents:
    """Encode a raw image into latents, doubling the batch for classifier-free guidance."""
    latents = image.mean(dim=0, keepdim=True).repeat(batch_size * 2, 1, 1, 1)
    return Latents(batch_size * 2, latents)


pipeline = mb.Sequential.from_dict({"input": input_block, "image_encoder": image_encoder})

if __name__ == "__main__":
    print(pipeline.doc)
    print()
    print(repr(pipeline))
    state = pipeline(prompt=["a cat", "a dog"], image=torch.rand(3, 8, 8))
    print()
    print(state)
