"""`text2img` gives the images of diffusers' `StableDiffusionPipeline`."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modblocks.diffusion import encode_prompt, text2img
from modblocks.diffusion.testing import tiny_scheduler

SMALL = {"height": 32, "width": 48, "num_inference_steps": 3, "output_type": "np"}


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler", "euler_ancestral", "dpm_multistep"])
def test_text2img_batch_matches_diffusers(
    scheduler, components, generators, reference, assert_same
):
    """Two prompts, two images each, one generator per image, non-square size."""
    comps = {**components, "scheduler": tiny_scheduler(scheduler)}
    kwargs: dict[str, Any] = {
        **SMALL,
        "prompt": ["a photo of a cat", "a dog"],
        "negative_prompt": ["blurry", "a cat"],
        "num_images_per_prompt": 2,
    }
    expected = reference("text2img", comps, **kwargs, generator=generators(4))
    actual = text2img.run(**comps, **kwargs, generator=generators(4))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"eta": 0.5}, id="ddim-eta"),
        pytest.param({"guidance_rescale": 0.7}, id="guidance-rescale"),
        pytest.param({"guidance_scale": 1.0}, id="no-guidance"),
        pytest.param({"output_type": "latent"}, id="latent"),
        pytest.param({"output_type": "pt"}, id="pt"),
        pytest.param({"output_type": "pil", "height": 40, "width": 32}, id="pil"),
        pytest.param({"height": None, "width": None, "num_inference_steps": 2}, id="default-size"),
    ],
)
def test_text2img_options_match_diffusers(options, components, generators, reference, assert_same):
    kwargs = {**SMALL, "prompt": "a photo of a cat", **options}
    expected = reference("text2img", components, **kwargs, generator=generators(None))
    actual = text2img.run(**components, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    ("scheduler", "schedule"),
    [
        ("euler", {"timesteps": [999, 700, 400, 100]}),
        ("euler", {"sigmas": [14.6, 5.0, 1.5, 0.3]}),
        ("dpm_multistep", {"timesteps": [980, 600, 250]}),
    ],
    ids=["euler-timesteps", "euler-sigmas", "dpm-timesteps"],
)
def test_text2img_custom_schedule_matches_diffusers(
    scheduler, schedule, components, generators, reference, assert_same
):
    comps = {**components, "scheduler": tiny_scheduler(scheduler)}
    kwargs = {**SMALL, "num_inference_steps": None, "prompt": "a cat", **schedule}
    expected = reference("text2img", comps, **kwargs, generator=generators(None))
    kwargs.pop("num_inference_steps")
    actual = text2img.run(**comps, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_text2img_prompt_embeds_match_diffusers(components, generators, reference, assert_same):
    """Precomputed embeddings for two prompts, with and without negative embeddings."""
    tokens = components["tokenizer"](
        ["a cat", "a dog"], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        prompt_embeds = components["text_encoder"](tokens.input_ids)[0]
    negative_prompt_embeds = torch.randn_like(prompt_embeds, generator=generators(None))
    for extra in ({}, {"negative_prompt_embeds": negative_prompt_embeds}):
        kwargs = {**SMALL, "prompt_embeds": prompt_embeds, "num_images_per_prompt": 2, **extra}
        expected = reference("text2img", components, **kwargs, generator=generators(4))
        actual = text2img.run(**components, **kwargs, generator=generators(4))["images"]
        assert_same(actual, expected)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_text2img_clip_skip_matches_diffusers(
    clip_skip, components, generators, reference, assert_same
):
    """diffusers 0.42's own `clip_skip` fails on transformers 5 (it reads `text_encoder.text_model`,
    which CLIPTextModel no longer has), so the reference gets the embeddings its recipe gives:
    the hidden state `clip_skip` layers before the last, through the final layer norm. Negative
    prompts are encoded without skipping there too."""
    encoder = components["text_encoder"]
    ids = components["tokenizer"]("a cat", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(ids.input_ids, output_hidden_states=True).hidden_states
        model = getattr(encoder, "text_model", encoder)
        prompt_embeds = model.final_layer_norm(hidden[-(clip_skip + 1)])
    expected = reference(
        "text2img", components, **SMALL, prompt_embeds=prompt_embeds, generator=generators(None)
    )
    actual = text2img.run(
        **components, **SMALL, prompt="a cat", clip_skip=clip_skip, generator=generators(None)
    )["images"]
    assert_same(actual, expected)


def test_text2img_given_latents_match_diffusers(components, generators, reference, assert_same):
    latents = torch.randn(2, 4, 16, 24, generator=generators(None))
    kwargs = {**SMALL, "prompt": ["a cat", "a dog"], "latents": latents}
    expected = reference("text2img", components, **kwargs)
    actual = text2img.run(**components, **kwargs)["images"]
    assert_same(actual, expected)


def test_text2img_on_step_matches_callback_on_step_end(
    components, generators, reference, assert_same
):
    """`on_step` returning new latents equals diffusers' `callback_on_step_end` doing the same."""

    def halve_latents_diffusers(pipe, i, t, callback_kwargs):
        return {"latents": callback_kwargs["latents"] * 0.5} if i == 1 else {}

    def halve_latents(step):
        return {"latents": step.state["latents"] * 0.5} if step.index == 1 else None

    kwargs = {**SMALL, "prompt": "a cat"}
    expected = reference(
        "text2img",
        components,
        **kwargs,
        generator=generators(None),
        callback_on_step_end=halve_latents_diffusers,
    )
    unchanged = text2img.run(**components, **kwargs, generator=generators(None))["images"]
    actual = text2img.run(
        **components, **kwargs, generator=generators(None), on_step=halve_latents
    )["images"]
    assert_same(actual, expected)
    assert abs(actual - unchanged).max() > 1e-3  # the callback changed the result


def test_encode_prompt_is_the_plain_function(components):
    """Called directly, the block returns its NamedTuple: negative embeddings first."""
    out = encode_prompt(
        components["text_encoder"],
        components["tokenizer"],
        prompt=["a", "b"],
        num_images_per_prompt=3,
    )
    assert out.do_cfg
    assert out.batch_size == 6
    assert out.prompt_embeds.shape == (12, 77, 32)
    negative = out.prompt_embeds[:6]
    assert torch.equal(negative[0], negative[5])  # all from the empty negative prompt


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "exactly one of `prompt` and `prompt_embeds`"),
        ({"prompt": "a", "prompt_embeds": torch.zeros(1, 77, 32)}, ValueError, "exactly one"),
        ({"prompt": "a", "negative_prompt": ["b"]}, TypeError, "`negative_prompt` is a list"),
        ({"prompt": ["a", "b"], "negative_prompt": ["c"]}, ValueError, "1 texts for 2 prompts"),
    ],
)
def test_encode_prompt_rejects_inconsistent_prompts(components, kwargs, error, match):
    with pytest.raises(error, match=match):
        encode_prompt(components["text_encoder"], components["tokenizer"], **kwargs)
