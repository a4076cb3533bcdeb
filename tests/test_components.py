"""`mb.Components`: one registry of components shared by pipelines, listed, freed and moved."""

import copy
import gc
import json
import pickle

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

import modblocks as mb


@mb.block(output="h")
def embed(x: torch.Tensor, proj: mb.Component[torch.nn.Linear]) -> torch.Tensor:
    """Project the input."""
    return proj(x)


@mb.block(output="y")
def head(h: torch.Tensor, norm: mb.Component[torch.nn.LayerNorm]) -> torch.Tensor:
    """Normalise."""
    return norm(h)


model = (embed >> head).named("model")
X = torch.ones(2, 3)


def _registry() -> mb.Components:
    torch.manual_seed(0)
    return mb.Components({"proj": torch.nn.Linear(3, 4), "norm": torch.nn.LayerNorm(4)})


def test_pipelines_built_from_one_registry_share_every_object():
    registry = _registry()
    first = mb.Pipeline(model, components=registry)
    second = mb.Pipeline(embed, components=registry)  # binds only what its blocks declare
    assert first.components["proj"] is second.components["proj"] is registry["proj"]
    assert list(second.components) == ["proj"]
    assert torch.equal(first(x=X, output="h"), second(x=X, output="h"))


def test_add_keeps_one_name_per_object_and_numbers_new_ones():
    registry = _registry()
    proj = registry["proj"]
    assert registry.add("proj", proj) == "proj"
    assert registry.add("other", proj) == "proj"  # the same object keeps its first name
    assert registry.add("proj", torch.nn.Linear(3, 4)) == "proj_2"
    assert registry.add("proj", torch.nn.Linear(3, 4)) == "proj_3"
    assert list(registry) == ["proj", "norm", "proj_2", "proj_3"]
    assert registry.remove("proj_3") is not proj
    assert "proj_3" not in registry


def test_info_lists_size_device_dtype_and_users():
    registry = _registry()
    registry.add("tag", "not a model")
    pipe = mb.Pipeline(model, components=registry)
    info = {row.name: row for row in registry.info()}
    assert info["proj"] == mb.ComponentInfo(
        "proj", "Linear", True, (3 * 4 + 4) * 4, "cpu", "float32", 1, None
    )
    assert info["norm"].size == 8 * 4
    assert (info["tag"].size, info["tag"].device, info["tag"].pipelines) == (0, None, 0)
    table = str(registry)
    assert table.splitlines()[0].split() == [
        "name",
        "class",
        "loaded",
        "size",
        "device",
        "dtype",
        "pipelines",
        "source",
    ]
    assert "proj  Linear" in table
    assert registry.unused() == ("tag",)
    del pipe
    gc.collect()
    assert registry.unused() == ("proj", "norm", "tag")


def test_free_removes_unused_components_and_refuses_used_ones():
    registry = _registry()
    registry.add("spare", torch.nn.Linear(2, 2))
    pipe = mb.Pipeline(model, components=registry)
    assert registry.free() == ("spare",)
    assert "spare" not in registry
    with pytest.raises(mb.ModblocksError, match=r"`proj` is bound by 1 live pipeline.*lazy=True"):
        registry.free("proj")
    with pytest.raises(mb.UnknownInputError, match=r"no `prj`. Did you mean `proj`"):
        registry.free("prj")
    assert pipe(x=X, output="y").shape == (2, 4)


def test_to_moves_the_modules_it_names():
    registry = _registry()
    registry.to(None, "proj", dtype=torch.float64)
    assert registry["proj"].weight.dtype == torch.float64
    assert registry["norm"].weight.dtype == torch.float32
    registry.to(dtype=torch.float64)
    assert {row.dtype for row in registry.info()} == {"float64"}


def test_with_components_keeps_counting_the_registry():
    registry = _registry()
    pipe = mb.Pipeline(model, components=registry)
    other = pipe.with_components(norm=torch.nn.LayerNorm(4))
    assert registry.users("proj") == 2
    assert registry.users("norm") == 1
    assert other.components["proj"] is registry["proj"]


