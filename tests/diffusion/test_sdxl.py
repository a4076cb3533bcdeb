"""The SDXL nodes give the images of diffusers' classic SDXL pipelines."""

from __future__ import annotations

import copy
import threading
from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import sdxl_img2img, sdxl_inpaint, sdxl_text2img, stable_diffusion_xl
from modblocks.diffusion.testing import tiny_scheduler
from modblocks.diffusion.xl import encode_prompt_xl
from tests.diffusion.conftest_sdxl import (
    SMALL,
    classic,
    quiet_diffusers,
    sdxl_components,
    sdxl_inpaint_components,
    sdxl_refiner_components,
)

__all__ = ["classic", "sdxl_components", "sdxl_inpaint_components", "sdxl_refiner_components"]


def with_scheduler(components: dict[str, Any], name: str) -> dict[str, Any]:
    return {**components, "scheduler": tiny_scheduler(name, timestep_spacing="leading")}


# --- text-to-image -------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_sdxl_text2img_batch_matches_diffusers(
    scheduler, sdxl_components, generators, classic, assert_same
):
    """Two prompts, two images each, one generator per image, non-square size."""
    comps = with_scheduler(sdxl_components, scheduler)
    kwargs: dict[str, Any] = {
        **SMALL,
        "prompt": ["a photo of a cat", "a dog"],
        "negative_prompt": ["blurry", "a cat"],
        "num_images_per_prompt": 2,
    }
    expected = classic("text2img", comps, **kwargs, generator=generators(4))
    actual = sdxl_text2img.run(**comps, **kwargs, generator=generators(4))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"output_type": "latent", "denoising_end": 0.6}, id="latent-denoising-end"),
        pytest.param({"output_type": "pt", "guidance_rescale": 0.7}, id="pt-guidance-rescale"),
        pytest.param({"guidance_scale": 1.0}, id="no-guidance"),
        pytest.param(
            {"prompt_2": ["a dog", "a cat"], "negative_prompt": "ugly", "negative_prompt_2": "bad"},
            id="second-prompts",
        ),
        pytest.param(
            {
                "original_size": (64, 96),
                "target_size": (24, 40),
                "crops_coords_top_left": (4, 2),
                "negative_original_size": (16, 16),
                "negative_crops_coords_top_left": (8, 0),
                "negative_target_size": (32, 32),
            },
            id="micro-conditioning",
        ),
        pytest.param({"force_zeros_for_empty_prompt": False}, id="no-zeros-for-empty-prompt"),
        pytest.param({"clip_skip": 1, "eta": 0.3}, id="clip-skip"),
        pytest.param({"output_type": "pil", "height": 40, "width": 32}, id="pil"),
    ],
)
def test_sdxl_text2img_options_match_diffusers(
    options, sdxl_components, generators, classic, assert_same
):
    kwargs = {**SMALL, "prompt": ["a cat", "a dog"], **options}
    expected = classic("text2img", sdxl_components, **kwargs, generator=generators(None))
    actual = sdxl_text2img.run(**sdxl_components, **kwargs, generator=generators(None))["images"]
    if kwargs["output_type"] == "pt":
        actual, expected = actual.numpy(), expected.numpy()
    assert_same(actual, expected)


def test_sdxl_text2img_prompt_embeds_and_latents_match_diffusers(
    sdxl_components, generators, classic, assert_same
):
    """Precomputed (pooled) embeddings and initial noise, as a user of diffusers gives them."""
    embeds = encode_prompt_xl(
        sdxl_components["text_encoder_2"],
        sdxl_components["tokenizer_2"],
        sdxl_components["text_encoder"],
        sdxl_components["tokenizer"],
        prompt=["a cat", "a dog"],
        negative_prompt=["ugly", "bad"],
    )
    negative, positive = embeds.prompt_embeds.chunk(2)
    negative_pooled, pooled = embeds.add_text_embeds.chunk(2)
    kwargs = {
        **SMALL,
        "prompt_embeds": positive,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative,
        "negative_pooled_prompt_embeds": negative_pooled,
        "latents": torch.randn(2, 4, 16, 24, generator=generators(None)),
    }
    expected = classic("text2img", sdxl_components, **kwargs)
    actual = sdxl_text2img.run(**sdxl_components, **kwargs)["images"]
    assert_same(actual, expected)


def test_sdxl_text2img_default_size_matches_diffusers(
    sdxl_components, generators, classic, assert_same
):
    """Without a size: the UNet's sample size (32 latents: 64 pixels with the tiny VAE)."""
    kwargs = {**SMALL, "height": None, "width": None, "num_inference_steps": 2, "prompt": "a cat"}
    expected = classic("text2img", sdxl_components, **kwargs, generator=generators(None))
    actual = sdxl_text2img.run(**sdxl_components, **kwargs, generator=generators(None))["images"]
    assert actual.shape == (1, 64, 64, 3)
    assert_same(actual, expected)


