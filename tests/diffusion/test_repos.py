"""Repos: ``modular_model_index.json`` read and written (also with diffusers' modular
pipelines), Hugging Face Hub ids read from a local cache, subfolders, safetensors only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import modblocks as mb
from modblocks.diffusion import stable_diffusion_xl, text2img
from modblocks.diffusion.testing import save_tiny_sd, tiny_sdxl_components
from tests.diffusion.conftest_sdxl import quiet_diffusers

SMALL: dict[str, Any] = {
    "prompt": "a cat",
    "height": 32,
    "width": 32,
    "num_inference_steps": 2,
    "output_type": "np",
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def images(pipe: mb.Pipeline) -> np.ndarray:
    return pipe(**SMALL, generator=torch.Generator().manual_seed(0), output="images")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("repos") / "sd", seed=3)


@pytest.fixture
def expected(folder: Path) -> np.ndarray:
    return images(mb.Pipeline.from_pretrained(folder, text2img))


def fill_hub_cache(cache: Path, repo_id: str, files: Path) -> None:
    """Lay *files* out as ``huggingface_hub`` caches a download of *repo_id* at `COMMIT`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


# -- modular_model_index.json ----------------------------------------------------------------


def test_a_modular_index_round_trips(folder, expected, tmp_path):
    pipe = mb.Pipeline.from_pretrained(folder, text2img)
    pipe.save_pretrained(tmp_path / "out", modular=True)
    assert not (tmp_path / "out" / "model_index.json").exists()
    index = json.loads((tmp_path / "out" / "modular_model_index.json").read_text())
    library, cls, spec = index["unet"]
    assert (library, cls) == ("diffusers", "UNet2DConditionModel")
    assert spec == {
        "pretrained_model_name_or_path": str((tmp_path / "out").resolve()),
        "revision": None,
        "subfolder": "unet",
        "type_hint": ["diffusers", "UNet2DConditionModel"],
        "variant": None,
    }
    np.testing.assert_array_equal(
        images(mb.Pipeline.from_pretrained(tmp_path / "out", text2img)), expected
    )


def test_a_modular_index_records_where_components_live(folder, expected, tmp_path):
    pipe = mb.Pipeline.from_pretrained(folder, text2img, lazy=True)
    pipe.save_pretrained(tmp_path / "refs", modular=True, reference=True)
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["modular_model_index.json"]
    index = json.loads((tmp_path / "refs" / "modular_model_index.json").read_text())
    assert index["vae"][2]["pretrained_model_name_or_path"] == str(folder.resolve())
    assert not pipe.components["unet"].loaded  # nothing was loaded to write the index
    loaded = mb.Pipeline.from_pretrained(tmp_path / "refs", text2img)
    np.testing.assert_array_equal(images(loaded), expected)
    with pytest.raises(mb.ModblocksError, match="pass `modular=True` too"):
        pipe.save_pretrained(tmp_path / "no", reference=True)


def test_a_modular_index_may_take_a_component_from_another_repo(folder, tmp_path):
    other = save_tiny_sd(tmp_path / "other", seed=4)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    index = json.loads((folder / "model_index.json").read_text())
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        repo = other if name == "vae" else folder
        library, cls = index[name]
        spec = {"pretrained_model_name_or_path": str(repo), "subfolder": name, "variant": None}
        index[name] = [library, cls, {**spec, "revision": None, "type_hint": [library, cls]}]
    (mixed / "modular_model_index.json").write_text(json.dumps(index))
    pipe = mb.Pipeline.from_pretrained(mixed, text2img)
    expected_vae = mb.Pipeline.from_pretrained(other, text2img).components["vae"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            pipe.components["vae"].state_dict().values(),
            expected_vae.state_dict().values(),
            strict=True,
        )
    )
    assert pipe.components["unet"]._modblocks_source.repo == str(folder)


