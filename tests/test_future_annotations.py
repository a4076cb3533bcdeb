"""Blocks under ``from __future__ import annotations``: every annotation is a string.

Names defined inside a test function (NamedTuples, component classes) must still resolve,
because the decorator reads the locals of the scope it runs in (DESIGN §1).
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

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


def test_future_component_of_a_type_known_only_to_type_checkers_is_still_a_component():
    # `if TYPE_CHECKING: from diffusers import AutoencoderKL` leaves the name undefined at
    # run time; the marker around it must still make `vae` a component.
    @mb.block(output="y")
    def decode(
        x: int,
        vae: mb.Component[AutoencoderKLOnlyForTypeCheckers],  # noqa: F821
        scale: mb.Config[UndefinedFloat] = 1.0,  # noqa: F821
    ) -> int:
        return x

    assert [s.name for s in decode.inputs] == ["x"]
    assert [(s.name, s.type) for s in decode.components] == [("vae", Any)]
    assert [(s.name, s.default) for s in decode.configs] == [("scale", 1.0)]
    pipe = mb.Pipeline(decode, components={"vae": object()})
    assert pipe(x=3, output="y") == 3


def test_future_one_unresolvable_namedtuple_field_keeps_the_others():
    class Out(NamedTuple):
        good: Annotated[int, Doc("a good field")]
        bad: Annotated[UndefinedType, Doc("a field of an unknown type")]  # noqa: F821

    @mb.block
    def split(x: int) -> Out:
        return Out(x, x)

    assert [(s.name, s.type, s.description) for s in split.outputs] == [
        ("good", int, "a good field"),
        ("bad", Any, "a field of an unknown type"),
    ]
