"""`mb.Pipeline`: blocks plus their components, loaded, saved, cached and re-run.

A real (tiny, random-weight) unconditional diffusion pipeline on diffusers' own `UNet2DModel`
and `DDIMScheduler`: the pipeline binds the components once and checks their types, saves
them as a diffusers-format folder and loads them back, and, with an `mb.Cache`, re-runs only
the blocks whose inputs changed (an `mb.Report` says which).
"""

import copy
import tempfile
from typing import NamedTuple

import torch
from diffusers import DDIMScheduler, UNet2DModel

import modblocks as mb


class Timesteps(NamedTuple):
    scheduler: DDIMScheduler
    timesteps: torch.Tensor


@mb.block
def set_timesteps(
    scheduler: mb.Component[DDIMScheduler], num_inference_steps: int = 4
) -> Timesteps:
    """Copy the scheduler (it keeps per-run state) and set its timesteps."""
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps)
    return Timesteps(scheduler, scheduler.timesteps)


@mb.block(output="latents")
def prepare_latents(
    unet: mb.Component[UNet2DModel], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample the initial noise."""
    size = unet.config.sample_size
    return torch.randn(1, unet.config.in_channels, size, size, generator=generator)


@mb.block(output="latents")
def denoise_step(
    latents: torch.Tensor,
    t: torch.Tensor,
    unet: mb.Component[UNet2DModel],
    scheduler: DDIMScheduler,
    eta: mb.Config[float] = 0.0,
) -> torch.Tensor:
    """Predict the noise and step the scheduler."""
    noise_pred = unet(latents, t).sample
    return scheduler.step(noise_pred, t, latents, eta=eta).prev_sample


@mb.block(output="images")
def to_images(latents: torch.Tensor) -> torch.Tensor:
    """Map latents from [-1, 1] to [0, 1]."""
    return (latents / 2 + 0.5).clamp(0, 1)


blocks = (
    set_timesteps
    >> prepare_latents
    >> mb.loop(denoise_step, over="timesteps", name="denoise")
    >> to_images
).named("unconditional")


def tiny_components() -> dict[str, object]:
    """Random-weight components, small enough for a CPU."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    return {"unet": unet.eval(), "scheduler": DDIMScheduler(num_train_timesteps=100)}


if __name__ == "__main__":
    pipe = mb.Pipeline(blocks, components=tiny_components(), configs={"eta": 0.0})
    print(repr(pipe))
    print([s.name for s in blocks.components], [s.name for s in blocks.configs])
    images = pipe(generator=torch.Generator().manual_seed(0), output="images")
    print(tuple(images.shape))
    latents, images = pipe(generator=torch.Generator().manual_seed(0), output=["latents", "images"])
    print(tuple(latents.shape), tuple(images.shape))
    print()

    # Save the components as a diffusers-format folder, and load them back.
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder)
        loaded = mb.Pipeline.from_pretrained(folder, blocks)
        again = loaded(generator=torch.Generator().manual_seed(0), output="images")
        print(repr(loaded), torch.allclose(again, images, atol=1e-6))
    print()

    # Caching and re-running: an unchanged block is served from the cache.
    cached = mb.Pipeline(blocks, components=tiny_components(), cache=mb.Cache())
    for seed in (0, 0, 1):
        report = mb.Report()
        cached.run(generator=torch.Generator().manual_seed(seed), events=report)
        print(f"seed {seed}: ran {report.ran}")
        print(f"        cached {report.cached}")
    print(cached.cache.stats())
