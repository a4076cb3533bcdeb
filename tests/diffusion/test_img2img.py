"""`img2img` gives the images of diffusers' `StableDiffusionImg2ImgPipeline`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import img2img
from modblocks.diffusion.testing import tiny_scheduler

SMALL = {"num_inference_steps": 4, "output_type": "np"}


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler", "dpm_multistep"])
def test_img2img_batch_matches_diffusers(
    scheduler, components, init_image, generators, reference, assert_same
):
    """Two prompts, two images each from one 48x32 image, one generator per image."""
    comps = {**components, "scheduler": tiny_scheduler(scheduler)}
    kwargs = {
        **SMALL,
        "prompt": ["a cat", "a dog"],
        "image": init_image,
        "strength": 0.6,
        "num_images_per_prompt": 2,
    }
    expected = reference("img2img", comps, **kwargs, generator=generators(4))
    actual = img2img.run(**comps, **kwargs, generator=generators(4))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default-strength"),
        pytest.param({"strength": 0.5, "eta": 0.5}, id="ddim-eta"),
        pytest.param({"strength": 1.0, "guidance_scale": 1.0}, id="full-strength-no-guidance"),
        pytest.param({"strength": 0.5, "output_type": "latent"}, id="latent"),
        pytest.param({"strength": 0.5, "num_images_per_prompt": 2}, id="one-generator"),
    ],
)
def test_img2img_options_match_diffusers(
    options, components, init_image, generators, reference, assert_same
):
    kwargs = {**SMALL, "prompt": "a cat", "image": init_image, **options}
    expected = reference("img2img", components, **kwargs, generator=generators(None))
    actual = img2img.run(**components, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_img2img_image_batch_and_tensor_input_match_diffusers(
    components, init_image, generators, reference, assert_same
):
    """Two images as one tensor in [0, 1], one per prompt."""
    pixels = np.asarray(init_image, dtype=np.float32) / 255
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    images = torch.stack([image, image.flip(-1)])
    kwargs = {**SMALL, "prompt": ["a cat", "a dog"], "image": images, "strength": 0.75}
    expected = reference("img2img", components, **kwargs, generator=generators(2))
    actual = img2img.run(**components, **kwargs, generator=generators(2))["images"]
    assert_same(actual, expected)


def test_img2img_strength_default_is_0_8(components, init_image):
    state = img2img.run(
        **components, prompt="a cat", image=init_image, num_inference_steps=5, output_type="latent"
    )
    assert len(state["timesteps"]) == 4  # int(5 * 0.8)
    assert state["num_inference_steps"] == 4


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_img2img_rejects_strength_out_of_range(components, init_image, strength):
    with pytest.raises(mb.BlockError, match="`strength` is") as info:
        img2img.run(**components, prompt="a cat", image=init_image, strength=strength)
    assert isinstance(info.value.__cause__, ValueError)
