"""`stable_diffusion` picks the branch from its inputs, and runs are independent."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest
import torch

from modblocks.diffusion import (
    encode_prompt,
    img2img,
    inpaint,
    set_timesteps,
    stable_diffusion,
    text2img,
)

SMALL = {"height": 32, "width": 48, "num_inference_steps": 3, "output_type": "np"}


def test_stable_diffusion_names_its_branches():
    assert (text2img.name, img2img.name, inpaint.name) == ("text2img", "img2img", "inpaint")
    assert stable_diffusion.name == "stable_diffusion"


@pytest.mark.parametrize(
    ("given", "branch"),
    [
        ({}, "text2img"),
        ({"image": "init_image"}, "img2img"),
        ({"image": "init_image", "mask_image": "mask_image"}, "inpaint"),
        ({"image": None, "mask_image": None}, "text2img"),
    ],
)
def test_stable_diffusion_runs_the_branch_of_its_inputs(
    given, branch, components, generators, request, assert_same
):
    """The auto node gives what the chosen branch gives, with that branch's defaults."""
    inputs = {k: v and request.getfixturevalue(v) for k, v in given.items()}
    chosen = {"text2img": text2img, "img2img": img2img, "inpaint": inpaint}[branch]
    assert stable_diffusion.resolve(prompt="a cat", **inputs).name == branch
    kwargs = {**SMALL, "prompt": "a cat"}
    given_inputs = {k: v for k, v in inputs.items() if v is not None}
    expected = chosen.run(**components, **kwargs, **given_inputs, generator=generators(None))
    actual = stable_diffusion.run(**components, **kwargs, **inputs, generator=generators(None))
    assert_same(actual["images"], expected["images"])


def test_set_timesteps_leaves_the_scheduler_unchanged(components):
    """Each run works on its own copy of the stateful scheduler."""
    scheduler = components["scheduler"]
    before = copy.deepcopy(scheduler.__dict__)
    out = set_timesteps(scheduler, components["unet"], num_inference_steps=7)
    assert out.scheduler is not scheduler
    assert len(out.timesteps) == out.num_inference_steps == 7
    assert scheduler.num_inference_steps == before["num_inference_steps"]
    assert torch.equal(scheduler.timesteps, before["timesteps"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"timesteps": [900, 500], "sigmas": [1.0, 0.5]},
            "at most one of `timesteps` and `sigmas`",
        ),
        ({"sigmas": [1.0, 0.5]}, "DDIMScheduler.set_timesteps does not take custom `sigmas`"),
    ],
)
def test_set_timesteps_rejects_unsupported_schedules(components, kwargs, match):
    with pytest.raises(ValueError, match=match):
        set_timesteps(components["scheduler"], components["unet"], **kwargs)


def test_stable_diffusion_concurrent_runs_equal_sequential_runs(components, init_image, mask_image):
    """One node and one set of components serve runs from several threads at once."""
    jobs = [
        {"prompt": "a cat"},
        {"prompt": "a dog", "image": init_image, "strength": 0.5},
        {"prompt": "a cat", "image": init_image, "mask_image": mask_image, "strength": 0.7},
        {"prompt": "a dog", "num_inference_steps": 4},
    ]

    def run(job):
        kwargs = {**SMALL, **job}
        return stable_diffusion.run(
            **components, **kwargs, generator=torch.Generator().manual_seed(0)
        )["images"]

    sequential = [run(job) for job in jobs]
    concurrent = [None] * len(jobs)

    def worker(k):
        concurrent[k] = run(jobs[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(concurrent, sequential, strict=True):
        np.testing.assert_array_equal(got, want)


def test_encode_prompt_is_thread_safe(components):
    """Fast tokenizers keep their padding settings; concurrent calls must not mix them."""
    encoder, tokenizer = components["text_encoder"], components["tokenizer"]
    prompts = ["a cat", "a photo of the dog on a cat, in the photo of a cat"]
    expected = {p: encode_prompt(encoder, tokenizer, prompt=p).prompt_embeds for p in prompts}
    failures = []

    def worker(prompt):
        for _ in range(25):
            try:
                got = encode_prompt(encoder, tokenizer, prompt=prompt).prompt_embeds
            except ValueError as exc:  # a mixed-up padding gives mismatched shapes
                failures.append(exc)
            else:
                if not torch.equal(got, expected[prompt]):
                    failures.append(prompt)

    threads = [threading.Thread(target=worker, args=(prompts[k % 2],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_stable_diffusion_pickles_and_runs_the_same(components, generators):
    """Nodes ship to worker processes: blocks by reference, composites by value."""
    assert pickle.loads(pickle.dumps(encode_prompt)) is encode_prompt
    shipped = pickle.loads(pickle.dumps(stable_diffusion))
    kwargs = {**SMALL, "prompt": "a cat"}
    expected = stable_diffusion.run(**components, **kwargs, generator=generators(None))
    actual = shipped.run(**components, **kwargs, generator=generators(None))
    np.testing.assert_array_equal(actual["images"], expected["images"])


def test_a_block_after_the_scheduler_step_is_one_line(components, generators):
    import modblocks as mb

    @mb.block(output="latents")
    def clamp(latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-0.5, 0.5)

    edited = stable_diffusion.insert(clamp, after="text2img > denoise > scheduler_step")
    assert edited["text2img > denoise"].names == (
        "scale_model_input",
        "predict_noise",
        "scheduler_step",
        "clamp",
    )
    inputs = {"prompt": "a cat", "height": 32, "width": 32, "num_inference_steps": 2}
    latents = edited.run(**components, generator=generators(None), output_type="latent", **inputs)
    plain = stable_diffusion.run(
        **components, generator=generators(None), output_type="latent", **inputs
    )
    assert latents["images"].abs().max() <= 0.5
    assert not torch.equal(latents["images"], plain["images"])
