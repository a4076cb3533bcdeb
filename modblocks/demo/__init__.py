"""The demo: a class-conditional diffusion model of handwritten digits, drawn by modblocks.

The model (a small diffusers `UNet2DModel` with a class embedding and a null class for
classifier-free guidance, trained on scikit-learn's 8x8 digits upsampled to 16x16 by
``examples/train_digits.py``) ships in ``modblocks/demo/digits`` as a diffusers-format folder.
The pipeline is made of plain-function blocks: class labels, timesteps, latents, the
denoising loop (with a switch that repaints only the masked part of given digits) and decoding.

Run it with ``python -m modblocks.demo --digits 0123456789 --out digits.png``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NamedTuple, cast

import torch
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from typing_extensions import Doc

import modblocks as mb
from modblocks.diffusion._scheduler import typed

__all__ = [
    "MODEL_PATH",
    "NULL_CLASS",
    "decode",
    "denoise",
    "digit_labels",
    "digits",
    "load_pipeline",
    "make_grid",
    "predict_noise",
    "prepare_latents",
    "repaint_known",
    "scheduler_step",
    "set_timesteps",
]

MODEL_PATH = Path(__file__).resolve().parent / "digits"
"""The trained model shipped with the package (a diffusers-format folder)."""

NULL_CLASS = 10
"""The class label the model was trained to treat as "no class" (for guidance)."""


class Labels(NamedTuple):
    class_labels: Annotated[torch.Tensor, Doc("one class per image: null ones first with CFG")]
    batch_size: Annotated[int, Doc("number of images to draw")]


@mb.block
def digit_labels(
    digits: Annotated[str, Doc("the digits to draw, e.g. '0123456789'")] = "0123456789",
    num_images_per_digit: Annotated[int, Doc("images to draw of each digit")] = 1,
    guidance_scale: Annotated[float, Doc("classifier-free guidance scale; 1 turns it off")] = 3.0,
) -> Labels:
    """Turn the requested digits into class labels, with the null class first for guidance."""
    if not digits or not digits.isdigit():
        msg = f"`digits` must be a string of digits like '0123', not {digits!r}."
        raise ValueError(msg)
    labels = torch.tensor([int(d) for d in digits for _ in range(num_images_per_digit)])
    if guidance_scale != 1.0:
        labels = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
        return Labels(labels, len(labels) // 2)
    return Labels(labels, len(labels))


class Timesteps(NamedTuple):
    timesteps: Annotated[torch.Tensor, Doc("the timesteps to denoise over")]
    scheduler: Annotated[SchedulerMixin, Doc("a copy of the scheduler, set for this run")]


@mb.block
def set_timesteps(
    scheduler: mb.Component[SchedulerMixin],
    num_inference_steps: Annotated[int, Doc("number of denoising steps")] = 50,
) -> Timesteps:
    """Set the timesteps on a copy of the scheduler, so concurrent runs never share one."""
    scheduler = copy.deepcopy(scheduler)
    typed(scheduler).set_timesteps(num_inference_steps)
    return Timesteps(typed(scheduler).timesteps, scheduler)


@mb.block(output="latents")
def prepare_latents(
    batch_size: int,
    unet: mb.Component[UNet2DModel],
    scheduler: SchedulerMixin,
    generator: Annotated[torch.Generator | None, Doc("seeds the initial noise")] = None,
) -> torch.Tensor:
    """Draw the initial noise, scaled as the scheduler expects."""
    size = int(unet.config["sample_size"])
    shape = (batch_size, int(unet.config["in_channels"]), size, size)
    noise = torch.randn(shape, generator=generator)
    return noise * typed(scheduler).init_noise_sigma


@mb.block(output="noise_pred")
def predict_noise(
    latents: torch.Tensor,
    t: torch.Tensor,
    class_labels: torch.Tensor,
    unet: mb.Component[UNet2DModel],
    scheduler: SchedulerMixin,
    guidance_scale: float = 3.0,
) -> torch.Tensor:
    """Predict the noise, with classifier-free guidance in one batched UNet call."""
    guided = guidance_scale != 1.0
    model_input = torch.cat([latents, latents]) if guided else latents
    model_input = typed(scheduler).scale_model_input(model_input, t)
    forward = cast("Callable[..., tuple[torch.Tensor]]", unet.forward)
    noise = forward(model_input, t, class_labels=class_labels, return_dict=False)[0]
    if not guided:
        return noise
    uncond, cond = noise.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@mb.block(output="latents")
def scheduler_step(
    noise_pred: torch.Tensor,
    t: torch.Tensor,
    latents: torch.Tensor,
    scheduler: SchedulerMixin,
) -> torch.Tensor:
    """Take one denoising step."""
    stepped: torch.Tensor = typed(scheduler).step(noise_pred, t, latents).prev_sample
    return stepped


@mb.block(output="latents")
def repaint_known(
    latents: torch.Tensor,
    image: Annotated[torch.Tensor, Doc("digits to repaint, in [-1, 1], shape (B, 1, 16, 16)")],
    mask_image: Annotated[torch.Tensor, Doc("1 where to repaint, 0 where to keep the image")],
    i: int,
    timesteps: torch.Tensor,
    scheduler: SchedulerMixin,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Put back the known pixels, noised to the level of the next step (RePaint-style)."""
    if i + 1 < len(timesteps):
        noise = torch.randn(image.shape, generator=generator)
        known = typed(scheduler).add_noise(image, noise, timesteps[i + 1 : i + 2])
    else:
        known = image
    return mask_image * latents + (1 - mask_image) * known


denoise = mb.loop(
    predict_noise >> scheduler_step >> mb.switch({"mask_image": repaint_known}, name="repaint"),
    over="timesteps",
    name="denoise",
)
"""The denoising loop; with ``image`` and ``mask_image`` it only repaints the masked part."""


class Images(NamedTuple):
    images: Annotated[list[Image.Image], Doc("one 16x16 grayscale image per digit")]
    pixels: Annotated[torch.Tensor, Doc("the images as a tensor in [-1, 1]")]


@mb.block
def decode(latents: torch.Tensor) -> Images:
    """Turn the denoised latents (pixels, for this model) into images."""
    pixels = latents.clamp(-1.0, 1.0)
    array = ((pixels[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    return Images([Image.fromarray(a, mode="L") for a in array], pixels)


digits = (digit_labels >> set_timesteps >> prepare_latents >> denoise >> decode).named("digits")
"""The whole demo pipeline: digits in, images out (repainting when given a mask)."""


def load_pipeline(path: str | Path = MODEL_PATH) -> mb.Pipeline:
    """Load the shipped digits model into a `modblocks.Pipeline` running `digits`."""
    return mb.Pipeline.from_pretrained(path, digits)


def make_grid(rows: list[list[Image.Image]], scale: int = 4) -> Image.Image:
    """Lay out rows of images in one picture, each enlarged *scale* times."""
    width = max(len(r) for r in rows)
    side = rows[0][0].width * scale
    grid = Image.new("L", (width * side, len(rows) * side), color=0)
    for y, row in enumerate(rows):
        for x, img in enumerate(row):
            grid.paste(img.resize((side, side), Image.Resampling.NEAREST), (x * side, y * side))
    return grid
