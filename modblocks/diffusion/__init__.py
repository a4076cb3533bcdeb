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

Not supported: IP-Adapter, LoRA scales, textual inversion, the safety checker, UNets with a
guidance embedding (`time_cond_proj_dim`, e.g. LCM) and `padding_mask_crop`.
"""

from .denoise import (
    add_inpaint_channels as add_inpaint_channels,
)
from .denoise import (
    blend_masked_latents as blend_masked_latents,
)
from .denoise import (
    denoise as denoise,
)
from .denoise import (
    denoise_inpaint as denoise_inpaint,
)
from .denoise import (
    predict_noise as predict_noise,
)
from .denoise import (
    rescale_noise_cfg as rescale_noise_cfg,
)
from .denoise import (
    scale_model_input as scale_model_input,
)
from .denoise import (
    scheduler_step as scheduler_step,
)
from .image import (
    Size as Size,
)
from .image import (
    default_size as default_size,
)
from .image import (
    preprocess_image as preprocess_image,
)
from .image import (
    preprocess_mask as preprocess_mask,
)
from .latents import (
    InpaintLatents as InpaintLatents,
)
from .latents import (
    MaskLatents as MaskLatents,
)
from .latents import (
    prepare_img2img_latents as prepare_img2img_latents,
)
from .latents import (
    prepare_inpaint_latents as prepare_inpaint_latents,
)
from .latents import (
    prepare_latents as prepare_latents,
)
from .latents import (
    prepare_mask_latents as prepare_mask_latents,
)
from .pipelines import (
    img2img as img2img,
)
from .pipelines import (
    inpaint as inpaint,
)
from .pipelines import (
    stable_diffusion as stable_diffusion,
)
from .pipelines import (
    text2img as text2img,
)
from .text import PromptEmbeds as PromptEmbeds
from .text import encode_prompt as encode_prompt
from .timesteps import (
    StrengthTimesteps as StrengthTimesteps,
)
from .timesteps import (
    Timesteps as Timesteps,
)
from .timesteps import (
    img2img_timesteps as img2img_timesteps,
)
from .timesteps import (
    inpaint_timesteps as inpaint_timesteps,
)
from .timesteps import (
    set_timesteps as set_timesteps,
)
from .vae import decode_latents as decode_latents
from .vae import postprocess as postprocess

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
    "set_timesteps",
    "stable_diffusion",
    "text2img",
]
