"""`mb.Cache` on the real tiny Stable Diffusion pipelines: what a second call runs again.

Each test makes a first call to fill the cache, changes one input, and checks with an
`mb.Report` exactly which blocks ran and which were served, and that the images are the ones
an uncached pipeline gives for the same inputs, bit for bit.

What reads the generator is never served for a new seed: `prepare_latents` (the noise), the
denoising loop (its `scheduler_step` takes the generator, for stochastic schedulers) and
`decode_latents` (VAEs that sample). In image-to-image and inpainting the VAE encoding of the
image is *not* served either when only the seed changes: diffusers samples the image's latent
distribution with the generator (`latent_dist.sample(generator)`), so the encoding draws random
numbers, and serving it would skip those draws and change every later one. Only a plain
(seed-free) input such as the prompt, the image itself, the size and the schedule is served.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import stable_diffusion, text2img
from modblocks.diffusion.testing import tiny_scheduler, tiny_sd_components
from modblocks.diffusion.vae import Images

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}
T2I = "stable_diffusion > text2img > "
I2I = "stable_diffusion > img2img > "
INPAINT = "stable_diffusion > inpaint > "
LOOP_BODY = ("scale_model_input", "predict_noise", "scheduler_step")
INPAINT_BODY = (
    "scale_model_input",
    "add_inpaint_channels",
    "predict_noise",
    "scheduler_step",
    "blend_masked_latents",
)


def seed(value: int) -> torch.Generator:
    return torch.Generator().manual_seed(value)


def paths(prefix: str, *names: str) -> list[str]:
    return [prefix + name for name in names]


def loop_steps(prefix: str, steps: int, body: tuple[str, ...] = LOOP_BODY) -> list[str]:
    """The paths of the blocks the denoising loop runs, step by step."""
    return [f"{prefix}denoise[step {i}] > {name}" for i in range(steps) for name in body]


def call(pipe: mb.Pipeline, **inputs: Any) -> tuple[Any, mb.Report]:
    """Run *pipe*, returning its images and the report of what ran and what was served."""
    report = mb.Report()
    images = pipe.run(events=report, **inputs)["images"]
    return images, report


@pytest.fixture
def cached(components: dict[str, Any]) -> mb.Pipeline:
    """The `stable_diffusion` switch on tiny components, with a fresh cache."""
    return mb.Pipeline(stable_diffusion, components=components, cache=mb.Cache())


@pytest.fixture
def plain(components: dict[str, Any]) -> mb.Pipeline:
    """The same pipeline without a cache: the reference every cached result must equal."""
    return mb.Pipeline(stable_diffusion, components=components)


# -- text-to-image: a new seed, the same call, a new prompt ---------------------------------------


def test_sd_cache_new_seed_reruns_only_latents_loop_and_decoding(cached, plain):
    first, _ = call(cached, prompt="a cat", generator=seed(0), **SMALL)
    assert cached.cache is not None
    # Seven blocks and loops, and the sequence of them as a whole.
    assert cached.cache.stats() == mb.CacheStats(
        hits=0, misses=8, entries=8, bytes=cached.cache.stats().bytes, evictions=0
    )
    images, report = call(cached, prompt="a cat", generator=seed(1), **SMALL)
    assert report.cached == paths(T2I, "encode_prompt", "default_size", "set_timesteps")
    assert report.ran == [
        T2I + "prepare_latents",
        *loop_steps(T2I, 2),
        T2I + "decode_latents",
        T2I + "postprocess",
    ]
    stats = cached.cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (3, 13, 13)
    expected = plain(prompt="a cat", generator=seed(1), **SMALL, output="images")
    assert np.array_equal(images, expected)
    assert not np.array_equal(images, first)  # the seed did change the picture


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler", "euler_ancestral", "dpm_multistep"])
def test_sd_cache_new_seed_equals_uncached_run_with_every_scheduler(scheduler):
    """Stateful schedulers (a step index, past outputs) must not leak between cached runs."""
    components = {**tiny_sd_components(), "scheduler": tiny_scheduler(scheduler)}
    cached = mb.Pipeline(text2img, components=components, cache=mb.Cache())
    plain = mb.Pipeline(text2img, components=components)
    for value in (0, 1, 2):
        images = cached(prompt="a cat", generator=seed(value), **SMALL, output="images")
        expected = plain(prompt="a cat", generator=seed(value), **SMALL, output="images")
        assert np.array_equal(images, expected), f"seed {value}"


def test_sd_cache_same_prompt_and_seed_serves_everything(cached, plain):
    call(cached, prompt="a cat", generator=seed(3), **SMALL)
    generator = seed(3)
    images, report = call(cached, prompt="a cat", generator=generator, **SMALL)
    assert report.ran == []
    assert report.cached == ["stable_diffusion > text2img"]  # one lookup for the whole run
    plain_generator = seed(3)
    expected = plain(prompt="a cat", generator=plain_generator, **SMALL, output="images")
    assert np.array_equal(images, expected)
    # The generator is left as the uncached run leaves it: later draws are the same.
    assert torch.equal(generator.get_state(), plain_generator.get_state())


def test_sd_cache_new_prompt_reruns_encoding_and_what_reads_the_embeddings(cached, plain):
    call(cached, prompt="a cat", generator=seed(0), **SMALL)
    images, report = call(cached, prompt="a dog", generator=seed(0), **SMALL)
    assert report.cached == paths(T2I, "default_size", "set_timesteps")
    assert report.ran == [
        T2I + "encode_prompt",
        T2I + "prepare_latents",  # its dtype comes from the embeddings
        *loop_steps(T2I, 2),
        T2I + "decode_latents",
        T2I + "postprocess",
    ]
    expected = plain(prompt="a dog", generator=seed(0), **SMALL, output="images")
    assert np.array_equal(images, expected)


def test_sd_cache_new_negative_prompt_reruns_encoding(cached):
    call(cached, prompt="a cat", generator=seed(0), **SMALL)
    _, report = call(cached, prompt="a cat", negative_prompt="blurry", generator=seed(0), **SMALL)
    assert T2I + "encode_prompt" in report.ran
    assert report.cached == paths(T2I, "default_size", "set_timesteps")


def test_sd_cache_more_steps_reruns_timesteps_but_not_encoding(cached, plain):
    call(cached, prompt="a cat", generator=seed(0), **SMALL)
    more = {**SMALL, "num_inference_steps": 3}
    images, report = call(cached, prompt="a cat", generator=seed(0), **more)
    assert report.cached == paths(T2I, "encode_prompt", "default_size")
    assert report.ran[:2] == paths(T2I, "set_timesteps", "prepare_latents")
    assert np.array_equal(images, plain(prompt="a cat", generator=seed(0), **more)["images"])


def test_sd_cache_reused_generator_draws_new_noise_as_without_cache(cached, plain):
    """A generator passed again without re-seeding has moved on: its blocks run again."""
    generator, plain_generator = seed(0), seed(0)
    for _ in range(2):
        images, report = call(cached, prompt="a cat", generator=generator, **SMALL)
        expected = plain(prompt="a cat", generator=plain_generator, **SMALL, output="images")
        assert np.array_equal(images, expected)
    assert T2I + "prepare_latents" in report.ran


def test_sd_cache_one_generator_per_image(cached, plain):
    batch = {**SMALL, "prompt": "a cat", "num_images_per_prompt": 2}
    call(cached, generator=[seed(0), seed(1)], **batch)
    images, report = call(cached, generator=[seed(0), seed(2)], **batch)
    assert report.cached == paths(T2I, "encode_prompt", "default_size", "set_timesteps")
    assert np.array_equal(images, plain(generator=[seed(0), seed(2)], **batch)["images"])
    again, report = call(cached, generator=[seed(0), seed(2)], **batch)
    assert report.ran == []
    assert np.array_equal(again, images)


def test_sd_cache_swapped_unet_reruns_what_reads_it(cached, components):
    call(cached, prompt="a cat", generator=seed(0), **SMALL)
    unet = tiny_sd_components(seed=1)["unet"]
    images, report = call(
        cached.with_components(unet=unet), prompt="a cat", generator=seed(0), **SMALL
    )
    assert report.cached == [T2I + "encode_prompt"]  # the only block that doesn't read `unet`
    expected = mb.Pipeline(stable_diffusion, components={**components, "unet": unet})(
        prompt="a cat", generator=seed(0), **SMALL, output="images"
    )
    assert np.array_equal(images, expected)


def test_sd_cache_check_inplace_passes_on_every_workflow(
    components, inpaint_components, init_image, mask_image
):
    """No block of `modblocks.diffusion` changes an input tensor in place."""
    for comps, extra in [
        (components, {}),
        (components, {"image": init_image, "strength": 0.6}),
        (inpaint_components, {"image": init_image, "mask_image": mask_image}),
    ]:
        checked = mb.Pipeline(
            stable_diffusion, components=comps, cache=mb.Cache(check_inplace=True)
        )
        inputs = {**SMALL, **extra, "prompt": "a cat"}
        images = checked(generator=seed(0), **inputs, output="images")
        expected = mb.Pipeline(stable_diffusion, components=comps)(
            generator=seed(0), **inputs, output="images"
        )
        assert np.array_equal(images, expected)


def test_sd_cache_images_changed_in_place_by_the_caller_are_not_served(cached):
    """A caller post-processing the returned array in place must not corrupt the cache."""
    images = cached(prompt="a cat", generator=seed(0), **SMALL, output="images")
    pristine = images.copy()
    images *= 255  # e.g. before converting to uint8
    again = cached(prompt="a cat", generator=seed(0), **SMALL, output="images")
    assert np.array_equal(again, pristine)


# -- image-to-image and inpainting ----------------------------------------------------------------


I2I_SMALL: dict[str, Any] = {"num_inference_steps": 4, "output_type": "np", "prompt": "a cat"}


def test_sd_cache_img2img_new_seed_reencodes_the_image_because_it_samples(
    cached, plain, init_image
):
    """The VAE encoding draws from the generator (`latent_dist.sample(generator)`).

    It lives in `prepare_img2img_latents`, which also draws the noise: for a new seed it runs
    again, while the prompt encoding, the image preprocessing and the schedule are served.
    """
    inputs = {**I2I_SMALL, "image": init_image, "strength": 0.8}
    call(cached, generator=seed(0), **inputs)
    images, report = call(cached, generator=seed(1), **inputs)
    assert report.cached == paths(
        I2I, "encode_prompt", "preprocess_image", "set_timesteps", "img2img_timesteps"
    )
    assert report.ran == [
        I2I + "prepare_img2img_latents",
        *loop_steps(I2I, 3),  # int(4 * 0.8)
        I2I + "decode_latents",
        I2I + "postprocess",
    ]
    assert np.array_equal(images, plain(generator=seed(1), **inputs)["images"])
    again, report = call(cached, generator=seed(1), **inputs)
    assert report.ran == []
    assert np.array_equal(again, images)


def test_sd_cache_img2img_new_strength_reruns_schedule_and_latents_not_encoding(
    cached, plain, init_image
):
    inputs = {**I2I_SMALL, "image": init_image}
    call(cached, generator=seed(0), strength=0.8, **inputs)
    images, report = call(cached, generator=seed(0), strength=0.5, **inputs)
    assert report.cached == paths(I2I, "encode_prompt", "preprocess_image", "set_timesteps")
    assert report.ran == [
        I2I + "img2img_timesteps",
        I2I + "prepare_img2img_latents",
        *loop_steps(I2I, 2),  # int(4 * 0.5)
        I2I + "decode_latents",
        I2I + "postprocess",
    ]
    assert np.array_equal(images, plain(generator=seed(0), strength=0.5, **inputs)["images"])


@pytest.mark.parametrize("scheduler", ["ddim", "pndm", "euler", "euler_ancestral", "dpm_multistep"])
def test_sd_cache_img2img_strength_back_and_forth_equals_uncached_runs(scheduler, init_image):
    """`img2img_timesteps` sets the scheduler's begin index: a served schedule must still fit."""
    components = {**tiny_sd_components(), "scheduler": tiny_scheduler(scheduler)}
    cached = mb.Pipeline(stable_diffusion, components=components, cache=mb.Cache())
    plain = mb.Pipeline(stable_diffusion, components=components)
    inputs = {**I2I_SMALL, "image": init_image}
    for strength, value in [(0.8, 0), (0.5, 0), (0.8, 1), (0.5, 2)]:
        images = cached(generator=seed(value), strength=strength, **inputs, output="images")
        expected = plain(generator=seed(value), strength=strength, **inputs, output="images")
        assert np.array_equal(images, expected), (strength, value)


