"""Editing by path (`node[path]`, `replace`, `insert`, `remove`) through every kind of node.

Every edit returns a new node; the old one is unchanged, and every other setting (names, loop
progress and callbacks, switch triggers and defaults) is kept.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

import modblocks as mb


@mb.block(output="latents")
def scale(latents: float, t: int) -> float:
    return latents * 2


@mb.block(output="noise")
def predict(latents: float, t: int) -> float:
    return latents + t


@mb.block(output="latents")
def step(latents: float, noise: float) -> float:
    return latents - 0.5 * noise


@mb.block(output="latents")
def clamp(latents: float) -> float:
    return max(-3.0, min(3.0, latents))


@mb.block(output="latents")
def prepare(seed: int) -> float:
    return float(seed)


@mb.block(output="images")
def decode(latents: float) -> str:
    return f"{latents:.3f}"


def _on_step(s: mb.Step) -> None:
    del s


denoise = mb.loop(
    scale >> predict >> step, over="timesteps", name="denoise", progress=False, on_step=_on_step
)
text2img = (prepare >> denoise >> decode).named("text2img")
img2img = (prepare.rename(seed="image") >> denoise >> decode).named("img2img")
auto = mb.switch({"image": img2img}, default=text2img, name="auto")


def test_getitem_reaches_through_switches_named_sequences_and_loops():
    assert auto["text2img > denoise > step"] is step
    assert auto["text2img"]["denoise"]["predict"] is predict
    assert auto["img2img > denoise"] is denoise
    # `err.path` works as it is: loop steps are ignored, the root's own name may lead.
    assert auto["auto > text2img > denoise[step 3] > step"] is step
    assert text2img[0] is prepare
    assert denoise.names == ("scale", "predict", "step")
    assert auto.names == ("img2img", "text2img")


def test_getitem_names_what_is_there_when_the_path_is_wrong():
    with pytest.raises(mb.PathError, match="Did you mean `denoise`") as info:
        auto["text2img > denose > step"]
    assert isinstance(info.value, KeyError)
    assert "`prepare`, `denoise`, `decode`" in str(info.value)
    with pytest.raises(mb.PathError, match="`step` is a block"):
        auto["text2img > denoise > step > inner"]


def test_insert_after_a_block_inside_a_loop_is_one_line():
    edited = auto.insert(clamp, after="text2img > denoise > step")
    assert edited["text2img > denoise"].names == ("scale", "predict", "step", "clamp")
    # Only that branch changed; the original is untouched.
    assert edited["img2img > denoise"].names == ("scale", "predict", "step")
    assert auto["text2img > denoise"].names == ("scale", "predict", "step")
    # Every other setting is kept.
    loop = edited["text2img > denoise"]
    assert isinstance(loop, mb.Loop)
    assert (loop.name, loop.over, loop.progress, loop.on_step) == (
        "denoise",
        "timesteps",
        False,
        _on_step,
    )
    assert isinstance(edited, mb.Switch)
    assert (edited.name, edited.triggers) == ("auto", ("image",))
    # And it runs with the clamp: the same as building the loop by hand.
    by_hand = (
        prepare
        >> mb.loop(scale >> predict >> step >> clamp, over="timesteps", progress=False)
        >> decode
    )
    inputs = {"seed": 1, "timesteps": [5, 4, 3]}
    assert edited(**inputs)["images"] == by_hand(**inputs)["images"]
    assert edited(**inputs)["images"] != auto(**inputs)["images"]


def test_insert_before_and_remove_inside_a_loop():
    edited = denoise.insert(clamp, before="predict")
    assert edited.names == ("scale", "clamp", "predict", "step")
    assert edited.remove("clamp").names == denoise.names
    assert isinstance(edited, mb.Loop)
    assert denoise.insert(clamp).names == ("scale", "predict", "step", "clamp")


def test_insert_next_to_a_loop_body_or_a_branch_that_is_one_block():
    lp = mb.loop(step, over="timesteps", progress=False, name="lp")
    assert lp.insert(clamp, after="step").names == ("step", "clamp")
    sw = mb.switch({"image": step}, default=clamp, name="sw")
    edited = sw.insert(prepare, before="step")
    assert edited["step"].names == ("prepare", "step")
    assert edited.names == ("step", "clamp")
    # A branch that is a named sequence gets the node at its start or end.
    assert auto.insert(clamp, after="text2img")["text2img"].names == (
        "prepare",
        "denoise",
        "decode",
        "clamp",
    )


def test_replace_keeps_the_name_and_the_settings():
    @mb.block(output="latents")
    def ddim_step(latents: float, noise: float) -> float:
        return latents - noise

    edited = auto.replace("text2img > denoise > step", ddim_step)
    assert edited["text2img > denoise"].names == ("scale", "predict", "step")
    assert edited["text2img > denoise > step"].fn is ddim_step.fn
    # A whole branch, and the default, by name.
    replaced = auto.replace("text2img", (prepare >> decode).named("other"))
    assert replaced.names == ("img2img", "text2img")
    assert replaced["text2img"].names == ("prepare", "decode")


def test_remove_a_branch_or_the_default():
    assert auto.remove("img2img").names == ("text2img",)
    without_default = auto.remove("text2img")
    assert isinstance(without_default, mb.Switch)
    assert without_default.default is None
    assert without_default.names == ("img2img",)


def test_edits_that_cannot_work_say_why():
    with pytest.raises(mb.WiringError, match="only sub-block"):
        mb.Sequential([prepare]).remove("prepare")
    with pytest.raises(mb.WiringError, match="body of loop `lp`"):
        mb.loop(step, over="timesteps", name="lp").remove("step")
    with pytest.raises(mb.WiringError, match="not both"):
        denoise.insert(clamp, before="scale", after="step")
    with pytest.raises(mb.WiringError, match="already has one"):
        text2img.insert(clamp, after="prepare", name="decode")
    with pytest.raises(mb.WiringError, match="not a sequence"):
        auto.insert(clamp)
    with pytest.raises(mb.PathError):
        denoise.replace("nope", clamp)


def test_edits_are_wired_and_type_checked_again():
    class Label(NamedTuple):
        latents: str

    @mb.block
    def as_text(latents: float) -> Label:
        return Label(str(latents))

    with pytest.raises(mb.WiringError, match="can't feed value `latents`"):
        text2img.insert(as_text, after="prepare")
