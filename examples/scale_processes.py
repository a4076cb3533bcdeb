"""Processes: `pipe.map(..., executor=ProcessPoolExecutor(...))` uses every core.

Each worker process gets the pipeline once -- its components pickled, its blocks by
reference (their module is imported there) -- and keeps it for the next items and the next
`map`; per item, only a short token and the item's inputs travel. Give each worker one
PyTorch thread, so that two workers on two cores don't fight over them.
"""

from concurrent.futures import ProcessPoolExecutor

import torch

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components

if __name__ == "__main__":  # needed where workers start by importing this script (spawn)
    pipe = mb.Pipeline(text2img, components=tiny_sd_components())
    items = [
        {
            "prompt": f"a cat, style {i}",
            "generator": torch.Generator().manual_seed(i),
            "num_inference_steps": 2,
        }
        for i in range(6)
    ]
    with ProcessPoolExecutor(
        max_workers=2, initializer=torch.set_num_threads, initargs=(1,)
    ) as executor:
        images = pipe.map(items, executor=executor, batch_size=2, output="images")
    print(len(images), "items,", [len(item) for item in images], "image each")