def test_sdxl_on_step_matches_callback_on_step_end(
    sdxl_components, generators, classic, assert_same
):
    """`on_step` returning new latents equals diffusers' `callback_on_step_end` doing the same."""

    def halve_diffusers(pipe, i, t, callback_kwargs):
        return {"latents": callback_kwargs["latents"] * 0.5} if i == 1 else {}

    def halve(step):
        return {"latents": step.state["latents"] * 0.5} if step.index == 1 else None

    kwargs = {**SMALL, "prompt": "a cat", "output_type": "latent"}
    expected = classic(
        "text2img",
        sdxl_components,
        **kwargs,
        generator=generators(None),
        callback_on_step_end=halve_diffusers,
    )
    actual = sdxl_text2img.run(
        **sdxl_components, **kwargs, generator=generators(None), on_step=halve
    )["images"]
    assert_same(actual, expected)


# --- image-to-image ------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_sdxl_img2img_batch_matches_diffusers(
    scheduler, sdxl_components, init_image, generators, classic, assert_same
):
    """Two prompts, two images each, one generator per image (each copy encoded on its own)."""
    comps = with_scheduler(sdxl_components, scheduler)
    kwargs: dict[str, Any] = {
        **SMALL,
        "prompt": ["a photo of a cat", "a dog"],
        "image": init_image,
        "strength": 0.7,
        "num_images_per_prompt": 2,
    }
    expected = classic("img2img", comps, **kwargs, generator=generators(4))
    actual = sdxl_img2img.run(**comps, **kwargs, generator=generators(4))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"num_inference_steps": 4}, id="default-strength"),
        pytest.param({"output_type": "latent", "denoising_end": 0.5, "strength": 0.9}, id="latent"),
        pytest.param(
            {"negative_prompt": "ugly", "negative_original_size": (8, 8), "strength": 0.5},
            id="negative-size",
        ),
    ],
)
def test_sdxl_img2img_options_match_diffusers(
    options, sdxl_components, init_image, generators, classic, assert_same
):
    kwargs = {**SMALL, "prompt": "a cat", "image": init_image, **options}
    kwargs = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
    expected = classic("img2img", sdxl_components, **kwargs, generator=generators(None))
    actual = sdxl_img2img.run(**sdxl_components, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


def test_sdxl_base_then_refiner_matches_diffusers(
    sdxl_components, sdxl_refiner_components, generators, classic, assert_same
):
    """The SDXL recipe: the base stops at `denoising_end` and hands its latents to a refiner
    (no first text encoder, aesthetic-score time ids) that starts at `denoising_start`."""
    split = {"num_inference_steps": 4, "prompt": ["a cat", "a dog"], "negative_prompt": "ugly"}
    base = {**SMALL, **split, "denoising_end": 0.5, "output_type": "latent"}
    expected_latents = classic("text2img", sdxl_components, **base, generator=generators(2))
    latents = sdxl_text2img.run(**sdxl_components, **base, generator=generators(2))["images"]
    assert_same(latents, expected_latents)
    refine = {**split, "denoising_start": 0.5, "aesthetic_score": 7.0, "output_type": "np"}
    expected = classic(
        "img2img",
        sdxl_refiner_components,
        **refine,
        image=latents,
        requires_aesthetics_score=True,
        generator=generators(2),
    )
    actual = sdxl_img2img.run(
        **sdxl_refiner_components,
        **refine,
        image=latents,
        requires_aesthetics_score=True,
        generator=generators(2),
    )["images"]
    assert_same(actual, expected)


def test_sdxl_img2img_given_latents_and_latents_statistics_match_diffusers(
    sdxl_components, init_image, generators, classic, assert_same
):
    """A VAE with `latents_mean`/`latents_std` normalizes encoded and decoded latents;
    given `latents` are used as they are."""
    vae = copy.deepcopy(sdxl_components["vae"])
    vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.7, 1.0, 2.0])
    comps = {**sdxl_components, "vae": vae}
    kwargs = {"prompt": "a cat", "image": init_image, "strength": 0.5, "num_inference_steps": 4}
    for extra in ({}, {"latents": torch.randn(1, 4, 16, 24, generator=generators(None))}):
        kwargs = {**kwargs, **extra, "output_type": "np"}
        expected = classic("img2img", comps, **kwargs, generator=generators(None))
        actual = sdxl_img2img.run(**comps, **kwargs, generator=generators(None))["images"]
        assert_same(actual, expected)


