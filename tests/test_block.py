"""`@mb.block`: identity of the decorated function, calling, pickling, specs, output checks."""

from __future__ import annotations

import inspect
import pickle
import typing
from typing import Annotated, Any, NamedTuple

import attrs
import pytest
import torch
from typing_extensions import Doc

import modblocks as mb
from modblocks.exceptions import OutputError

# Blocks that must pickle by reference live at module level. Under `--import-mode=importlib`
# pytest (>= 8.1) imports this file under its dotted name `tests.test_block` and registers it
# in `sys.modules`, so `pickle` finds `tests.test_block.add_one` again and gets the very same
# object back. (A worker *process* would have to import `tests.test_block` itself; blocks
# meant for other processes belong in an importable package, as any pickled function does.)


class Sum(NamedTuple):
    total: Annotated[int, Doc("the sum")]
    count: int


@mb.block(output="y")
def increment(x: int, step: int = 1) -> int:
    """Add *step* to *x*.

    More words that are not part of the description.
    """
    return x + step


@mb.block(name="summer")
def summarize(a: int, b: int = 2) -> Sum:
    """Sum two numbers."""
    return Sum(a + b, 2)


class Vae:
    """A stand-in model class."""


@mb.block(output="latents")
def encode(
    image: Annotated[torch.Tensor, Doc("raw input image to process")],
    batch_size: int,
    vae: mb.Component[Vae],
    scale: mb.Config[float] = 0.18215,
) -> Annotated[torch.Tensor, Doc("the image's latents")]:
    """Encode an image."""
    return image * scale * batch_size


@mb.block
def nothing(x: int) -> None:
    """Return nothing."""


# -- identity ---------------------------------------------------------------------------------


def test_block_bare_decorator_gives_a_block():
    @mb.block(output="y")
    def f(x: int) -> int:
        return x

    assert isinstance(increment, mb.Block)
    assert isinstance(f, mb.Block)
    assert isinstance(nothing, mb.Block)
    assert isinstance(nothing, mb.Node)


def test_block_keeps_function_identity():
    fn = increment.__wrapped__
    assert inspect.isfunction(fn)
    assert increment.__name__ == "increment" == fn.__name__
    assert increment.__qualname__ == "increment"
    assert increment.__module__ == fn.__module__ == __name__
    assert increment.__doc__ == fn.__doc__
    assert increment.__doc__.startswith("Add *step* to *x*.")
    assert inspect.signature(increment) == inspect.signature(fn)
    assert list(inspect.signature(increment).parameters) == ["x", "step"]
    assert inspect.signature(increment).parameters["step"].default == 1
    assert inspect.signature(increment).return_annotation in (int, "int")


@pytest.mark.parametrize("blk", [increment, summarize, encode, nothing], ids=lambda b: b.name)
def test_block_keeps_function_annotations_under_future_annotations(blk):
    # This module uses `from __future__ import annotations`: the annotations are strings,
    # and type hints resolve them against the function's globals (through `__wrapped__`).
    fn = blk.__wrapped__
    assert blk.__annotations__ is fn.__annotations__
    assert all(isinstance(value, str) for value in blk.__annotations__.values())
    assert typing.get_type_hints(blk) == typing.get_type_hints(fn)
    extras = typing.get_type_hints(blk, include_extras=True)
    assert extras == typing.get_type_hints(fn, include_extras=True)
    assert inspect.get_annotations(blk, eval_str=True) == inspect.get_annotations(fn, eval_str=True)
    if blk is encode:
        assert extras["vae"] == mb.Component[Vae]
        assert extras["scale"] == mb.Config[float]
    # The class keeps its attrs field annotations.
    assert "fn" in mb.Block.__annotations__


def test_block_keeps_qualname_of_local_function():
    @mb.block(output="y")
    def local(x: int) -> int:
        """Local."""
        return x

    assert local.__qualname__ == "test_block_keeps_qualname_of_local_function.<locals>.local"
    assert local.__name__ == "local"
    assert local.__doc__ == "Local."
    assert local.__module__ == __name__


def test_block_name_defaults_to_function_name_and_can_be_given():
    assert increment.name == "increment"
    assert summarize.name == "summer"
    # The Python identity stays the function's.
    assert summarize.__name__ == "summarize"


def test_block_called_form_with_name_and_output():
    @mb.block(name="double_it", output="doubled")
    def double(x: int) -> int:
        return 2 * x

    assert double.name == "double_it"
    assert [s.name for s in double.outputs] == ["doubled"]
    assert double(4) == 8
    assert double.run(x=4)["doubled"] == 8


def test_block_decorating_a_block_rewraps_its_function():
    again = mb.block(increment, name="again", output="z")
    assert again.__wrapped__ is increment.__wrapped__
    assert [s.name for s in again.outputs] == ["z"]
    assert again.name == "again"


