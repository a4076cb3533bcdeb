"""Stable Diffusion 1.x as plain-function blocks, on diffusers' models and schedulers.

Each block is one step of diffusers' `StableDiffusionPipeline.__call__` (or of its
image-to-image and inpainting siblings), written as a function that reads its inputs by
name. With the same components, scheduler and seeded generators the ready-made nodes give
the same images as the diffusers pipelines.

Example:
    ```python
    from modblocks.diffusion import stable_diffusion
    from modblocks.diffusion.testing import tiny_sd_components

    images = stable_diffusion.run(**tiny_sd_components(), prompt="a cat")["images"]
    ```

Added by their own modules: ControlNet (`stable_diffusion_controlnet`,
`stable_diffusion_xl_controlnet`), LoRA (`mb.Pipeline.load_lora_weights`, `lora`), guiders
and the per-call LoRA scale (`guiders`), weighted and long prompts (`prompt_weighting`).
Not supported: textual inversion, the safety checker, UNets with a guidance embedding
(`time_cond_proj_dim`, e.g. LCM) and `padding_mask_crop`.
"""

# The package is laid out by stage: one module per step of a diffusion pipeline (`clip`,
# `timesteps`, `latents`, `denoise`, `guidance`, `vae`, `image`, ...), shared by the families,
# and one module per family under `families/` that composes them into the ready-made nodes.

# Names listed in __all__ are re-exported (mypy's no_implicit_reexport accepts them).
from .clip import PromptEmbeds, encode_prompt
from .controlnet import stable_diffusion_controlnet, stable_diffusion_xl_controlnet
from .denoise import (
    add_inpaint_channels,
    blend_masked_latents,
    denoise,
    denoise_inpaint,
    predict_noise,
    scale_model_input,
    scheduler_step,
)
from .families.sd import img2img, inpaint, stable_diffusion, text2img
from .families.sdxl import sdxl_img2img, sdxl_inpaint, sdxl_text2img, stable_diffusion_xl
from .guidance import rescale_noise_cfg
from .image import Size, default_size, postprocess, preprocess_image, preprocess_mask
from .latents import (
    InpaintLatents,
    MaskLatents,
    prepare_img2img_latents,
    prepare_inpaint_latents,
    prepare_latents,
    prepare_mask_latents,
)
from .timesteps import (
    StrengthTimesteps,
    Timesteps,
    img2img_timesteps,
    inpaint_timesteps,
    set_timesteps,
)
from .vae import decode_latents

__all__ = [
    "InpaintLatents",
    "MaskLatents",
    "PromptEmbeds",
    "Size",
    "StrengthTimesteps",
    "Timesteps",
    "add_inpaint_channels",
    "blend_masked_latents",
    "decode_latents",
    "default_size",
    "denoise",
    "denoise_inpaint",
    "encode_prompt",
    "img2img",
    "img2img_timesteps",
    "inpaint",
    "inpaint_timesteps",
    "postprocess",
    "predict_noise",
    "prepare_img2img_latents",
    "prepare_inpaint_latents",
    "prepare_latents",
    "prepare_mask_latents",
    "preprocess_image",
    "preprocess_mask",
    "rescale_noise_cfg",
    "scale_model_input",
    "scheduler_step",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_text2img",
    "set_timesteps",
    "stable_diffusion",
    "stable_diffusion_controlnet",
    "stable_diffusion_xl",
    "stable_diffusion_xl_controlnet",
    "text2img",
]
