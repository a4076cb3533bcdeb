"""Stable Diffusion 3: one auto node for text-to-image and image-to-image.

`stable_diffusion_3` runs image-to-image when `image` is given, else text-to-image. The
components are tiny random-weight ones built offline (two CLIP encoders and T5, a two-layer
SD3 transformer), so the images are noise; each result is compared with diffusers' classic
SD3 pipeline for the same task, also without T5 (SD3 allows leaving it out) and with
skip-layer guidance. Last, the data flow of text-to-image as a mermaid diagram.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

import modblocks as mb
from modblocks.diffusion import sd3_text2img, stable_diffusion_3
from modblocks.diffusion.testing import tiny_sd3_components

DIFFUSERS = {
    "sd3_text2img": StableDiffusion3Pipeline,
    "sd3_img2img": StableDiffusion3Img2ImgPipeline,
}


def diffusers_images(branch: str, components: dict[str, Any], **inputs: Any) -> Any:
    """The images of diffusers' classic pipeline for *branch*, on its own scheduler copy."""
    scheduler = copy.deepcopy(components["scheduler"])
    pipe = DIFFUSERS[branch](**{**components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    return pipe(**inputs).images


def main() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(pixels)
    common = {
        "prompt": ["a photo of a cat", "a dog"],
        "negative_prompt": ["blurry", "bad quality"],
        "height": 32,
        "width": 48,
        "num_inference_steps": 10,
        "max_sequence_length": 32,
    }
    jobs = [
        ("with T5", {}),
        ("with T5", {"image": image, "strength": 0.6}),
        ("without T5", {}),
        ("skip-layer guidance", {"skip_guidance_layers": [1]}),
    ]
    with mb.progress(disable=True):
        for title, job in jobs:
            components = tiny_sd3_components(t5=title != "without T5")
            pipe = mb.Pipeline(stable_diffusion_3, components=components)
            inputs = {**common, **job, "output_type": "np"}
            branch = stable_diffusion_3.resolve(**inputs)
            assert branch is not None
            images = pipe(**inputs, generator=torch.Generator().manual_seed(0), output="images")
            expected = diffusers_images(
                branch.name, components, **inputs, generator=torch.Generator().manual_seed(0)
            )
            diff = float(np.abs(images - expected).max())
            same = diff <= 1e-4
            print(f"{branch.name} ({title}): same as diffusers: {same} (max diff {diff})")
    print(sd3_text2img.to_mermaid())


if __name__ == "__main__":
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    try:
        main()
    finally:
        torch.set_num_threads(threads)
