"""Reading a function when it is decorated: annotations, descriptions, and what is rejected."""

import functools
from typing import Annotated, Any, NamedTuple, Optional

import annotated_doc
import pytest
import typing_extensions

import modblocks as mb
from modblocks.exceptions import DefinitionError

# -- descriptions -----------------------------------------------------------------------------


@pytest.mark.parametrize("doc_cls", [typing_extensions.Doc, annotated_doc.Doc])
def test_signature_reads_doc_from_annotated(doc_cls):
    class Out(NamedTuple):
        latents: Annotated[int, doc_cls("the latents")]

    @mb.block
    def f(
        image: Annotated[str, doc_cls("raw input image")],
        steps: Annotated[int, doc_cls("how many steps")] = 4,
    ) -> Out:
        return Out(1)

    image, steps = f.inputs
    assert (image.name, image.type, image.description) == ("image", str, "raw input image")
    assert (steps.type, steps.default, steps.description) == (int, 4, "how many steps")
    assert f.outputs[0].description == "the latents"
    assert f.outputs[0].type is int


@pytest.mark.parametrize("doc_cls", [typing_extensions.Doc, annotated_doc.Doc])
def test_signature_reads_doc_of_output_form(doc_cls):
    @mb.block(output="y")
    def f(x: int) -> Annotated[int, doc_cls("the result")]:
        return x

    assert (f.outputs[0].name, f.outputs[0].type, f.outputs[0].description) == (
        "y",
        int,
        "the result",
    )


def test_signature_reads_google_args_section():
    @mb.block(output="y")
    def f(x: int, scale: float = 2.0, plain: int = 0) -> float:
        """Scale a number.

        Args:
            x: the number
                to scale.
            scale (float): the factor.

        Returns:
            the product.
        """
        return x * scale

    x, scale, plain = f.inputs
    assert x.description == "the number to scale."
    assert scale.description == "the factor."
    assert plain.description == ""
    assert f.description == "Scale a number."


def test_signature_reads_numpy_parameters_section():
    @mb.block(output="y")
    def f(x: int, scale: float = 2.0) -> float:
        """Scale a number.

        Parameters
        ----------
        x : int
            the number
            to scale.
        scale : float
            the factor.

        Returns
        -------
        float
            the product.
        """
        return x * scale

    x, scale = f.inputs
    assert x.description == "the number to scale."
    assert scale.description == "the factor."
    assert f.description == "Scale a number."


def test_signature_doc_annotation_wins_over_docstring():
    @mb.block(output="y")
    def f(x: Annotated[int, typing_extensions.Doc("from Doc")]) -> int:
        """Do it.

        Args:
            x: from the docstring.
        """
        return x

    assert f.inputs[0].description == "from Doc"


def test_signature_component_and_config_with_doc():
    class Unet:
        pass

    @mb.block(output="y")
    def f(
        unet: Annotated[mb.Component[Unet], typing_extensions.Doc("the denoiser")],
        guidance: Annotated[mb.Config[float], annotated_doc.Doc("guidance scale")] = 7.5,
    ) -> int:
        return 1

    assert f.inputs == ()
    assert (f.components[0].name, f.components[0].type, f.components[0].description) == (
        "unet",
        Unet,
        "the denoiser",
    )
    assert (f.configs[0].type, f.configs[0].default, f.configs[0].description) == (
        float,
        7.5,
        "guidance scale",
    )


def test_signature_unannotated_parameter_is_any():
    @mb.block(output="y")
    def f(x, y=3) -> int:
        return x

    assert f.inputs[0].type is Any
    assert f.inputs[1].type is Any
    assert f.inputs[1].default == 3


def test_signature_keyword_only_parameters_are_inputs():
    @mb.block(output="y")
    def f(x: int, *, scale: int = 2, shift: int) -> int:
        return x * scale + shift

    assert [(s.name, s.required) for s in f.inputs] == [
        ("x", True),
        ("scale", False),
        ("shift", True),
    ]
    assert f.run(x=1, shift=1)["y"] == 3


def test_signature_optional_type_is_kept():
    @mb.block(output="y")
    def f(x: Optional[int] = None) -> int:  # noqa: UP045 - the old spelling on purpose
        return x or 0

    assert f.inputs[0].type == Optional[int]  # noqa: UP045
    assert f.inputs[0].default is None
    assert f.inputs[0].required is False


def test_signature_default_none_is_a_default():
    @mb.block(output="y")
    def f(x: int | None = None) -> int:
        return 0 if x is None else x

    assert f.inputs[0].required is False
    assert f.inputs[0].default is None
    assert f.run()["y"] == 0


