"""`mb.switch`: run one branch chosen at run time (diffusers' AutoPipelineBlocks)."""

import pickle
from typing import Any

import pytest
import torch

import modblocks as mb
from modblocks.exceptions import BlockError, MissingInputError, UnknownInputError, WiringError


@mb.block(output="latents")
def inpaint(mask_image: Any, image: Any, strength: float = 0.3) -> str:
    """Prepare latents for inpainting."""
    return f"inpaint {mask_image} {image} {strength}"


@mb.block(output="latents")
def img2img(image: Any, strength: float = 0.8) -> str:
    """Prepare latents from an image."""
    return f"img2img {image} {strength}"


@mb.block(output="latents")
def text2img(prompt: str) -> str:
    """Prepare latents from noise."""
    return f"text2img {prompt}"


auto = mb.switch({"mask_image": inpaint, "image": img2img}, default=text2img, name="auto")


def choose_mode(mode: str | None = None, strength: float | None = None) -> str | None:
    """Pick a branch by name (module level, so the switch pickles)."""
    if mode is not None:
        return mode
    return "img2img" if strength is not None else None


def test_switch_is_a_node():
    assert isinstance(auto, mb.Switch)
    assert isinstance(auto, mb.Node)
    assert auto.name == "auto"


def test_switch_first_present_trigger_wins():
    assert auto.run(prompt="p", image="i")["latents"] == "img2img i 0.8"
    assert auto.run(prompt="p", image="i", mask_image="m")["latents"] == "inpaint m i 0.3"
    # Order of the branches, not of the keyword arguments, decides.
    assert auto.run(mask_image="m", image="i")["latents"] == "inpaint m i 0.3"


def test_switch_default_when_no_trigger():
    assert auto.run(prompt="p")["latents"] == "text2img p"


@pytest.mark.parametrize("value", [0, False, "", [], 0.0, torch.zeros(0)], ids=repr)
def test_switch_falsy_trigger_counts_as_given(value):
    final = auto.run(prompt="p", image=value)
    assert final["latents"].startswith("img2img")


def test_switch_none_trigger_counts_as_absent():
    assert auto.run(prompt="p", image=None)["latents"] == "text2img p"
    assert auto.run(prompt="p", image=None, mask_image=None)["latents"] == "text2img p"


def test_switch_tensor_trigger_is_not_tested_for_truth():
    image = torch.ones(2, 2)
    assert auto.run(image=image)["latents"].startswith("img2img")


def test_switch_without_default_is_skipped():
    sw = mb.switch({"mask_image": inpaint, "image": img2img}, name="maybe")
    final = sw.run(mb.State(other=1))
    assert dict(final) == {"other": 1}
    assert dict(sw.run()) == {}
    assert sw.run(image="i")["latents"] == "img2img i 0.8"


def test_switch_skipped_in_a_sequence_passes_state_through():
    @mb.block(output="prompt")
    def clean(raw: str) -> str:
        return raw.strip()

    @mb.block(output="n")
    def count(prompt: str) -> int:
        return len(prompt)

    sw = mb.switch({"image": img2img})
    seq = clean >> sw >> count
    final = seq.run(raw=" cat ")
    assert dict(final) == {"raw": " cat ", "prompt": "cat", "n": 3}


def test_switch_triggers_produced_by_earlier_blocks():
    @mb.block(output="mask_image")
    def make_mask(want_mask: bool, image: Any) -> str | None:
        return f"mask of {image}" if want_mask else None

    seq = make_mask >> auto
    assert [s.name for s in seq.inputs][:2] == ["want_mask", "image"]
    assert seq.run(want_mask=True, image="i")["latents"] == "inpaint mask of i i 0.3"
    assert seq.run(want_mask=False, image="i")["latents"] == "img2img i 0.8"


def test_switch_inputs_and_outputs():
    names = {s.name: s for s in auto.inputs}
    assert set(names) == {"mask_image", "image", "strength", "prompt"}
    # No input is needed by every branch, so none is required.
    assert not any(s.required for s in auto.inputs)
    assert [s.name for s in auto.outputs] == ["latents"]


