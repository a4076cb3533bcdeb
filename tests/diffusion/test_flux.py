"""The Flux nodes give the images of diffusers' `FluxPipeline`, `FluxImg2ImgPipeline` and
`FluxInpaintPipeline`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import flux, flux_img2img, flux_inpaint, flux_text2img
from modblocks.diffusion.packing import pack_latents, prepare_mask_latents_flux
from modblocks.diffusion.t5 import encode_prompt_flux
from modblocks.diffusion.testing import tiny_flux_components
from tests.diffusion.conftest_flow import SMALL, classic, flux_components

__all__ = ["classic", "flux_components"]

NODES = {"flux_text2img": flux_text2img, "flux_img2img": flux_img2img, "flux_inpaint": flux_inpaint}


def mode_inputs(kind: str, init_image: Any, mask_image: Any) -> dict[str, Any]:
    if kind == "flux_img2img":
        return {"image": init_image}
    if kind == "flux_inpaint":
        return {"image": init_image, "mask_image": mask_image}
    return {}


@pytest.mark.parametrize("kind", sorted(NODES))
@pytest.mark.parametrize(
    "options",
    [
        pytest.param(
            {"prompt": ["a cat", "a dog"], "num_images_per_prompt": 2, "generators": 4},
            id="batch-generator-list",
        ),
        pytest.param(
            {
                "prompt": ["a cat", "a dog"],
                "negative_prompt": ["blurry", "bad quality"],
                "true_cfg_scale": 2.5,
                "height": 40,
                "width": 40,
                "guidance_scale": 5.0,
            },
            id="true-cfg-40x40",
        ),
        pytest.param(
            {"prompt": "a photo of a cat", "output_type": "latent", "height": 36, "width": 52},
            id="latent-size-rounded-down",
        ),
        pytest.param(
            {"prompt": "a cat", "prompt_2": "a dog", "output_type": "pt", "strength": 0.9},
            id="pt-prompt-2",
        ),
    ],
)
def test_flux_matches_diffusers(
    kind, options, flux_components, init_image, mask_image, generators, classic, assert_same
):
    """Every mode, with each mode's defaults (guidance 3.5 or 7.0, strength 0.6)."""
    kwargs: dict[str, Any] = {**SMALL, **mode_inputs(kind, init_image, mask_image), **options}
    count = kwargs.pop("generators", None)
    if kind == "flux_text2img":
        kwargs.pop("strength", None)
    expected = classic(kind, flux_components, **kwargs, generator=generators(count))
    actual = NODES[kind].run(**flux_components, **kwargs, generator=generators(count))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize("kind", sorted(NODES))