def test_sd_cache_inpaint_new_seed_serves_preprocessing_and_schedule(
    inpaint_components, init_image, mask_image
):
    cached = mb.Pipeline(stable_diffusion, components=inpaint_components, cache=mb.Cache())
    inputs = {**I2I_SMALL, "image": init_image, "mask_image": mask_image}
    call(cached, generator=seed(0), **inputs)
    images, report = call(cached, generator=seed(1), **inputs)
    assert report.cached == paths(
        INPAINT,
        "encode_prompt",
        "default_size",
        "preprocess_image",
        "preprocess_mask",
        "set_timesteps",
        "inpaint_timesteps",
    )
    assert report.ran == [
        INPAINT + "prepare_inpaint_latents",
        INPAINT + "prepare_mask_latents",  # encodes the masked image: samples too
        *loop_steps(INPAINT, 4, INPAINT_BODY),
        INPAINT + "decode_latents",
        INPAINT + "postprocess",
    ]
    plain = mb.Pipeline(stable_diffusion, components=inpaint_components)
    assert np.array_equal(images, plain(generator=seed(1), **inputs)["images"])


# -- resume after a failure -----------------------------------------------------------------------


def test_sd_cache_after_a_failure_in_the_loop_reruns_only_from_the_loop(cached, plain):
    def out_of_memory(*_: Any) -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    handle = cached.components["unet"].register_forward_pre_hook(out_of_memory)
    with pytest.raises(mb.BlockError, match="predict_noise") as info:
        cached(prompt="a cat", generator=seed(0), guidance_rescale=0.5, **SMALL)
    handle.remove()
    assert info.value.path == T2I + "denoise[step 0] > predict_noise"
    images, report = call(cached, prompt="a cat", generator=seed(0), guidance_rescale=0.5, **SMALL)
    assert report.cached == paths(
        T2I, "encode_prompt", "default_size", "set_timesteps", "prepare_latents"
    )
    assert report.ran == [*loop_steps(T2I, 2), T2I + "decode_latents", T2I + "postprocess"]
    expected = plain(prompt="a cat", generator=seed(0), guidance_rescale=0.5, **SMALL)["images"]
    assert np.array_equal(images, expected)


