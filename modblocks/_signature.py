"""Read a function once, when it is decorated, into input and output specs."""

from __future__ import annotations

import builtins
import contextlib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NamedTuple, cast, get_args, get_origin

from ._docstring import parse_docstring
from ._markers import COMPONENT as COMPONENT_MARKER
from ._markers import CONFIG as CONFIG_MARKER
from ._names import RUN_OPTIONS
from ._specs import COMPONENT, CONFIG, INPUT, NOTHING, InputSpec, OutputSpec
from ._typecheck import type_name
from .exceptions import DefinitionError

__all__ = ["FunctionSpec", "caller_namespace", "read_function"]


class FunctionSpec(NamedTuple):
    """What decorating learnt about a function."""

    description: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    result: type | None  # the NamedTuple class whose fields are the outputs, if any


def caller_namespace(depth: int = 2) -> dict[str, Any]:
    """Return the locals of the frame *depth* levels up, where a decorator was applied.

    Blocks and NamedTuples defined inside a function or a test can then be resolved, also
    under ``from __future__ import annotations`` (pydantic's ``parent_frame_namespace``).
    """
    frame = sys._getframe(depth)
    if frame.f_globals is frame.f_locals:
        return {}  # module level: the function's own globals already cover it
    return dict(frame.f_locals)


def read_function(
    fn: Callable[..., Any], *, name: str, output: str | None, namespace: Mapping[str, Any]
) -> FunctionSpec:
    """Read inputs, outputs and descriptions of *fn*, or raise `DefinitionError`."""
    _check_function_type(fn, name)
    _check_name(fn, name)
    localns = {**_closure_vars(fn), **namespace}
    hints = _type_hints(fn, localns)
    description, param_docs = parse_docstring(fn.__doc__)
    inputs: list[InputSpec] = []
    for param in inspect.signature(fn).parameters.values():
        _check_parameter(param, name)
        hint = hints.get(param.name, Any)
        kind, tp, doc = _split_annotation(hint)
        inputs.append(
            InputSpec(
                name=param.name,
                type=tp,
                default=NOTHING if param.default is inspect.Parameter.empty else param.default,
                description=doc or param_docs.get(param.name, ""),
                kind=kind,
            )
        )
    outputs, result = _outputs(name, output, hints, localns)
    return FunctionSpec(description, tuple(inputs), outputs, result)


def _check_function_type(fn: object, name: str) -> None:
    if isinstance(fn, (classmethod, staticmethod)):
        kind: str = type(cast("object", fn)).__name__
        msg = (
            f"block `{name}`: a {kind} can't be a block, because a block is called "
            "with its inputs by name, without a class. Decorate a module-level function."
        )
        raise DefinitionError(msg, function=name)
    if inspect.isclass(fn):
        msg = (
            f"block `{name}`: the class `{fn.__qualname__}` can't be a block. Decorate a function "
            "that builds or uses it, or pass an instance as a `Component`."
        )
        raise DefinitionError(msg, function=name)
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        msg = (
            f"block `{name}`: `async def` functions can't be blocks: a run calls each block and "
            "goes on with its result, and a coroutine is not a result. Write a plain `def` "
            "(call `asyncio.run(...)` inside it if you must), and run a whole pipeline from "
            "async code with `await asyncio.to_thread(pipe, ...)`."
        )
        raise DefinitionError(msg, function=name)
    if inspect.isgeneratorfunction(fn):
        msg = (
            f"block `{name}`: generator functions (with `yield`) can't be blocks: a block "
            "returns its outputs once. Return a list, or loop with `mb.loop(...)`."
        )
        raise DefinitionError(msg, function=name)
    if inspect.ismethod(fn):
        msg = (
            f"block `{name}`: the bound method `{fn.__qualname__}` can't be a block, because its "
            "object would travel hidden inside it. Decorate a plain function and pass the object "
            "as a `Component`."
        )
        raise DefinitionError(msg, function=name)
    if not isinstance(fn, types.FunctionType):
        msg = (
            f"block `{name}`: {fn!r} is not a Python function, so its parameters can't be read. "
            "Wrap it in a `def` with named, annotated parameters (use `.bind()` instead of "
            "`functools.partial`)."
        )
        raise DefinitionError(msg, function=name)
    parts = fn.__qualname__.split(".")
    # `<locals>`, `<genexpr>`, `<lambda>` ... are scopes of functions; any other part is a class.
    if len(parts) > 1 and not parts[-2].startswith("<"):
        msg = (
            f"block `{name}`: `{fn.__qualname__}` is defined in a class body, so it would be a "
            "method. Define the block as a function outside the class."
        )
        raise DefinitionError(msg, function=name)


def _check_name(fn: Callable[..., Any], name: object) -> None:
    """A block's name is a Python identifier: it names the block in sequences and paths."""
    if isinstance(name, str) and name.isidentifier():
        return
    qualname = getattr(fn, "__qualname__", repr(fn))
    if name == getattr(fn, "__name__", None):
        what = "the lambda" if name == "<lambda>" else "the function"
        msg = (
            f"{what} `{qualname}` can't be a block under its own name {name!r}, because a "
            "block's name must be a Python identifier. Pass one: "
            '`mb.block(fn, name="...")`, or define the function with `def`.'
        )
    else:
        msg = (
            f"the function `{qualname}` can't be a block named {name!r}, because a block's "
            "name must be a Python identifier. Pass an identifier as `name=`, e.g. "
            '`name="encode_image"`.'
        )
    raise DefinitionError(msg, function=getattr(fn, "__name__", qualname))


