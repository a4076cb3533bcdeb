"""`inpaint` gives the images of diffusers' `StableDiffusionInpaintPipeline`."""

from __future__ import annotations

import pytest
import torch

from modblocks.diffusion import inpaint
from modblocks.diffusion.testing import tiny_scheduler

SMALL = {"height": 32, "width": 48, "num_inference_steps": 4, "output_type": "np"}


@pytest.mark.parametrize("unet", ["9-channel", "4-channel"])
@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_inpaint_batch_matches_diffusers(
    unet,
    strength,
    scheduler,
    components,
    inpaint_components,
    init_image,
    mask_image,
    generators,
    reference,
    assert_same,
):
    """Two prompts, two images each, one generator per image."""
    base = inpaint_components if unet == "9-channel" else components
    comps = {**base, "scheduler": tiny_scheduler(scheduler)}
    kwargs = {
        **SMALL,
        "prompt": ["a cat", "a dog"],
        "image": init_image,
        "mask_image": mask_image,
        "strength": strength,
        "num_images_per_prompt": 2,
    }
    expected = reference("inpaint", comps, **kwargs, generator=generators(4))
    actual = inpaint.run(**comps, **kwargs, generator=generators(4))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize("unet", ["9-channel", "4-channel"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"strength": 0.6, "eta": 0.5}, id="ddim-eta"),
        pytest.param({"output_type": "latent"}, id="latent"),
        pytest.param({"guidance_scale": 1.0, "strength": 0.8}, id="no-guidance"),
        pytest.param({"height": None, "width": None, "num_inference_steps": 2}, id="default-size"),
    ],
)
def test_inpaint_options_match_diffusers(
    unet,
    options,
    components,
    inpaint_components,
    init_image,
    mask_image,
    generators,
    reference,
    assert_same,
):
    comps = inpaint_components if unet == "9-channel" else components
    kwargs = {**SMALL, "prompt": "a cat", "image": init_image, "mask_image": mask_image, **options}
    expected = reference("inpaint", comps, **kwargs, generator=generators(None))
    actual = inpaint.run(**comps, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_inpaint_given_latents_match_diffusers(
    inpaint_components, init_image, mask_image, generators, reference, assert_same
):
    latents = torch.randn(1, 4, 16, 24, generator=generators(None))
    kwargs = {**SMALL, "prompt": "a cat", "image": init_image, "mask_image": mask_image}
    expected = reference(
        "inpaint", inpaint_components, **kwargs, latents=latents, generator=generators(None, 1)
    )
    actual = inpaint.run(
        **inpaint_components, **kwargs, latents=latents, generator=generators(None, 1)
    )
    assert_same(actual["images"], expected)


def test_inpaint_masked_image_latents_match_diffusers(
    inpaint_components, init_image, mask_image, generators, reference, assert_same
):
    """Precomputed latents of the masked image replace encoding it."""
    masked_image_latents = torch.randn(1, 4, 16, 24, generator=generators(None, 7))
    kwargs = {
        **SMALL,
        "prompt": "a cat",
        "image": init_image,
        "mask_image": mask_image,
        "masked_image_latents": masked_image_latents,
    }
    expected = reference("inpaint", inpaint_components, **kwargs, generator=generators(None))
    actual = inpaint.run(**inpaint_components, **kwargs, generator=generators(None))
    assert_same(actual["images"], expected)


def test_inpaint_on_step_matches_callback_on_step_end(
    components, init_image, mask_image, generators, reference, assert_same
):
    """The 4-channel UNet's re-blend happens before the callback, in both."""

    def zero_latents_diffusers(pipe, i, t, callback_kwargs):
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if i == 2 else {}

    def zero_latents(step):
        return {"latents": torch.zeros_like(step.state["latents"])} if step.index == 2 else None

    kwargs = {
        **SMALL,
        "prompt": "a cat",
        "image": init_image,
        "mask_image": mask_image,
        "strength": 0.75,
    }
    expected = reference(
        "inpaint",
        components,
        **kwargs,
        generator=generators(None),
        callback_on_step_end=zero_latents_diffusers,
    )
    actual = inpaint.run(**components, **kwargs, generator=generators(None), on_step=zero_latents)
    assert_same(actual["images"], expected)
