"""Models and memory with real (tiny) diffusers models: lazy loading, per-component dtypes,
offloading policies, wrapped models. Repos and the Hub are in `test_repos.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

import modblocks as mb
from modblocks._components import footprint
from modblocks.diffusion import stable_diffusion, text2img
from modblocks.diffusion.controlnet import stable_diffusion_controlnet
from modblocks.diffusion.testing import save_tiny_sd, tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_controlnet, tiny_lora

SMALL: dict[str, Any] = {
    "prompt": "a cat",
    "height": 32,
    "width": 32,
    "num_inference_steps": 2,
    "output_type": "np",
}
MODELS = ("text_encoder", "unet", "vae")


def images(pipe: mb.Pipeline, seed: int = 0, **inputs: Any) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipe(**SMALL, **inputs, generator=generator, output="images")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD folder diffusers wrote, with a ControlNet next to the other models."""
    path = save_tiny_sd(tmp_path_factory.mktemp("memory") / "sd", seed=1)
    components = tiny_sd_components(seed=1)
    tiny_controlnet(components, seed=2).save_pretrained(path / "controlnet")
    index = json.loads((path / "model_index.json").read_text())
    index["controlnet"] = ["diffusers", "ControlNetModel"]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


@pytest.fixture(scope="module")
def expected(folder: Path) -> np.ndarray:
    """The image of the folder's models loaded as usual."""
    return one_thread(images, mb.Pipeline.from_pretrained(folder, text2img))


