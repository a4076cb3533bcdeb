"""Qwen-Image: text-to-image, the node `qwen_image`.

Qwen-Image is built like Flux: a flow-matching transformer over 2x2 latent patches, the
schedule shifted by the image's size, true classifier-free guidance as a second call. It
reuses Flux's stages for the size, the packed noise, the schedule, the guidance input and
unpacking; what it adds is its text encoder (Qwen2.5-VL, `qwen`), the model call (a text
attention mask and the token grid, CFG that keeps the norm) and its video VAE's decoding.
With the same components, scheduler and seeded generators it gives the images of diffusers'
`QwenImagePipeline`.

Examples:
    ```python
    from modblocks.diffusion import qwen_image
    from modblocks.diffusion.testing import tiny_qwen_image_components

    state = qwen_image.run(**tiny_qwen_image_components(), prompt="a cat", height=32, width=32)
    images = state["images"]
    ```
"""

from __future__ import annotations

from typing import Annotated

from typing_extensions import Doc

import modblocks as mb
from modblocks.diffusion.flow_denoise import denoise_qwen, prepare_guidance_flux
from modblocks.diffusion.flow_timesteps import set_timesteps_flux
from modblocks.diffusion.image import default_size_flux, postprocess
from modblocks.diffusion.packing import (
    prepare_img_shapes_qwen,
    prepare_latents_flux,
    unpack_latents,
)
from modblocks.diffusion.qwen import encode_prompt_qwen
from modblocks.diffusion.vae import decode_latents_qwen

__all__ = ["qwen_image", "steps_qwen_image"]


@mb.block(output="num_inference_steps")
def steps_qwen_image(
    num_inference_steps: Annotated[int, Doc("the number of denoising steps")] = 50,
) -> Annotated[int, Doc("the number of denoising steps")]:
    """Default the number of steps to 50, as `QwenImagePipeline` does (not Flux's 28)."""
    return num_inference_steps


qwen_image = (
    steps_qwen_image
    >> encode_prompt_qwen
    >> default_size_flux
    >> prepare_latents_flux
    >> prepare_img_shapes_qwen
    >> set_timesteps_flux
    >> prepare_guidance_flux
    >> denoise_qwen
    >> unpack_latents
    >> decode_latents_qwen
    >> postprocess
).named("qwen_image")
"""Text-to-image, as `QwenImagePipeline`."""
