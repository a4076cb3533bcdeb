"""`mb.Pipeline.from_pretrained` loads each family (SD, SDXL, Flux, SD3, Qwen-Image) from a
folder diffusers wrote, and `save_pretrained` writes one that the family's classic pipeline
loads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

import modblocks as mb
from modblocks.diffusion import (
    flux,
    qwen_image,
    stable_diffusion,
    stable_diffusion_3,
    stable_diffusion_xl,
)
from modblocks.diffusion.testing import (
    tiny_flux_components,
    tiny_qwen_image_components,
    tiny_sd3_components,
    tiny_sd_components,
    tiny_sdxl_components,
)
from tests.diffusion.conftest_sdxl import quiet_diffusers

SMALL = {
    "prompt": "a cat",
    "height": 32,
    "width": 48,
    "num_inference_steps": 2,
    "output_type": "np",
}

FAMILIES: dict[str, tuple[type[DiffusionPipeline], mb.Node, Any, dict[str, Any]]] = {
    "sd": (StableDiffusionPipeline, stable_diffusion, tiny_sd_components, {}),
    "sdxl": (StableDiffusionXLPipeline, stable_diffusion_xl, tiny_sdxl_components, {}),
    "flux": (FluxPipeline, flux, tiny_flux_components, {"max_sequence_length": 16}),
    "sd3": (StableDiffusion3Pipeline, stable_diffusion_3, tiny_sd3_components, {}),
    "qwen_image": (
        QwenImagePipeline,
        qwen_image,
        tiny_qwen_image_components,
        {"max_sequence_length": 16},
    ),
}
# Parts the blocks don't use, which the classic pipelines take (as None).
EXTRA: dict[str, dict[str, Any]] = {
    "sd": {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
    "sdxl": {"add_watermarker": False},
}


def classic_images(pipeline: DiffusionPipeline, generators: Any, **kwargs: Any) -> Any:
    pipeline.set_progress_bar_config(disable=True)
    with quiet_diffusers():
        return pipeline(**SMALL, **kwargs, generator=generators(None)).images


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_round_trips_through_diffusers_folders(family, tmp_path, generators, assert_same):
    cls, node, build, call = FAMILIES[family]
    written = tmp_path / "diffusers"
    cls(**build(seed=3), **EXTRA.get(family, {})).save_pretrained(written)
    with quiet_diffusers():
        pipe = mb.Pipeline.from_pretrained(written, node)
        expected = classic_images(cls.from_pretrained(written), generators, **call)
    actual = pipe(**SMALL, **call, generator=generators(None), output="images")
    assert_same(actual, expected)

    again = tmp_path / "modblocks"
    pipe.save_pretrained(again, pipeline_class=cls.__name__)
    assert json.loads((again / "model_index.json").read_text())["_class_name"] == cls.__name__
    with quiet_diffusers():
        reloaded = cls.from_pretrained(again, **EXTRA.get(family, {}))
    assert_same(classic_images(reloaded, generators, **call), expected)


def test_sd3_without_t5_saves_and_loads(tmp_path, generators, assert_same):
    """SD3's T5 is optional: a pipeline without it writes `[null, null]` for it."""
    pipe = mb.Pipeline(stable_diffusion_3, components=tiny_sd3_components(t5=False))
    pipe.save_pretrained(tmp_path, pipeline_class="StableDiffusion3Pipeline")
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_encoder_3"] == index["tokenizer_3"] == [None, None]
    loaded = mb.Pipeline.from_pretrained(tmp_path, stable_diffusion_3)
    assert loaded.components.get("text_encoder_3") is None
    with quiet_diffusers():
        classic = StableDiffusion3Pipeline.from_pretrained(
            tmp_path, text_encoder_3=None, tokenizer_3=None
        )
    expected = classic_images(classic, generators)
    assert_same(loaded(**SMALL, generator=generators(None), output="images"), expected)
