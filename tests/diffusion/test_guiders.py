"""Guiders in the denoising loop: CFG unchanged, PAG as diffusers' PAG pipelines, and
diffusers' guider classes (APG, CFG-Zero*) applied to the same UNet predictions."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionPAGImg2ImgPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPAGPipeline,
)
from diffusers.guiders import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    PerturbedAttentionGuidance,
)
from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

import modblocks as mb
from modblocks.diffusion import stable_diffusion, stable_diffusion_xl
from modblocks.diffusion.guiders import PAG, guided
from modblocks.diffusion.testing import tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_lora
from tests.diffusion.conftest_sdxl import quiet_diffusers, sdxl_components

__all__ = ["sdxl_components"]

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 3, "output_type": "np"}
GUIDED = guided(stable_diffusion)
GUIDED_XL = guided(stable_diffusion_xl)


def seeds(count: int | None = None) -> torch.Generator | list[torch.Generator]:
    if count is None:
        return torch.Generator().manual_seed(0)
    return [torch.Generator().manual_seed(i) for i in range(count)]


def no_safety(cls: Any, components: dict[str, Any], **config: Any) -> Any:
    pipe = cls(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **config,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "kwargs",
    [{"guidance_rescale": 0.5}, {"guidance_scale": 1.0}, {"output_type": "latent"}],
    ids=["rescale", "no-cfg", "latent"],
)
def test_default_guider_is_todays_cfg(components, kwargs):
    inputs = {**components, **SMALL, "prompt": ["a cat", "a dog"], **kwargs}
    actual = GUIDED.run(**inputs, generator=seeds(2))["images"]
    expected = stable_diffusion.run(**inputs, generator=seeds(2))["images"]
    assert np.array_equal(np.asarray(actual), np.asarray(expected))


def test_diffusers_cfg_guider_matches_the_classic_pipeline(components, reference, assert_same):
    kwargs = {**SMALL, "prompt": "a cat", "guidance_scale": 6.0, "guidance_rescale": 0.3}
    guider = ClassifierFreeGuidance(guidance_scale=6.0, guidance_rescale=0.3)
    actual = GUIDED.run(**components, **kwargs, guider=guider, generator=seeds())["images"]
    assert_same(actual, reference("text2img", components, **kwargs, generator=seeds()))


# -- PAG ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pag", "kwargs"),
    [
        (PAG(scale=2.0), {}),
        (PAG(scale=3.0, adaptive_scale=0.002, applied_layers=("down_blocks.1", "up")), {}),
        (PAG(scale=2.5), {"guidance_scale": 1.0}),
        (PAG(scale=2.0), {"guidance_rescale": 0.4, "output_type": "latent"}),
        (PAG(scale=2.0), {"num_images_per_prompt": 2}),
    ],
    ids=["mid", "adaptive-layers", "no-cfg", "rescale-latent", "batch"],
)
def test_pag_matches_stable_diffusion_pag_pipeline(components, pag, kwargs, assert_same):
    inputs = {**SMALL, "prompt": ["a cat", "a dog"], **kwargs}
    count = 2 * inputs.get("num_images_per_prompt", 1)
    actual = GUIDED.run(**components, **inputs, guider=pag, generator=seeds(count))["images"]
    classic = no_safety(
        StableDiffusionPAGPipeline, components, pag_applied_layers=list(pag.applied_layers)
    )
    expected = classic(
        **inputs,
        pag_scale=pag.scale,
        pag_adaptive_scale=pag.adaptive_scale,
        generator=seeds(count),
    ).images
    assert_same(actual, expected)
    plain = stable_diffusion.run(**components, **inputs, generator=seeds(count))["images"]
    assert np.abs(np.asarray(actual) - np.asarray(plain)).max() > 1e-4  # PAG does something


def test_pag_img2img_matches_diffusers(components, init_image, assert_same):
    inputs = {**SMALL, "prompt": "a cat", "image": init_image, "strength": 0.7}
    inputs.pop("height"), inputs.pop("width")
    actual = GUIDED.run(**components, **inputs, guider=PAG(scale=2.0), generator=seeds())
    classic = no_safety(StableDiffusionPAGImg2ImgPipeline, components, pag_applied_layers="mid")
    expected = classic(**inputs, pag_scale=2.0, generator=seeds()).images
    assert_same(actual["images"], expected)


def test_pag_restores_the_unets_attention_processors(components):
    unet = components["unet"]
    before = {name: type(proc) for name, proc in unet.attn_processors.items()}
    GUIDED.run(**components, **SMALL, prompt="a cat", guider=PAG(scale=2.0))
    assert {name: type(proc) for name, proc in unet.attn_processors.items()} == before


def test_sdxl_pag_matches_stable_diffusion_xl_pag_pipeline(sdxl_components, assert_same):
    inputs = {
        **SMALL,
        "prompt": "a cat",
        "num_images_per_prompt": 2,
        # Negative time ids that differ: diffusers lays PAG's out per image, not by halves.
        "negative_original_size": (16, 16),
        "negative_target_size": (32, 32),
    }
    pag = PAG(scale=2.0, adaptive_scale=0.001)
    actual = GUIDED_XL.run(**sdxl_components, **inputs, guider=pag, generator=seeds(2))
    classic = StableDiffusionXLPAGPipeline(
        **{**sdxl_components, "scheduler": copy.deepcopy(sdxl_components["scheduler"])},
        add_watermarker=False,
        pag_applied_layers=["mid"],
    )
    classic.set_progress_bar_config(disable=True)
    with quiet_diffusers():
        expected = classic(
            **inputs, pag_scale=2.0, pag_adaptive_scale=0.001, generator=seeds(2)
        ).images
    assert_same(actual["images"], expected)


# -- diffusers' guider classes ----------------------------------------------------------------


def reference_loop(
    components: dict[str, Any], guider: Any, prompt: str, steps: int, seed: int
) -> np.ndarray:
    """diffusers' classic SD pipeline, its CFG line replaced by *guider* on the same UNet batch."""
    pipe = no_safety(StableDiffusionPipeline, components)
    guider = copy.deepcopy(guider)
    embeds, negative = pipe.encode_prompt(prompt, "cpu", 1, True)
    embeds = torch.cat([negative, embeds])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    latents = pipe.prepare_latents(
        1, 4, 32, 32, embeds.dtype, "cpu", torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            pred = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            uncond, cond = pred.chunk(2)
            guider.set_state(step=i, num_inference_steps=steps, timestep=t)
            guider.prepare_inputs({})
            noise = guider.forward(pred_cond=cond, pred_uncond=uncond).pred
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="np")


