"""State: the frozen mapping a run threads through its blocks, copied forward block by block.

Shows reading values, `evolve`, that a run never changes the state it started from, that a
block can update one of its inputs for the blocks after it, and that intermediate values stay
readable in the final state.
"""

from typing import NamedTuple

import torch

import modblocks as mb


class Prepared(NamedTuple):
    latents: torch.Tensor
    batch_size: int


@mb.block
def prepare(batch_size: int, num_images_per_prompt: int = 1) -> Prepared:
    """Start from zeros; the batch grows with the images per prompt."""
    batch_size = batch_size * num_images_per_prompt
    return Prepared(torch.zeros(batch_size, 4, 2, 2), batch_size)


@mb.block(output="latents")
def denoise_once(latents: torch.Tensor) -> torch.Tensor:
    """Move the latents a step (a new tensor: blocks don't change their inputs in place)."""
    return latents + 1


@mb.block(output="images")
def decode(latents: torch.Tensor) -> torch.Tensor:
    """Turn latents into 'images'."""
    return latents.mean(dim=1)


pipeline = prepare >> denoise_once >> decode

if __name__ == "__main__":
    start = mb.State(batch_size=2, num_images_per_prompt=2)
    print(start)
    print(start["batch_size"], start.batch_size, "latents" in start, start.get("latents"))
    print(start.evolve(batch_size=3).batch_size, start.batch_size)
    print()

    final = pipeline.run(start)
    print(final)
    # Copy forward: the starting state is unchanged ...
    print(dict(start))
    # ... `prepare` updated its input `batch_size` for the blocks after it, and intermediate
    # values (here `latents`, updated by `denoise_once`) are outputs of the whole pipeline.
    print(final.batch_size, float(final.latents[0, 0, 0, 0]), [s.name for s in pipeline.outputs])
    print()

    # A missing name says what is there.
    try:
        print(final.latent)
    except AttributeError as err:
        print(err)
