"""`@mb.block` details: block names, the function's annotations, pickling and copying.

This module does *not* use ``from __future__ import annotations`` (`test_block` does), so the
annotations of its blocks are real objects.
"""

import copy
import inspect
import pickle
import typing
from typing import Annotated, NamedTuple

import attrs
import pytest
from typing_extensions import Doc

import modblocks as mb
from modblocks.exceptions import DefinitionError


class Vae:
    """A stand-in model class."""


class Pair(NamedTuple):
    left: Annotated[int, Doc("the left value")]
    right: int


@mb.block
def split(
    x: Annotated[int, Doc("the value")],
    vae: mb.Component[Vae],
    scale: mb.Config[float] = 0.5,
) -> Pair:
    """Split a value in two."""
    return Pair(x, x)


@mb.block(output="y")
def twice(x: int, step: int = 1) -> int:
    return 2 * x + step


local_twin = mb.block(twice.__wrapped__, name="twin", output="y")


# -- names --------------------------------------------------------------------------------------


def test_block_invalid_name_is_a_definition_error():
    def f(x: int) -> int:
        return x

    with pytest.raises(DefinitionError) as info:
        mb.block(name="not valid", output="y")(f)
    err = info.value
    assert isinstance(err, mb.ModblocksError)
    assert not isinstance(err, mb.WiringError)
    assert err.function == "f"
    text = str(err)
    assert "'not valid'" in text
    assert "test_block_invalid_name_is_a_definition_error.<locals>.f" in text
    assert "identifier" in text
    assert "name=" in text


@pytest.mark.parametrize("name", ["", "1st", "a-b", "with.dot"])
def test_block_other_invalid_names_are_definition_errors(name):
    with pytest.raises(DefinitionError, match="identifier"):
        mb.block(twice.__wrapped__, name=name, output="y")


def test_block_non_string_name_is_a_definition_error():
    with pytest.raises(DefinitionError, match="identifier"):
        mb.block(twice.__wrapped__, name=3, output="y")  # type: ignore[call-overload]


def test_block_lambda_needs_a_name():
    with pytest.raises(DefinitionError) as info:
        mb.block(lambda x: x, output="y")
    err = info.value
    assert err.function == "<lambda>"
    text = str(err)
    assert "lambda" in text
    assert "'<lambda>'" in text
    assert 'name="..."' in text


def test_block_named_lambda_works():
    blk = mb.block(lambda x: x + 1, name="ident", output="y")
    assert blk.name == "ident"
    assert [s.name for s in blk.inputs] == ["x"]
    assert blk(1) == 2
    assert blk.run(x=2)["y"] == 3
    assert (blk >> twice.rename(x="y", y="z")).run(x=1)["z"] == 5


def test_block_named_with_invalid_name_is_still_a_wiring_error():
    # `.named` is composition, not definition.
    with pytest.raises(mb.WiringError):
        twice.named("not valid")


def test_block_bad_function_is_reported_before_its_name():
    import functools

    with pytest.raises(DefinitionError, match="not a Python function"):
        mb.block(functools.partial(twice.__wrapped__, step=2), output="y")


# -- annotations --------------------------------------------------------------------------------


@pytest.mark.parametrize("blk", [split, twice, local_twin], ids=lambda b: b.name)
def test_block_annotations_are_the_functions(blk):
    fn = blk.__wrapped__
    assert blk.__annotations__ is fn.__annotations__
    assert typing.get_type_hints(blk) == typing.get_type_hints(fn)
    extras = typing.get_type_hints(blk, include_extras=True)
    assert extras == typing.get_type_hints(fn, include_extras=True)
    assert inspect.get_annotations(blk) == inspect.get_annotations(fn)
    assert inspect.get_annotations(blk, eval_str=True) == inspect.get_annotations(fn, eval_str=True)


def test_block_annotations_keep_component_markers():
    hints = typing.get_type_hints(split, include_extras=True)
    assert hints["vae"] == mb.Component[Vae]
    assert hints["scale"] == mb.Config[float]
    assert hints["return"] is Pair
    assert typing.get_type_hints(split)["vae"] is Vae


def test_block_annotations_of_a_local_block():
    class Out(NamedTuple):
        z: int

    @mb.block
    def local(x: int) -> Out:
        return Out(x)

    assert local.__annotations__ == {"x": int, "return": Out}
    assert typing.get_type_hints(local) == {"x": int, "return": Out}


def test_block_adapted_annotations_follow_the_adapted_signature():
    adapted = twice.rename(x="value", y="result").bind(step=10)
    assert list(inspect.signature(adapted).parameters) == ["value"]
    assert typing.get_type_hints(adapted) == {"value": int, "return": int}
    assert twice.__annotations__ == {"x": int, "step": int, "return": int}  # unchanged


def test_block_class_annotations_still_describe_the_attrs_fields():
    assert "fn" in mb.Block.__annotations__
    assert "name" in mb.Block.__annotations__
    names = [f.name for f in attrs.fields(mb.Block)]
    assert names[:3] == ["fn", "name", "spec"]
    assert attrs.has(mb.Block)
    renamed = attrs.evolve(twice, name="again")
    assert renamed.name == "again"
    assert renamed.__annotations__ is twice.__wrapped__.__annotations__
    assert renamed(1) == 3
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        twice.name = "other"  # type: ignore[misc]


# -- pickling and copying -----------------------------------------------------------------------


def test_block_module_level_pickles_by_reference():
    for blk in (split, twice):
        assert pickle.loads(pickle.dumps(blk)) is blk


def test_block_of_a_module_function_under_another_name_pickles():
    clone = pickle.loads(pickle.dumps(local_twin))
    assert clone is not local_twin  # rebuilt from the function `twice` wraps
    assert (clone.name, clone.fn, clone.run(x=1)["y"]) == ("twin", twice.fn, 3)


def test_block_defined_in_a_function_fails_to_pickle_at_once():
    @mb.block(output="y")
    def local(x: int) -> int:
        return x

    with pytest.raises(pickle.PicklingError) as info:
        pickle.dumps(local)
    err = info.value
    assert isinstance(err, mb.ModblocksError)
    text = str(err)
    assert "`local`" in text
    assert "test_block_defined_in_a_function_fails_to_pickle_at_once.<locals>.local" in text
    assert "module level" in text
    assert "threads" in text
    # The error itself pickles, as every modblocks error does.
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == text


def test_block_local_inside_a_sequence_fails_to_pickle_at_once():
    @mb.block(output="z")
    def local(y: int) -> int:
        return y

    with pytest.raises(pickle.PicklingError, match="`local`"):
        pickle.dumps(twice >> local)
    with pytest.raises(pickle.PicklingError, match="`local`"):
        pickle.dumps(local.rename(y="value"))


def test_block_of_a_lambda_fails_to_pickle_at_once():
    blk = mb.block(lambda x: x, name="ident", output="y")
    with pytest.raises(pickle.PicklingError, match=r"`ident`.*<lambda>"):
        pickle.dumps(blk)


def test_block_copies_are_the_block():
    @mb.block(output="y")
    def local(x: int) -> int:
        return x

    for blk in (twice, local, local.rename(x="v")):
        assert copy.copy(blk) is blk
        assert copy.deepcopy(blk) is blk


def test_block_deep_copy_copies_bound_values():
    values = [1, 2]

    @mb.block(output="n")
    def count(items: list[int]) -> int:
        return len(items)

    bound = count.bind(items=values)
    deep = copy.deepcopy(bound)
    assert deep is not bound
    assert deep.bound[0][1] == values
    assert deep.bound[0][1] is not values
    assert deep.run()["n"] == 2