GUIDERS = {
    "apg": AdaptiveProjectedGuidance(guidance_scale=6.0, adaptive_projected_guidance_rescale=8.0),
    "apg-momentum": AdaptiveProjectedGuidance(
        guidance_scale=6.0, adaptive_projected_guidance_momentum=-0.5, eta=0.5
    ),
    "cfg-zero-star": ClassifierFreeZeroStarGuidance(guidance_scale=6.0, zero_init_steps=1),
}


@pytest.mark.parametrize("name", list(GUIDERS))
def test_diffusers_guiders_match_the_guider_on_the_same_predictions(name, components, assert_same):
    guider = GUIDERS[name]
    kwargs = {**SMALL, "prompt": "a cat"}
    actual = GUIDED.run(**components, **kwargs, guider=guider, generator=seeds())["images"]
    assert_same(actual, reference_loop(components, guider, "a cat", 3, 0))
    assert getattr(guider, "momentum_buffer", None) is None  # each run steps its own copy


@pytest.mark.parametrize("name", list(GUIDERS))
def test_sdxl_guiders_match_diffusers_modular_pipeline(name, sdxl_components, assert_same):
    """diffusers' modular SDXL pipeline takes the guider as a component."""
    guider = GUIDERS[name]
    kwargs = {**SMALL, "prompt": "a cat", "num_images_per_prompt": 2}
    actual = GUIDED_XL.run(**sdxl_components, **kwargs, guider=guider, generator=seeds(2))
    pipeline = StableDiffusionXLAutoBlocks().init_pipeline()
    scheduler = copy.deepcopy(sdxl_components["scheduler"])
    pipeline.update_components(
        **{**sdxl_components, "scheduler": scheduler}, guider=copy.deepcopy(guider)
    )
    pipeline.set_progress_bar_config(disable=True)
    with quiet_diffusers():
        expected = pipeline(**kwargs, generator=seeds(2), output="images")
    assert_same(actual["images"], expected)


def test_guider_per_pipeline_and_per_call(components):
    apg, zero = GUIDERS["apg"], GUIDERS["cfg-zero-star"]
    pipe = mb.Pipeline(GUIDED, components=components, configs={"guider": apg})
    kwargs = {**SMALL, "prompt": "a cat", "output": "images"}
    bound = pipe(**kwargs, generator=seeds())
    alone = GUIDED.run(**components, **SMALL, prompt="a cat", guider=apg, generator=seeds())
    assert np.array_equal(bound, alone["images"])
    per_call = pipe(**kwargs, guider=zero, generator=seeds())
    assert not np.array_equal(bound, per_call)
    assert np.array_equal(per_call, pipe.with_configs(guider=zero)(**kwargs, generator=seeds()))


def test_guider_errors_say_what_to_do(components):
    with pytest.raises(mb.BlockError, match="guidance_scale` > 1"):
        GUIDED.run(**components, **SMALL, prompt="a cat", guidance_scale=1.0, guider=GUIDERS["apg"])
    pag = PerturbedAttentionGuidance(perturbed_guidance_layers=[0])
    with pytest.raises(mb.BlockError, match=r"guiders\.PAG"):
        GUIDED.run(**components, **SMALL, prompt="a cat", guider=pag)


# -- the per-call LoRA scale ------------------------------------------------------------------


def test_cross_attention_kwargs_scale_matches_diffusers(assert_same):
    lora = tiny_lora(tiny_sd_components(), seed=3)
    ours = mb.Pipeline(GUIDED, components=tiny_sd_components())
    theirs = no_safety(StableDiffusionPipeline, tiny_sd_components())
    for pipe in (ours, theirs):
        pipe.load_lora_weights(lora)
    kwargs = {**SMALL, "prompt": "a cat", "cross_attention_kwargs": {"scale": 0.4}}
    expected = theirs(**kwargs, generator=seeds()).images
    actual = ours(**kwargs, generator=seeds(), output="images")
    assert_same(actual, expected)
    full = ours(**{**kwargs, "cross_attention_kwargs": None}, generator=seeds(), output="images")
    assert np.abs(actual - full).max() > 1e-4