def test_switch_input_required_when_every_branch_requires_it_and_default():
    @mb.block(output="out")
    def a(prompt: str, x: int) -> str:
        return "a"

    @mb.block(output="out")
    def b(prompt: str, y: int = 0) -> str:
        return "b"

    with_default = mb.switch({"x": a}, default=b)
    assert {s.name: s.required for s in with_default.inputs} == {
        "prompt": True,
        "x": False,
        "y": False,
    }
    with pytest.raises(MissingInputError) as info:
        with_default.run(x=1)
    assert info.value.names == ("prompt",)
    without_default = mb.switch({"x": a, "y": b})
    assert not any(s.required for s in without_default.inputs)


def test_switch_per_branch_defaults_do_not_leak():
    assert auto.run(image="i")["latents"] == "img2img i 0.8"
    assert auto.run(image="i", mask_image="m")["latents"] == "inpaint m i 0.3"
    assert auto.run(image="i", strength=0.5)["latents"] == "img2img i 0.5"


def test_switch_chosen_branch_missing_input_names_the_branch():
    with pytest.raises(MissingInputError, match=r"`inpaint`.*`image`") as info:
        auto.run(mask_image="m")
    err = info.value
    assert err.names == ("image",)
    assert err.node == "inpaint"
    assert "auto" in err.path
    assert "inpaint" in err.path


def test_switch_missing_input_raised_before_the_branch_runs():
    calls = []

    @mb.block(output="out")
    def needs_two(flag: bool, other: int) -> int:
        calls.append(flag)
        return other

    sw = mb.switch({"flag": needs_two})
    with pytest.raises(MissingInputError):
        sw.run(flag=True)
    assert calls == []


def test_switch_unknown_input():
    with pytest.raises(UnknownInputError, match=r"Did you mean `prompt`"):
        auto.run(promt="p")


def test_switch_block_error_path():
    @mb.block(output="prepared")
    def prepare(mask_image: Any) -> str:
        raise ValueError("bad mask")

    @mb.block(output="latents")
    def finish(prepared: str) -> str:
        return prepared

    inpaint_seq = (prepare >> finish).named("inpaint")
    sw = mb.switch({"mask_image": inpaint_seq}, default=text2img, name="auto")
    with pytest.raises(BlockError) as info:
        sw.run(mask_image="m", prompt="p")
    err = info.value
    assert err.path == "auto > inpaint > prepare"
    assert isinstance(err.__cause__, ValueError)
    assert dict(err.state) == {"mask_image": "m", "prompt": "p"}


def test_switch_block_error_path_inside_a_sequence():
    @mb.block(output="latents")
    def broken(image: Any) -> str:
        raise RuntimeError("no")

    sw = mb.switch({"image": broken}, default=text2img, name="auto")

    @mb.block(output="prompt")
    def make_prompt(raw: str) -> str:
        return raw

    seq = (make_prompt >> sw).named("pipe")
    with pytest.raises(BlockError) as info:
        seq.run(raw="r", image="i")
    assert info.value.path == "pipe > auto > broken"
    assert dict(info.value.state) == {"raw": "r", "image": "i", "prompt": "r"}


def test_switch_path_has_no_brackets_around_the_branch():
    @mb.block(output="prepared")
    def a(x: int) -> int:
        return x

    @mb.block(output="latents")
    def boom(prepared: int) -> int:
        raise ValueError("boom")

    pipe = (a >> mb.switch({"x": boom}, name="choose")).named("pipe")
    with pytest.raises(BlockError) as info:
        pipe.run(x=1)
    assert info.value.path == "pipe > choose > boom"
    assert info.value.block == "boom"
    assert "(at `pipe > choose > boom`)" in str(info.value)


