"""The SD3 nodes give the images of diffusers' `StableDiffusion3Pipeline` and
`StableDiffusion3Img2ImgPipeline`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import sd3_img2img, sd3_text2img, stable_diffusion_3
from modblocks.diffusion.t5 import encode_prompt_sd3
from modblocks.diffusion.testing import tiny_sd3_components
from tests.diffusion.conftest_flow import SMALL, classic, sd3_components

__all__ = ["classic", "sd3_components"]

NODES = {"sd3_text2img": sd3_text2img, "sd3_img2img": sd3_img2img}


def mode_inputs(kind: str, init_image: Any, count: int = 1) -> dict[str, Any]:
    if kind == "sd3_img2img":
        # diffusers' SD3 image-to-image needs one image per generator of a list.
        return {"image": init_image if count == 1 else [init_image] * count}
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
                "negative_prompt_3": "deformed",
                "height": 40,
                "width": 40,
            },
            id="negative-40x40",
        ),
        pytest.param(
            {"prompt": "a cat", "guidance_scale": 1.0, "output_type": "latent"},
            id="latent-no-guidance",
        ),
        pytest.param(
            {"prompt": "a cat", "prompt_2": "a dog", "prompt_3": "a horse", "clip_skip": 1},
            id="three-prompts-clip-skip",
        ),
        pytest.param({"prompt": "a cat", "output_type": "pt", "strength": 0.9}, id="pt"),
    ],
)
def test_sd3_matches_diffusers(
    kind, options, sd3_components, init_image, generators, classic, assert_same
):
    """Both modes, with each mode's defaults (guidance 7.0; 28 or 50 steps, strength 0.6)."""
    count = options.get("generators")
    kwargs: dict[str, Any] = {**SMALL, **mode_inputs(kind, init_image, count or 1), **options}
    kwargs.pop("generators", None)
    if kind == "sd3_text2img":
        kwargs.pop("strength", None)
    expected = classic(kind, sd3_components, **kwargs, generator=generators(count))
    actual = NODES[kind].run(**sd3_components, **kwargs, generator=generators(count))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    "components",
    [
        pytest.param({"t5": False}, id="no-t5"),
        pytest.param({"dynamic_shifting": True}, id="dynamic-shifting"),
    ],
)
@pytest.mark.parametrize("kind", sorted(NODES))
def test_sd3_variants_match_diffusers(
    kind, components, init_image, generators, classic, assert_same
):
    comps = tiny_sd3_components(seed=2, **components)
    kwargs = {**SMALL, "prompt": ["a cat", "a dog"], **mode_inputs(kind, init_image)}
    expected = classic(kind, comps, **kwargs, generator=generators(None))
    actual = stable_diffusion_3.run(**comps, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_sd3_skip_layer_guidance_matches_diffusers_and_changes_the_image(
    sd3_components, generators, classic, assert_same
):
    """With 10 steps, skip-layer guidance runs at step 1 (between 1% and 20%)."""
    kwargs = {**SMALL, "prompt": "a cat", "num_inference_steps": 10}
    slg = {"skip_guidance_layers": [1], "skip_layer_guidance_scale": 3.0}
    expected = classic("sd3_text2img", sd3_components, **kwargs, **slg, generator=generators(None))
    with mb.progress(disable=True):
        actual = stable_diffusion_3.run(
            **sd3_components, **kwargs, **slg, generator=generators(None)
        )
        plain = stable_diffusion_3.run(**sd3_components, **kwargs, generator=generators(None))
    assert_same(actual["images"], expected)
    assert not np.allclose(actual["images"], plain["images"])


def test_sd3_precomputed_embeddings_and_latents(sd3_components, generators, classic, assert_same):
    encoders = (
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
        "text_encoder_3",
        "tokenizer_3",
        "transformer",
    )
    encoded = encode_prompt_sd3(
        **{k: sd3_components[k] for k in encoders},
        prompt="a cat",
        guidance_scale=1.0,
        max_sequence_length=16,
    )
    kwargs = {
        **SMALL,
        "prompt_embeds": encoded.prompt_embeds,
        "pooled_prompt_embeds": encoded.pooled_prompt_embeds,
        "guidance_scale": 1.0,
        "latents": torch.randn((1, 4, 16, 24), generator=generators(None)),
    }
    expected = classic("sd3_text2img", sd3_components, **kwargs)
    assert_same(stable_diffusion_3.run(**sd3_components, **kwargs)["images"], expected)


def test_sd3_auto_node_picks_each_mode(sd3_components, init_image):
    assert stable_diffusion_3.resolve(image=init_image).name == "sd3_img2img"
    assert stable_diffusion_3.resolve(prompt="a cat").name == "sd3_text2img"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"height": 33}, "multiples of 2"),
        ({"max_sequence_length": 600}, "at most 512"),
        ({"negative_prompt": ["a", "b"]}, "`negative_prompt` is a list but `prompt` is a str"),
    ],
)
def test_sd3_rejects_bad_inputs(options, message, sd3_components):
    with pytest.raises(mb.BlockError, match=message):
        stable_diffusion_3.run(**sd3_components, **{**SMALL, "prompt": "a cat", **options})
