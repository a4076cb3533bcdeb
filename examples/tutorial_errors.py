"""Every error modblocks raises, with the message it prints (the errors page shows this output).

Each section triggers one error class of `modblocks.exceptions` on purpose and prints
``ClassName: message``.
"""

from collections.abc import Callable
from typing import NamedTuple

import modblocks as mb


class Latents(NamedTuple):
    latents: list[float]


@mb.block(output="latents")
def prepare_latents(batch_size: int) -> list[float]:
    """Start from zeros."""
    return [0.0] * batch_size


@mb.block(output="images")
def decode(latents: float) -> str:
    """Turn one latent into an 'image' (it wants a single number)."""
    return str(latents)


@mb.block(output="latents")
def scheduler_step(latents: list[float], t: int) -> list[float]:
    """Fail at timestep 500, like a run that runs out of memory."""
    if t == 500:
        msg = "CUDA out of memory (simulated)"
        raise RuntimeError(msg)
    return [x - 1 for x in latents]


@mb.block
def encode(batch_size: int) -> Latents:
    """Declares a NamedTuple but returns a list."""
    return [0.0] * batch_size  # type: ignore[return-value]  # the mistake shown


def show(action: Callable[[], object]) -> None:
    """Run *action* and print the modblocks error it raises."""
    try:
        action()
    except mb.ModblocksError as err:
        print(f"{type(err).__name__}: {err}")
        print()


def define_with_args() -> None:
    """Decorate a function with ``*args``."""

    def encode_image(*images: float) -> Latents:
        return Latents(list(images))

    mb.block(encode_image)


def cancel_during_the_loop() -> None:
    """Press "cancel" (from a step callback here; usually from another thread)."""
    token = mb.CancelToken()

    def press_cancel(step: mb.Step) -> None:
        if step.index == 1:
            token.cancel()

    text2img.run(batch_size=2, timesteps=[1000, 750, 250], on_step=press_cancel, cancel=token)


def load_from_the_hub() -> None:
    """Load components from a Hub id: only local diffusers-format folders are read."""
    mb.Pipeline.from_pretrained("runwayml/stable-diffusion-v1-5", prepare_latents)


def map_with_a_failing_item() -> None:
    """Run the pipeline over two items; the second fails, the first's result is kept."""
    items = [{"batch_size": 1, "timesteps": [1000]}, {"batch_size": 1, "timesteps": [500]}]
    mb.Pipeline(text2img, inference_mode=False).map(items, output="latents")


denoise = mb.loop(scheduler_step, over="timesteps", name="denoise")
text2img = (prepare_latents >> denoise).named("text2img")

if __name__ == "__main__":
    show(define_with_args)
    show(lambda: prepare_latents >> decode)
    show(lambda: text2img.run(timesteps=[1000, 750]))
    show(lambda: text2img.run(batch_size=2, timesteps=[1000], batch_sise=4))
    show(lambda: encode.run(batch_size=2))
    show(lambda: text2img.run(batch_size=2, timesteps=[1000, 750, 500, 250]))
    show(cancel_during_the_loop)
    show(load_from_the_hub)
    show(map_with_a_failing_item)
