"""IP-Adapter: an image as a prompt, added to any SD 1.x or SDXL node.

`with_ip_adapter(node)` adds one block after the prompt encoding; `pipe.load_ip_adapter` and
`pipe.set_ip_adapter_scale` work as in diffusers. The image encoder and the adapter are tiny
random ones, built offline; the images are compared with diffusers' `StableDiffusionPipeline`.
"""

import copy

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline

import modblocks as mb
from modblocks.diffusion import stable_diffusion
from modblocks.diffusion.ip_adapter import with_ip_adapter
from modblocks.diffusion.testing import tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_image_encoder, tiny_ip_adapter

SMALL = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 2}


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


if __name__ == "__main__":
    node = with_ip_adapter(stable_diffusion)
    print(dict(node.branches)["img2img"].names[:3])

    encoder = tiny_image_encoder(32)  # image_encoder and feature_extractor
    adapter = tiny_ip_adapter(tiny_sd_components())  # {"image_proj": ..., "ip_adapter": ...}
    pipe = mb.Pipeline(node, components={**tiny_sd_components(), **encoder})
    pipe.load_ip_adapter(adapter)
    pipe.set_ip_adapter_scale(0.6)
    style = PIL.Image.fromarray(
        np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    )
    ours = pipe(**SMALL, ip_adapter_image=style, output_type="np", generator=seed())
    print("image embeddings:", [tuple(e.shape) for e in ours["image_embeds"]])

    components = {**tiny_sd_components(), **encoder}
    reference = StableDiffusionPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    reference.unet._load_ip_adapter_weights([adapter])
    reference.set_ip_adapter_scale(0.6)
    theirs = reference(**SMALL, ip_adapter_image=style, output_type="np", generator=seed())
    print("same as diffusers:", np.allclose(ours["images"], theirs.images, atol=1e-5))
