"""Type compatibility when composing: what a producer may feed into a consumer (DESIGN §2).

Checked through the public behaviour: ``producer >> consumer`` either wires or raises
`WiringError`.
"""

import collections.abc
import typing
from typing import Annotated, Any, Literal, NewType, Optional, TypeVar, Union

import pytest
import torch
from typing_extensions import Doc

import modblocks as mb
from modblocks.exceptions import WiringError

T = TypeVar("T")
UserId = NewType("UserId", int)


class Animal:
    pass


class Dog(Animal):
    pass


def _producer(tp: Any) -> mb.Block[..., Any]:
    def produce() -> None:
        pass

    produce.__annotations__["return"] = tp
    return mb.block(produce, output="value")


def _consumer(tp: Any) -> mb.Block[..., Any]:
    def consume(value) -> None:
        pass

    consume.__annotations__["value"] = tp
    return mb.block(consume)


def wires(produced: Any, expected: Any) -> bool:
    try:
        _producer(produced) >> _consumer(expected)
    except WiringError:
        return False
    return True


COMPATIBLE = [
    (int, int),
    (Dog, Animal),
    (bool, int),
    (int, float),  # PEP 484 numeric tower
    (int, complex),
    (float, complex),
    (bool, float),  # a bool is an int, and an int is acceptable where a float is
    (bool, complex),
    (bool | int, float),
    (bool, float | None),
    (Literal[True], float),
    (Any, int),
    (int, Any),
    (int, object),
    (int, Optional[int]),  # noqa: UP045
    (int, int | None),
    (None, int | None),
    (int, Union[int, str]),  # noqa: UP007
    (str, int | str),
    (int | str, int | str | bytes),
    (list[int], list),
    (list, list[int]),
    (list[int], list[str]),  # type arguments are ignored
    (dict[str, int], collections.abc.Mapping),
    (list[int], collections.abc.Sequence[int]),
    (torch.Tensor, torch.Tensor),
    (Annotated[int, Doc("x")], int),
    (int, Annotated[float, Doc("x")]),
    (UserId, int),
    (T, int),
    (int, T),
    (Literal["a", "b"], str),
    (str, Literal["a"]),
    (int, "Unresolvable"),
    (typing.Sequence[int], typing.Sequence[int]),
]

INCOMPATIBLE = [
    (str, int),
    (Animal, Dog),
    (float, int),  # no narrowing
    (str, torch.Tensor),
    (torch.Tensor, list[torch.Tensor]),
    (int | None, int),  # may be None
    (None, int),
    (int | str, int),
    (list[int], dict),
    (Literal["a"], int),
    (dict[str, int], collections.abc.Sequence),
    (complex, float),
    (complex, int),
    (float, bool),
    (int, bool),
    (Optional[int], int),  # noqa: UP045 - None could flow
    (Optional[bool], float),  # noqa: UP045
    (bool | None, complex),
    (str, float),
    (str, complex),
]


@pytest.mark.parametrize(("produced", "expected"), COMPATIBLE, ids=repr)
def test_typecheck_compatible_pairs_wire(produced, expected):
    assert wires(produced, expected)


@pytest.mark.parametrize(("produced", "expected"), INCOMPATIBLE, ids=repr)
def test_typecheck_incompatible_pairs_raise(produced, expected):
    assert not wires(produced, expected)


def test_typecheck_error_has_fields_and_names_both_sides():
    with pytest.raises(WiringError) as info:
        _producer(str) >> _consumer(torch.Tensor)
    err = info.value
    assert (err.name, err.producer, err.consumer) == ("value", "produce", "consume")
    text = str(err)
    assert "`value`" in text
    assert "`produce` returns" in text
    assert "`consume` expects" in text
    assert "str" in text
    assert "torch.Tensor" in text


def test_typecheck_unannotated_sides_pass():
    @mb.block(output="value")
    def untyped():
        return 1

    assert _producer(int) >> _consumer(Any)
    assert (untyped >> _consumer(str)).names == ("untyped", "consume")


class Flag(typing.NamedTuple):
    flag: bool


class Count(typing.NamedTuple):
    count: int


class MaybeCount(typing.NamedTuple):
    count: Optional[int]  # noqa: UP045


def test_typecheck_numeric_tower_in_a_two_block_sequence():
    @mb.block
    def make_flag() -> Flag:
        return Flag(True)

    @mb.block
    def make_count() -> Count:
        return Count(3)

    @mb.block(output="ratio")
    def halve(flag: float) -> float:
        return flag / 2

    @mb.block(output="z")
    def rotate(count: complex) -> complex:
        return count * 1j

    @mb.block(output="z")
    def rotate_flag(flag: complex) -> complex:
        return flag * 1j

    assert (make_flag >> halve).run()["ratio"] == 0.5
    assert (make_count >> rotate).run()["z"] == 3j
    assert (make_flag >> rotate_flag).run()["z"] == 1j


def test_typecheck_optional_int_into_int_is_still_rejected():
    @mb.block
    def maybe() -> MaybeCount:
        return MaybeCount(None)

    @mb.block(output="double")
    def double(count: int) -> int:
        return 2 * count

    with pytest.raises(WiringError) as info:
        maybe >> double
    assert (info.value.name, info.value.producer, info.value.consumer) == (
        "count",
        "maybe",
        "double",
    )
    assert "int | None" in str(info.value)
