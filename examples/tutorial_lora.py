"""LoRA on a modblocks pipeline: load, weight, fuse and unload, as with diffusers.

The LoRA is a tiny random one made with PEFT (`modblocks.diffusion.testing_adapters`); the
images are compared with diffusers' `StableDiffusionPipeline` after the same calls, and a
cache shows what a change of adapter weights runs again.
"""

import copy

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

import modblocks as mb
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_lora

SMALL = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 2}


def seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


if __name__ == "__main__":
    lora = tiny_lora(tiny_sd_components(), seed=1)  # a state dict, as a .safetensors file holds

    pipe = mb.Pipeline(text2img, components=tiny_sd_components(), cache=mb.Cache())
    plain = pipe(**SMALL, output_type="np", generator=seed(), output="images")
    pipe.load_lora_weights(lora, adapter_name="style")
    pipe.set_adapters("style", 0.8)
    styled = pipe(**SMALL, output_type="np", generator=seed(), output="images")
    print("active adapters:", pipe.get_active_adapters())
    print("the LoRA changes the image:", not np.allclose(plain, styled))

    # diffusers' pipeline, after the same calls, gives the same image.
    components = tiny_sd_components()
    reference = StableDiffusionPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    reference.load_lora_weights(lora, adapter_name="style")
    reference.set_adapters("style", 0.8)
    theirs = reference(**SMALL, output_type="np", generator=seed()).images
    print("same as diffusers:", np.allclose(styled, theirs, atol=1e-5))

    # A new weight changes the UNet in place; every cache notices. The prompt's encoding
    # (the text encoder has no LoRA) is still served.
    pipe.set_adapters("style", 0.3)
    report = mb.Report()
    pipe(**SMALL, output_type="np", generator=seed(), events=report)
    print("served:", [path.split(" > ")[-1] for path in report.cached])
    print("ran:   ", len(report.ran), "blocks")

    pipe.fuse_lora()  # merged into the weights: runs at the speed of a plain UNet
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    back = pipe(**SMALL, output_type="np", generator=seed(), output="images")
    print("unloaded, as before:", np.allclose(back, plain, atol=1e-5))
