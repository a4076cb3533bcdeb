"""Caching and re-running: a Stable Diffusion pipeline that runs again only what changed.

Runs `modblocks.diffusion`'s `text2img` on tiny random-weight components (built offline by
`modblocks.diffusion.testing`) with an `mb.Cache`: a new seed runs again only the blocks that
read the generator, the same call again is served whole, a new prompt runs the prompt
encoding again, a fixed failure resumes where it stopped, and a cancelled run leaves the
cache correct. Each call prints its `mb.Report`: which blocks ran (and for how long) and which
were served from the cache.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}


def seed(value: int) -> torch.Generator:
    """A new generator with a fixed seed, as diffusers' examples make one per call."""
    return torch.Generator().manual_seed(value)


# --8<-- [start:seeds]
def iterate_on_seeds(components: dict[str, Any]) -> mb.Pipeline:
    """Same prompt, three seeds (one twice), then a new prompt: print what each call ran."""
    pipe = mb.Pipeline(text2img, components=components, cache=mb.Cache(max_entries=256))
    for prompt, value in [("a cat", 0), ("a cat", 1), ("a cat", 1), ("a dog", 1)]:
        report = mb.Report()
        pipe.run(prompt=prompt, generator=seed(value), events=report, **SMALL)
        print(f"prompt {prompt!r}, seed {value}:")
        print(report)
        print()
    print(pipe.cache.stats() if pipe.cache is not None else None)
    return pipe


# --8<-- [end:seeds]


# --8<-- [start:same]
def same_as_uncached(pipe: mb.Pipeline, components: dict[str, Any]) -> None:
    """A cached result is the one an uncached pipeline gives, bit for bit."""
    cached = pipe(prompt="a cat", generator=seed(1), **SMALL, output="images")
    plain = mb.Pipeline(text2img, components=components)
    uncached = plain(prompt="a cat", generator=seed(1), **SMALL, output="images")
    print("same images as without a cache:", np.array_equal(cached, uncached))


# --8<-- [end:same]


# --8<-- [start:purity]
@mb.block(output="prompt", cache=False)
def read_prompt(path: Path) -> str:
    """Read the prompt from a file: its text may change while the path stays the same."""
    return path.read_text(encoding="utf-8").strip()


@mb.block(output="noise")
def draw_noise(size: int, generator: torch.Generator) -> torch.Tensor:
    """Reads a generator: keyed by the generator's state, never by the object alone."""
    return torch.randn(size, generator=generator)


def purity(tmp: Path) -> None:
    """A `cache=False` block always runs; a generator-reading block runs for each new state."""
    cache = mb.Cache()
    path = tmp / "prompt.txt"
    for text in ("a cat", "a cat", "a dog"):
        path.write_text(text, encoding="utf-8")
        report = mb.Report()
        state = read_prompt.run(path=path, cache=cache, events=report)
        print(f"{state['prompt']!r}: ran {report.ran}, cached {report.cached}")
    generator = seed(0)
    for label, gen in [("seed 0", generator), ("same object", generator), ("seed 0", seed(0))]:
        report = mb.Report()
        noise = draw_noise.run(size=2, generator=gen, cache=cache, events=report)["noise"]
        print(f"{label}: {noise.tolist()} ran {report.ran}, cached {report.cached}")


# --8<-- [end:purity]


# --8<-- [start:policies]
def policies() -> None:
    """Bound a cache by entries and by tensor bytes; the least recently used go first."""
    cache = mb.Cache(max_entries=100, max_bytes=40)  # 40 bytes: two results of 16 below

    @mb.block(output="t")
    def filled(value: float) -> torch.Tensor:
        return torch.full((4,), value)  # 4 float32: 16 bytes

    for value in (1.0, 2.0, 3.0, 1.0):
        filled.run(value=value, cache=cache)
    print(cache.stats())


# --8<-- [end:policies]


# --8<-- [start:inplace]
@mb.block(output="latents")
def scale_in_place(latents: torch.Tensor) -> torch.Tensor:
    """A bug: changes its input, which the cache (and earlier states) still hold."""
    return latents.mul_(0.5)


def check_inplace() -> None:
    """`check_inplace=True` names the block that changed an input tensor in place."""
    try:
        scale_in_place.run(latents=torch.ones(4), cache=mb.Cache(check_inplace=True))
    except mb.BlockError as err:
        print(f"BlockError: {err}")


# --8<-- [end:inplace]


# --8<-- [start:resume]
def resume_after_failure(components: dict[str, Any]) -> None:
    """Call again after a failure: the blocks that finished are served."""
    pipe = mb.Pipeline(text2img, components=components, cache=mb.Cache())

    def out_of_memory(*_: Any) -> None:  # a forward pre-hook on the UNet
        raise RuntimeError("CUDA out of memory (simulated)")

    handle = components["unet"].register_forward_pre_hook(out_of_memory)
    try:  # the first UNet call fails, as it would on a busy GPU
        pipe(prompt="a cat", generator=seed(0), **SMALL)
    except mb.BlockError as err:
        print(f"failed at {err.path}")
    finally:
        handle.remove()
    report = mb.Report()
    pipe.run(prompt="a cat", generator=seed(0), events=report, **SMALL)
    print(report)


# --8<-- [end:resume]


# --8<-- [start:cancel]
def cancel_a_run(components: dict[str, Any]) -> None:
    """Cancel from an events callback after step 0; the cache stays correct."""
    pipe = mb.Pipeline(text2img, components=components, cache=mb.Cache())
    token = mb.CancelToken()  # one per run; call token.cancel() from any thread

    def events(event: mb.Event) -> None:
        if event.kind == "step":
            print(f"step {event.index} of {event.total} done")
            token.cancel()

    try:
        pipe.run(prompt="a cat", generator=seed(0), cancel=token, events=events, **SMALL)
    except mb.CancelledError as err:
        print(f"cancelled at {err.path}")
    report = mb.Report()
    pipe.run(prompt="a cat", generator=seed(0), events=report, **SMALL)  # no token: runs to the end
    print(f"then: ran {len(report.ran)} blocks, cached {report.cached}")


# --8<-- [end:cancel]


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)  # tiny models gain nothing from more threads
    components = tiny_sd_components()
    pipe = iterate_on_seeds(components)
    same_as_uncached(pipe, components)
    print()
    with tempfile.TemporaryDirectory() as folder:
        purity(Path(folder))
    print()
    policies()
    print()
    check_inplace()
    print()
    resume_after_failure(components)
    print()
    cancel_a_run(components)
