"""Blocks under ``from __future__ import annotations``: every annotation is a string.

Names defined inside a test function (NamedTuples, component classes) must still resolve,
because the decorator reads the locals of the scope it runs in (DESIGN §1).
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import pytest
import torch
from typing_extensions import Doc

import modblocks as mb


class ModuleOut(NamedTuple):
    value: Annotated[int, Doc("a module-level output")]


@mb.block
def module_level(x: Annotated[int, Doc("the input")]) -> ModuleOut:
    return ModuleOut(x)


def test_future_module_level_namedtuple_resolves():
    assert module_level.inputs[0].type is int
    assert module_level.inputs[0].description == "the input"
    assert (module_level.outputs[0].type, module_level.outputs[0].description) == (
        int,
        "a module-level output",
    )


def test_future_local_namedtuple_resolves_bare_decorator():
    class Out(NamedTuple):
        latents: Annotated[torch.Tensor, Doc("the latents")]
        count: int

    @mb.block
    def make(n: int) -> Out:
        return Out(torch.zeros(n), n)

    assert [(s.name, s.type, s.description) for s in make.outputs] == [
        ("latents", torch.Tensor, "the latents"),
        ("count", int, ""),
    ]
    state = make.run(n=2)
    assert state["count"] == 2
    assert state["latents"].shape == (2,)


def test_future_local_namedtuple_resolves_called_decorator():
    class Out(NamedTuple):
        y: float

    @mb.block(name="named")
    def f(x: float) -> Out:
        return Out(x)

    assert f.name == "named"
    assert f.outputs[0].type is float
    assert f.inputs[0].type is float


def test_future_local_component_class_resolves():
    class Vae:
        pass

    class Out(NamedTuple):
        z: int

    @mb.block
    def encode(vae: mb.Component[Vae], scale: mb.Config[float] = 0.5) -> Out:
        return Out(1)

    assert encode.inputs == ()
    assert encode.components[0].type is Vae
    assert (encode.configs[0].type, encode.configs[0].default) == (float, 0.5)


def test_future_local_types_check_when_composing():
    class Image:
        pass

    class Produced(NamedTuple):
        image: Image

    class Consumed(NamedTuple):
        done: bool

    @mb.block
    def load(path: str) -> Produced:
        return Produced(Image())

    @mb.block
    def save(image: str) -> Consumed:
        return Consumed(True)

    with pytest.raises(mb.WiringError) as info:
        load >> save
    assert info.value.name == "image"
    assert "Image" in str(info.value)


def test_future_nested_function_scope_resolves():
    """A NamedTuple from an enclosing function, used in a nested one (closure variable)."""

    class Out(NamedTuple):
        y: int

    def build() -> mb.Block[..., Out]:
        @mb.block
        def inner(x: int) -> Out:
            return Out(x + 1)

        return inner

    blk = build()
    assert blk.outputs[0].name == "y"
    assert blk.run(x=1)["y"] == 2
