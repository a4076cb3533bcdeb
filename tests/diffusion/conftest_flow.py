"""Fixtures for the Flux, SD3 and Qwen-Image tests: tiny components, the classic pipelines.

pytest loads only files named ``conftest.py``; the test modules import these fixtures
(``from tests.diffusion.conftest_flow import ...``), which registers them there. The
fixtures of ``conftest.py`` next to this file (``assert_same``, ``generators``,
``init_image``, ``mask_image``, one torch thread per test) apply to them too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from diffusers import (
    DiffusionPipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)

from modblocks.diffusion.testing import (
    tiny_flux_components,
    tiny_qwen_image_components,
    tiny_sd3_components,
)
from tests.diffusion.conftest_sdxl import quiet_diffusers

CLASSIC: dict[str, type[DiffusionPipeline]] = {
    "flux_text2img": FluxPipeline,
    "flux_img2img": FluxImg2ImgPipeline,
    "flux_inpaint": FluxInpaintPipeline,
    "sd3_text2img": StableDiffusion3Pipeline,
    "sd3_img2img": StableDiffusion3Img2ImgPipeline,
    "qwen_image": QwenImagePipeline,
}

# 32x48 images (16x24 latents with the tiny 2x VAE), 3 steps and a short T5 sequence keep
# a run near a tenth of a second.
SMALL: dict[str, Any] = {
    "height": 32,
    "width": 48,
    "num_inference_steps": 3,
    "output_type": "np",
    "max_sequence_length": 16,
}


@pytest.fixture(scope="session")
def flux_components() -> dict[str, Any]:
    """Tiny random-weight FLUX.1-dev-like components (guidance embedding, dynamic shift)."""
    return tiny_flux_components()


@pytest.fixture(scope="session")
def sd3_components() -> dict[str, Any]:
    """Tiny random-weight SD3 components, with T5 and SD3's fixed shift."""
    return tiny_sd3_components()


@pytest.fixture(scope="session")
def qwen_image_components() -> dict[str, Any]:
    """Tiny random-weight Qwen-Image components, with Qwen-Image's dynamic shift."""
    return tiny_qwen_image_components()


def run_classic(kind: str, components: dict[str, Any], **kwargs: Any) -> Any:
    """Run diffusers' classic pipeline *kind* (a key of `CLASSIC`); return `.images`.

    The pipeline gets its own copy of the scheduler, whose state diffusers changes in place.
    """
    pipeline = CLASSIC[kind](**{**components, "scheduler": copy.deepcopy(components["scheduler"])})
    pipeline.set_progress_bar_config(disable=True)
    with quiet_diffusers():
        return pipeline(**kwargs).images


@pytest.fixture
def classic() -> Callable[..., Any]:
    """`classic("flux_text2img", components, **kwargs)`: the classic pipeline's images."""
    return run_classic
