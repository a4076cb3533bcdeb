"""Stable Diffusion 1.x: text-to-image, image-to-image and inpainting, and the auto node."""

from __future__ import annotations

import modblocks as mb
from modblocks.diffusion.clip import encode_prompt
from modblocks.diffusion.denoise import denoise, denoise_inpaint
from modblocks.diffusion.image import default_size, postprocess, preprocess_image, preprocess_mask
from modblocks.diffusion.latents import (
    prepare_img2img_latents,
    prepare_inpaint_latents,
    prepare_latents,
    prepare_mask_latents,
)
from modblocks.diffusion.timesteps import img2img_timesteps, inpaint_timesteps, set_timesteps
from modblocks.diffusion.vae import decode_latents

__all__ = ["img2img", "inpaint", "stable_diffusion", "text2img"]

text2img = (
    encode_prompt
    >> default_size
    >> set_timesteps
    >> prepare_latents
    >> denoise
    >> decode_latents
    >> postprocess
).named("text2img")
"""Text-to-image, as `StableDiffusionPipeline`."""

img2img = (
    encode_prompt
    >> preprocess_image
    >> set_timesteps
    >> img2img_timesteps
    >> prepare_img2img_latents
    >> denoise
    >> decode_latents
    >> postprocess
).named("img2img")
"""Image-to-image, as `StableDiffusionImg2ImgPipeline`."""

inpaint = (
    encode_prompt
    >> default_size
    >> preprocess_image
    >> preprocess_mask
    >> set_timesteps
    >> inpaint_timesteps
    >> prepare_inpaint_latents
    >> prepare_mask_latents
    >> denoise_inpaint
    >> decode_latents
    >> postprocess
).named("inpaint")
"""Inpainting, as `StableDiffusionInpaintPipeline` (9-channel or legacy 4-channel UNet)."""

stable_diffusion = mb.switch({"mask_image": inpaint, "image": img2img}, default=text2img).named(
    "stable_diffusion"
)
"""Inpainting if `mask_image` is given, else image-to-image if `image` is, else text-to-image."""
