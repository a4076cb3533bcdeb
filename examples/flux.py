"""Flux.1: one auto node for text-to-image, image-to-image and inpainting.

`flux` picks its branch from the inputs (`mask_image`: inpainting, `image`: image-to-image,
else text-to-image). The components are tiny random-weight ones built offline (CLIP, T5
with an in-memory tokenizer, a one-layer Flux transformer), so the images are noise; each
result is compared with diffusers' classic Flux pipeline for the same task. Last, the data
flow of text-to-image as a mermaid diagram.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline

import modblocks as mb
from modblocks.diffusion import flux, flux_text2img
from modblocks.diffusion.testing import tiny_flux_components

DIFFUSERS = {
    "flux_text2img": FluxPipeline,
    "flux_img2img": FluxImg2ImgPipeline,
    "flux_inpaint": FluxInpaintPipeline,
}


def diffusers_images(branch: str, components: dict[str, Any], **inputs: Any) -> Any:
    """The images of diffusers' classic pipeline for *branch*, on its own scheduler copy."""
    scheduler = copy.deepcopy(components["scheduler"])
    pipe = DIFFUSERS[branch](**{**components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    return pipe(**inputs).images


def main() -> None:
    components = tiny_flux_components()
    pipe = mb.Pipeline(flux, components=components)

    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(pixels)
    mask = PIL.Image.fromarray(np.where(np.arange(48) < 24, 0, 255).astype(np.uint8)[None, :])
    mask = mask.resize((48, 32))
    common = {
        "prompt": ["a photo of a cat", "a dog"],
        "height": 32,
        "width": 48,
        "num_inference_steps": 4,
        "max_sequence_length": 32,
    }
    jobs = [
        {"guidance_scale": 3.5},
        {"image": image, "strength": 0.6},
        {
            "image": image,
            "mask_image": mask,
            "negative_prompt": ["blurry", "bad quality"],
            "true_cfg_scale": 2.0,
        },
    ]
    for job in jobs:
        inputs = {**common, **job, "output_type": "np"}
        branch = flux.resolve(**inputs)
        assert branch is not None
        images = pipe(**inputs, generator=torch.Generator().manual_seed(0), output="images")
        expected = diffusers_images(
            branch.name, components, **inputs, generator=torch.Generator().manual_seed(0)
        )
        diff = float(np.abs(images - expected).max())
        same = diff <= 1e-4
        print(f"{branch.name}: images {images.shape}, same as diffusers: {same} (max diff {diff})")
    print(flux_text2img.to_mermaid())


if __name__ == "__main__":
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    try:
        main()
    finally:
        torch.set_num_threads(threads)
