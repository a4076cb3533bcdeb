"""Threads: `pipe.map(..., executor=ThreadPoolExecutor(...))` shares one pipeline.

Nothing is copied: every thread runs the same `Pipeline` object (nodes are immutable and
thread-safe), and PyTorch releases the GIL inside its operators, so threads overlap the
heavy work. Any `concurrent.futures.Executor` works the same way.
"""

from concurrent.futures import ThreadPoolExecutor

import torch

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components

if __name__ == "__main__":
    pipe = mb.Pipeline(text2img, components=tiny_sd_components())
    items = [
        {
            "prompt": f"a cat, style {i}",
            "generator": torch.Generator().manual_seed(i),
            "num_inference_steps": 2,
        }
        for i in range(4)
    ]
    with ThreadPoolExecutor(max_workers=2) as executor:
        images = pipe.map(items, executor=executor, batch_size=2)
    print([image[0].size for image in images])  # a list of PIL images per item