def test_diffusers_modular_pipelines_read_and_write_the_same_format(tmp_path):
    """SDXL, whose modular pipeline diffusers ships: each side loads what the other wrote."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.modular_pipelines import ModularPipeline

    components = tiny_sdxl_components()
    ours = mb.Pipeline(stable_diffusion_xl, components=components)
    ours.save_pretrained(
        tmp_path / "ours", modular=True, pipeline_class="StableDiffusionXLModularPipeline"
    )
    with quiet_diffusers():
        theirs = ModularPipeline.from_pretrained(str(tmp_path / "ours"))
        theirs.load_components(torch_dtype=torch.float32)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        state = getattr(theirs, name).state_dict()
        original = components[name].state_dict()
        assert all(torch.equal(state[k], v) for k, v in original.items()), name

    StableDiffusionXLPipeline(**components).save_pretrained(tmp_path / "classic")
    with quiet_diffusers():
        modular = ModularPipeline.from_pretrained(str(tmp_path / "classic"))
        modular.load_components(torch_dtype=torch.float32)
        modular.save_pretrained(str(tmp_path / "theirs"), overwrite_modular_index=True)
    assert (tmp_path / "theirs" / "modular_model_index.json").is_file()
    loaded = mb.Pipeline.from_pretrained(tmp_path / "theirs", stable_diffusion_xl)
    classic = mb.Pipeline.from_pretrained(tmp_path / "classic", stable_diffusion_xl)
    np.testing.assert_array_equal(images(loaded), images(classic))


# -- Hugging Face Hub ids --------------------------------------------------------------------


def test_a_hub_id_loads_from_the_local_cache_offline(folder, expected, tmp_path):
    fill_hub_cache(tmp_path / "hub", "tester/tiny-sd", folder)
    options = {"cache_dir": tmp_path / "hub", "local_files_only": True}
    pipe = mb.Pipeline.from_pretrained("tester/tiny-sd", text2img, **options)
    np.testing.assert_array_equal(images(pipe), expected)
    lazy = mb.Pipeline.from_pretrained("tester/tiny-sd", text2img, lazy=True, **options)
    assert lazy.components["unet"].source.repo == "tester/tiny-sd"
    np.testing.assert_array_equal(images(lazy), expected)
    with pytest.raises(mb.LoadError, match=r"`tester/missing` is not a folder here") as info:
        mb.Pipeline.from_pretrained("tester/missing", text2img, **options)
    assert info.value.path == "tester/missing"
    assert isinstance(info.value, OSError)


def test_a_modular_index_may_point_to_a_hub_repo(folder, expected, tmp_path):
    fill_hub_cache(tmp_path / "hub", "tester/tiny-sd", folder)
    pipe = mb.Pipeline.from_pretrained(folder, text2img, lazy=True)
    pipe.save_pretrained(tmp_path / "local", modular=True, reference=True)
    index_file = tmp_path / "local" / "modular_model_index.json"
    index = json.loads(index_file.read_text())
    index["unet"][2]["pretrained_model_name_or_path"] = "tester/tiny-sd"
    index_file.write_text(json.dumps(index))
    options = {"cache_dir": tmp_path / "hub", "local_files_only": True}
    loaded = mb.Pipeline.from_pretrained(tmp_path / "local", text2img, **options)
    assert loaded.components["unet"]._modblocks_source.repo == "tester/tiny-sd"
    np.testing.assert_array_equal(images(loaded), expected)


# -- subfolders, safetensors -----------------------------------------------------------------


def test_subfolder_names_the_pipeline_inside_a_repo(folder, expected, tmp_path):
    shutil.copytree(folder, tmp_path / "repo" / "sd15")
    pipe = mb.Pipeline.from_pretrained(tmp_path / "repo", text2img, subfolder="sd15")
    np.testing.assert_array_equal(images(pipe), expected)
    fill_hub_cache(tmp_path / "hub", "tester/many", tmp_path / "repo")
    hub = mb.Pipeline.from_pretrained(
        "tester/many", text2img, subfolder="sd15", cache_dir=tmp_path / "hub", local_files_only=True
    )
    np.testing.assert_array_equal(images(hub), expected)


def test_pickle_weights_load_only_when_asked(folder, expected, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(folder, copy)
    unet = mb.Pipeline.from_pretrained(folder, text2img).components["unet"]
    shutil.rmtree(copy / "unet")
    unet.save_pretrained(copy / "unet", safe_serialization=False)
    assert [p.suffix for p in (copy / "unet").glob("*.bin")] == [".bin"]
    with pytest.raises(mb.LoadError, match=r"pickle format .*`use_safetensors=False`"):
        mb.Pipeline.from_pretrained(copy, text2img)
    pipe = mb.Pipeline.from_pretrained(copy, text2img, use_safetensors=False)
    np.testing.assert_array_equal(images(pipe), expected)
