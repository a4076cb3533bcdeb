"""`mb.Pipeline`: blocks with their components and configs bound, checked once, ready to call."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest
import torch

import modblocks as mb


@mb.block(output="h")
def embed(
    x: torch.Tensor, proj: mb.Component[torch.nn.Linear], gain: mb.Config[float] = 1.0
) -> torch.Tensor:
    """Project the input."""
    return proj(x) * gain


@mb.block(output="h")
def refine(h: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    """One noisy refinement step."""
    return h * 0.5 + t * torch.randn(h.shape, generator=generator)


@mb.block(output="y")
def head(h: torch.Tensor, norm: mb.Component[torch.nn.LayerNorm]) -> torch.Tensor:
    """Normalise."""
    return norm(h)


model = (embed >> head).named("model")
noisy = (embed >> mb.loop(refine, over="timesteps", name="refine") >> head).named("noisy")


def _components(seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {"proj": torch.nn.Linear(3, 4), "norm": torch.nn.LayerNorm(4)}


def _by_hand(x: torch.Tensor, components: dict[str, torch.nn.Module], gain: float = 1.0):
    with torch.no_grad():
        return components["norm"](components["proj"](x) * gain)


X = torch.arange(6, dtype=torch.float32).reshape(2, 3)


# -- construction checks ---------------------------------------------------------------------


def test_pipeline_exposes_blocks_components_and_configs():
    components = _components()
    pipe = mb.Pipeline(model, components=components, configs={"gain": 2.0})
    assert pipe.blocks is model
    assert dict(pipe.components) == components
    assert dict(pipe.configs) == {"gain": 2.0}
    with pytest.raises(TypeError):
        pipe.components["proj"] = torch.nn.Linear(3, 4)  # type: ignore[index]


def test_pipeline_missing_components_are_all_listed():
    with pytest.raises(mb.MissingInputError, match=r"`proj`, `norm`") as info:
        mb.Pipeline(model)
    assert info.value.names == ("proj", "norm")
    assert info.value.node == "model"
    assert "from_pretrained" in str(info.value)
    with pytest.raises(mb.MissingInputError) as info:
        mb.Pipeline(model, components={"proj": torch.nn.Linear(3, 4)})
    assert info.value.names == ("norm",)


def test_pipeline_component_of_the_wrong_type_is_a_wiring_error():
    with pytest.raises(mb.WiringError, match=r"component `norm` must be .*LayerNorm") as info:
        mb.Pipeline(model, components={**_components(), "norm": torch.nn.Linear(4, 4)})
    assert info.value.name == "norm"
    assert "Linear" in str(info.value)


def test_pipeline_lists_every_component_of_the_wrong_type():
    with pytest.raises(mb.WiringError) as info:
        mb.Pipeline(model, components={"proj": "linear", "norm": 3})
    message = str(info.value)
    assert "`proj`" in message
    assert "`norm`" in message


def test_pipeline_config_of_the_wrong_type_is_a_wiring_error():
    with pytest.raises(mb.WiringError, match=r"config `gain`"):
        mb.Pipeline(model, components=_components(), configs={"gain": "loud"})


def test_pipeline_misspelled_component_is_named_in_the_missing_error():
    components = _components()
    components["prj"] = components.pop("proj")
    with pytest.raises(mb.MissingInputError, match=r"`prj`.*Did you mean `proj`\?") as info:
        mb.Pipeline(model, components=components)
    assert info.value.names == ("proj",)


def test_pipeline_leaves_out_components_its_blocks_do_not_declare():
    # As with a diffusers pipeline's `.components`: a safety checker, unset optional parts.
    given = {**_components(), "safety_checker": torch.nn.Identity(), "image_encoder": None}
    pipe = mb.Pipeline(model, components=given)
    assert sorted(pipe.components) == sorted(_components())
    used = mb.Pipeline(model, components={name: given[name] for name in ("proj", "norm")})
    assert torch.equal(pipe(x=X, output="y"), used(x=X, output="y"))
    with pytest.raises(mb.UnknownInputError, match="safety_checker"):
        pipe.with_components(safety_checker=torch.nn.Identity())  # naming one: must exist


def test_pipeline_unknown_config_name_suggests_the_close_one():
    with pytest.raises(mb.UnknownInputError, match=r"`gian`.*Did you mean `gain`\?") as info:
        mb.Pipeline(model, components=_components(), configs={"gian": 2.0})
    assert info.value.names == ("gian",)


def test_pipeline_rejects_something_that_is_not_a_node():
    with pytest.raises(mb.WiringError, match="runs a node"):
        mb.Pipeline(lambda x: x)  # type: ignore[arg-type]


# -- calling -----------------------------------------------------------------------------------


def test_pipeline_call_output_name_list_or_state():
    components = _components()
    pipe = mb.Pipeline(model, components=components)
    expected = _by_hand(X, components)
    assert torch.allclose(pipe(x=X, output="y"), expected)
    y, h = pipe(x=X, output=["y", "h"])
    assert torch.allclose(y, expected)
    assert h.shape == (2, 4)
    state = pipe(x=X)
    assert isinstance(state, mb.State)
    assert list(state) == ["x", "h", "y"]
    assert pipe(x=X, output=("h",))[0].shape == (2, 4)


def test_pipeline_call_unknown_output_suggests_a_name():
    pipe = mb.Pipeline(model, components=_components())
    with pytest.raises(KeyError, match=r"`yy`.*Did you mean `y`\?"):
        pipe(x=X, output="yy")


def test_pipeline_run_returns_a_state_without_the_components():
    pipe = mb.Pipeline(model, components=_components(), configs={"gain": 3.0})
    state = pipe.run(x=X)
    assert "proj" not in state
    assert "norm" not in state
    assert list(state) == ["gain", "x", "h", "y"]
    assert pipe.run(state, x=X + 1)["x"].equal(X + 1)


def test_pipeline_configs_are_bound_and_changed_with_with_configs():
    components = _components()
    pipe = mb.Pipeline(model, components=components)
    loud = pipe.with_configs(gain=3.0)
    assert dict(pipe.configs) == {}
    assert dict(loud.configs) == {"gain": 3.0}
    expected = components["proj"](X).detach() * 3.0
    assert torch.allclose(loud(x=X, output="h"), expected)
    assert torch.allclose(pipe(x=X, output="h"), expected / 3.0)


def test_pipeline_rejects_a_component_given_per_call():
    pipe = mb.Pipeline(model, components=_components())
    with pytest.raises(mb.UnknownInputError, match=r"`proj` is a component.*with_components"):
        pipe(x=X, proj=torch.nn.Linear(3, 4))


def test_pipeline_rejects_unknown_inputs_with_a_suggestion():
    pipe = mb.Pipeline(model, components=_components())
    with pytest.raises(mb.UnknownInputError, match=r"Did you mean `x`\?"):
        pipe(xx=X)


def test_pipeline_missing_input_is_reported_before_running():
    pipe = mb.Pipeline(model, components=_components())
    with pytest.raises(mb.MissingInputError, match="`x`") as info:
        pipe()
    assert info.value.names == ("x",)


def test_pipeline_error_state_leaves_out_the_components():
    @mb.block(output="y")
    def fail(h: torch.Tensor, norm: mb.Component[torch.nn.LayerNorm]) -> torch.Tensor:
        raise RuntimeError("boom")

    pipe = mb.Pipeline(embed >> fail, components=_components())
    with pytest.raises(mb.BlockError, match="boom") as info:
        pipe(x=X)
    assert info.value.block == "fail"
    assert "h" in info.value.state
    assert "proj" not in info.value.state
    assert "norm" not in info.value.state


def test_pipeline_stream_error_state_leaves_out_the_components():
    @mb.block(output="h")
    def fail_late(h: torch.Tensor, t: int) -> torch.Tensor:
        if t == 2:
            raise ValueError("bad step")
        return h + t

    pipe = mb.Pipeline(
        (embed >> mb.loop(fail_late, over="timesteps", name="denoise")).named("p"),
        components={"proj": torch.nn.Linear(3, 4)},
    )
    with pytest.raises(mb.BlockError, match="bad step") as from_run:
        pipe.run(x=X, timesteps=[1, 2])
    assert "proj" not in from_run.value.state
    with pytest.raises(mb.BlockError, match="bad step") as from_stream:
        list(pipe.stream(x=X, timesteps=[1, 2]))
    assert from_stream.value.path == from_run.value.path == "p > denoise[step 1] > fail_late"
    assert "proj" not in from_stream.value.state


def test_pipeline_resumes_from_an_error_state():
    @mb.block(output="h")
    def strict(h: torch.Tensor, t: int) -> torch.Tensor:
        if t < 0:
            raise ValueError("negative step")
        return h + t

    components = {"proj": torch.nn.Linear(3, 4)}
    pipe = mb.Pipeline(
        (embed >> mb.loop(strict, over="timesteps", name="denoise")).named("p"),
        components=components,
    )
    with pytest.raises(mb.BlockError) as info:
        pipe.run(x=X, timesteps=[1, -2, 3])
    assert info.value.path == "p > denoise[step 1] > strict"
    resumed = pipe.run(info.value.state, resume=info.value.path, timesteps=[1, 2, 3])
    assert "proj" not in resumed
    assert torch.allclose(resumed["h"], pipe(x=X, timesteps=[1, 2, 3], output="h"))


def test_pipeline_cancelled_state_leaves_out_the_components():
    token = mb.CancelToken()
    token.cancel()
    pipe = mb.Pipeline(model, components=_components())
    with pytest.raises(mb.CancelledError) as info:
        pipe.run(x=X, cancel=token)
    assert "proj" not in info.value.state
    assert "norm" not in info.value.state


def test_pipeline_events_and_on_step_pass_through():
    pipe = mb.Pipeline(noisy, components=_components())
    report = mb.Report()
    indices: list[int] = []
    pipe.run(
        x=X,
        timesteps=[2, 1],
        generator=torch.Generator().manual_seed(0),
        events=report,
        on_step=lambda s: indices.append(s.index),
    )
    assert indices == [0, 1]
    assert report.ran[0] == "noisy > embed"
    assert report.ran[-1] == "noisy > head"


def test_pipeline_stream_yields_states_without_components():
    pipe = mb.Pipeline(noisy, components=_components())
    states = list(pipe.stream(x=X, timesteps=[3, 2, 1], generator=torch.Generator().manual_seed(0)))
    assert len(states) == 4
    assert all("proj" not in s and "norm" not in s for s in states)
    assert "y" not in states[0]
    final = pipe.run(x=X, timesteps=[3, 2, 1], generator=torch.Generator().manual_seed(0))
    assert torch.equal(states[-1]["y"], final["y"])
    assert torch.is_inference(states[-1]["y"])


# -- changing components -------------------------------------------------------------------------


def test_pipeline_with_components_returns_a_new_checked_pipeline():
    old = _components(0)
    new_norm = torch.nn.LayerNorm(4)
    with torch.no_grad():
        new_norm.weight.fill_(2.0)
    pipe = mb.Pipeline(model, components=old)
    other = pipe.with_components(norm=new_norm)
    assert other is not pipe
    assert pipe.components["norm"] is old["norm"]
    assert other.components["norm"] is new_norm
    assert other.components["proj"] is old["proj"]
    assert torch.allclose(other(x=X, output="y"), 2 * pipe(x=X, output="y"))
    with pytest.raises(mb.WiringError, match="norm"):
        pipe.with_components(norm="layernorm")
    with pytest.raises(mb.UnknownInputError, match="Did you mean `norm`"):
        pipe.with_components(nrm=new_norm)


def test_pipeline_to_moves_modules_in_place_and_returns_the_pipeline():
    @mb.block(output="label")
    def tag(y: torch.Tensor, suffix: mb.Component[str]) -> str:
        return f"{tuple(y.shape)}{suffix}"

    components = _components()
    pipe = mb.Pipeline(model >> tag, components={**components, "suffix": "!"})
    assert pipe.to("cpu", torch.float64) is pipe
    assert components["proj"].weight.dtype == torch.float64
    assert pipe.components["norm"].weight.dtype == torch.float64
    assert pipe.components["suffix"] == "!"
    y = pipe(x=X.double(), output="y")
    assert y.dtype == torch.float64
    assert pipe.to(dtype=torch.float32)(x=X, output="y").dtype == torch.float32


# -- documentation -------------------------------------------------------------------------------


def test_pipeline_doc_shows_blocks_and_bound_values():
    pipe = mb.Pipeline(model, components=_components(), configs={"gain": 2.5})
    doc = pipe.doc
    assert doc.startswith(model.doc)
    assert "Bound components:" in doc
    assert "proj:" in doc
    assert "Linear" in doc
    assert "norm:" in doc
    assert "Bound configs:" in doc
    assert "gain = 2.5" in doc
    assert "Bound configs:" not in mb.Pipeline(model, components=_components()).doc


def test_pipeline_repr_names_blocks_and_component_types():
    pipe = mb.Pipeline(model, components=_components())
    assert repr(pipe) == "Pipeline(model, components=(proj=Linear, norm=LayerNorm))"


# -- inference mode ------------------------------------------------------------------------------


def test_pipeline_runs_under_inference_mode_by_default():
    seen: list[bool] = []

    @mb.block(output="y")
    def look(h: torch.Tensor) -> torch.Tensor:
        seen.append(torch.is_inference_mode_enabled())
        return h

    pipe = mb.Pipeline(embed >> look, components={"proj": torch.nn.Linear(3, 4)})
    y = pipe(x=X, output="y")
    assert seen == [True]
    assert torch.is_inference(y)
    assert not y.requires_grad
    assert not torch.is_inference_mode_enabled()  # switched off again after the call


def test_pipeline_inference_mode_false_keeps_autograd():
    components = _components()
    pipe = mb.Pipeline(model, components=components, inference_mode=False)
    y = pipe(x=X, output="y")
    assert not torch.is_inference(y)
    assert y.requires_grad
    y.sum().backward()
    assert components["proj"].weight.grad is not None


# -- concurrency ---------------------------------------------------------------------------------


def _call(pipe: mb.Pipeline, k: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(k)
    timesteps = list(range(k % 3 + 1))
    return pipe(x=INPUTS[k], timesteps=timesteps, generator=generator, output="y")


INPUTS = [X + k for k in range(12)]


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_pipeline_from_four_threads_equals_sequential_calls(cached):
    cache = mb.Cache() if cached else None
    pipe = mb.Pipeline(noisy, components=_components(), cache=cache)
    expected = [_call(mb.Pipeline(noisy, components=dict(pipe.components)), k) for k in range(12)]
    barrier = threading.Barrier(4, timeout=10)

    def work(k: int) -> torch.Tensor:
        if k < 4:
            barrier.wait()  # the first four calls start together
        return _call(pipe, k)

    with ThreadPoolExecutor(4) as pool:
        # Rounds one after the other: a second call racing its first could miss the cache.
        first = list(pool.map(work, range(12)))
        second = list(pool.map(_call, [pipe] * 12, range(12)))
    for k, y in enumerate(first + second):
        assert torch.equal(y, expected[k % 12]), k
    if cache is not None:
        assert cache.stats().hits >= 12  # the second round is served


# -- loading and saving --------------------------------------------------------------------------


def _unet_blocks():
    from diffusers import DDIMScheduler, UNet2DModel

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

    return denoise_once


def _tiny_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A pipeline over a tiny UNet and a DDIM scheduler, and the folder it saved itself to."""
    from diffusers import DDIMScheduler

    pipe = mb.Pipeline(
        _unet_blocks(),
        components={"unet": _tiny_unet(), "scheduler": DDIMScheduler(num_train_timesteps=100)},
    )
    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    pipe.save_pretrained(folder, pipeline_class="DDIMPipeline")
    return pipe, folder


