"""Flux.1: text-to-image, image-to-image, inpainting, and the auto node `flux`.

Flux denoises 2x2 patches of latents as tokens with a transformer trained with flow
matching. Where SD encodes the prompt with CLIP, Flux takes CLIP's pooled embedding and
T5's hidden states; where SD guides with a negative prompt, FLUX.1-dev reads its guidance
weight as an input (`guidance_scale`), and true classifier-free guidance (`true_cfg_scale`
with a `negative_prompt`) is a second transformer call. The schedule is shifted by the
image's size. With the same components, scheduler and seeded generators the nodes give
the images of diffusers' `FluxPipeline`, `FluxImg2ImgPipeline` and `FluxInpaintPipeline`.

Examples:
    ```python
    from modblocks.diffusion import flux
    from modblocks.diffusion.testing import tiny_flux_components

    state = flux.run(**tiny_flux_components(), prompt="a cat", height=32, width=32)
    images = state["images"]
    ```

Not supported: IP-Adapter, `padding_mask_crop`, textual inversion.
"""

from __future__ import annotations

from typing import Annotated

from typing_extensions import Doc

import modblocks as mb
from modblocks.diffusion.flow_denoise import (
    denoise_flux,
    denoise_inpaint_flux,
    prepare_guidance_flux,
)
from modblocks.diffusion.flow_timesteps import img2img_timesteps_flow, set_timesteps_flux
from modblocks.diffusion.image import (
    default_size_flux,
    postprocess,
    preprocess_image_flux,
    preprocess_mask_flux,
)
from modblocks.diffusion.packing import (
    prepare_img2img_latents_flux,
    prepare_inpaint_latents_flux,
    prepare_latents_flux,
    prepare_mask_latents_flux,
    unpack_latents,
)
from modblocks.diffusion.t5 import encode_prompt_flux
from modblocks.diffusion.vae import decode_latents_flow

__all__ = ["flux", "flux_img2img", "flux_inpaint", "flux_text2img", "image_guidance_scale_flux"]


@mb.block(output="guidance_scale")
def image_guidance_scale_flux(
    guidance_scale: Annotated[
        float, Doc("the guidance weight the model was distilled with (guidance-embedding models)")
    ] = 7.0,
) -> Annotated[float, Doc("the guidance weight")]:
    """Default the guidance weight to 7.0, as Flux's image-to-image and inpainting do (not 3.5)."""
    return guidance_scale


_decode = unpack_latents >> decode_latents_flow >> postprocess

flux_text2img = (
    encode_prompt_flux
    >> default_size_flux
    >> prepare_latents_flux
    >> set_timesteps_flux
    >> prepare_guidance_flux
    >> denoise_flux
    >> _decode
).named("flux_text2img")
"""Text-to-image, as `FluxPipeline`."""

flux_img2img = (
    image_guidance_scale_flux
    >> encode_prompt_flux
    >> default_size_flux
    >> preprocess_image_flux
    >> set_timesteps_flux
    >> img2img_timesteps_flow
    >> prepare_img2img_latents_flux
    >> prepare_guidance_flux
    >> denoise_flux
    >> _decode
).named("flux_img2img")
"""Image-to-image, as `FluxImg2ImgPipeline`."""

flux_inpaint = (
    image_guidance_scale_flux
    >> encode_prompt_flux
    >> default_size_flux
    >> preprocess_image_flux
    >> set_timesteps_flux
    >> img2img_timesteps_flow
    >> prepare_inpaint_latents_flux
    >> preprocess_mask_flux
    >> prepare_mask_latents_flux
    >> prepare_guidance_flux
    >> denoise_inpaint_flux
    >> _decode
).named("flux_inpaint")
"""Inpainting, as `FluxInpaintPipeline`."""

flux = mb.switch({"mask_image": flux_inpaint, "image": flux_img2img}, default=flux_text2img).named(
    "flux"
)
"""Inpainting if `mask_image` is given, else image-to-image if `image` is, else text-to-image."""