# --- inpainting ----------------------------------------------------------------------------


@pytest.mark.parametrize("unet", ["9-channel", "4-channel"])
@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_sdxl_inpaint_batch_matches_diffusers(
    unet,
    scheduler,
    sdxl_components,
    sdxl_inpaint_components,
    init_image,
    mask_image,
    generators,
    classic,
    assert_same,
):
    """Two prompts, two images each, one generator per image."""
    base = sdxl_inpaint_components if unet == "9-channel" else sdxl_components
    comps = with_scheduler(base, scheduler)
    kwargs = {
        **SMALL,
        "prompt": ["a cat", "a dog"],
        "image": init_image,
        "mask_image": mask_image,
        "strength": 0.7,
        "num_images_per_prompt": 2,
    }
    expected = classic("inpaint", comps, **kwargs, generator=generators(4))
    actual = sdxl_inpaint.run(**comps, **kwargs, generator=generators(4))["images"]
    assert_same(actual, expected)


@pytest.mark.parametrize(
    ("unet", "options"),
    [
        pytest.param("9-channel", {}, id="9ch-defaults"),
        pytest.param("4-channel", {"strength": 1.0, "output_type": "latent"}, id="4ch-latent"),
        pytest.param(
            "9-channel", {"denoising_start": 0.5, "num_inference_steps": 4}, id="9ch-start"
        ),
        pytest.param("4-channel", {"denoising_end": 0.5, "guidance_scale": 1.0}, id="4ch-end"),
    ],
)
def test_sdxl_inpaint_options_match_diffusers(
    unet,
    options,
    sdxl_components,
    sdxl_inpaint_components,
    init_image,
    mask_image,
    generators,
    classic,
    assert_same,
):
    """Defaults as diffusers': strength 0.9999 and guidance 7.5 (not SDXL's usual 5)."""
    comps = sdxl_inpaint_components if unet == "9-channel" else sdxl_components
    kwargs = {**SMALL, "prompt": "a cat", "image": init_image, "mask_image": mask_image, **options}
    expected = classic("inpaint", comps, **kwargs, generator=generators(None))
    actual = sdxl_inpaint.run(**comps, **kwargs, generator=generators(None))["images"]
    assert_same(actual, expected)


# --- the VAE in float16 ------------------------------------------------------------------


def test_sdxl_float16_vae_is_upcast_as_in_diffusers(
    sdxl_components, init_image, generators, classic, assert_same
):
    """`force_upcast`: a float16 VAE encodes and decodes in float32, and stays float16 after
    (diffusers' img2img leaves it float32, an in-place side effect modblocks avoids)."""
    vae = copy.deepcopy(sdxl_components["vae"]).half()
    comps = {**sdxl_components, "vae": vae}
    text = {**SMALL, "prompt": "a cat", "num_inference_steps": 2}
    image = {"prompt": "a cat", "image": init_image, "strength": 0.5, "num_inference_steps": 4}
    for kind, node, kwargs in (("text2img", sdxl_text2img, text), ("img2img", sdxl_img2img, image)):
        kwargs = {**kwargs, "output_type": "np"}
        actual = node.run(**comps, **kwargs, generator=generators(None))["images"]
        assert vae.dtype == torch.float16
        expected = classic(kind, comps, **kwargs, generator=generators(None))
        vae.half()  # undo diffusers' side effect
        assert_same(actual, expected)


# --- the auto node, pipelines, threads -----------------------------------------------------


@pytest.mark.parametrize(
    ("given", "branch"),
    [
        ({}, "text2img"),
        ({"image": "init_image"}, "img2img"),
        ({"image": "init_image", "mask_image": "mask_image"}, "inpaint"),
    ],
)
def test_stable_diffusion_xl_runs_the_branch_of_its_inputs(
    given, branch, sdxl_components, request, generators, classic, assert_same
):
    """The auto node runs the branch that diffusers' pipeline of that task is, with its defaults
    (guidance 5 or 7.5, strength 0.3 or 0.9999)."""
    inputs = {k: request.getfixturevalue(v) for k, v in given.items()}
    assert stable_diffusion_xl.resolve(prompt="a cat", **inputs).name == f"sdxl_{branch}"
    kwargs = {**SMALL, "prompt": "a cat", "num_inference_steps": 4, **inputs}
    if branch == "img2img":
        del kwargs["height"], kwargs["width"]
    expected = classic(branch, sdxl_components, **kwargs, generator=generators(None))
    actual = stable_diffusion_xl.run(**sdxl_components, **kwargs, generator=generators(None))
    assert_same(actual["images"], expected)