NOISE = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)


def test_save_pretrained_writes_a_folder_diffusers_loads(saved):
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    pipe, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.num_train_timesteps == 100
    unet = UNet2DModel.from_pretrained(folder / "unet")
    original = pipe.components["unet"].state_dict()
    assert all(torch.equal(v, original[k]) for k, v in unet.state_dict().items())
    whole = DDIMPipeline.from_pretrained(folder)
    assert isinstance(whole.unet, UNet2DModel)
    assert isinstance(whole.scheduler, DDIMScheduler)


def test_from_pretrained_loads_components_that_give_the_same_outputs(saved):
    pipe, folder = saved
    loaded = mb.Pipeline.from_pretrained(folder, pipe.blocks)
    assert type(loaded.components["unet"]) is type(pipe.components["unet"])
    assert loaded.components["unet"] is not pipe.components["unet"]
    assert loaded.components["scheduler"].config.num_train_timesteps == 100
    expected = pipe(noise=NOISE, timestep=10, output="sample")
    actual = loaded(noise=NOISE, timestep=10, output="sample")
    assert torch.allclose(actual, expected, atol=1e-6)
    assert torch.is_inference(actual)


def test_from_pretrained_torch_dtype_applies_to_models_only(saved):
    pipe, folder = saved
    loaded = mb.Pipeline.from_pretrained(folder, pipe.blocks, torch_dtype=torch.float64)
    assert loaded.components["unet"].dtype == torch.float64
    out = loaded(noise=NOISE.double(), timestep=10, output="sample")
    assert out.dtype == torch.float64
    assert torch.allclose(out.float(), pipe(noise=NOISE, timestep=10, output="sample"), atol=1e-5)


