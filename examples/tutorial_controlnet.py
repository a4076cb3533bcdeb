"""ControlNet: `stable_diffusion_controlnet` is `stable_diffusion` plus two blocks.

`control_image` conditions the ControlNet in every mode; `image` and `mask_image` choose
image-to-image and inpainting as in `stable_diffusion`. The ControlNet is a tiny random one
(`modblocks.diffusion.testing_adapters`), and the images are compared with diffusers'
`StableDiffusionControlNetPipeline`.
"""

import copy

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionControlNetPipeline
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

import modblocks as mb
from modblocks.diffusion import stable_diffusion_controlnet
from modblocks.diffusion.testing import tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_controlnet

SMALL = {"prompt": "a cat", "num_inference_steps": 3, "output_type": "np"}


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def noise(value: int) -> PIL.Image.Image:
    pixels = np.random.default_rng(value).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


if __name__ == "__main__":
    components = tiny_sd_components()
    controlnet = tiny_controlnet(components)
    pipe = mb.Pipeline(
        stable_diffusion_controlnet, components={**components, "controlnet": controlnet}
    )
    edges, image = noise(1), noise(2)
    mask = PIL.Image.new("L", (48, 32), 255)

    # The size comes from the control image, as in diffusers' ControlNet pipelines.
    text2img = pipe(**SMALL, control_image=edges, generator=seed(), output="images")
    img2img = pipe(**SMALL, control_image=edges, image=image, generator=seed(), output="images")
    inpaint = pipe(
        **SMALL,
        control_image=edges,
        image=image,
        mask_image=mask,
        generator=seed(),
        output="images",
    )
    print("text2img, img2img, inpaint:", text2img.shape, img2img.shape, inpaint.shape)

    reference = StableDiffusionControlNetPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        controlnet=controlnet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(**SMALL, image=edges, generator=seed()).images
    print("same as diffusers:", np.allclose(text2img, theirs, atol=1e-5))

    # Several ControlNets: one control image, scale, start and end each.
    multi = pipe.with_components(
        controlnet=MultiControlNetModel([controlnet, tiny_controlnet(components, seed=2)])
    )
    both = multi(
        **SMALL,
        control_image=[edges, noise(3)],
        controlnet_conditioning_scale=[1.0, 0.5],
        control_guidance_end=[1.0, 0.5],
        generator=seed(),
        output="images",
    )
    print("two ControlNets:", both.shape)

    # The loop is the plain one with the ControlNet block before the noise prediction.
    loop = dict(stable_diffusion_controlnet.branches)["img2img"]["denoise"]
    print(loop.to_mermaid())
