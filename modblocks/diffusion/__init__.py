"""Diffusion pipelines as plain-function blocks, on diffusers' models and schedulers.

Each block is one step of a diffusers pipeline's `__call__`, written as a function that
reads its inputs by name. Ready-made nodes: Stable Diffusion 1.x (`stable_diffusion`:
`text2img`, `img2img`, `inpaint`), SDXL (`stable_diffusion_xl`), SD3
(`stable_diffusion_3`), Flux.1 (`flux`) and Qwen-Image (`qwen_image`). With the same
components, scheduler and seeded generators they give the same images as the diffusers
pipelines.

Examples:
    ```python
    from modblocks.diffusion import stable_diffusion
    from modblocks.diffusion.testing import tiny_sd_components

    images = stable_diffusion.run(**tiny_sd_components(), prompt="a cat")["images"]
    ```

Added by their own modules: ControlNet (`stable_diffusion_controlnet`,
`stable_diffusion_xl_controlnet`), LoRA (`mb.Pipeline.load_lora_weights`, `lora`), guiders
and the per-call LoRA scale (`guiders`), weighted and long prompts (`prompt_weighting`).
Not supported for SD 1.x: textual inversion, the safety checker, UNets with a guidance
embedding (`time_cond_proj_dim`, e.g. LCM) and `padding_mask_crop`; each family's module
(`families/`) lists its own.
"""

# The package is laid out by stage: one module per step of a diffusion pipeline (prompts:
# `text`, `clip`, `t5`, `qwen`; `timesteps`, `flow_timesteps`; `latents`, `flow_latents`,
# `packing`; `time_ids`; `denoise`, `flow_denoise`, `guidance`; `vae`; `image`), shared by
# the families, and one module per family under `families/` that composes them.

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
from .families.flux import flux, flux_img2img, flux_inpaint, flux_text2img
from .families.qwen_image import qwen_image
from .families.sd import img2img, inpaint, stable_diffusion, text2img
from .families.sd3 import sd3_img2img, sd3_text2img, stable_diffusion_3
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
    "flux",
    "flux_img2img",
    "flux_inpaint",
    "flux_text2img",
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
    "qwen_image",
    "rescale_noise_cfg",
    "scale_model_input",
    "scheduler_step",
    "sd3_img2img",
    "sd3_text2img",
    "sdxl_img2img",
    "sdxl_inpaint",
    "sdxl_text2img",
    "set_timesteps",
    "stable_diffusion",
    "stable_diffusion_3",
    "stable_diffusion_controlnet",
    "stable_diffusion_xl",
    "stable_diffusion_xl_controlnet",
    "text2img",
]
