"""Many prompts, one process: `pipe.map` runs a pipeline over a list of input dicts.

Each item is a dict of inputs, as for one call of the pipeline; the results come back in
input order. ``batch_size=2`` stacks two prompts into one pipeline call (the inputs annotated
like ``str | list[str]`` -- here `prompt` and `generator` -- become lists) and splits the
images back, so each item still gets its own image, the same as when it runs alone.
A failing item doesn't lose the others: `mb.MapError` keeps their results.
"""

import numpy as np
import torch

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components

PROMPTS = ["a cat", "a dog", "a bird", "a fish"]


def items() -> list[dict[str, object]]:
    # One seeded generator per item: the same seed gives the same image, however items run.
    return [
        {
            "prompt": prompt,
            "generator": torch.Generator().manual_seed(seed),
            "num_inference_steps": 2,
            "output_type": "np",
        }
        for seed, prompt in enumerate(PROMPTS)
    ]


if __name__ == "__main__":
    pipe = mb.Pipeline(text2img, components=tiny_sd_components())

    images = pipe.map(items())  # one pipeline call per item, with a progress bar
    stacked = pipe.map(items(), batch_size=2)  # two prompts per call
    print([image.shape for image in images])
    same = all(np.allclose(a, b, atol=1e-5) for a, b in zip(images, stacked, strict=True))
    print("stacked gives the same images:", same)

    # Item 2 asks for a height the VAE can't make: it fails, the others are kept.
    bad = items()
    bad[2]["height"] = 65
    try:
        pipe.map(bad)
    except mb.MapError as err:
        print(
            f"failed: {sorted(err.failures)}, kept: {sum(r is not err.FAILED for r in err.results)}"
        )
        print(type(err.failures[2]).__name__, str(err.failures[2]).split(".")[0])
