"""Stable Diffusion XL: one auto node for text-to-image, image-to-image and inpainting.

`stable_diffusion_xl` picks its branch from the inputs (`mask_image`: inpainting, `image`:
image-to-image, else text-to-image), as diffusers' `StableDiffusionXLAutoBlocks` does. The
components here are tiny random-weight ones built offline, so the images are noise; each
result is compared with diffusers' classic SDXL pipeline for the same task.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging

import modblocks as mb
from modblocks.diffusion import stable_diffusion_xl
from modblocks.diffusion.testing import tiny_sdxl_components

DIFFUSERS = {
    "sdxl_text2img": StableDiffusionXLPipeline,
    "sdxl_img2img": StableDiffusionXLImg2ImgPipeline,
    "sdxl_inpaint": StableDiffusionXLInpaintPipeline,
}


def diffusers_images(branch: str, components: dict[str, Any], **inputs: Any) -> Any:
    """The images of diffusers' classic pipeline for *branch*, on its own scheduler copy."""
    scheduler = copy.deepcopy(components["scheduler"])
    pipe = DIFFUSERS[branch](**{**components, "scheduler": scheduler}, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**inputs).images


def main() -> None:
    components = tiny_sdxl_components()
    pipe = mb.Pipeline(stable_diffusion_xl, components=components)

    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(pixels)
    mask = PIL.Image.fromarray(np.where(np.arange(48) < 24, 0, 255).astype(np.uint8)[None, :])
    mask = mask.resize((48, 32))
    common = {"prompt": ["a photo of a cat", "a dog"], "num_inference_steps": 4}
    jobs = [
        {"height": 32, "width": 48},
        {"image": image, "strength": 0.6},
        {"image": image, "mask_image": mask, "height": 32, "width": 48, "strength": 0.8},
    ]
    for job in jobs:
        inputs = {**common, **job, "output_type": "np"}
        branch = stable_diffusion_xl.resolve(**inputs)
        assert branch is not None
        images = pipe(**inputs, generator=torch.Generator().manual_seed(0), output="images")
        expected = diffusers_images(
            branch.name, components, **inputs, generator=torch.Generator().manual_seed(0)
        )
        diff = float(np.abs(images - expected).max())
        same = diff <= 1e-4
        print(f"{branch.name}: images {images.shape}, same as diffusers: {same} (max diff {diff})")


if __name__ == "__main__":
    # Tiny models run fastest on one thread; diffusers logs a warning on every `vae.to(dtype)`.
    threads, verbosity = torch.get_num_threads(), diffusers_logging.get_verbosity()
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    try:
        main()
    finally:
        torch.set_num_threads(threads)
        diffusers_logging.set_verbosity(verbosity)
