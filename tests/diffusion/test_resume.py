"""Resuming Stable Diffusion after a failed UNet call gives the uninterrupted image, bit for bit.

The failure is a real one: the UNet raises at its k-th call (as a CUDA out-of-memory error
would), for every k of the run. The run is resumed from the error through `mb.Pipeline` on
the auto `stable_diffusion` node, twice from the same error, with samplers that keep state
between steps (PNDM, DPM-Solver multistep) and ones that draw noise (Euler ancestral).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import stable_diffusion
from modblocks.diffusion.testing import tiny_sd_components

STEPS = 3
INPUTS: dict[str, Any] = {
    "prompt": "a cat",
    "height": 32,
    "width": 32,
    "num_inference_steps": STEPS,
    "output_type": "np",
}


@contextmanager
def failing_at(unet: torch.nn.Module, call: int) -> Iterator[None]:
    """Make *unet* raise at its *call*-th forward (from 0), as an out-of-memory error would."""
    calls = [0]

    def hook(module: torch.nn.Module, args: Any) -> None:
        calls[0] += 1
        if calls[0] - 1 == call:
            msg = "CUDA out of memory (simulated)"
            raise RuntimeError(msg)

    handle = unet.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _seed() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module", params=["ddim", "euler_ancestral", "pndm", "dpm_multistep"])
def sampler_pipe(request: pytest.FixtureRequest) -> mb.Pipeline:
    return mb.Pipeline(stable_diffusion, components=tiny_sd_components(scheduler=request.param))


@pytest.mark.parametrize("call", range(STEPS))
def test_sd_resume_after_a_failed_unet_call_equals_the_uninterrupted_image(sampler_pipe, call):
    expected = sampler_pipe(generator=_seed(), **INPUTS)["images"]
    with (
        failing_at(sampler_pipe.components["unet"], call),
        pytest.raises(mb.BlockError, match="out of memory") as info,
    ):
        sampler_pipe(generator=_seed(), **INPUTS)
    err = info.value
    assert err.path == f"stable_diffusion > text2img > denoise[step {call}] > predict_noise"
    # The run's own scheduler, set for this run, is part of the state a resume needs.
    assert "scheduler" in err.state
    assert err.state["scheduler"] is not sampler_pipe.components["scheduler"]
    first = sampler_pipe.run(err.state, resume=err.path)["images"]
    second = sampler_pipe.run(err.state, resume=err.path)["images"]
    assert np.array_equal(first, expected)
    assert np.array_equal(second, expected)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_sd_resume_in_image_modes_equals_the_uninterrupted_image(mode, init_image, mask_image):
    components = tiny_sd_components(scheduler="euler_ancestral", inpaint_unet=mode == "inpaint")
    pipe = mb.Pipeline(stable_diffusion, components=components)
    inputs = {**INPUTS, "image": init_image, "strength": 1.0}
    if mode == "inpaint":
        inputs["mask_image"] = mask_image
    expected = pipe(generator=_seed(), **inputs)["images"]
    with failing_at(components["unet"], 1), pytest.raises(mb.BlockError) as info:
        pipe(generator=_seed(), **inputs)
    assert info.value.path == f"stable_diffusion > {mode} > denoise[step 1] > predict_noise"
    assert np.array_equal(pipe.run(info.value.state, resume=info.value.path)["images"], expected)


def test_sd_resume_with_a_cache_equals_the_uninterrupted_image():
    components = tiny_sd_components(scheduler="dpm_multistep")
    plain = mb.Pipeline(stable_diffusion, components=components)
    cached = mb.Pipeline(stable_diffusion, components=components, cache=mb.Cache())
    expected = plain(generator=_seed(), **INPUTS)["images"]
    with failing_at(components["unet"], 2), pytest.raises(mb.BlockError) as info:
        cached(generator=_seed(), **INPUTS)
    report = mb.Report()
    resumed = cached.run(info.value.state, resume=info.value.path, events=report)
    assert np.array_equal(resumed["images"], expected)
    # Only the rest of the run ran: the step that failed, then decoding.
    assert report.ran[0] == "stable_diffusion > text2img > denoise[step 2] > predict_noise"
    assert "stable_diffusion > text2img > encode_prompt" not in report.ran