def test_from_pretrained_uses_given_components_as_they_are(saved):
    pipe, folder = saved
    mine = _tiny_unet(seed=1)
    loaded = mb.Pipeline.from_pretrained(folder, pipe.blocks, components={"unet": mine})
    assert loaded.components["unet"] is mine
    assert loaded.components["scheduler"] is not pipe.components["scheduler"]


def test_from_pretrained_without_model_index_says_what_to_do(tmp_path):
    with pytest.raises(mb.ModblocksError, match=r"model_index\.json.*save_pretrained"):
        mb.Pipeline.from_pretrained(tmp_path, _unet_blocks())


def test_from_pretrained_folder_lacking_a_component_lists_it(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDIMPipeline"}))
    with pytest.raises(mb.MissingInputError, match=r"`unet`, `scheduler`") as info:
        mb.Pipeline.from_pretrained(tmp_path, _unet_blocks())
    assert info.value.names == ("unet", "scheduler")


def test_save_pretrained_rejects_components_without_save_pretrained(tmp_path):
    @mb.block(output="y")
    def use(x: int, tag: mb.Component[str]) -> str:
        return f"{x}{tag}"

    pipe = mb.Pipeline(use, components={"tag": "!"})
    with pytest.raises(mb.ModblocksError, match=r"`tag`.*save_pretrained"):
        pipe.save_pretrained(tmp_path / "out")


def test_configs_round_trip_through_model_index_json(tmp_path):
    @mb.block(output="scaled")
    def scale(x: float, factor: mb.Config[float] = 1.0, clip: mb.Config[bool] = False) -> float:
        return min(x * factor, 1.0) if clip else x * factor

    folder = tmp_path / "pipe"
    mb.Pipeline(scale, configs={"factor": 3.0}).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["factor"] == 3.0
    assert "clip" not in index  # left at its default: not written

    loaded = mb.Pipeline.from_pretrained(folder, scale)
    assert dict(loaded.configs) == {"factor": 3.0}
    assert loaded(x=0.5, output="scaled") == 1.5
    overridden = mb.Pipeline.from_pretrained(folder, scale, configs={"clip": True})
    assert dict(overridden.configs) == {"factor": 3.0, "clip": True}
    assert overridden(x=0.5, output="scaled") == 1.0


def test_from_pretrained_loads_a_weights_variant(tmp_path):
    """A folder with only `*.fp16.safetensors` weights loads with `variant="fp16"`."""
    from diffusers import DDIMScheduler

    unet = _tiny_unet().half()
    folder = tmp_path / "fp16"
    unet.save_pretrained(folder / "unet", variant="fp16")
    DDIMScheduler(num_train_timesteps=100).save_pretrained(folder / "scheduler")
    index = {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    assert sorted(p.name for p in (folder / "unet").glob("*.safetensors")) == [
        "diffusion_pytorch_model.fp16.safetensors"
    ]

    loaded = mb.Pipeline.from_pretrained(
        folder, _unet_blocks(), variant="fp16", torch_dtype=torch.float16
    )
    assert loaded.components["unet"].dtype == torch.float16
    original = unet.state_dict()
    assert all(
        torch.equal(v, original[k]) for k, v in loaded.components["unet"].state_dict().items()
    )


def test_pipeline_output_names_are_checked_before_anything_runs():
    ran: list[str] = []

    @mb.block(output="y")
    def slow(x: int) -> int:
        ran.append("slow")
        return x + 1

    pipe = mb.Pipeline(slow)
    with pytest.raises(mb.UnknownOutputError, match="produces no value `images`") as info:
        pipe(x=1, output="images")
    assert isinstance(info.value, KeyError)
    with pytest.raises(mb.UnknownOutputError, match="`imgs`"):
        pipe(x=1, output=["y", "imgs"])
    with pytest.raises(mb.UnknownOutputError, match="a string, a list of strings or None"):
        pipe(x=1, output=3)  # type: ignore[call-overload]
    with pytest.raises(mb.UnknownOutputError, match="Did you mean `y`"):
        pipe(x=1, output="yy")
    assert ran == []
    assert pipe(x=1, output="y") == 2
    assert pipe(x=1, output="x") == 1  # inputs are in the final state too


def test_pipeline_output_a_branch_did_not_make_keeps_the_state():
    @mb.block(output="y")
    def make(x: int) -> int:
        return x

    @mb.block(output="z")
    def other(x: int) -> int:
        return -x

    pipe = mb.Pipeline(mb.switch({"flag": make}, default=other))
    with pytest.raises(mb.UnknownOutputError, match="produced no value `y`") as info:
        pipe(x=1, output="y")
    assert info.value.state["z"] == -1  # the run's result is not lost


def test_pipeline_refuses_blocks_reading_an_input_called_output():
    @mb.block(output="y")
    def h(output: int) -> int:
        return output

    with pytest.raises(mb.WiringError, match="input called `output`"):
        mb.Pipeline(h)
    assert mb.Pipeline(h.rename(output="out"))(out=3, output="y") == 3


def test_pipeline_resume_keeps_the_runs_own_copy_of_a_component():
    @mb.block
    def prepare(counter: mb.Component[list[int]]) -> PreparedCounter:
        return PreparedCounter([*counter, 0])

    fail = [True]

    @mb.block(output="total")
    def use(counter: list[int]) -> int:
        if fail[0]:
            raise RuntimeError("flaky")
        return len(counter)

    pipe = mb.Pipeline(prepare >> use, components={"counter": [1, 2]})
    with pytest.raises(mb.BlockError) as info:
        pipe()
    # The run's copy stays in the error's state (the bound one is stripped).
    assert info.value.state["counter"] == [1, 2, 0]
    fail[0] = False
    assert pipe.run(info.value.state, resume=info.value.path)["total"] == 3
    # Results hold what the run made under the name, never the bound component itself.
    assert pipe()["counter"] == [1, 2, 0]


class PreparedCounter(NamedTuple):
    counter: list[int]


def test_pipeline_refuses_none_for_a_required_component():
    with pytest.raises(mb.WiringError, match=r"component `proj` must be torch.nn.Linear, got None"):
        mb.Pipeline(model, components={**_components(), "proj": None})
    # An optional component whose default is None may be None.

    @mb.block(output="y")
    def maybe_scale(
        x: torch.Tensor, scale: mb.Component[torch.nn.Linear | None] = None
    ) -> torch.Tensor:
        return x if scale is None else scale(x)

    assert mb.Pipeline(maybe_scale, components={"scale": None})(x=X, output="y") is X
