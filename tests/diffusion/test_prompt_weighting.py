"""Weighted and long prompts: compel's embeddings of the same weights, fed to diffusers."""

from __future__ import annotations

import copy
import types
from typing import Any

import numpy as np
import pytest
import torch
from compel import Compel, CompelForSD, CompelForSDXL
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from modblocks.diffusion import stable_diffusion, stable_diffusion_xl, text2img
from modblocks.diffusion.prompt_weighting import parse_weights, weighted
from tests.diffusion.conftest_sdxl import quiet_diffusers, sdxl_components

__all__ = ["sdxl_components"]

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}
DOWN = 1 / 1.1
# The same weights in AUTOMATIC1111's syntax (ours) and in compel's (the reference's).
LONG = "a photo of a (cat:1.3) on a [mat] " * 12  # about 130 tokens: two chunks of 77
LONG_COMPEL = f"a photo of a (cat)1.3 on a (mat){DOWN!r} " * 12
NEGATIVE, NEGATIVE_COMPEL = "(ugly) [[dog]]", "(ugly)1.1 (dog)0.8264462809917354"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("a (cat:1.3) on", [("a ", 1.0), ("cat", 1.3), (" on", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("[cat]", [("cat", DOWN)]),
        ("((a) b)", [("a", 1.1 * 1.1), (" b", 1.1)]),
        ("[(cat:2)]", [("cat", 2 * DOWN)]),
        ("(red cat:0.5), dog", [("red cat", 0.5), (", dog", 1.0)]),
        (r"\(literal\) \[x\]", [("(literal) [x]", 1.0)]),
        ("(unclosed", [("unclosed", 1.1)]),
        ("time: 3pm", [("time: 3pm", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_weights_follows_automatic1111(text, expected):
    actual = parse_weights(text)
    assert [t for t, _ in actual] == [t for t, _ in expected]
    assert [w for _, w in actual] == pytest.approx([w for _, w in expected])


def test_parse_weights_agrees_with_compel_syntax():
    fragments = parse_weights("a photo of a (cat:1.3) on a [mat]")
    parsed = Compel.parse_prompt_string(f"a photo of a (cat)1.3 on a (mat){DOWN!r}")
    theirs = [(f.text, f.weight) for f in parsed.prompts[0].children]
    assert [(t.strip(), w) for t, w in fragments] == theirs


def sd_reference(
    components: dict[str, Any], prompt: list[str], negative: list[str], **kw: Any
) -> Any:
    """diffusers' classic pipeline fed compel's embeddings (its SD wrapper, compel syntax)."""
    pipe = StableDiffusionPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    conditioning = CompelForSD(pipe)(prompt, negative_prompt=negative)
    return pipe(
        prompt_embeds=conditioning.embeds,
        negative_prompt_embeds=conditioning.negative_embeds,
        **kw,
    ).images


@pytest.mark.parametrize(
    ("output_type", "per_prompt"), [("np", 1), ("latent", 2)], ids=["np", "latent-batch"]
)
def test_weighted_long_prompts_match_compel_fed_to_diffusers(
    components, generators, assert_same, output_type, per_prompt
):
    kwargs = {**SMALL, "output_type": output_type, "num_images_per_prompt": per_prompt}
    count = 2 * per_prompt
    actual = weighted(stable_diffusion).run(
        **components,
        prompt=[LONG, "a (dog:0.7)"],
        negative_prompt=[NEGATIVE, ""],
        generator=generators(count),
        **kwargs,
    )
    assert actual["prompt_embeds"].shape[1] == 2 * 77  # [negative, positive], both 2 chunks
    expected = sd_reference(
        components,
        [LONG_COMPEL, "a (dog)0.7"],
        [NEGATIVE_COMPEL, ""],
        generator=generators(count),
        **kwargs,
    )
    assert_same(actual["images"], expected)


def test_unweighted_short_prompt_is_the_plain_encoding(components, generators, assert_same):
    kwargs = {**SMALL, "prompt": "a photo of a cat", "negative_prompt": "a dog"}
    actual = weighted(text2img).run(**components, **kwargs, generator=generators(None))
    expected = text2img.run(**components, **kwargs, generator=generators(None))
    assert_same(actual["images"], expected["images"])


def test_weights_change_the_image(components, generators):
    def run(prompt: str) -> np.ndarray:
        state = weighted(text2img).run(
            **components, **SMALL, prompt=prompt, generator=generators(None)
        )
        return np.asarray(state["images"])

    assert np.abs(run("a (cat:1.5) on a mat") - run("a cat on a mat")).max() > 1e-3


def test_sdxl_weighted_prompts_match_compel_fed_to_diffusers(
    sdxl_components, generators, assert_same
):
    """A weighted long first prompt, a plain second one (compel pools the second's raw text)."""
    kwargs = {**SMALL, "num_images_per_prompt": 2}
    actual = weighted(stable_diffusion_xl).run(
        **sdxl_components,
        prompt=LONG,
        prompt_2="a dog on a mat",
        negative_prompt=NEGATIVE,
        negative_prompt_2="blurry",
        generator=generators(2),
        **kwargs,
    )
    pipe = StableDiffusionXLPipeline(
        **{**sdxl_components, "scheduler": copy.deepcopy(sdxl_components["scheduler"])},
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    conditioning = CompelForSDXL(types.SimpleNamespace(**sdxl_components))(
        LONG_COMPEL,
        style_prompt="a dog on a mat",
        negative_prompt=NEGATIVE_COMPEL,
        negative_style_prompt="blurry",
    )
    with quiet_diffusers():
        expected = pipe(
            prompt_embeds=conditioning.embeds,
            pooled_prompt_embeds=conditioning.pooled_embeds,
            negative_prompt_embeds=conditioning.negative_embeds,
            negative_pooled_prompt_embeds=conditioning.negative_pooled_embeds,
            generator=generators(2),
            **kwargs,
        ).images
    assert_same(actual["images"], expected)


def test_sdxl_without_negative_prompt_uses_zeros(sdxl_components, generators):
    """SDXL's default (`force_zeros_for_empty_prompt`) holds for weighted prompts too."""
    state = weighted(stable_diffusion_xl).run(
        **sdxl_components, **SMALL, prompt="a (cat:1.2)", generator=generators(None)
    )
    assert state["prompt_embeds"].shape == (2, 77, 64)
    assert torch.count_nonzero(state["prompt_embeds"][:1]) == 0
    assert torch.count_nonzero(state["add_text_embeds"][:1]) == 0
