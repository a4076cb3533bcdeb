"""The SDXL blocks and nodes, importable from here as before the library was laid out by stage.

They live in their stages' modules (`clip`, `time_ids`, `timesteps`, `latents`, `denoise`,
`vae`) and in `families.sdxl`.
"""

from __future__ import annotations

from .clip import PromptEmbedsXL, encode_prompt_xl
from .denoise import denoise_inpaint_xl, denoise_xl, predict_noise_xl
from .families.sdxl import (
    inpaint_guidance_scale,
    sdxl_img2img,
    sdxl_inpaint,
    sdxl_text2img,
    stable_diffusion_xl,
)
from .latents import prepare_img2img_latents_xl, prepare_inpaint_latents_xl, prepare_mask_latents_xl
from .time_ids import img2img_time_ids, text2img_time_ids
from .timesteps import apply_denoising_end, img2img_timesteps_xl, inpaint_timesteps_xl
from .vae import decode_latents_xl

__all__ = [
    "PromptEmbedsXL",
    "apply_denoising_end",
    "decode_latents_xl",
    "denoise_inpaint_xl",
    "denoise_xl",
    "encode_prompt_xl",
    "img2img_time_ids",
    "img2img_timesteps_xl",
    "inpaint_guidance_scale",
    "inpaint_timesteps_xl",
    "predict_noise_xl",
    "prepare_img2img_latents_xl",
    "prepare_inpaint_latents_xl",
    "prepare_mask_latents_xl",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_text2img",
    "stable_diffusion_xl",
    "text2img_time_ids",
]
