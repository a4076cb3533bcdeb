"""Qwen-Image: text-to-image with true classifier-free guidance.

The components are tiny random-weight ones built offline (a 16-wide Qwen2.5-VL with an
in-memory tokenizer, a two-layer Qwen-Image transformer, its video VAE), so the images are
noise; each result is compared with diffusers' `QwenImagePipeline`. Last, the data flow of
`qwen_image` as a mermaid diagram.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import QwenImagePipeline
from diffusers.utils import logging as diffusers_logging

import modblocks as mb
from modblocks.diffusion import qwen_image
from modblocks.diffusion.testing import tiny_qwen_image_components


def main() -> None:
    components = tiny_qwen_image_components()
    pipe = mb.Pipeline(qwen_image, components=components)
    classic = QwenImagePipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])}
    )
    classic.set_progress_bar_config(disable=True)
    common = {
        "prompt": ["a photo of a cat", "a dog eating a burger"],
        "height": 32,
        "width": 48,
        "num_inference_steps": 4,
        "max_sequence_length": 32,
        "output_type": "np",
    }
    jobs = {
        "no guidance": {},
        "true CFG": {"negative_prompt": ["blurry", "bad quality"], "true_cfg_scale": 4.0},
    }
    for title, job in jobs.items():
        inputs = {**common, **job}
        images = pipe(**inputs, generator=torch.Generator().manual_seed(0), output="images")
        expected = classic(**inputs, generator=torch.Generator().manual_seed(0)).images
        diff = float(np.abs(images - expected).max())
        same = diff <= 1e-4
        print(f"{title}: images {images.shape}, same as diffusers: {same} (max diff {diff})")
    print(qwen_image.to_mermaid())


if __name__ == "__main__":
    # Tiny models run fastest on one thread; diffusers warns that true CFG is off without a
    # negative prompt.
    threads, verbosity = torch.get_num_threads(), diffusers_logging.get_verbosity()
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    try:
        main()
    finally:
        torch.set_num_threads(threads)
        diffusers_logging.set_verbosity(verbosity)