def test_a_registry_pickles_with_its_components():
    registry = _registry()
    copied = pickle.loads(pickle.dumps(registry))
    assert list(copied) == ["proj", "norm"]
    assert torch.equal(copied["proj"].weight, registry["proj"].weight)


# -- with a folder: lazy components and sharing what was loaded from one place ---------------


@mb.block(output="sample")
def denoise_once(
    noise: torch.Tensor,
    timestep: int,
    unet: mb.Component[UNet2DModel],
    scheduler: mb.Component[DDIMScheduler],
) -> torch.Tensor:
    """Predict with the UNet and noise the prediction with the scheduler."""
    predicted = unet(noise, timestep).sample
    return scheduler.add_noise(predicted, noise, torch.tensor([timestep]))


def _unet_blocks() -> mb.Node:
    return denoise_once


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    components = {"unet": unet, "scheduler": DDIMScheduler(num_train_timesteps=100)}
    path = tmp_path_factory.mktemp("tiny") / "pipe"
    mb.Pipeline(_unet_blocks(), components=components).save_pretrained(path)
    return path


NOISE = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)


def test_from_pretrained_through_a_registry_loads_each_component_once(folder):
    registry = mb.Components()
    blocks = _unet_blocks()
    first = mb.Pipeline.from_pretrained(folder, blocks, components=registry)
    second = mb.Pipeline.from_pretrained(folder, blocks, components=registry)
    assert first.components["unet"] is second.components["unet"] is registry["unet"]
    assert list(registry) == ["unet", "scheduler"]
    assert registry.users("unet") == 2
    assert {row.source for row in registry.info()} == {
        f"{folder.resolve()}/unet",
        f"{folder.resolve()}/scheduler",
    }
    # Another dtype is another copy, added next to the first.
    doubled = mb.Pipeline.from_pretrained(
        folder, blocks, components=registry, torch_dtype=torch.float64
    )
    assert doubled.components["unet"] is registry["unet_2"]
    assert doubled.components["scheduler"] is registry["scheduler"]  # no weights: no dtype
    assert doubled.components["unet"].dtype == torch.float64


def test_lazy_components_in_a_registry_load_once_and_free_to_load_again(folder):
    registry = mb.Components()
    blocks = _unet_blocks()
    pipe = mb.Pipeline.from_pretrained(folder, blocks, components=registry, lazy=True)
    unet = registry["unet"]
    assert isinstance(unet, mb.Lazy)
    assert not unet.loaded
    row = next(r for r in registry.info() if r.name == "unet")
    assert (row.loaded, row.device) == (False, None)
    assert row.size == sum(f.stat().st_size for f in (folder / "unet").glob("*.safetensors"))

    expected = mb.Pipeline.from_pretrained(folder, blocks)(noise=NOISE, timestep=10)
    first = pipe(noise=NOISE, timestep=10)
    assert torch.equal(first["sample"], expected["sample"])
    assert "unet" not in first  # the bound components stay out of states, lazy or not
    assert unet.loaded
    model = unet.value
    other = mb.Pipeline.from_pretrained(folder, blocks, components=registry, lazy=True)
    assert other.components["unet"] is unet
    other(noise=NOISE, timestep=10)
    assert unet.value is model  # one copy for both pipelines

    assert registry.free("unet") == ("unet",)
    assert not unet.loaded
    assert torch.equal(pipe(noise=NOISE, timestep=10)["sample"], expected["sample"])
    assert unet.value is not model
    assert set(registry.free()) == set()  # both pipelines still use everything


def test_a_lazy_component_pickles_as_where_it_lives(folder):
    pipe = mb.Pipeline.from_pretrained(folder, _unet_blocks(), lazy=True)
    pipe(noise=NOISE, timestep=10)
    lazy = pipe.components["unet"]
    copied = pickle.loads(pickle.dumps(pipe))
    assert isinstance(copied.components["unet"], mb.Lazy)
    assert not copied.components["unet"].loaded
    assert copied.components["unet"].source == lazy.source
    assert copy.deepcopy(lazy) is lazy
    assert "not loaded" in repr(copied.components["unet"])
    expected = pipe(noise=NOISE, timestep=10, output="sample")
    assert torch.equal(copied(noise=NOISE, timestep=10, output="sample"), expected)
    assert json.loads((folder / "model_index.json").read_text())["unet"] == [
        "diffusers",
        "UNet2DModel",
    ]


