"""ControlNet nodes give the images of diffusers' six classic ControlNet pipelines."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

import modblocks as mb
from modblocks.diffusion.controlnet import (
    stable_diffusion_controlnet,
    stable_diffusion_xl_controlnet,
)
from modblocks.diffusion.testing import tiny_sd_components, tiny_sdxl_components
from modblocks.diffusion.testing_adapters import tiny_controlnet
from tests.diffusion.conftest_sdxl import quiet_diffusers

CLASSIC: dict[tuple[str, str], Any] = {
    ("sd", "text2img"): StableDiffusionControlNetPipeline,
    ("sd", "img2img"): StableDiffusionControlNetImg2ImgPipeline,
    ("sd", "inpaint"): StableDiffusionControlNetInpaintPipeline,
    ("sdxl", "text2img"): StableDiffusionXLControlNetPipeline,
    ("sdxl", "img2img"): StableDiffusionXLControlNetImg2ImgPipeline,
    ("sdxl", "inpaint"): StableDiffusionXLControlNetInpaintPipeline,
}
NODES = {"sd": stable_diffusion_controlnet, "sdxl": stable_diffusion_xl_controlnet}
SMALL: dict[str, Any] = {"num_inference_steps": 4, "output_type": "np"}


def noise_image(seed: int) -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


CONTROL, CONTROL_2 = noise_image(1), noise_image(2)


@pytest.fixture(scope="module")
def family() -> dict[str, dict[str, Any]]:
    sd, sdxl = tiny_sd_components(), tiny_sdxl_components()
    return {
        "sd": {**sd, "controlnet": tiny_controlnet(sd, seed=1)},
        "sdxl": {**sdxl, "controlnet": tiny_controlnet(sdxl, seed=1)},
    }


def classic(kind: str, mode: str, components: dict[str, Any], **kwargs: Any) -> Any:
    """diffusers' classic ControlNet pipeline; its control image is `image` in text2img."""
    extra = (
        {"add_watermarker": False}
        if kind == "sdxl"
        else {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    )
    pipeline = CLASSIC[kind, mode](
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])}, **extra
    )
    pipeline.set_progress_bar_config(disable=True)
    if mode == "text2img":
        kwargs["image"] = kwargs.pop("control_image")
    with quiet_diffusers():
        return pipeline(**kwargs).images


def mode_inputs(mode: str, init_image: Any, mask_image: Any) -> dict[str, Any]:
    if mode == "img2img":
        return {"image": init_image}
    if mode == "inpaint":
        return {"image": init_image, "mask_image": mask_image, "height": 32, "width": 48}
    return {}


def seeds(count: int | None) -> torch.Generator | list[torch.Generator]:
    if count is None:
        return torch.Generator().manual_seed(0)
    return [torch.Generator().manual_seed(i) for i in range(count)]


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
@pytest.mark.parametrize("mode", ["text2img", "img2img", "inpaint"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "prompt": ["a cat", "a dog"],
                "num_images_per_prompt": 2,
                "output_type": "latent",
                "controlnet_conditioning_scale": 0.7,
            },
            id="latent-batch-generators",
        ),
    ],
)
def test_controlnet_matches_diffusers(
    kind, mode, options, family, init_image, mask_image, assert_same
):
    components = family[kind]
    kwargs = {
        **SMALL,
        "prompt": "a cat",
        "control_image": CONTROL,
        **mode_inputs(mode, init_image, mask_image),
        **options,
    }
    count = 4 if "num_images_per_prompt" in options else None
    actual = NODES[kind].run(**components, **kwargs, generator=seeds(count))["images"]
    expected = classic(kind, mode, components, **kwargs, generator=seeds(count))
    assert_same(actual, expected)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"guess_mode": True}, id="guess-mode"),
        pytest.param(
            {"control_guidance_start": 0.25, "control_guidance_end": 0.75}, id="start-end"
        ),
        pytest.param({"guidance_scale": 1.0, "height": 40, "width": 32}, id="no-cfg-resized"),
    ],
)
def test_controlnet_options_match_diffusers(kind, options, family, assert_same):
    kwargs = {**SMALL, "prompt": "a cat", "control_image": CONTROL, **options}
    actual = NODES[kind].run(**family[kind], **kwargs, generator=seeds(None))["images"]
    assert_same(actual, classic(kind, "text2img", family[kind], **kwargs, generator=seeds(None)))


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
@pytest.mark.parametrize("mode", ["text2img", "inpaint"])
def test_multi_controlnet_matches_diffusers(
    kind, mode, family, init_image, mask_image, assert_same
):
    components = dict(family[kind])
    base = tiny_sd_components() if kind == "sd" else tiny_sdxl_components()
    nets = [components["controlnet"], tiny_controlnet(base, seed=2)]
    components["controlnet"] = MultiControlNetModel(nets)
    kwargs = {
        **SMALL,
        "prompt": "a cat",
        "control_image": [CONTROL, CONTROL_2],
        "controlnet_conditioning_scale": [0.6, 1.2],
        "control_guidance_end": [1.0, 0.5],
        **mode_inputs(mode, init_image, mask_image),
    }
    actual = NODES[kind].run(**components, **kwargs, generator=seeds(None))["images"]
    assert_same(actual, classic(kind, mode, components, **kwargs, generator=seeds(None)))


def test_control_image_changes_the_output(family):
    """The tiny ControlNet has random, non-zero output layers: the condition matters."""
    components = family["sd"]

    def run(control: PIL.Image.Image, scale: float = 1.0) -> np.ndarray:
        state = stable_diffusion_controlnet.run(
            **components,
            **SMALL,
            prompt="a cat",
            control_image=control,
            controlnet_conditioning_scale=scale,
            generator=seeds(None),
        )
        return np.asarray(state["images"])

    assert np.abs(run(CONTROL) - run(CONTROL_2)).max() > 1e-2
    plain = mb.Pipeline(NODES["sd"], components=components)
    no_control = run(CONTROL, scale=0.0)
    assert np.abs(run(CONTROL) - no_control).max() > 1e-2
    assert plain.blocks.doc.count("control_image") >= 1


def test_controlnet_node_is_the_plain_node_plus_two_blocks():
    """ControlNet adds blocks to the existing loop: no copied pipeline."""
    text2img = dict(stable_diffusion_controlnet.branches)["img2img"]
    assert isinstance(text2img, mb.Sequential)
    assert "prepare_control_image" in text2img.names
    loop = text2img["denoise"]
    assert isinstance(loop, mb.Loop)
    assert isinstance(loop.body, mb.Sequential)
    assert loop.body.names == ("scale_model_input", "controlnet", "predict_noise", "scheduler_step")
    assert "control_image" in {s.name for s in stable_diffusion_controlnet.inputs}
    assert "controlnet" in stable_diffusion_controlnet.to_mermaid()


def test_controlnet_errors_say_what_to_do(family):
    with pytest.raises(mb.BlockError, match="one control image per ControlNet"):
        stable_diffusion_controlnet.run(
            **{
                **family["sd"],
                "controlnet": MultiControlNetModel([family["sd"]["controlnet"]] * 2),
            },
            **SMALL,
            prompt="a cat",
            control_image=[CONTROL],
        )
