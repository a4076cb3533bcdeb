"""Composing blocks: what a sequence reads and writes, its diagram, and editing it.

Reuses the `input_block` / `image_encoder` pipeline of `compose.py` and shows the inputs
the sequence detected, the mermaid diagram of its data flow, and the editing methods, each of
which returns a new sequence.
"""

import runpy
from pathlib import Path

import torch

import modblocks as mb

compose = runpy.run_path(str(Path(__file__).with_name("compose.py")))
input_block, image_encoder = compose["input_block"], compose["image_encoder"]
pipeline: mb.Sequential = compose["pipeline"]


@mb.block(output="image")
def load_image(size: int = 8) -> torch.Tensor:
    """Make a test image (a real pipeline would read a file)."""
    return torch.rand(3, size, size)


if __name__ == "__main__":
    # Inputs are what no block produces; outputs are everything any block produces.
    print("inputs: ", [(s.name, s.required) for s in pipeline.inputs])
    print("outputs:", [s.name for s in pipeline.outputs])
    print("names:  ", pipeline.names)
    print()

    # `>>` is associative, and repeated names get `_2`, `_3`.
    print((input_block >> image_encoder).names, (input_block >> input_block).names)
    print()

    # The data flow as a mermaid flowchart (the docs render it).
    print(pipeline.to_mermaid())
    print()

    # Editing returns new sequences; `pipeline` itself never changes.
    with_loader = pipeline.insert(load_image, before="image_encoder")
    print(with_loader.names, "inputs:", [s.name for s in with_loader.inputs])
    print(with_loader.remove("input").names)
    print(with_loader.replace("input", input_block.bind(num_images_per_prompt=2)).names)
    state = with_loader.run(prompt="a cat", size=16)
    print(state.batch_size, tuple(state.image_latents.shape))
    print()

    # Rename values to reuse one block for another input.
    encode_mask = image_encoder.rename(image="mask_image", image_latents="mask_latents")
    print(repr(encode_mask))