def one_thread(function: Any, *args: Any) -> Any:
    """Call as the tests run (on one torch thread): the same float rounding, bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(*args)
    finally:
        torch.set_num_threads(threads)


def loaded(pipe: mb.Pipeline) -> dict[str, bool]:
    return {k: v.loaded for k, v in pipe.components.items() if isinstance(v, mb.Lazy)}


# -- lazy loading ----------------------------------------------------------------------------


def test_lazy_models_load_when_a_block_first_reads_them(folder, expected):
    pipe = mb.Pipeline.from_pretrained(folder, text2img, lazy=True)
    assert set(loaded(pipe)) == {*MODELS, "tokenizer", "scheduler"}
    assert not any(loaded(pipe).values())
    assert "unet: Lazy(UNet2DConditionModel, not loaded)" in pipe.doc

    seen: dict[str, dict[str, bool]] = {}

    class Before(mb.Hook):  # runs outside the loading policy: sees what is loaded so far
        def around(self, unit, _values, proceed):
            if unit.kind == "block" and unit.name not in seen:
                seen[unit.name] = loaded(pipe)
            proceed()

    watched = mb.Pipeline(pipe.blocks, components=pipe.components, hooks=[Before()])
    np.testing.assert_array_equal(images(watched), expected)
    assert not seen["encode_prompt"]["text_encoder"]
    assert seen["default_size"] == {**seen["default_size"], "text_encoder": True, "unet": False}
    assert not seen["decode_latents"]["vae"] or seen["default_size"]["vae"] is False
    assert all(loaded(pipe).values())
    np.testing.assert_array_equal(images(pipe), expected)  # loaded once, kept


def test_a_branch_that_does_not_run_never_loads_its_models(folder):
    auto = mb.switch({"control_image": stable_diffusion_controlnet}, default=stable_diffusion)
    pipe = mb.Pipeline.from_pretrained(folder, auto, lazy=True)
    assert isinstance(pipe.components["controlnet"], mb.Lazy)
    assert pipe.components["controlnet"].cls is ControlNetModel
    images(pipe)
    assert not pipe.components["controlnet"].loaded
    assert pipe.components["unet"].loaded
    control = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    images(pipe, control_image=control)
    assert pipe.components["controlnet"].loaded


def test_a_unit_the_cache_serves_loads_nothing(folder, expected):
    pipe = mb.Pipeline.from_pretrained(folder, text2img, lazy=True, cache=mb.Cache())
    np.testing.assert_array_equal(images(pipe), expected)
    for lazy in pipe.components.values():
        lazy.free()
    np.testing.assert_array_equal(images(pipe), expected)  # every block served
    assert not any(loaded(pipe).values())
    # A new seed: the prompt's embeddings and the timesteps (with the run's copy of the
    # scheduler) are served, the latents are new, so the UNet and the VAE load.
    images(pipe, seed=1)
    assert loaded(pipe) == {
        "text_encoder": False,
        "tokenizer": False,
        "unet": True,
        "vae": True,
        "scheduler": False,
    }


def test_torch_dtype_per_component_with_a_default(folder):
    dtypes = {"unet": torch.float64, "default": torch.float16}
    pipe = mb.Pipeline.from_pretrained(folder, text2img, torch_dtype=dtypes)
    assert pipe.components["unet"].dtype == torch.float64
    assert pipe.components["vae"].dtype == torch.float16
    assert pipe.components["text_encoder"].dtype == torch.float16
    lazy = mb.Pipeline.from_pretrained(
        folder, text2img, torch_dtype={"vae": torch.float64}, lazy=True
    )
    assert lazy.components["vae"].get().dtype == torch.float64
    assert lazy.components["unet"].get().dtype == torch.float32  # no default: its own
    with pytest.raises(mb.ModblocksError, match=r"`torch_dtype` names `unte`.*\"default\""):
        mb.Pipeline.from_pretrained(folder, text2img, torch_dtype={"unte": torch.float16})
    for bad in ("auto", {"unet": "half-ish"}, 16):
        with pytest.raises(mb.InputTypeError, match="`torch_dtype` must be a torch dtype"):
            mb.Pipeline.from_pretrained(folder, text2img, torch_dtype=bad)
    named = mb.Pipeline.from_pretrained(folder, text2img, torch_dtype={"default": "float64"})
    assert named.components["unet"].dtype == torch.float64


def test_adapters_load_the_lazy_models_they_change(folder):
    pipe = mb.Pipeline.from_pretrained(folder, text2img, lazy=True)
    pipe.load_lora_weights(tiny_lora(tiny_sd_components(seed=1)), adapter_name="style")
    assert pipe.components["unet"].loaded
    assert pipe.get_active_adapters() == ["style"]
    disk = mb.Pipeline.from_pretrained(folder, text2img, offload="disk")
    with pytest.raises(mb.ModblocksError, match="offload='disk'"):
        disk.load_lora_weights(tiny_lora(tiny_sd_components(seed=1)))


# -- offloading ------------------------------------------------------------------------------


class FakeDevice:
    """A device of *capacity* bytes: moves are recorded, the free memory is counted."""

    def __init__(self, capacity: int = 1 << 40) -> None:
        self.capacity = capacity
        self.on: dict[int, int] = {}
        self.moves: list[tuple[str, str]] = []

    def move(self, model: Any, device: Any) -> None:
        self.moves.append((type(model).__name__, str(device)))
        if str(device) != "cpu":
            self.on[id(model)] = footprint(model)[0]
        else:
            self.on.pop(id(model), None)

    def free(self) -> int:
        return self.capacity - sum(self.on.values())


def test_model_offload_puts_each_blocks_models_on_the_device_while_it_runs(folder, expected):
    device = FakeDevice()
    policy = mb.ModelOffload("gpu", mover=device.move)
    pipe = mb.Pipeline.from_pretrained(folder, text2img, offload=policy)
    np.testing.assert_array_equal(images(pipe), expected)
    assert device.moves == [
        ("CLIPTextModel", "gpu"),  # encode_prompt
        ("CLIPTextModel", "cpu"),  # default_size reads the UNet and the VAE ...
        ("UNet2DConditionModel", "gpu"),
        ("AutoencoderKL", "gpu"),
        ("AutoencoderKL", "cpu"),  # ... set_timesteps the UNet only
        ("AutoencoderKL", "gpu"),  # prepare_latents both, the loop the UNet
        ("AutoencoderKL", "cpu"),
        ("UNet2DConditionModel", "cpu"),  # decode_latents the VAE
        ("AutoencoderKL", "gpu"),
        ("AutoencoderKL", "cpu"),  # the end of the run
    ]
    assert device.on == {}


def test_model_offload_keeps_models_while_the_memory_probe_says_they_fit(folder):
    sizes = {n: footprint(v)[0] for n, v in tiny_sd_components(seed=1).items()}
    everything = FakeDevice(capacity=sizes["unet"] + sizes["vae"] + sizes["text_encoder"] + 10)
    policy = mb.ModelOffload("gpu:0", keep_free=0, mover=everything.move, memory=everything.free)
    pipe = mb.Pipeline.from_pretrained(folder, text2img, offload=policy)
    images(pipe)
    first = list(everything.moves)
    assert first == [
        ("CLIPTextModel", "gpu:0"),
        ("UNet2DConditionModel", "gpu:0"),
        ("AutoencoderKL", "gpu:0"),
    ]
    images(pipe, seed=1)
    assert everything.moves == first  # all stayed

    # Room for the UNet and the VAE only: the text encoder, least recently used, goes back.
    tight = FakeDevice(capacity=sizes["unet"] + sizes["vae"] + 10)
    policy = mb.ModelOffload("gpu:1", keep_free=0, mover=tight.move, memory=tight.free)
    pipe = mb.Pipeline.from_pretrained(folder, text2img, offload=policy)
    images(pipe)
    assert tight.moves == [
        ("CLIPTextModel", "gpu:1"),
        ("CLIPTextModel", "cpu"),
        ("UNet2DConditionModel", "gpu:1"),
        ("AutoencoderKL", "gpu:1"),
    ]


def test_model_offload_moves_everything_back_when_a_move_fails(folder, expected):
    class Full(FakeDevice):  # no room for the VAE: as CUDA's out-of-memory error
        def move(self, model: Any, device: Any) -> None:
            if type(model).__name__ == "AutoencoderKL" and device != "cpu":
                msg = "out of memory"
                raise RuntimeError(msg)
            super().move(model, device)

    full = Full()
    pipe = mb.Pipeline.from_pretrained(
        folder, text2img, offload=mb.ModelOffload("gpu", mover=full.move)
    )
    with pytest.raises(mb.BlockError, match="out of memory, in a hook around it") as info:
        images(pipe)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.state is not None  # what ran before is kept, to resume from
    assert full.on == {}  # the UNet, moved before the VAE failed, went back
    device = FakeDevice()
    pipe = mb.Pipeline(
        pipe.blocks, components=pipe.components, offload=mb.ModelOffload("gpu", mover=device.move)
    )
    np.testing.assert_array_equal(images(pipe), expected)
    assert device.on == {}


def test_sequential_offload_gives_each_model_diffusers_group_offloading(folder, expected):
    pipe = mb.Pipeline.from_pretrained(folder, text2img, offload="sequential")
    np.testing.assert_array_equal(images(pipe), expected)
    for name in MODELS:
        model = pipe.components[name]
        assert any("_diffusers_hook" in m.__dict__ for m in model.modules()), name


def test_disk_offload_reads_each_layer_group_for_its_forward_only(folder, expected):
    pipe = mb.Pipeline.from_pretrained(folder, text2img, offload="disk")
    policy = pipe.placement
    assert isinstance(policy, mb.DiskOffload)
    np.testing.assert_array_equal(images(pipe), expected)
    total = max(footprint(m)[0] for m in tiny_sd_components(seed=1).values())
    assert 0 < policy.peak < total
    assert policy.held == 0
    assert not any(pipe.components[name].loaded for name in MODELS)
    np.testing.assert_array_equal(images(pipe), expected)


@pytest.mark.slow
def test_disk_offload_of_a_model_with_realistic_shapes(tmp_path):
    """Stable Diffusion 1.5's VAE (84M parameters) decodes from disk a group at a time."""
    from diffusers import AutoencoderKL

    from modblocks.diffusion import decode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
    ).eval()
    mb.Pipeline(decode_latents, components={"vae": vae}).save_pretrained(tmp_path / "vae")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = mb.Pipeline(decode_latents, components={"vae": vae})(
        latents=latents, output="decoded"
    )
    del vae
    policy = mb.DiskOffload("cpu")
    pipe = mb.Pipeline.from_pretrained(tmp_path / "vae", decode_latents, offload=policy)
    torch.testing.assert_close(pipe(latents=latents, output="decoded"), expected, rtol=0, atol=0)
    size = sum(f.stat().st_size for f in (tmp_path / "vae" / "vae").glob("*.safetensors"))
    decoder = size * 0.6  # the encoder is never read: decoding reads the decoder only
    assert policy.peak < decoder / 4
    assert policy.held == 0


