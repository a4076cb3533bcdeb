"""LoRA on `mb.Pipeline`: the images of diffusers' pipelines after the same LoRA calls.

Every test builds its own tiny components: loading a LoRA changes the models in place.
The LoRAs are random (non-zero) PEFT adapters on the UNet's attention projections. Text
encoder LoRAs are not tested here: transformers 5 loads them only with PEFT >= 0.22, which
is not published yet, so diffusers' pipelines can't load them either.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

import modblocks as mb
from modblocks.diffusion import stable_diffusion, stable_diffusion_xl, text2img
from modblocks.diffusion.testing import tiny_sd_components, tiny_sdxl_components
from modblocks.diffusion.testing_adapters import tiny_lora
from tests.diffusion.conftest_sdxl import quiet_diffusers

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}
T2I = "stable_diffusion > text2img > "


def classic_sd(components: dict[str, Any]) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def classic_sdxl(components: dict[str, Any]) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeds(count: int | None) -> torch.Generator | list[torch.Generator]:
    if count is None:
        return torch.Generator().manual_seed(0)
    return [torch.Generator().manual_seed(i) for i in range(count)]


@pytest.fixture
def lora() -> dict[str, torch.Tensor]:
    return tiny_lora(tiny_sd_components(), seed=1)


@pytest.fixture
def lora_2() -> dict[str, torch.Tensor]:
    return tiny_lora(tiny_sd_components(), seed=2, rank=2)


@pytest.mark.parametrize(
    ("output_type", "batch"),
    [("np", None), ("latent", None), ("np", 2)],
    ids=["np", "latent", "generator-list"],
)
def test_sd_lora_matches_diffusers(lora, output_type, batch, assert_same):
    ours = mb.Pipeline(stable_diffusion, components=tiny_sd_components())
    theirs = classic_sd(tiny_sd_components())
    kwargs = {**SMALL, "output_type": output_type, "prompt": ["a cat", "a dog"]}
    kwargs["num_images_per_prompt"] = 1 if batch is None else batch
    count = None if batch is None else 2 * batch
    plain = ours(**kwargs, generator=seeds(count), output="images")
    ours.load_lora_weights(lora, adapter_name="style")
    theirs.load_lora_weights(lora, adapter_name="style")
    actual = ours(**kwargs, generator=seeds(count), output="images")
    assert_same(actual, theirs(**kwargs, generator=seeds(count)).images)
    assert np.abs(np.asarray(actual) - np.asarray(plain)).max() > 1e-3  # the LoRA does something


# PEFT warns on every adapter after the first, which is the point of naming adapters.
@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
def test_sd_set_adapters_fuse_unfuse_unload_match_diffusers(lora, lora_2, assert_same):
    ours = mb.Pipeline(text2img, components=tiny_sd_components())
    theirs = classic_sd(tiny_sd_components())
    kwargs = {**SMALL, "prompt": "a cat"}
    plain = ours(**kwargs, generator=seeds(None), output="images")
    for pipe in (ours, theirs):
        pipe.load_lora_weights(lora, adapter_name="a")
        pipe.load_lora_weights(lora_2, adapter_name="b")
    steps: list[tuple[str, Any]] = [
        ("set_adapters", lambda p: p.set_adapters(["a", "b"], [0.7, 0.4])),
        ("one adapter", lambda p: p.set_adapters("b")),
        ("fuse", lambda p: (p.set_adapters(["a", "b"], [1.0, 0.5]), p.fuse_lora(lora_scale=0.8))),
        ("unfuse", lambda p: p.unfuse_lora()),
    ]
    for label, step in steps:
        step(ours)
        step(theirs)
        expected = theirs(**kwargs, generator=seeds(None)).images
        assert_same(ours(**kwargs, generator=seeds(None), output="images"), expected), label
    assert ours.get_active_adapters() == theirs.get_active_adapters() == ["a", "b"]
    ours.unload_lora_weights()
    assert_same(ours(**kwargs, generator=seeds(None), output="images"), plain)


def test_sdxl_lora_matches_diffusers(assert_same):
    lora = tiny_lora(tiny_sdxl_components(), seed=1)
    ours = mb.Pipeline(stable_diffusion_xl, components=tiny_sdxl_components())
    theirs = classic_sdxl(tiny_sdxl_components())
    kwargs = {**SMALL, "prompt": "a cat", "num_images_per_prompt": 2}
    for pipe in (ours, theirs):
        pipe.load_lora_weights(lora, adapter_name="style")
        pipe.set_adapters("style", 0.6)
    with quiet_diffusers():
        expected = theirs(**kwargs, generator=seeds(2)).images
    assert_same(ours(**kwargs, generator=seeds(2), output="images"), expected)


def test_lora_with_cache_reruns_exactly_what_reads_the_unet(lora):
    """The prompt's encoding (text encoder untouched) is served; every block reading the UNet
    runs again, and so does what depends on their outputs."""
    pipe = mb.Pipeline(stable_diffusion, components=tiny_sd_components(), cache=mb.Cache())
    kwargs = {**SMALL, "prompt": "a cat"}
    pipe(**kwargs, generator=seeds(None))
    changes = {
        "load": lambda: pipe.load_lora_weights(lora, adapter_name="style"),
        "weight": lambda: pipe.set_adapters("style", 0.3),
    }
    for change, apply in changes.items():
        apply()
        report = mb.Report()
        images = pipe(**kwargs, generator=seeds(None), events=report, output="images")
        assert report.cached == [T2I + "encode_prompt"], change
        assert report.ran == [
            T2I + "default_size",
            T2I + "set_timesteps",
            T2I + "prepare_latents",
            *(f"{T2I}denoise[step {i}] > {name}" for i in range(2) for name in _BODY),
            T2I + "decode_latents",
            T2I + "postprocess",
        ], change
        uncached = mb.Pipeline(stable_diffusion, components=dict(pipe.components))
        assert np.array_equal(images, uncached(**kwargs, generator=seeds(None), output="images"))
    # Nothing changed since the last call: everything is served.
    report = mb.Report()
    pipe(**kwargs, generator=seeds(None), events=report)
    assert report.ran == []


_BODY = ("scale_model_input", "predict_noise", "scheduler_step")


def test_lora_changes_a_pipeline_sharing_the_unet_and_its_cache_sees_it(lora, assert_same):
    """diffusers' semantics: adapters live in the (shared) UNet. The other cache notices."""
    components = tiny_sd_components()
    loader = mb.Pipeline(text2img, components=components)
    sharer = mb.Pipeline(text2img, components=components, cache=mb.Cache())
    kwargs = {**SMALL, "prompt": "a cat"}
    before = sharer(**kwargs, generator=seeds(None), output="images")
    loader.load_lora_weights(lora)
    after = sharer(**kwargs, generator=seeds(None), output="images")
    assert_same(after, loader(**kwargs, generator=seeds(None), output="images"))
    assert np.abs(after - before).max() > 1e-3
    # A private copy of the UNet keeps a pipeline free of adapters loaded elsewhere.
    isolated = sharer.with_components(unet=copy.deepcopy(components["unet"]))
    isolated.unload_lora_weights()
    assert_same(isolated(**kwargs, generator=seeds(None), output="images"), before)
    assert loader.get_active_adapters() == ["default_0"]


def test_lora_needs_a_unet():
    @mb.block(output="y")
    def double(x: int) -> int:
        return 2 * x

    with pytest.raises(mb.WiringError, match="no `unet` component"):
        mb.Pipeline(double).load_lora_weights({})
