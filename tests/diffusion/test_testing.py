"""`modblocks.diffusion.testing` builds the same tiny components offline, every time."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from modblocks.diffusion import text2img
from modblocks.diffusion.testing import SCHEDULERS, save_tiny_sd, tiny_scheduler, tiny_sd_components


def test_tiny_sd_components_are_deterministic_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first, second = tiny_sd_components(seed=3), tiny_sd_components(seed=3)
    assert torch.rand(1) == expected_draw
    for name in ("unet", "vae", "text_encoder"):
        for (key, a), b in zip(
            first[name].state_dict().items(), second[name].state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), key
    assert not torch.equal(
        tiny_sd_components(seed=4)["unet"].conv_in.weight, first["unet"].conv_in.weight
    )


def test_tiny_sd_components_shapes(components, inpaint_components):
    assert components["unet"].config.in_channels == 4
    assert inpaint_components["unet"].config.in_channels == 9
    assert isinstance(components["scheduler"], DDIMScheduler)
    assert (
        components["text_encoder"].config.hidden_size
        == components["unet"].config.cross_attention_dim
    )


def test_tiny_tokenizer_fits_the_text_encoder(components):
    tokenizer, encoder = components["tokenizer"], components["text_encoder"]
    ids = tokenizer("A photo of the cat, on a dog!", padding="max_length", max_length=77).input_ids
    assert len(ids) == tokenizer.model_max_length == 77
    assert max(ids) < encoder.config.vocab_size
    tokens = tokenizer.convert_ids_to_tokens(ids[:6])
    assert tokens == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>"]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_tiny_scheduler_uses_stable_diffusion_config(name):
    scheduler = tiny_scheduler(name)
    assert isinstance(scheduler, SCHEDULERS[name])
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.steps_offset == 1


def test_tiny_scheduler_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown scheduler 'ddpm'"):
        tiny_scheduler("ddpm")


@pytest.mark.parametrize("inpaint_unet", [False, True])
def test_save_tiny_sd_writes_a_diffusers_folder(tmp_path, inpaint_unet):
    folder = save_tiny_sd(tmp_path / "tiny", inpaint_unet=inpaint_unet)
    index = json.loads((folder / "model_index.json").read_text())
    expected = "StableDiffusionInpaintPipeline" if inpaint_unet else "StableDiffusionPipeline"
    assert index["_class_name"] == expected
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)


def test_save_tiny_sd_loads_back_to_the_same_images(tmp_path, components):
    folder = save_tiny_sd(tmp_path / "tiny")
    loaded = StableDiffusionPipeline.from_pretrained(folder).components
    kwargs = {
        "prompt": "a cat",
        "height": 32,
        "width": 32,
        "num_inference_steps": 2,
        "output_type": "np",
    }
    names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    expected = text2img.run(**components, **kwargs, generator=torch.Generator().manual_seed(0))
    actual = text2img.run(
        **{n: loaded[n] for n in names}, **kwargs, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(actual["images"], expected["images"], rtol=0, atol=0)
