"""Fixtures for the SDXL tests: tiny SDXL components and the diffusers pipelines to match.

pytest loads only files named ``conftest.py``; the SDXL test modules import these fixtures
(``from tests.diffusion.conftest_sdxl import ...``), which registers them there. The fixtures
of ``conftest.py`` next to this file (``assert_same``, ``generators``, ``init_image``,
``mask_image``, one torch thread per test) apply to them as to the SD 1.x tests.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from diffusers import (
    DiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging

from modblocks.diffusion.testing import tiny_sdxl_components

CLASSIC: dict[str, type[DiffusionPipeline]] = {
    "text2img": StableDiffusionXLPipeline,
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}

# 32x48 images (16x24 latents with the tiny 2x VAE) and few steps keep a run near a second.
SMALL: dict[str, Any] = {"height": 32, "width": 48, "num_inference_steps": 3, "output_type": "np"}


@contextlib.contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' logger: its `vae.to(dtype)` logs a warning on every cast."""
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


@pytest.fixture(scope="session")
def sdxl_components() -> dict[str, Any]:
    """Tiny random-weight SDXL components: 4-channel UNet, Euler with "leading" spacing."""
    return tiny_sdxl_components()


@pytest.fixture(scope="session")
def sdxl_inpaint_components() -> dict[str, Any]:
    """Tiny random-weight SDXL components with a 9-channel inpainting UNet."""
    return tiny_sdxl_components(inpaint_unet=True)


@pytest.fixture(scope="session")
def sdxl_refiner_components() -> dict[str, Any]:
    """A tiny refiner: no first text encoder, a UNet conditioned on an aesthetic score."""
    return tiny_sdxl_components(requires_aesthetics_score=True)


def run_classic(kind: str, components: dict[str, Any], **kwargs: Any) -> Any:
    """Run diffusers' classic SDXL pipeline *kind* on *components*; return `.images`.

    The pipeline gets its own copy of the scheduler (diffusers changes it in place) and no
    watermarker. Configs (`requires_aesthetics_score`, `force_zeros_for_empty_prompt`) go to
    the constructor, the rest to the call.
    """
    configs = {
        k: kwargs.pop(k)
        for k in ("requires_aesthetics_score", "force_zeros_for_empty_prompt")
        if k in kwargs
    }
    pipeline = CLASSIC[kind](
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
        **configs,
        add_watermarker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    with quiet_diffusers():
        return pipeline(**kwargs).images


@pytest.fixture
def classic() -> Callable[..., Any]:
    """`classic("text2img", components, **kwargs)`: the images of diffusers' classic pipeline."""
    return run_classic


def run_modular(
    components: dict[str, Any],
    *,
    guidance_scale: float = 5.0,
    guidance_rescale: float = 0.0,
    **kwargs: Any,
) -> Any:
    """Run diffusers' modular `StableDiffusionXLAutoBlocks` on *components*; return `images`.

    Guidance is a `guider` component there, not a call input: its scale defaults to 7.5 in
    every workflow, so the classic pipelines' 5.0 is given explicitly.
    """
    from diffusers.guiders import ClassifierFreeGuidance
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks

    pipeline = StableDiffusionXLAutoBlocks().init_pipeline()
    guider = ClassifierFreeGuidance(
        guidance_scale=guidance_scale, guidance_rescale=guidance_rescale
    )
    pipeline.update_components(
        **{**components, "scheduler": copy.deepcopy(components["scheduler"])}, guider=guider
    )
    pipeline.set_progress_bar_config(disable=True)
    with quiet_diffusers():
        return pipeline(**kwargs, output="images")


@pytest.fixture
def modular() -> Callable[..., Any]:
    """`modular(components, **kwargs)`: the images of diffusers' modular SDXL pipeline."""
    return run_modular