@mb.block(output="images")
def quantize(
    images: Images, levels: int = 256
) -> Images:  # a user's post-processing step after the SD pipeline
    if levels < 2:
        msg = f"`levels` must be at least 2, got {levels}"
        raise ValueError(msg)
    return np.round(np.asarray(images) * (levels - 1)) / (levels - 1)


def test_sd_cache_after_a_failure_in_the_last_block_reruns_only_that_block(components):
    pipe = mb.Pipeline(text2img >> quantize, components=components, cache=mb.Cache())
    with pytest.raises(mb.BlockError, match="levels") as info:
        pipe(prompt="a cat", generator=seed(0), levels=1, **SMALL)
    assert info.value.block == "quantize"
    images, report = call(pipe, prompt="a cat", generator=seed(0), levels=16, **SMALL)
    assert report.ran == ["quantize"]
    assert report.cached == ["text2img"]  # the sequence before it, served whole
    expected = mb.Pipeline(text2img >> quantize, components=components)(
        prompt="a cat", generator=seed(0), levels=16, **SMALL, output="images"
    )
    assert np.array_equal(images, expected)


# -- cancellation ---------------------------------------------------------------------------------


def _cancel_after_step(token: mb.CancelToken, report: mb.Report, index: int) -> Any:
    def events(event: mb.Event) -> None:
        report(event)
        if event.kind == "step" and event.index == index:
            token.cancel()

    return events