def test_block_call_calls_the_function():
    assert increment(1) == 2
    assert increment(1, step=5) == 6
    assert increment(x=1, step=-1) == 0
    assert summarize(1) == Sum(3, 2)


def test_block_call_returns_exactly_what_the_function_returns():
    marker = object()

    @mb.block(output="y")
    def give(x: Any) -> Any:
        return marker if x is None else x

    assert give(None) is marker
    tensor = torch.zeros(2)
    assert give(tensor) is tensor


def test_block_call_does_not_check_the_result():
    """Calling is plain function calling (unit tests); only runs check declared outputs."""

    @mb.block
    def liar(x: int) -> Sum:
        return x  # type: ignore[return-value]

    assert liar(3) == 3


def test_block_call_passes_exceptions_through_unwrapped():
    @mb.block(output="y")
    def boom(x: int) -> int:
        raise ValueError(x)

    with pytest.raises(ValueError, match="7") as info:
        boom(7)
    assert not isinstance(info.value, mb.BlockError)


def test_block_call_rejects_bad_arguments_like_the_function():
    with pytest.raises(TypeError):
        increment()  # type: ignore[call-arg]


def test_block_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        increment.name = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        increment.fn = len  # type: ignore[misc]
    assert increment.name == "increment"


def test_block_compares_by_identity():
    twin = mb.block(increment.__wrapped__, output="y")
    assert twin is not increment
    assert twin != increment
    assert increment == increment  # noqa: PLR0124 - identity is equality
    assert len({increment, twin, increment}) == 2


def test_block_pickles_by_reference():
    for blk in (increment, summarize, encode, nothing):
        assert pickle.loads(pickle.dumps(blk)) is blk


def test_block_renamed_copy_pickles_and_runs():
    renamed = increment.rename(x="value", y="result").bind(step=10)
    clone = pickle.loads(pickle.dumps(renamed))
    assert clone.run(value=1)["result"] == 11
    assert [s.name for s in clone.inputs] == ["value"]


def test_block_description_is_first_paragraph_of_docstring():
    assert increment.description == "Add *step* to *x*."
    assert summarize.description == "Sum two numbers."

    @mb.block(output="y")
    def multiline(x: int) -> int:
        """Do a thing
        over two lines.

        Then details.
        """
        return x

    assert multiline.description == "Do a thing over two lines."

    @mb.block(output="y")
    def undocumented(x: int) -> int:
        return x

    assert undocumented.description == ""


# -- specs ------------------------------------------------------------------------------------


def test_block_input_specs_from_signature():
    x, step = increment.inputs
    assert (x.name, x.type, x.default, x.required) == ("x", int, mb.NOTHING, True)
    assert (step.name, step.type, step.default, step.required) == ("step", int, 1, False)
    assert isinstance(x, mb.InputSpec)


def test_block_output_specs_from_namedtuple():
    total, count = summarize.outputs
    assert isinstance(total, mb.OutputSpec)
    assert (total.name, total.type, total.description) == ("total", int, "the sum")
    assert (count.name, count.type, count.description) == ("count", int, "")


def test_block_none_annotation_has_no_outputs():
    assert nothing.outputs == ()
    assert nothing.run(x=1) == {"x": 1}


def test_block_components_and_configs_are_separate_from_inputs():
    assert [s.name for s in encode.inputs] == ["image", "batch_size"]
    (vae,) = encode.components
    (scale,) = encode.configs
    assert (vae.name, vae.type, vae.required) == ("vae", Vae, True)
    assert (scale.name, scale.type, scale.default, scale.required) == (
        "scale",
        float,
        0.18215,
        False,
    )
    assert encode.inputs[0].type is torch.Tensor
    assert encode.inputs[0].description == "raw input image to process"


def test_block_component_annotation_is_plain_type_for_hints():
    hints = inspect.get_annotations(encode.__wrapped__, eval_str=True)
    assert hints["vae"] == mb.Component[Vae]
    assert hints["vae"].__origin__ is Vae


def test_block_with_local_namedtuple_and_component_class():
    class Model:
        pass

    class Out(NamedTuple):
        latents: Annotated[torch.Tensor, Doc("local latents")]
        n: int

    @mb.block
    def make(model: mb.Component[Model], n: int) -> Out:
        return Out(torch.zeros(n), n)

    assert [(s.name, s.type, s.description) for s in make.outputs] == [
        ("latents", torch.Tensor, "local latents"),
        ("n", int, ""),
    ]
    assert make.components[0].type is Model
    state = make.run(model=Model(), n=3)
    assert state["latents"].shape == (3,)


def test_block_specs_are_tuples():
    assert isinstance(increment.inputs, tuple)
    assert isinstance(increment.outputs, tuple)
    assert isinstance(encode.components, tuple)
    assert isinstance(encode.configs, tuple)