def test_flux_auto_node_picks_each_mode_with_its_defaults(
    kind, flux_components, init_image, mask_image, generators, classic, assert_same
):
    kwargs: dict[str, Any] = {
        **SMALL,
        "prompt": "a cat",
        **mode_inputs(kind, init_image, mask_image),
    }
    assert flux.resolve(**kwargs).name == kind
    expected = classic(kind, flux_components, **kwargs, generator=generators(None))
    actual = flux.run(**flux_components, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_flux_schnell_without_guidance_embedding_or_shift(generators, classic, assert_same):
    components = tiny_flux_components(seed=1, guidance_embeds=False, dynamic_shifting=False)
    kwargs = {**SMALL, "prompt": ["a cat", "a dog"], "num_inference_steps": 2}
    expected = classic("flux_text2img", components, **kwargs, generator=generators(2))
    actual = flux.run(**components, **kwargs, generator=generators(2))["images"]
    assert_same(actual, expected)


def test_flux_guidance_scale_reaches_the_transformer(flux_components, generators):
    def run(scale: float) -> np.ndarray:
        kwargs = {**SMALL, "prompt": "a cat", "guidance_scale": scale}
        return flux.run(**flux_components, **kwargs, generator=generators(None))["images"]

    assert not np.allclose(run(1.0), run(9.0))


def test_flux_precomputed_embeddings_latents_and_sigmas(
    flux_components, generators, classic, assert_same
):
    """Embeddings from `encode_prompt_flux`, given packed noise and custom sigmas."""
    encoded = encode_prompt_flux(
        **{
            k: flux_components[k]
            for k in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
        },
        prompt="a cat",
        max_sequence_length=16,
    )
    latents = torch.randn((1, 8 * 12, 16), generator=generators(None))  # packed 16x24 latents
    kwargs = {
        **SMALL,
        "prompt_embeds": encoded.prompt_embeds,
        "pooled_prompt_embeds": encoded.pooled_prompt_embeds,
        "latents": latents,
        "sigmas": [1.0, 0.7, 0.2],
    }
    expected = classic("flux_text2img", flux_components, **kwargs)
    assert_same(flux.run(**flux_components, **kwargs)["images"], expected)


def test_flux_inpaint_with_given_noise_and_masked_image(
    flux_components, init_image, mask_image, generators, classic, assert_same
):
    """Given (unpacked) noise, and a masked image given as a tensor in [-1, 1]."""
    noise = torch.randn((2, 4, 16, 24), generator=generators(None))
    masked = torch.rand((1, 3, 32, 48), generator=generators(None, seed=1)) * 2 - 1
    kwargs = {
        **SMALL,
        "prompt": "a cat",
        "num_images_per_prompt": 2,
        "image": init_image,
        "mask_image": mask_image,
        "latents": noise,
        "masked_image_latents": masked,
        "strength": 1.0,
    }
    expected = classic("flux_inpaint", flux_components, **kwargs, generator=generators(None))
    actual = flux.run(**flux_components, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_flux_masked_image_latents_pass_through(flux_components):
    """Latents (the VAE's channels) are packed as they are; diffusers expects 16 channels."""
    latents = torch.randn((1, 4, 16, 24))
    mask = prepare_mask_latents_flux(
        torch.ones((1, 1, 32, 48)),
        torch.zeros((1, 3, 32, 48)),
        2,
        32,
        48,
        torch.zeros((1, 4, 32)),
        transformer=flux_components["transformer"],
        vae=flux_components["vae"],
        masked_image_latents=latents,
    )
    assert torch.equal(mask.masked_image_latents, pack_latents(torch.cat([latents, latents])))
    assert torch.equal(mask.mask, torch.ones((2, 8 * 12, 16)))


def test_flux_pipeline_runs_in_inference_mode(flux_components, generators):
    pipe = mb.Pipeline(flux, components=flux_components)
    latents = pipe(**{**SMALL, "output_type": "latent"}, prompt="a cat", output="images")
    assert latents.shape == (1, 16 * 24 // 4, 16)
    assert torch.is_inference(latents)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_sequence_length": 600}, "at most 512"),
        ({"strength": 1.5, "image": "image"}, "between 0 and 1"),
        ({"prompt": None}, "give exactly one of `prompt`"),
        ({"prompt_embeds": torch.zeros(1, 4, 32)}, "give exactly one of `prompt`"),
        (
            {
                "prompt": None,
                "prompt_embeds": torch.zeros(1, 4, 32),
                "pooled_prompt_embeds": torch.zeros(1, 32),
                "negative_prompt_embeds": torch.zeros(1, 5, 32),
                "negative_pooled_prompt_embeds": torch.zeros(1, 32),
                "true_cfg_scale": 2.0,
            },
            "must have the same shape",
        ),
    ],
)
def test_flux_rejects_bad_inputs_with_the_failing_block(
    options, message, flux_components, init_image
):
    kwargs = {**SMALL, "prompt": "a cat", **options}
    if kwargs.get("image") == "image":
        kwargs["image"] = init_image
    with pytest.raises(mb.BlockError, match=message):
        flux.run(**flux_components, **kwargs)