@pytest.mark.parametrize("by", ["trigger", "select"])
def test_switch_path_through_a_named_sequence_branch(by):
    @mb.block(output="prepared")
    def prepare(image: Any) -> str:
        return f"prepared {image}"

    broken = [True]

    @mb.block(output="latents")
    def boom(prepared: str) -> str:
        if broken[0]:
            raise RuntimeError("boom")
        return f"latents from {prepared}"

    branch = (prepare >> boom).named("branchname")
    if by == "trigger":
        sw = mb.switch({"image": branch}, default=text2img, name="sw")
    else:
        sw = mb.switch(
            select=lambda image=None: None if image is None else "branchname",
            branches={"branchname": branch},
            default=text2img,
            name="sw",
        )

    @mb.block(output="image")
    def load(raw: str) -> str:
        return raw

    outer = (load >> sw).named("outer")
    with pytest.raises(BlockError) as info:
        outer.run(raw="r")
    err = info.value
    assert err.path == "outer > sw > branchname > boom"
    assert err.block == "boom"
    assert dict(err.state) == {"raw": "r", "image": "r", "prepared": "prepared r"}
    # The same path with events, cancellation or a cache (the block-by-block path).
    events: list[mb.Event] = []
    with pytest.raises(BlockError) as info:
        outer.run(raw="r", events=events.append)
    assert info.value.path == "outer > sw > branchname > boom"
    assert [e.path for e in events if e.kind == "started"] == [
        "outer > load",
        "outer > sw > branchname > prepare",
        "outer > sw > branchname > boom",
    ]
    # The path resumes the run, at the switch (which chooses again).
    broken[0] = False
    final = outer.run(err.state, resume=err.path)
    assert final["latents"] == "latents from prepared r"

    sw = mb.switch({"inpaint": inpaint, "img2img": img2img}, select=choose_mode, default=text2img)
    assert sw.run(mode="inpaint", mask_image="m", image="i")["latents"] == "inpaint m i 0.3"
    assert sw.run(mode="img2img", image="i")["latents"] == "img2img i 0.8"
    # A parameter absent from the state gets its default (here None for both).
    assert sw.run(prompt="p")["latents"] == "text2img p"
    assert sw.run(image="i", strength=0.1)["latents"] == "img2img i 0.1"


@pytest.mark.parametrize("default", [None, text2img], ids=["no_default", "default"])
def test_switch_branches_by_keyword_or_position(default):
    branches = {"inpaint": inpaint, "img2img": img2img}
    by_keyword = mb.switch(select=choose_mode, branches=branches, default=default)
    by_position = mb.switch(branches, select=choose_mode, default=default)
    for sw in (by_keyword, by_position):
        assert isinstance(sw, mb.Switch)
        assert sw.branches == (("inpaint", inpaint), ("img2img", img2img))
        assert sw.default is default
        assert sw.run(mode="img2img", image="i")["latents"] == "img2img i 0.8"
        assert sw.resolve(mode="inpaint") is inpaint
        if default is None:
            assert dict(sw.run(mb.State(prompt="p"))) == {"prompt": "p"}
        else:
            assert sw.run(prompt="p")["latents"] == "text2img p"


@pytest.mark.parametrize("default", [None, text2img], ids=["no_default", "default"])
def test_switch_trigger_branches_by_keyword_or_position(default):
    triggers = {"mask_image": inpaint, "image": img2img}
    by_keyword = mb.switch(branches=triggers, default=default, name="auto")
    by_position = mb.switch(triggers, default=default, name="auto")
    for sw in (by_keyword, by_position):
        assert sw.triggers == ("mask_image", "image")
        assert sw.run(image="i", mask_image="m")["latents"] == "inpaint m i 0.3"
        assert sw.resolve() is default


def test_switch_select_parameters_are_inputs():
    sw = mb.switch({"img2img": img2img}, select=choose_mode)
    names = [s.name for s in sw.inputs]
    assert "mode" in names
    assert "strength" in names
    assert not any(s.required for s in sw.inputs)


def test_switch_select_parameter_without_default_gets_none():
    seen = []

    def select(flag):
        seen.append(flag)
        return "img2img" if flag else None

    sw = mb.switch({"img2img": img2img}, select=select)
    assert dict(sw.run()) == {}
    assert seen == [None]
    assert sw.run(flag=True, image="i")["latents"] == "img2img i 0.8"


def test_switch_select_reads_values_produced_earlier():
    @mb.block(output="mode")
    def decide(n: int) -> str:
        return "img2img" if n > 0 else "inpaint"

    sw = mb.switch({"inpaint": inpaint, "img2img": img2img}, select=choose_mode)
    seq = decide >> sw
    assert seq.run(n=1, image="i")["latents"] == "img2img i 0.8"
    assert seq.run(n=0, image="i", mask_image="m")["latents"] == "inpaint m i 0.3"