def test_input_spec_hashable_and_compared_by_value():
    a = mb.InputSpec("x", int, default=[1])
    b = mb.InputSpec("x", int, default=[1])
    assert a == b
    assert hash(a) == hash(b)
    assert mb.InputSpec("x", int) != mb.InputSpec("x", float)


# -- checking results at run time -----------------------------------------------------------


class Pair(NamedTuple):
    left: int
    right: int


class OtherPair(NamedTuple):
    left: int
    right: int


def _pair_block(result: Any) -> mb.Block[..., Any]:
    @mb.block
    def pair(x: int) -> Pair:
        return result  # type: ignore[no-any-return]

    return pair


@pytest.mark.parametrize(
    ("result", "shown"),
    [
        ((1, 2), "tuple"),
        (OtherPair(1, 2), "OtherPair"),
        ({"left": 1, "right": 2}, "dict"),
        (None, "NoneType"),
        (3, "int"),
    ],
    ids=["plain-tuple", "other-namedtuple", "dict", "none", "int"],
)
def test_block_result_of_wrong_type_raises_output_error(result, shown):
    pair = _pair_block(result)
    with pytest.raises(OutputError, match=r"block `pair` returned") as info:
        pair.run(x=1)
    err = info.value
    assert err.block == "pair"
    assert err.path == "pair"
    assert shown in str(err)
    assert "Pair" in str(err)
    assert isinstance(err.state, mb.State)
    assert dict(err.state) == {"x": 1}


def test_block_output_error_in_sequence_keeps_path_and_state():
    @mb.block(output="x")
    def first(a: int) -> int:
        return a + 1

    bad = _pair_block((1, 2))
    seq = (first >> bad).named("outer")
    with pytest.raises(OutputError) as info:
        seq.run(a=1)
    err = info.value
    assert err.path == "outer > pair"
    assert err.block == "pair"
    assert dict(err.state) == {"a": 1, "x": 2}


def test_block_none_annotated_returning_a_value_raises_output_error():
    @mb.block
    def log(x: int) -> None:
        return x  # type: ignore[return-value]

    with pytest.raises(OutputError, match=r"`log`.*-> None") as info:
        log.run(x=5)
    assert info.value.block == "log"
    assert info.value.path == "log"
    assert info.value.state["x"] == 5


def test_block_subclass_of_declared_namedtuple_is_accepted():
    class MorePair(Pair):
        pass

    pair = _pair_block(MorePair(1, 2))
    assert dict(pair.run(x=0)) == {"x": 0, "left": 1, "right": 2}


def test_block_output_form_accepts_any_result():
    @mb.block(output="y")
    def anything(x: Any) -> int:
        return x  # type: ignore[no-any-return]

    assert anything.run(x="text")["y"] == "text"
    assert anything.run(x=None)["y"] is None


def test_block_repr_mentions_name_inputs_outputs_and_description():
    text = repr(summarize)
    assert "summer" in text
    assert "a, b" in text
    assert "total, count" in text
    assert "Sum two numbers" in text


@pytest.mark.parametrize("option", ["cache", "events", "cancel", "on_step", "resume"])
def test_block_inputs_and_outputs_cannot_take_the_name_of_a_run_option(option):
    source = f"def f(x: int, {option}: int = 1) -> int:\n    return x\n"
    namespace: dict[str, object] = {}
    exec(source, namespace)  # noqa: S102 - a parameter named by the test
    with pytest.raises(mb.DefinitionError, match=f"parameter `{option}`.*option of `run") as info:
        mb.block(namespace["f"], output="y")
    assert info.value.parameter == option
    with pytest.raises(mb.DefinitionError, match=f"output `{option}`"):
        mb.block(lambda x: x, name="g", output=option)

    @mb.block(output="y")
    def g(x: int) -> int:
        return x

    with pytest.raises(mb.WiringError, match=f"value called `{option}`"):
        g.rename(x=option)


def test_async_and_generator_functions_are_not_blocks():
    async def co(y: int) -> int:
        return y

    def gen(y: int) -> Any:
        yield y

    with pytest.raises(mb.DefinitionError, match="`async def` functions can't be blocks"):
        mb.block(co, output="y")
    with pytest.raises(mb.DefinitionError, match="generator functions"):
        mb.block(gen, output="y")


def test_block_output_must_be_a_name():
    with pytest.raises(mb.DefinitionError, match="is not a valid value name"):
        mb.block(lambda x: x, name="f", output=123)  # type: ignore[call-overload]


def test_renaming_a_block_input_onto_another_input_is_refused():
    @mb.block(output="y")
    def f(a: int, b: int) -> int:
        return a + b

    with pytest.raises(mb.WiringError, match="two of its inputs the name `b`"):
        f.rename(a="b")