def test_offload_takes_a_name_or_a_policy(folder):
    with pytest.raises(mb.WiringError, match=r"`offload` is one of 'model', 'sequential', 'disk'"):
        mb.Pipeline(text2img, components=tiny_sd_components(), offload="gpu")
    pipe = mb.Pipeline(text2img, components=tiny_sd_components(), offload="model")
    assert isinstance(pipe.placement, mb.ModelOffload)
    assert mb.Pipeline(text2img, components=tiny_sd_components()).placement is None


# -- wrapped models --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_image() -> np.ndarray:
    return one_thread(images, mb.Pipeline(text2img, components=tiny_sd_components()))


def test_a_compiled_unet_is_accepted_and_called(plain_image):
    components = tiny_sd_components()
    compiled = torch.compile(components["unet"], backend="eager")
    calls: list[int] = []
    compiled.register_forward_pre_hook(lambda *_: calls.append(1))  # on the wrapper itself
    pipe = mb.Pipeline(text2img, components={**components, "unet": compiled})
    assert pipe.components["unet"] is compiled
    np.testing.assert_array_equal(images(pipe), plain_image)
    assert len(calls) == SMALL["num_inference_steps"]


def test_a_peft_wrapped_unet_is_accepted(plain_image):
    from peft import LoraConfig, get_peft_model

    components = tiny_sd_components()
    wrapped = get_peft_model(components["unet"], LoraConfig(r=2, target_modules=["to_q"]))
    pipe = mb.Pipeline(text2img, components={**components, "unet": wrapped})
    np.testing.assert_array_equal(images(pipe), plain_image)  # LoRA starts at zero


def test_a_wrapped_model_of_the_wrong_class_is_still_rejected():
    components = tiny_sd_components()
    compiled_vae = torch.compile(components["vae"], backend="eager")
    with pytest.raises(mb.WiringError, match=r"`unet` must be .*UNet2DConditionModel"):
        mb.Pipeline(text2img, components={**components, "unet": compiled_vae})


def test_offload_policies_name_one_device_one_way():
    from modblocks._offload import device_key

    # Policies given "cpu" and torch.device("cpu") see each other's models as on one device;
    # "cuda" is the current CUDA device where there is one (as "cuda:0" names it).
    assert device_key("cpu") == device_key(torch.device("cpu")) == "cpu"
    assert device_key("gpu") == "gpu"  # a name torch doesn't know stays as it is
    if torch.cuda.is_available():
        assert device_key("cuda") == device_key(torch.device("cuda", torch.cuda.current_device()))