def test_switch_select_returning_unknown_branch_is_an_error():
    def select(mode=None):
        return "nope"

    sw = mb.switch({"img2img": img2img}, select=select, name="chooser")
    with pytest.raises(mb.ModblocksError, match=r"nope"):
        sw.run(image="i")


def test_switch_resolve():
    assert auto.resolve(image="i") is img2img
    assert auto.resolve(mask_image="m", image="i") is inpaint
    assert auto.resolve() is text2img
    assert auto.resolve(image=None) is text2img
    sw = mb.switch({"image": img2img})
    assert sw.resolve() is None
    assert "img2img" in auto.resolve(image="i").doc


def test_switch_resolve_select():
    sw = mb.switch({"inpaint": inpaint, "img2img": img2img}, select=choose_mode)
    assert sw.resolve(mode="inpaint") is inpaint
    assert sw.resolve() is None


def test_switch_resolve_in_a_sequence():
    @mb.block(output="image_latents")
    def decode(latents: str) -> str:
        return latents

    seq = (auto >> decode).named("pipe")
    resolved = seq.resolve(image="i")
    assert isinstance(resolved, mb.Sequential)
    # The switch is replaced by the branch that would run, under the branch's own name.
    assert resolved.names == ("img2img", "decode")
    assert resolved[0] is img2img
    text = resolved.doc
    assert "image" in text
    assert "mask_image" not in text
    assert seq.resolve(prompt="p")[0] is text2img
    assert seq.names == ("auto", "decode")  # resolving leaves the sequence as it was


def test_switch_resolve_uses_values_produced_earlier():
    @mb.block(output="mask_image")
    def make_mask(image: Any) -> Any:
        return image

    seq = make_mask >> auto
    resolved = seq.resolve(image="i")
    assert resolved[1].__wrapped__ is inpaint.__wrapped__


def test_switch_sequence_branches_and_outputs_of_some_branches():
    @mb.block(output="extra")
    def more(image: Any) -> str:
        return "more"

    sw = mb.switch({"image": img2img >> more}, default=text2img)
    assert [s.name for s in sw.outputs] == ["latents", "extra"]
    assert "extra" not in sw.run(prompt="p")
    assert sw.run(image="i")["extra"] == "more"


def test_switch_output_of_some_branches_read_later_is_not_required_input():
    @mb.block(output="extra")
    def more(image: Any) -> str:
        return "more"

    @mb.block(output="done")
    def use(extra: str = "none") -> str:
        return extra

    seq = mb.switch({"image": more}) >> use
    assert seq.run()["done"] == "none"
    assert seq.run(image="i")["done"] == "more"


def test_switch_rejects_non_nodes():
    with pytest.raises(WiringError):
        mb.switch({"image": len})  # type: ignore[dict-item]


def test_switch_pickles_by_value():
    triggered = mb.switch({"mask_image": inpaint, "image": img2img}, default=text2img)
    sw = mb.switch({"inpaint": inpaint, "img2img": img2img}, select=choose_mode, default=text2img)
    for node, inputs in ((triggered, {}), (sw, {"mode": "img2img"})):
        clone = pickle.loads(pickle.dumps(node))
        assert clone is not node
        assert clone.run(image="i", **inputs)["latents"] == "img2img i 0.8"


def test_switch_pickles_after_it_has_run():
    auto.run(image="i")
    clone = pickle.loads(pickle.dumps(auto))
    assert clone.run(image="i")["latents"] == "img2img i 0.8"


def test_switch_doc_describes_the_rule():
    text = auto.doc
    assert text.startswith("auto")
    assert "`mask_image`" in text
    assert "inpaint" in text
    assert "img2img" in text
    assert "text2img" in text


# -- components and configs shared by the branches ----------------------------------------------


class Vae:
    pass


class TinyVae(Vae):
    pass


class Unet:
    pass


@mb.block(output="out")
def uses_vae(x: Any, m: mb.Component[Vae]) -> str:
    return "vae"


