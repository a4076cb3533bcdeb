"""Stable Diffusion 3: text-to-image, image-to-image, and the auto node `stable_diffusion_3`.

SD3 denoises latents (shifted by the VAE's `shift_factor`) with a transformer trained with
flow matching. Its prompt goes through two CLIP encoders and T5 (optional: without it, its
part of the text sequence is zeros); guidance is classifier-free on the batch `[negative,
positive]`, with skip-layer guidance for SD3.5 (`skip_guidance_layers`). With the same
components, scheduler and seeded generators the nodes give the images of diffusers'
`StableDiffusion3Pipeline` and `StableDiffusion3Img2ImgPipeline`.

Examples:
    ```python
    from modblocks.diffusion import stable_diffusion_3
    from modblocks.diffusion.testing import tiny_sd3_components

    state = stable_diffusion_3.run(**tiny_sd3_components(), prompt="a cat")
    images = state["images"]
    ```

Not supported: IP-Adapter, LoRA scales (other than through `joint_attention_kwargs`).
"""

from __future__ import annotations

from typing import Annotated

from typing_extensions import Doc

import modblocks as mb
from modblocks.diffusion.flow_denoise import denoise_sd3
from modblocks.diffusion.flow_latents import prepare_img2img_latents_sd3, prepare_latents_sd3
from modblocks.diffusion.flow_timesteps import img2img_timesteps_flow, set_timesteps_sd3
from modblocks.diffusion.image import default_size_sd3, postprocess, preprocess_image
from modblocks.diffusion.t5 import encode_prompt_sd3
from modblocks.diffusion.vae import decode_latents_flow

__all__ = ["img2img_steps_sd3", "sd3_img2img", "sd3_text2img", "stable_diffusion_3"]


@mb.block(output="num_inference_steps")
def img2img_steps_sd3(
    num_inference_steps: Annotated[int, Doc("the number of steps of the full schedule")] = 50,
) -> Annotated[int, Doc("the number of steps of the full schedule")]:
    """Default the number of steps to 50, as SD3's image-to-image does (not 28)."""
    return num_inference_steps


sd3_text2img = (
    encode_prompt_sd3
    >> default_size_sd3
    >> prepare_latents_sd3
    >> set_timesteps_sd3
    >> denoise_sd3
    >> decode_latents_flow
    >> postprocess
).named("sd3_text2img")
"""Text-to-image, as `StableDiffusion3Pipeline`."""

sd3_img2img = (
    img2img_steps_sd3
    >> encode_prompt_sd3
    >> default_size_sd3
    >> preprocess_image
    >> set_timesteps_sd3
    >> img2img_timesteps_flow
    >> prepare_img2img_latents_sd3
    >> denoise_sd3
    >> decode_latents_flow
    >> postprocess
).named("sd3_img2img")
"""Image-to-image, as `StableDiffusion3Img2ImgPipeline`."""

stable_diffusion_3 = mb.switch({"image": sd3_img2img}, default=sd3_text2img).named(
    "stable_diffusion_3"
)
"""Image-to-image if `image` is given, else text-to-image."""