def test_sdxl_refiner_pipeline_from_a_diffusers_folder(
    tmp_path, sdxl_refiner_components, init_image, generators, assert_same
):
    """A refiner folder saved by diffusers (no first text encoder) loads into an `mb.Pipeline`.

    `model_index.json` also holds the pipeline's configs (`requires_aesthetics_score`,
    `force_zeros_for_empty_prompt`): `Pipeline.from_pretrained` reads them from there.
    """
    from diffusers import StableDiffusionXLImg2ImgPipeline

    saved = StableDiffusionXLImg2ImgPipeline(
        **sdxl_refiner_components, requires_aesthetics_score=True, add_watermarker=False
    )
    saved.save_pretrained(tmp_path)
    configs = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": True}
    with quiet_diffusers():
        pipe = mb.Pipeline.from_pretrained(tmp_path, stable_diffusion_xl)
    assert dict(pipe.configs) == configs
    assert "text_encoder" not in pipe.components
    kwargs = {"prompt": "a cat", "image": init_image, "strength": 0.5, "num_inference_steps": 4}
    actual = pipe(**kwargs, output_type="np", generator=generators(None), output="images")
    expected = sdxl_img2img.run(
        **sdxl_refiner_components, **kwargs, **configs, output_type="np", generator=generators(None)
    )
    assert_same(actual, expected["images"])


def test_sdxl_concurrent_runs_with_an_upcast_vae_equal_sequential_runs(sdxl_components, init_image):
    """Runs share the float16 VAE that each casts to float32 and back: one at a time."""
    comps = {**sdxl_components, "vae": copy.deepcopy(sdxl_components["vae"]).half()}
    pipe = mb.Pipeline(stable_diffusion_xl, components=comps)
    jobs = [
        {"prompt": "a cat"},
        {"prompt": "a dog", "image": init_image, "strength": 0.7},
        {"prompt": "a cat", "image": init_image, "strength": 0.5},
    ]

    def run(job):
        kwargs = {**SMALL, "num_inference_steps": 2, **job}
        if "image" in job:
            del kwargs["height"], kwargs["width"]
        return pipe(**kwargs, generator=torch.Generator().manual_seed(0), output="images")

    sequential = [run(job) for job in jobs]
    concurrent: list[Any] = [None] * len(jobs)

    def worker(k):
        concurrent[k] = run(jobs[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(concurrent, sequential, strict=True):
        np.testing.assert_array_equal(got, want)
    assert comps["vae"].dtype == torch.float16


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of `prompt`"),
        ({"prompt_2": "a"}, "exactly one of `prompt`"),
        ({"prompt_embeds": torch.zeros(1, 77, 64)}, "give `pooled_prompt_embeds` too"),
        (
            {"prompt": "a", "negative_prompt_embeds": torch.zeros(1, 77, 64)},
            "give `negative_pooled_prompt_embeds`",
        ),
        ({"prompt": ["a", "b"], "negative_prompt": ["c"]}, "1 texts for 2 prompts"),
    ],
)
def test_encode_prompt_xl_rejects_inconsistent_prompts(sdxl_components, kwargs, match):
    comps = {k: sdxl_components[k] for k in ("text_encoder", "text_encoder_2", "tokenizer")}
    with pytest.raises(ValueError, match=match):
        encode_prompt_xl(tokenizer_2=sdxl_components["tokenizer_2"], **comps, **kwargs)


def test_sdxl_refiner_unet_needs_the_aesthetics_config(sdxl_refiner_components, init_image):
    """A UNet that reads an aesthetic score gets a message that names the config to set."""
    with pytest.raises(mb.BlockError) as excinfo:
        sdxl_img2img.run(
            **sdxl_refiner_components, prompt="a cat", image=init_image, num_inference_steps=4
        )
    assert "requires_aesthetics_score=True" in str(excinfo.value.__cause__)
    assert "img2img_time_ids" in str(excinfo.value)


def test_tiny_sdxl_components_are_deterministic(sdxl_components, sdxl_refiner_components):
    """The same seed gives the same weights; a refiner has one encoder and 5 time ids."""
    from modblocks.diffusion.testing import tiny_sdxl_components

    again = tiny_sdxl_components()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for a, b in zip(sdxl_components[name].parameters(), again[name].parameters(), strict=True):
            assert torch.equal(a, b), name
    assert sdxl_components["scheduler"].config.timestep_spacing == "leading"
    refiner = sdxl_refiner_components
    assert refiner["text_encoder"] is None
    assert refiner["tokenizer"] is None
    assert refiner["unet"].config.projection_class_embeddings_input_dim == 5 * 8 + 32
