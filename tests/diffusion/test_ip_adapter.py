"""IP-Adapter: the images of diffusers' classic pipelines with the same tiny adapter."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

import modblocks as mb
from modblocks.diffusion import stable_diffusion, stable_diffusion_controlnet, stable_diffusion_xl
from modblocks.diffusion.ip_adapter import with_ip_adapter
from modblocks.diffusion.testing import tiny_sd_components, tiny_sdxl_components
from modblocks.diffusion.testing_adapters import (
    tiny_controlnet,
    tiny_image_encoder,
    tiny_ip_adapter,
)
from tests.diffusion.conftest_sdxl import quiet_diffusers

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 3, "output_type": "np"}
IMAGE = PIL.Image.fromarray(
    np.random.default_rng(3).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
)
FAMILIES = {
    "sd": (tiny_sd_components, StableDiffusionPipeline, stable_diffusion),
    "sdxl": (tiny_sdxl_components, StableDiffusionXLPipeline, stable_diffusion_xl),
}


def seeds(count: int | None) -> torch.Generator | list[torch.Generator]:
    if count is None:
        return torch.Generator().manual_seed(0)
    return [torch.Generator().manual_seed(i) for i in range(count)]


def build(kind: str, scale: float = 1.0) -> tuple[mb.Pipeline, Any]:
    """A modblocks pipeline and diffusers' classic one, each with its own UNet and adapter."""
    make, cls, node = FAMILIES[kind]
    encoder = tiny_image_encoder(make()["unet"].config["cross_attention_dim"])
    adapter = tiny_ip_adapter(make())
    ours = mb.Pipeline(with_ip_adapter(node), components={**make(), **encoder})
    ours.load_ip_adapter(adapter)
    ours.set_ip_adapter_scale(scale)
    theirs_components = {**make(), **encoder}
    extra = (
        {"add_watermarker": False}
        if kind == "sdxl"
        else {"safety_checker": None, "requires_safety_checker": False}
    )
    theirs = cls(
        **{**theirs_components, "scheduler": copy.deepcopy(theirs_components["scheduler"])},
        **extra,
    )
    theirs.set_progress_bar_config(disable=True)
    # diffusers' fast tests load a state dict straight into the UNet, the same way.
    theirs.unet._load_ip_adapter_weights([adapter])
    theirs.set_ip_adapter_scale(scale)
    return ours, theirs


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="np"),
        pytest.param(
            {"prompt": ["a cat", "a dog"], "num_images_per_prompt": 2, "output_type": "latent"},
            id="latent-batch-generators",
        ),
    ],
)
def test_ip_adapter_matches_diffusers(kind, options, assert_same):
    ours, theirs = build(kind, scale=0.7)
    kwargs = {**SMALL, "prompt": "a cat", "ip_adapter_image": IMAGE, **options}
    count = 4 if options else None
    actual = ours(**kwargs, generator=seeds(count), output="images")
    with quiet_diffusers():
        expected = theirs(**kwargs, generator=seeds(count)).images
    assert_same(actual, expected)


def test_ip_adapter_image_embeds_and_img2img_match_diffusers(init_image, assert_same):
    ours, theirs = build("sd")
    embeds = ours.run(**SMALL, prompt="a cat", ip_adapter_image=IMAGE)["image_embeds"]
    kwargs = {"num_inference_steps": 3, "output_type": "np", "prompt": "a cat"}
    actual = ours(
        **kwargs,
        image=init_image,
        ip_adapter_image_embeds=embeds,
        generator=seeds(None),
        output="images",
    )
    classic = StableDiffusionImg2ImgPipeline(**theirs.components)
    classic.set_progress_bar_config(disable=True)
    expected = classic(
        **kwargs, image=init_image, ip_adapter_image=IMAGE, generator=seeds(None)
    ).images
    assert_same(actual, expected)


def test_ip_adapter_scale_and_image_change_the_output_and_the_cache_sees_it():
    ours, _ = build("sd")
    cached = mb.Pipeline(ours.blocks, components=dict(ours.components), cache=mb.Cache())
    kwargs = {**SMALL, "prompt": "a cat", "ip_adapter_image": IMAGE, "output": "images"}
    first = cached(**kwargs, generator=seeds(None))
    cached.set_ip_adapter_scale(0.2)
    report = mb.Report()
    weaker = cached(**kwargs, generator=seeds(None), events=report)
    assert "stable_diffusion > text2img > encode_prompt" in report.cached
    assert np.abs(weaker - first).max() > 1e-3
    assert np.array_equal(weaker, ours(**kwargs, generator=seeds(None)))  # shared UNet
    other = cached(
        **{**kwargs, "ip_adapter_image": PIL.Image.new("RGB", (32, 32))}, generator=seeds(None)
    )
    assert np.abs(other - weaker).max() > 1e-4


def test_ip_adapter_composes_with_controlnet(assert_same):
    """Both additions in one node: each is a block or two added to the same loop."""
    node = with_ip_adapter(stable_diffusion_controlnet)
    components = {**tiny_sd_components(), **tiny_image_encoder(32)}
    components["controlnet"] = tiny_controlnet(components)
    pipe = mb.Pipeline(node, components=components)
    pipe.load_ip_adapter(tiny_ip_adapter(components))
    state = pipe(**SMALL, prompt="a cat", ip_adapter_image=IMAGE, control_image=IMAGE)
    assert state["images"].shape == (1, 32, 32, 3)
    body = dict(node.branches)["img2img"]["denoise"].body.names
    assert body == ("scale_model_input", "controlnet", "predict_noise", "scheduler_step")


def test_ip_adapter_without_an_image_encoder_says_what_to_do():
    components = tiny_sd_components()
    pipe = mb.Pipeline(with_ip_adapter(stable_diffusion), components=components)
    pipe.load_ip_adapter(tiny_ip_adapter(components), image_encoder_folder=None)
    with pytest.raises(mb.BlockError, match="give the pipeline an `image_encoder`"):
        pipe(**SMALL, prompt="a cat", ip_adapter_image=IMAGE)
    pipe.unload_ip_adapter()
    assert pipe(**SMALL, prompt="a cat", output="images").shape == (1, 32, 32, 3)
