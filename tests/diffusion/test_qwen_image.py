"""The `qwen_image` node gives the images of diffusers' `QwenImagePipeline`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import qwen_image
from modblocks.diffusion.qwen import encode_prompt_qwen
from modblocks.diffusion.testing import tiny_qwen_image_components
from tests.diffusion.conftest_flow import SMALL, classic, qwen_image_components

__all__ = ["classic", "qwen_image_components"]

PROMPTS = ["a cat", "a dog eating a burger"]  # of different lengths: the text mask matters


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"prompt": PROMPTS, "generators": 2}, id="two-prompts-generator-list"),
        pytest.param(
            {
                "prompt": "a photo of a cat",
                "negative_prompt": "blurry",
                "num_images_per_prompt": 2,
                "generators": 2,
            },
            id="true-cfg-two-images",
        ),
        pytest.param(
            {
                "prompt": PROMPTS,
                "negative_prompt": ["bad quality", "blurry"],
                "true_cfg_scale": 2.5,
                "height": 40,
                "width": 40,
            },
            id="true-cfg-40x40",
        ),
        pytest.param(
            {"prompt": "a cat", "output_type": "latent", "height": 36, "width": 52},
            id="latent-size-rounded-down",
        ),
        pytest.param({"prompt": PROMPTS, "output_type": "pt", "sigmas": [1.0, 0.6, 0.3]}, id="pt"),
    ],
)
def test_qwen_image_matches_diffusers(
    options, qwen_image_components, generators, classic, assert_same
):
    kwargs: dict[str, Any] = {**SMALL, **options}
    count = kwargs.pop("generators", None)
    expected = classic("qwen_image", qwen_image_components, **kwargs, generator=generators(count))
    actual = qwen_image.run(**qwen_image_components, **kwargs, generator=generators(count))
    assert_same(actual["images"], expected)


def test_qwen_image_default_scheduler_and_precomputed_embeddings(generators, classic, assert_same):
    components = tiny_qwen_image_components(seed=1, dynamic_shifting=False)
    encoded = encode_prompt_qwen(
        components["text_encoder"], components["tokenizer"], prompt=PROMPTS, max_sequence_length=16
    )
    assert encoded.prompt_embeds_mask is not None  # the prompts' lengths differ
    kwargs = {
        **SMALL,
        "prompt_embeds": encoded.prompt_embeds,
        "prompt_embeds_mask": encoded.prompt_embeds_mask,
        "latents": torch.randn((2, 4 * 6, 16), generator=generators(None)),  # packed 8x12 latents
    }
    expected = classic("qwen_image", components, **kwargs)
    assert_same(qwen_image.run(**components, **kwargs)["images"], expected)


def test_qwen_image_gives_each_image_its_prompts_mask(qwen_image_components, generators):
    """Two prompts of different lengths, two images each: the second prompt's images are the
    images of that prompt alone. (diffusers' pipeline pairs the masks `[a, b, a, b]` with
    the embeddings `[a, a, b, b]` here, so its images 1 and 2 differ.)"""
    kwargs = {**SMALL, "num_images_per_prompt": 2}
    both = qwen_image.run(
        **qwen_image_components, **kwargs, prompt=PROMPTS, generator=generators(4)
    )["images"]
    alone = qwen_image.run(
        **qwen_image_components,
        **kwargs,
        prompt=PROMPTS[1],
        generator=[torch.Generator().manual_seed(seed) for seed in (2, 3)],
    )["images"]
    np.testing.assert_allclose(both[2:], alone, atol=1e-5)


def test_qwen_image_has_the_pipelines_defaults():
    node_inputs = {spec.name: spec.default for spec in qwen_image.inputs}
    assert node_inputs["num_inference_steps"] == 50
    assert node_inputs["true_cfg_scale"] == 4.0
    assert node_inputs["max_sequence_length"] == 512


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_sequence_length": 2000}, "at most 1024"),
        ({"prompt": None}, "give exactly one of `prompt`"),
        (
            {"negative_prompt": "bad", "negative_prompt_embeds": torch.zeros(1, 4, 16)},
            "at most one",
        ),
    ],
)
def test_qwen_image_rejects_bad_inputs(options, message, qwen_image_components):
    with pytest.raises(mb.BlockError, match=message):
        qwen_image.run(**qwen_image_components, **{**SMALL, "prompt": "a cat", **options})
