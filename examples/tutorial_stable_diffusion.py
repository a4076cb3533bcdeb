"""Stable Diffusion from `modblocks.diffusion`: text-to-image, image-to-image and inpainting.

Runs the ready-made `stable_diffusion` switch on tiny random-weight components (built
offline by `modblocks.diffusion.testing`), so the pictures are noise, but every step is the
real one: the same components and seed give the images of diffusers' `StableDiffusionPipeline`.
"""

import copy

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

import modblocks as mb
from modblocks.diffusion import stable_diffusion, text2img
from modblocks.diffusion.testing import tiny_sd_components

SMALL = {"height": 32, "width": 32, "num_inference_steps": 2}

if __name__ == "__main__":
    print(repr(text2img))
    print()
    components = tiny_sd_components()
    pipe = mb.Pipeline(stable_diffusion, components=components)

    # The inputs given choose the workflow (diffusers' AutoPipelineBlocks).
    image = Image.new("RGB", (32, 32), "white")
    mask = Image.new("L", (32, 32), 255)
    print(stable_diffusion.resolve().name, stable_diffusion.resolve(image=image).name)
    print(stable_diffusion.resolve(image=image, mask_image=mask).name)

    def seed() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    images = pipe(prompt="a cat", generator=seed(), **SMALL, output="images")
    print("text2img:", [im.size for im in images])
    images = pipe(
        prompt="a cat", image=images[0], strength=0.5, generator=seed(), **SMALL, output="images"
    )
    print("img2img: ", [im.size for im in images])
    images = pipe(
        prompt="a cat", image=image, mask_image=mask, generator=seed(), **SMALL, output="images"
    )
    print("inpaint: ", [im.size for im in images])

    # The same images as diffusers' own pipeline, given the same components and seed.
    ours = pipe(prompt="a cat", generator=seed(), output_type="np", **SMALL, output="images")
    reference = StableDiffusionPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(prompt="a cat", generator=seed(), output_type="np", **SMALL).images
    print("same as diffusers:", np.allclose(ours, theirs, atol=1e-5))
    print()
    print(text2img["denoise"].to_mermaid())
