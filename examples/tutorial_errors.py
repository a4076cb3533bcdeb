"""Every error modblocks raises, with the message it prints (the errors page shows this output).

Each section triggers one error class of `modblocks.exceptions` on purpose and prints
``ClassName: message``.
"""

import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
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


def resume_at_a_misspelt_block() -> None:
    """Resume at a sub-block that isn't there."""
    text2img.run(mb.State(batch_size=2, timesteps=[1000]), resume="denose[step 0]")


def ask_for_an_output_it_does_not_make() -> None:
    """Ask a pipeline for a value it doesn't produce: refused before anything runs."""
    mb.Pipeline(text2img, inference_mode=False)(batch_size=1, timesteps=[1000], output="latent")


def change_a_state() -> None:
    """Set a value on a state: states never change."""
    state = text2img.run(batch_size=1, timesteps=[1000])
    state.latents = [1.0]  # type: ignore[misc]  # the mistake shown


def pickle_a_local_block() -> None:
    """Send a block defined inside a function to another process."""

    @mb.block(output="x")
    def local(x: int) -> int:
        return x

    pickle.dumps(local)


def cache_a_list_that_holds_itself() -> None:
    """Give a cached run a list that contains itself: the cache can't name its value."""
    items: list[object] = [1.0]
    items.append(items)

    @mb.block(output="images")
    def decode_all(latents: list[object]) -> str:
        return repr(latents)

    decode_all.run(latents=items, cache=mb.Cache())


def compose_two_defaults() -> None:
    """Two blocks give one input different defaults: a warning says each reads its own."""

    @mb.block(output="noise")
    def add_noise(strength: float = 0.8) -> float:
        return strength

    @mb.block(output="mix")
    def blend(noise: float, strength: float = 0.5) -> float:
        return noise * strength

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_noise >> blend
    for warning in caught:
        print(f"{warning.category.__name__}: {warning.message}")
        print()


def load_from_the_hub() -> None:
    """Load components from a Hub id that is not in the local cache, offline."""
    mb.Pipeline.from_pretrained(
        "runwayml/stable-diffusion-v1-5", prepare_latents, local_files_only=True
    )


def free_a_component_in_use() -> None:
    """Ask a registry to free a model that a pipeline still binds."""

    @mb.block(output="y")
    def scale(x: float, weight: mb.Component[float]) -> float:
        return x * weight

    registry = mb.Components({"weight": 2.0})
    pipe = mb.Pipeline(scale, components=registry)
    registry.free("weight")
    del pipe


def load_shared_blocks(trust: bool, pin: str | None = None) -> Callable[[], object]:
    """Load a folder of blocks (written here) without trust, or pinned to other code."""

    def load() -> object:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "style"
            folder.mkdir()
            (folder / "blocks.py").write_text("import modblocks as mb\n")
            cwd = Path.cwd()
            os.chdir(scratch)  # so the message shows the folder as the caller named it
            try:
                return mb.load_blocks("style", trust_remote_code=trust, pin=pin)
            finally:
                os.chdir(cwd)

    return load


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
    show(free_a_component_in_use)
    show(load_shared_blocks(trust=False))
    show(load_shared_blocks(trust=True, pin="sha256:" + "0" * 64))
    show(map_with_a_failing_item)
    show(resume_at_a_misspelt_block)
    show(lambda: text2img.run(batch_size=2, timesteps=1000))
    show(ask_for_an_output_it_does_not_make)
    show(change_a_state)
    show(pickle_a_local_block)
    show(cache_a_list_that_holds_itself)
    show(lambda: text2img.run(batch_size=1, timesteps=[1000]).latent)
    show(lambda: text2img.run(batch_size="two", timesteps=[1000]))
    compose_two_defaults()