def test_to_moves_a_lazy_component_when_it_loads(folder):
    registry = mb.Components()
    pipe = mb.Pipeline.from_pretrained(folder, _unet_blocks(), components=registry, lazy=True)
    pipe.to(dtype=torch.float64)
    assert not registry["unet"].loaded
    out = pipe(noise=NOISE.double(), timestep=10, output="sample")
    assert out.dtype == torch.float64
    assert registry["unet"].value.dtype == torch.float64


def test_a_lazy_model_loaded_during_a_run_is_an_ordinary_model(folder):
    # Runs are under `torch.inference_mode()`; a model loaded there would hold inference
    # tensors: no in-place change outside it, no autograd, no version counter for a cache.
    pipe = mb.Pipeline.from_pretrained(folder, _unet_blocks(), lazy=True)
    pipe(noise=NOISE, timestep=10)
    unet = pipe.components["unet"].value
    assert not any(p.is_inference() for p in unet.parameters())
    unet.load_state_dict(unet.state_dict())  # in place, outside inference mode
    training = mb.Pipeline(_unet_blocks(), components=pipe.components, inference_mode=False)
    noise = NOISE.clone().requires_grad_()
    training(noise=noise, timestep=10, output="sample").sum().backward()
    assert noise.grad is not None
    cached = mb.Pipeline(
        _unet_blocks(),
        components={"unet": unet, "scheduler": pipe.components["scheduler"].get()},
        cache=mb.Cache(),
    )
    cached(noise=NOISE, timestep=10)
    assert cached.cache is not None
    cached(noise=NOISE, timestep=10)
    assert cached.cache.stats().hits == 1


def test_a_cache_sees_a_change_to_a_lazy_models_loaded_copy(folder):
    pipe = mb.Pipeline.from_pretrained(folder, _unet_blocks(), lazy=True, cache=mb.Cache())
    before = pipe(noise=NOISE, timestep=10, output="sample")
    assert torch.equal(pipe(noise=NOISE, timestep=10, output="sample"), before)  # served
    lazy = pipe.components["unet"]
    with torch.no_grad():
        lazy.value.conv_out.weight.mul_(2)  # an optimizer step, a merged LoRA ...
    changed = mb.Pipeline(
        _unet_blocks(),
        components={"unet": lazy.value, "scheduler": pipe.components["scheduler"].get()},
    )(noise=NOISE, timestep=10, output="sample")
    assert not torch.equal(changed, before)
    assert torch.equal(pipe(noise=NOISE, timestep=10, output="sample"), changed)
    lazy.free()  # loads the weights on disk again: the first result is right again
    assert torch.equal(pipe(noise=NOISE, timestep=10, output="sample"), before)
    assert not lazy.loaded  # ... and the cache still serves it without loading


def test_a_lazy_component_changed_since_it_loaded_pickles_with_its_changes(folder):
    # As `pipe.map(executor=ProcessPoolExecutor())` ships it: a worker loading the weights
    # on disk would silently drop a LoRA or fine-tuned weights.
    pipe = mb.Pipeline.from_pretrained(folder, _unet_blocks(), lazy=True)
    pipe(noise=NOISE, timestep=10)
    with torch.no_grad():
        pipe.components["unet"].value.conv_out.weight.mul_(2)
    changed = pipe(noise=NOISE, timestep=10, output="sample")
    copied = pickle.loads(pickle.dumps(pipe))
    # The model itself travels: loading it again from disk would lose the change.
    unet = copied.components["unet"]
    assert isinstance(unet, UNet2DModel)
    assert torch.equal(unet.conv_out.weight, pipe.components["unet"].value.conv_out.weight)
    torch.testing.assert_close(copied(noise=NOISE, timestep=10, output="sample"), changed)
    assert isinstance(copied.components["scheduler"], mb.Lazy)  # unchanged: where it lives