def test_signature_unresolvable_annotation_passes_as_any_or_string():
    @mb.block(output="y")
    def f(x: "NotDefinedAnywhere") -> int:  # type: ignore[name-defined] # noqa: F821
        return 1

    assert f.inputs[0].name == "x"
    # Composing with it must not fail: unresolvable hints pass (DESIGN §2).

    @mb.block(output="x")
    def g(a: int) -> str:
        return "x"

    assert (g >> f).names == ("g", "f")


# -- rejection --------------------------------------------------------------------------------


def test_signature_rejects_var_positional():
    def f(*args: int) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"block `f`: parameter `\*args` can't be an input"):
        mb.block(f)
    with pytest.raises(DefinitionError) as info:
        mb.block(f)
    assert info.value.function == "f"
    assert info.value.parameter == "args"
    assert "by name" in str(info.value)


def test_signature_rejects_var_keyword():
    def f(x: int, **kwargs: int) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"block `f`: parameter `\*\*kwargs`") as info:
        mb.block(f)
    assert info.value.function == "f"
    assert info.value.parameter == "kwargs"


def test_signature_rejects_positional_only():
    def f(x: int, /, y: int) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"parameter `x`.*positional-only") as info:
        mb.block(f)
    assert (info.value.function, info.value.parameter) == ("f", "x")


def test_signature_rejection_names_the_given_block_name():
    def f(*args: int) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"block `custom`") as info:
        mb.block(name="custom")(f)
    assert info.value.function == "custom"


def test_signature_rejects_classes():
    class Thing(NamedTuple):
        x: int

    with pytest.raises(DefinitionError, match=r"class `.*Thing` can't be a block") as info:
        mb.block(Thing)
    assert info.value.function == "Thing"


def test_signature_rejects_bound_methods():
    class Model:
        def forward(self, x: int) -> None:
            pass

    with pytest.raises(DefinitionError, match=r"bound method `.*forward` can't be a block") as info:
        mb.block(Model().forward)
    assert info.value.function == "forward"
    assert "Component" in str(info.value)


def test_signature_rejects_functions_defined_in_class_bodies():
    with pytest.raises(DefinitionError, match=r"defined in a class body") as info:

        class Pipeline:
            @mb.block
            def step(x: int) -> None:  # noqa: N805
                pass

    assert info.value.function == "step"


def test_signature_rejects_classmethod_and_staticmethod_objects():
    def f(x: int) -> None:
        pass

    for wrapper in (classmethod, staticmethod):
        with pytest.raises(DefinitionError, match=wrapper.__name__) as info:
            mb.block(wrapper(f))
        assert info.value.function == "f"


def test_signature_rejects_builtins():
    with pytest.raises(DefinitionError, match=r"block `len`.*not a Python function") as info:
        mb.block(len, output="n")
    assert info.value.function == "len"


def test_signature_rejects_functools_partial():
    def f(x: int, y: int) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"not a Python function.*bind") as info:
        mb.block(functools.partial(f, 1), name="partial_f")
    assert info.value.function == "partial_f"


def test_signature_rejects_missing_return_annotation():
    def f(x: int):
        return x

    with pytest.raises(DefinitionError, match=r"block `f`.*no return annotation") as info:
        mb.block(f)
    assert info.value.function == "f"
    assert 'output="name"' in str(info.value)


@pytest.mark.parametrize(
    ("annotation", "shown"),
    [(int, "int"), (tuple[int, int], "tuple[int, int]"), (dict[str, int], "dict[str, int]")],
)
def test_signature_rejects_unsupported_return_annotation(annotation, shown):
    def f(x: int) -> None:
        pass

    f.__annotations__["return"] = annotation
    with pytest.raises(DefinitionError, match=r"not a NamedTuple or None") as info:
        mb.block(f)
    assert shown in str(info.value)
    assert info.value.function == "f"


def test_signature_rejects_invalid_output_name():
    def f(x: int) -> int:
        return x

    with pytest.raises(DefinitionError, match=r"not a valid value name") as info:
        mb.block(f, output="not valid")
    assert info.value.function == "f"


def test_signature_definition_error_is_a_type_error():
    def f(*args: int) -> None:
        pass

    with pytest.raises(TypeError):
        mb.block(f)


def test_signature_decorating_has_no_side_effects():
    """Decorating twice gives two independent blocks and calls nothing."""
    calls = []

    def f(x: int) -> None:
        calls.append(x)

    first, second = mb.block(f), mb.block(f)
    assert first is not second
    assert calls == []
