"""Guiders: how each step combines the UNet's predictions, chosen per pipeline or per call.

`guided(node)` gives a node the config `guider`: `None` is classifier-free guidance as
before; diffusers' guider classes (APG, CFG-Zero*) and `PAG` (perturbed-attention guidance)
replace it. The PAG images are compared with diffusers' `StableDiffusionPAGPipeline`.
"""

import copy

import numpy as np
import torch
from diffusers import StableDiffusionPAGPipeline
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance

import modblocks as mb
from modblocks.diffusion import stable_diffusion
from modblocks.diffusion.guiders import PAG, guided
from modblocks.diffusion.testing import tiny_sd_components

SMALL = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 3}


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


if __name__ == "__main__":
    components = tiny_sd_components()
    node = guided(stable_diffusion)
    apg = AdaptiveProjectedGuidance(guidance_scale=6.0, adaptive_projected_guidance_momentum=-0.5)
    # Per pipeline: a config; per call: the same name as an input.
    pipe = mb.Pipeline(node, components=components, configs={"guider": apg})
    with_apg = pipe(**SMALL, output_type="np", generator=seed(), output="images")
    zero_star = ClassifierFreeZeroStarGuidance(guidance_scale=6.0)
    with_zero = pipe(**SMALL, guider=zero_star, output_type="np", generator=seed(), output="images")
    cfg = pipe(**SMALL, guider=None, output_type="np", generator=seed(), output="images")
    plain = stable_diffusion.run(**components, **SMALL, output_type="np", generator=seed())
    print("guider None is today's CFG:", np.array_equal(cfg, plain["images"]))
    print("APG and CFG-Zero* differ:", not np.allclose(with_apg, with_zero))

    pag = PAG(scale=3.0, applied_layers=("mid",))
    ours = pipe(**SMALL, guider=pag, output_type="np", generator=seed(), output="images")
    reference = StableDiffusionPAGPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        pag_applied_layers=["mid"],
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(**SMALL, pag_scale=3.0, output_type="np", generator=seed()).images
    print("PAG same as diffusers:", np.allclose(ours, theirs, atol=1e-5))
    print(dict(node.branches)["img2img"]["denoise"].body.names)
