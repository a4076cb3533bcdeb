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