@mb.block(output="out")
def uses_unet(y: Any, m: mb.Component[Unet]) -> str:
    return "unet"


def test_switch_component_type_conflict_with_the_default():
    with pytest.raises(
        WiringError, match=r"component `m` is declared with incompatible types"
    ) as info:
        mb.switch({"x": uses_vae}, default=uses_unet)
    err = info.value
    assert (err.name, err.producer, err.consumer) == ("m", "uses_vae", "uses_unet")
    text = str(err)
    assert "Vae" in text
    assert "Unet" in text
    assert ".rename(" in text
    # The same message as a sequence of the same two blocks gives.
    with pytest.raises(WiringError) as in_sequence:
        uses_vae >> uses_unet
    assert str(in_sequence.value) == text


def test_switch_component_type_conflict_between_branches():
    with pytest.raises(WiringError, match=r"`m`") as info:
        mb.switch({"x": uses_vae, "y": uses_unet}, name="pick")
    assert (info.value.producer, info.value.consumer) == ("uses_vae", "uses_unet")
    with pytest.raises(WiringError, match=r"`m`") as info:
        mb.switch({"a": uses_vae, "b": uses_unet}, select=lambda mode=None: mode)
    # With `select`, the branches are called by their keys.
    assert (info.value.producer, info.value.consumer) == ("a", "b")


def test_switch_component_type_conflict_inside_a_sequence_branch():
    @mb.block(output="x")
    def load(raw: Any) -> Any:
        return raw

    branch = (load >> uses_vae).named("vae_branch")
    with pytest.raises(WiringError, match=r"`m`") as info:
        mb.switch({"raw": branch}, default=uses_unet)
    assert (info.value.producer, info.value.consumer) == ("vae_branch", "uses_unet")


def test_switch_config_type_conflict():
    @mb.block(output="out")
    def a(x: Any, scale: mb.Config[float] = 1.0) -> str:
        return "a"

    @mb.block(output="out")
    def b(scale: mb.Config[str] = "big") -> str:
        return "b"

    with pytest.raises(WiringError, match=r"config `scale`") as info:
        mb.switch({"x": a}, default=b)
    assert (info.value.name, info.value.producer, info.value.consumer) == ("scale", "a", "b")


def test_switch_component_and_config_of_one_name_conflict():
    @mb.block(output="out")
    def a(x: Any, scale: mb.Component[float]) -> str:
        return "a"

    @mb.block(output="out")
    def b(scale: mb.Config[float] = 1.0) -> str:
        return "b"

    with pytest.raises(WiringError, match=r"`scale`") as info:
        mb.switch({"x": a}, default=b)
    assert (info.value.producer, info.value.consumer) == ("a", "b")


def test_switch_component_with_compatible_types():
    @mb.block(output="out")
    def tiny(x: Any, m: mb.Component[TinyVae]) -> str:
        return "tiny"

    @mb.block(output="out")
    def same(y: Any, m: mb.Component[Vae]) -> str:
        return "same"

    for node in (
        mb.switch({"x": uses_vae}, default=tiny),
        mb.switch({"x": tiny}, default=uses_vae),
        mb.switch({"x": uses_vae, "y": same}),
    ):
        assert [s.name for s in node.components] == ["m"]
    sw = mb.switch({"x": tiny}, default=same)
    assert sw.run(x=1, m=TinyVae())["out"] == "tiny"
    assert sw.run(y=1, m=Vae())["out"] == "same"


def test_switch_arguments_are_checked_when_built():
    @mb.block(output="y")
    def inc(y: int) -> int:
        return y + 1

    with pytest.raises(mb.WiringError, match="`branches` maps trigger inputs"):
        mb.switch(None)  # type: ignore[arg-type]
    with pytest.raises(mb.WiringError, match="`select` must be a function"):
        mb.switch(select=3, branches={"a": inc})  # type: ignore[arg-type]
    with pytest.raises(mb.WiringError, match="`default` is 3, not a node"):
        mb.switch({"a": inc}, default=3)  # type: ignore[arg-type]
    with pytest.raises(mb.WiringError, match="branch key 1"):
        mb.switch({1: inc})  # type: ignore[dict-item]
