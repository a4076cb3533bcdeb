"""`mb.Pipeline` over the ready-made nodes: components bound once, loaded from a folder."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

import modblocks as mb
from modblocks.diffusion import stable_diffusion, text2img
from modblocks.diffusion.testing import save_tiny_sd

SMALL = {"height": 32, "width": 48, "num_inference_steps": 3, "output_type": "np"}


def test_pipeline_matches_diffusers(components, init_image, generators, reference, assert_same):
    pipe = mb.Pipeline(stable_diffusion, components=components)
    for kind, extra in [("text2img", {}), ("img2img", {"image": init_image, "strength": 0.5})]:
        kwargs = {**SMALL, "prompt": ["a cat", "a dog"], **extra}
        expected = reference(kind, components, **kwargs, generator=generators(2))
        actual = pipe(**kwargs, generator=generators(2), output="images")
        assert_same(actual, expected)


def test_pipeline_takes_a_diffusers_pipelines_components(components, generators, assert_same):
    """`.components` of a diffusers pipeline carries parts these blocks don't use."""
    classic = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe = mb.Pipeline(text2img, components=classic.components)
    assert sorted(pipe.components) == sorted(components)
    kwargs = {**SMALL, "prompt": "a cat"}
    expected = classic(**kwargs, generator=generators(None)).images
    assert_same(pipe(**kwargs, generator=generators(None), output="images"), expected)


def test_pipeline_checks_component_types(components):
    with pytest.raises(mb.WiringError, match="scheduler"):
        mb.Pipeline(text2img, components={**components, "scheduler": "ddim"})


def test_pipeline_from_pretrained_folder(tmp_path, generators, reference, assert_same):
    """A folder written by diffusers loads into a pipeline that gives diffusers' images."""
    folder = save_tiny_sd(tmp_path / "tiny", seed=1)
    pipe = mb.Pipeline.from_pretrained(folder, stable_diffusion)
    loaded = StableDiffusionPipeline.from_pretrained(folder).components
    names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    expected = reference(
        "text2img",
        {n: loaded[n] for n in names},
        **SMALL,
        prompt="a cat",
        generator=generators(None),
    )
    actual = pipe(**SMALL, prompt="a cat", generator=generators(None), output="images")
    assert_same(actual, expected)


def test_pipeline_runs_in_inference_mode_without_grad(components):
    pipe = mb.Pipeline(text2img, components=components)
    latents = pipe(**{**SMALL, "output_type": "latent"}, prompt="a cat", output="images")
    assert not latents.requires_grad
    assert torch.is_inference(latents)
