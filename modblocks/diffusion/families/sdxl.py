"""Stable Diffusion XL: text-to-image, image-to-image (and refining), inpainting, auto node.

SDXL is SD 1.x with two text encoders (hidden states concatenated, pooled embeddings from
the second), "micro-conditioning" time ids, `denoising_start`/`denoising_end` for the
base + refiner split, and a VAE that may run in float32 (`force_upcast`). Everything else
(sizes, timesteps, noise, the scheduler step, inpainting channels, post-processing) is the
SD 1.x blocks, reused as they are; every block lives in its stage's module. With the same
components, scheduler and seeded generators the nodes give the images of diffusers'
`StableDiffusionXLPipeline`, `StableDiffusionXLImg2ImgPipeline` and
`StableDiffusionXLInpaintPipeline`.

Examples:
    ```python
    from modblocks.diffusion import stable_diffusion_xl
    from modblocks.diffusion.testing import tiny_sdxl_components

    state = stable_diffusion_xl.run(
        **tiny_sdxl_components(), prompt="a cat", num_inference_steps=4
    )
    images = state["images"]
    ```

ControlNet, LoRA, guiders and weighted prompts are added by their own modules (see
`modblocks.diffusion`). Not supported (as for SD 1.x): textual inversion, `padding_mask_crop`,
UNets with a guidance embedding (`time_cond_proj_dim`) and the invisible watermark.
"""

from __future__ import annotations

from typing import Annotated

from typing_extensions import Doc

import modblocks as mb
from modblocks.diffusion.clip import encode_prompt_xl
from modblocks.diffusion.denoise import denoise_inpaint_xl, denoise_xl
from modblocks.diffusion.image import default_size, postprocess, preprocess_image, preprocess_mask
from modblocks.diffusion.latents import (
    prepare_img2img_latents_xl,
    prepare_inpaint_latents_xl,
    prepare_latents,
    prepare_mask_latents_xl,
)
from modblocks.diffusion.time_ids import img2img_time_ids, text2img_time_ids
from modblocks.diffusion.timesteps import (
    apply_denoising_end,
    img2img_timesteps_xl,
    inpaint_timesteps_xl,
    set_timesteps,
)
from modblocks.diffusion.vae import decode_latents_xl

__all__ = [
    "inpaint_guidance_scale",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_text2img",
    "stable_diffusion_xl",
]


@mb.block(output="guidance_scale")
def inpaint_guidance_scale(
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 7.5,
) -> Annotated[float, Doc("the guidance weight")]:
    """Default the guidance weight to 7.5, as `StableDiffusionXLInpaintPipeline` does (not 5)."""
    return guidance_scale


sdxl_text2img = (
    encode_prompt_xl
    >> default_size
    >> set_timesteps
    >> prepare_latents
    >> text2img_time_ids
    >> apply_denoising_end
    >> denoise_xl
    >> decode_latents_xl
    >> postprocess
).named("sdxl_text2img")
"""Text-to-image, as `StableDiffusionXLPipeline`."""

sdxl_img2img = (
    encode_prompt_xl
    >> preprocess_image
    >> set_timesteps
    >> img2img_timesteps_xl
    >> prepare_img2img_latents_xl
    >> img2img_time_ids
    >> apply_denoising_end
    >> denoise_xl
    >> decode_latents_xl
    >> postprocess
).named("sdxl_img2img")
"""Image-to-image (and refining), as `StableDiffusionXLImg2ImgPipeline`."""

sdxl_inpaint = (
    inpaint_guidance_scale
    >> encode_prompt_xl
    >> default_size
    >> set_timesteps
    >> inpaint_timesteps_xl
    >> preprocess_image
    >> preprocess_mask
    >> prepare_inpaint_latents_xl
    >> prepare_mask_latents_xl
    >> img2img_time_ids
    >> apply_denoising_end
    >> denoise_inpaint_xl
    >> decode_latents_xl
    >> postprocess
).named("sdxl_inpaint")
"""Inpainting, as `StableDiffusionXLInpaintPipeline` (9-channel or 4-channel UNet)."""

stable_diffusion_xl = mb.switch(
    {"mask_image": sdxl_inpaint, "image": sdxl_img2img}, default=sdxl_text2img
).named("stable_diffusion_xl")
"""Inpainting if `mask_image` is given, else image-to-image if `image` is, else text-to-image."""