def _check_value_name(value: str, name: str, what: str) -> None:
    if value in RUN_OPTIONS:
        msg = (
            f"block `{name}`: {what} `{value}` has the name of an option of `run(...)` "
            f"({', '.join(sorted(RUN_OPTIONS))}), so it could never be given or read. "
            f"Rename it (e.g. `{value}_value`)."
        )
        raise DefinitionError(msg, function=name, parameter=value)


def _check_parameter(param: inspect.Parameter, name: str) -> None:
    _check_value_name(param.name, name, "parameter")
    kind = param.kind
    if kind is inspect.Parameter.VAR_POSITIONAL:
        shown, why = f"*{param.name}", "a block reads its inputs by name from the state"
    elif kind is inspect.Parameter.VAR_KEYWORD:
        shown, why = f"**{param.name}", "a block's inputs must be known before it runs"
    elif kind is inspect.Parameter.POSITIONAL_ONLY:
        shown, why = param.name, "positional-only parameters can't be given by name"
    else:
        return
    msg = (
        f"block `{name}`: parameter `{shown}` can't be an input, because {why}. "
        "Declare each input as a named parameter."
    )
    raise DefinitionError(msg, function=name, parameter=param.name)


def _closure_vars(fn: Callable[..., Any]) -> dict[str, Any]:
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None) or ()
    if code is None:
        return {}
    out: dict[str, Any] = {}
    for var, cell in zip(code.co_freevars, cells, strict=False):
        try:
            out[var] = cell.cell_contents
        except ValueError:  # an empty cell: the variable is assigned later
            continue
    return out


def _type_hints(obj: Any, localns: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve annotations; one that can't be resolved becomes `Any` instead of failing."""
    globalns = getattr(inspect.unwrap(obj), "__globals__", None)
    if globalns is None:  # a class (NamedTuple): its module's globals
        globalns = vars(sys.modules.get(obj.__module__, types.ModuleType("_")))
    with contextlib.suppress(Exception):  # else resolve the annotations one by one
        return typing.get_type_hints(obj, globalns, dict(localns), include_extras=True)
    raw: dict[str, Any] = dict(getattr(obj, "__annotations__", {}))
    hints: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, typing.ForwardRef):  # a NamedTuple field's string annotation
            value = value.__forward_arg__
        if isinstance(value, str):
            value = _lenient_eval(value, globalns, localns)
        hints[key] = value
    return hints


class _Lenient(dict[str, Any]):
    """Names for `eval`: the local ones, then the module's and builtins, then `Any`."""

    def __init__(self, globalns: Mapping[str, Any], localns: Mapping[str, Any]) -> None:
        super().__init__(localns)
        self.globalns = globalns

    def __missing__(self, key: str) -> Any:
        if key in self.globalns:
            return self.globalns[key]
        return getattr(builtins, key, Any)


def _lenient_eval(hint: str, globalns: dict[str, Any], localns: Mapping[str, Any]) -> Any:
    """Evaluate *hint* as `typing.get_type_hints` does, but with unknown names as `Any`.

    Names resolve as in `eval` (locals, the module, builtins), so known hints come out the
    same; unknown ones become `Any`, keeping what is known around them.

    A class imported only under ``TYPE_CHECKING`` stays unknown at run time, but
    ``mb.Component[AutoencoderKL]`` must still declare a component (of type `Any`).
    """
    try:
        return eval(hint, {"__builtins__": {}}, _Lenient(globalns, localns))  # noqa: S307 - as get_type_hints
    except Exception:  # noqa: BLE001 - unresolvable hints pass (DESIGN §2)
        return Any


def _split_annotation(hint: Any) -> tuple[str, Any, str]:
    """Split ``Annotated[T, marker, Doc(...)]`` into the input kind, ``T`` and the doc."""
    kind, doc = INPUT, ""
    if get_origin(hint) is Annotated:
        tp, *metadata = get_args(hint)
        for item in metadata:
            if item is COMPONENT_MARKER:
                kind = COMPONENT
            elif item is CONFIG_MARKER:
                kind = CONFIG
            elif type(item).__name__ == "Doc" and isinstance(
                getattr(item, "documentation", None), str
            ):
                doc = item.documentation
        hint = tp
    return kind, hint, doc


def _is_namedtuple(tp: Any) -> bool:
    cls: object = tp
    return hasattr(tp, "_fields") and isinstance(cls, type) and issubclass(cls, tuple)


def _outputs(
    name: str,
    output: str | None,
    hints: Mapping[str, Any],
    localns: Mapping[str, Any],
) -> tuple[tuple[OutputSpec, ...], type | None]:
    has_return = "return" in hints
    _, tp, doc = _split_annotation(hints.get("return", Any))
    if output is not None:
        if not isinstance(cast("object", output), str) or not output.isidentifier():
            msg = (
                f"block `{name}`: `output={output!r}` is not a valid value name. Use an identifier."
            )
            raise DefinitionError(msg, function=name)
        _check_value_name(output, name, "output")
        return (OutputSpec(output, tp, doc),), None
    if has_return and tp in (None, type(None)):
        return (), type(None)
    if _is_namedtuple(tp):
        field_hints = _type_hints(tp, localns)
        specs: list[OutputSpec] = []
        fields: tuple[str, ...] = tp._fields
        for field in fields:
            _check_value_name(field, name, "output")
            _, ftp, fdoc = _split_annotation(field_hints.get(field, Any))
            specs.append(OutputSpec(field, ftp, fdoc))
        return tuple(specs), tp
    if not has_return:
        why = "it has no return annotation"
    else:
        why = f"its return annotation `{type_name(tp)}` is not a NamedTuple or None"
    msg = (
        f"block `{name}`: can't tell the block's outputs, because {why}. Return a NamedTuple "
        "whose fields name the outputs, annotate `-> None` for no outputs, or name a single "
        'output with `@block(output="name")`.'
    )
    raise DefinitionError(msg, function=name)