def test_sd_cache_cancel_between_steps_keeps_the_cache_correct(cached, plain):
    token, report = mb.CancelToken(), mb.Report()
    with pytest.raises(mb.CancelledError) as info:
        cached.run(
            prompt="a cat",
            generator=seed(0),
            cancel=token,
            events=_cancel_after_step(token, report, 0),
            **{**SMALL, "num_inference_steps": 3},
        )
    assert info.value.path == T2I + "denoise[step 1]"  # the first step not run
    assert report.ran == [
        *paths(T2I, "encode_prompt", "default_size", "set_timesteps", "prepare_latents"),
        *loop_steps(T2I, 1),
    ]
    assert info.value.state["latents"].shape == (1, 4, 16, 16)  # as step 0 left them
    # A cancelled loop stores nothing: the next call runs it whole, and gets the right images.
    inputs = {**SMALL, "num_inference_steps": 3, "prompt": "a cat"}
    images, report = call(cached, generator=seed(0), **inputs)
    assert report.cached == paths(
        T2I, "encode_prompt", "default_size", "set_timesteps", "prepare_latents"
    )
    assert report.ran == [*loop_steps(T2I, 3), T2I + "decode_latents", T2I + "postprocess"]
    assert np.array_equal(images, plain(generator=seed(0), **inputs)["images"])


def test_sd_cache_token_cancelled_before_the_run_runs_nothing(cached):
    call(cached, prompt="a cat", generator=seed(0), **SMALL)
    assert cached.cache is not None
    before = cached.cache.stats()
    token = mb.CancelToken()
    token.cancel()
    report = mb.Report()
    with pytest.raises(mb.CancelledError):
        cached.run(prompt="a dog", generator=seed(0), cancel=token, events=report, **SMALL)
    assert report.events == []
    assert cached.cache.stats() == before


def test_sd_cache_two_runs_in_two_threads_cancel_independently(cached, plain):
    """One token per run: cancelling one run leaves the other (on the same cache) alone."""
    stopped, kept = mb.CancelToken(), mb.CancelToken()
    results: dict[str, Any] = {}

    def run(name: str, token: mb.CancelToken, prompt: str) -> None:
        def events(event: mb.Event) -> None:
            if name == "stopped" and event.kind == "step":
                token.cancel()

        try:
            results[name] = cached.run(
                prompt=prompt, generator=seed(0), cancel=token, events=events, **SMALL
            )["images"]
        except mb.CancelledError as error:
            results[name] = error

    threads = [
        threading.Thread(target=run, args=("stopped", stopped, "a cat")),
        threading.Thread(target=run, args=("kept", kept, "a dog")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert isinstance(results["stopped"], mb.CancelledError)
    assert not kept.cancelled
    expected = plain(prompt="a dog", generator=seed(0), **SMALL, output="images")
    assert np.array_equal(results["kept"], expected)
