"""`@block`: a plain function that declares its inputs and outputs, and `Block`, what it returns."""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import attrs

from ._failure import BLOCK, MISSING, OUTPUT, Failure
from ._names import check_identifier
from ._node import Node
from ._plan import Arg, Call, Plan
from ._signature import FunctionSpec, caller_namespace, read_function
from ._typecheck import type_name
from ._wiring import Interface, block_interface
from .exceptions import BlockPicklingError

__all__ = ["Block", "block"]

P = ParamSpec("P")
R = TypeVar("R")


@attrs.frozen(slots=False, eq=False, repr=False)
class Block(Node, Generic[P, R]):
    """A function that declares its inputs and outputs: the leaf of every pipeline.

    Calling a block calls the function, so blocks are unit tested as functions. Made by
    `block`; `rename`, `bind` and `named` return adapted copies that are still blocks.
    """

    fn: Callable[P, R] = attrs.field(repr=False)
    name: str
    spec: FunctionSpec = attrs.field(repr=False)
    output: str | None = None
    cache: bool = True
    renames: tuple[tuple[str, str], ...] = ()  # (parameter or output name, name in the state)
    bound: tuple[tuple[str, Any], ...] = ()  # (name in the state, value)
    _iface: Interface = attrs.field(init=False, repr=False)

    if TYPE_CHECKING:  # set per instance in __attrs_post_init__ (not attrs fields)
        __qualname__: str

    def __attrs_post_init__(self) -> None:
        # Look like the function to help(), inspect, pydoc, doctest and get_type_hints, as
        # functools.update_wrapper would (it can't: the instance is frozen). `__annotations__`
        # in the instance dict shadows, for instances only, the class's attrs annotations.
        rename = dict(self.renames)
        bound = dict(self.bound)
        self.__dict__.update(
            __module__=self.fn.__module__,
            __qualname__=self.fn.__qualname__,
            __doc__=self.fn.__doc__,
            __annotations__=_adapted_annotations(self.fn, rename, bound),
        )
        self.__dict__["_iface"] = block_interface(
            self.spec.inputs, self.spec.outputs, rename, bound, self.name
        )
        if self.renames or self.bound:
            self.__dict__["__signature__"] = _adapted_signature(self)

    @property
    def __name__(self) -> str:
        return self.fn.__name__

    @property
    def __wrapped__(self) -> Callable[P, R]:
        return self.fn

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def _kind(self) -> str:
        return "Block"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if not (self.renames or self.bound):
            return self.fn(*args, **kwargs)
        # An adapted block takes its inputs under their new names, without the bound ones.
        bound_args = self.__dict__["__signature__"].bind(*args, **kwargs)
        given = {**dict(self.bound), **bound_args.arguments}
        param = {new: old for old, new in self.renames}
        call: Callable[..., R] = self.fn
        return call(**{param.get(k, k): v for k, v in given.items()})

    def __get__(self, obj: object, objtype: type | None = None) -> Block[P, R]:
        # A block stored on a class stays a block (functions would become bound methods).
        return self

    # -- adapting: each returns a block, so its function stays callable ----------------------

    def named(self, name: str) -> Block[P, R]:
        check_identifier(name, self.name)
        return attrs.evolve(self, name=name)

    def rename(self, **names: str) -> Block[..., R]:
        """Return a copy that reads and writes ``old`` as ``new``; the function is unchanged.

        The return type survives; the parameters become ``...`` for type checkers.
        """
        self._check_names(names, "rename")
        current = dict(self.renames)
        original = {new: old for old, new in current.items()}
        for old, new in names.items():
            check_identifier(new, self.name)
            current[original.get(old, old)] = new
        bound = tuple((names.get(n, n), v) for n, v in self.bound)
        return attrs.evolve(self, renames=tuple(current.items()), bound=bound)

    def bind(self, **values: Any) -> Block[..., R]:
        """Return a copy with inputs, components or configs fixed (partial application).

        Bound names stop being inputs; at run time their values enter the state as if the
        caller had given them. The return type survives; the parameters become ``...``.
        """
        self._check_names(values, "bind", outputs=False)
        return attrs.evolve(self, bound=self.bound + tuple(values.items()))

    # -- running -------------------------------------------------------------------------

    def _make_plan(self) -> Plan:
        rename = dict(self.renames)
        bound = dict(self.bound)
        positions = {key: pos for pos, key in enumerate(bound)}
        params = inspect.signature(self.fn).parameters
        args: list[Arg] = []
        for spec in self.spec.inputs:
            key = rename.get(spec.name, spec.name)
            keyword = params[spec.name].kind is inspect.Parameter.KEYWORD_ONLY
            args.append(Arg(spec.name, key, spec.default, keyword, positions.get(key)))
        fields = self._plan_fields()
        fields["inputs"] += tuple(bound)  # bound values are read (and keyed) like inputs
        fields["cacheable"] = self.cache
        return Call(
            **fields,
            fn=self.fn,
            args=tuple(args),
            bound=self.bound,
            single=self.output is not None,
            result=self.spec.result,
            bad_result=self._bad_result,
            explain=self._failure,
        )

    @functools.cached_property
    def _identity(self) -> bytes:
        from ._fingerprint import identity_digest

        # Bound values are not part of it: the run keys them like inputs (a bound generator
        # changes as it is drawn from).
        defaults = tuple((s.name, s.default) for s in self.spec.inputs if not s.required)
        outputs = tuple(s.name for s in self.spec.outputs)
        return identity_digest(
            self.fn, self.name, self.output, self.spec.result, outputs, self.renames, defaults
        )

    def _bad_result(self, result: object) -> None:
        declared = self.spec.result
        if declared is type(None):
            expected = "is annotated `-> None`"
            fix = "Return nothing, or declare the outputs with a NamedTuple."
        else:
            assert declared is not None
            fields = ", ".join(getattr(declared, "_fields", ()))
            expected = f"declares `{type_name(declared)}` (fields {fields})"
            fix = f"Return `{declared.__name__}(...)`."
        msg = (
            f"block `{self.name}` returned {type(result).__name__} {_short(result)}, "
            f"but its return annotation {expected}"
        )
        raise Failure(OUTPUT, message=msg, block=self.name, fix=fix)

    def _failure(self, exc: Exception, values: Mapping[str, Any]) -> Failure:
        """Explain an exception raised while running this block inside a run."""
        missing = tuple(s.name for s in self._iface.inputs if s.required and s.name not in values)
        if missing and isinstance(exc, KeyError):
            # The values are read before the call, so the block itself never started.
            return Failure(MISSING, names=missing, node=self.name)
        return Failure(BLOCK, exc, block=self.name)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle by reference, as functions are: the module attribute *is* the block, or (for
        # a renamed, bound or named copy) the block or function it is rebuilt from.
        module, qualname = self.fn.__module__, self.fn.__qualname__
        found: object
        try:
            found = _lookup(module, qualname)
        except (ImportError, AttributeError):
            found = None
        if found is self:
            return (_lookup, (module, qualname))
        if found is self.fn or (isinstance(found, Block) and found.fn is self.fn):
            options = (self.name, self.output, self.cache, self.renames, self.bound)
            return (_rebuild, (module, qualname, options))
        raise _unpicklable(self, imported=found is not None)

    # Blocks are immutable, so a copy is the block itself (as for functions); a deep copy also
    # copies bound values. Neither goes through pickling, so local blocks copy too.
    def __copy__(self) -> Block[P, R]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Block[P, R]:
        if not self.bound:
            return self
        return attrs.evolve(self, bound=copy.deepcopy(self.bound, memo))


def _unpicklable(blk: Block[..., Any], *, imported: bool) -> BlockPicklingError:
    module, qualname = blk.fn.__module__, blk.fn.__qualname__
    parts = qualname.split(".")
    if "<locals>" in parts:
        why = "it is defined inside a function"
    elif "<lambda>" in parts:
        why = "its function is a lambda, which has no name to be found by"
    elif not imported:
        why = f"pickle can't find `{module}.{qualname}`"
    else:
        why = f"`{module}.{qualname}` is another object, not this block's function"
    msg = (
        f"can't pickle block `{blk.name}` (function `{module}.{qualname}`): blocks pickle by "
        f"reference, like functions, and {why}. Define the block with `def` at module level "
        "of an importable module, or run it on threads instead of processes."
    )
    return BlockPicklingError(msg, block=blk.name, qualname=f"{module}.{qualname}")


def _adapted_annotations(
    fn: Callable[..., Any], rename: dict[str, str], bound: dict[str, Any]
) -> dict[str, Any]:
    """The function's annotations, for the parameters of the adapted signature (if any)."""
    annotations: dict[str, Any] = fn.__annotations__
    if not (rename or bound):
        return annotations  # the very dict, as functools.update_wrapper shares it
    adapted: dict[str, Any] = {}
    for key, value in annotations.items():
        new = key if key == "return" else rename.get(key, key)
        if key == "return" or new not in bound:
            adapted[new] = value
    return adapted


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _lookup(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rebuild(module: str, qualname: str, options: tuple[Any, ...]) -> Block[..., Any]:
    name, output, cache, renames, bound = options
    found: Any = _lookup(module, qualname)
    fn: Callable[..., Any] = found.fn if isinstance(found, Block) else found
    base: Block[..., Any] = block(fn, name=name, output=output, cache=cache)
    return attrs.evolve(base, renames=renames, bound=bound)


def _adapted_signature(blk: Block[..., Any]) -> inspect.Signature:
    rename = dict(blk.renames)
    bound = dict(blk.bound)
    params: list[inspect.Parameter] = []
    for param in inspect.signature(blk.fn).parameters.values():
        name = rename.get(param.name, param.name)
        if name not in bound:
            params.append(param.replace(name=name))
    return inspect.signature(blk.fn).replace(parameters=params)


@overload
def block(
    fn: Callable[P, R], /, *, name: str | None = None, output: str | None = None, cache: bool = True
) -> Block[P, R]: ...
@overload
def block(
    *, name: str | None = None, output: str | None = None, cache: bool = True
) -> Callable[[Callable[P, R]], Block[P, R]]: ...
def block(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    output: str | None = None,
    cache: bool = True,
) -> Block[P, R] | Callable[[Callable[P, R]], Block[P, R]]:
    """Make a function a block: inputs from its parameters, outputs from its return annotation.

    Args:
        fn: the function (when used as ``@block`` without parentheses).
        name: the block's name; the function's ``__name__`` by default.
        output: the name of the single value the function returns, for functions that do not
            return a NamedTuple.
        cache: whether a pipeline cache may serve this block's results; turn it off for blocks
            with side effects or hidden randomness.

    Examples:
        >>> @block(output="doubled")
        ... def double(x: int) -> int:
        ...     return 2 * x
        >>> double(2), double.run(x=3)["doubled"]
        (4, 6)
    """
    namespace = caller_namespace()  # captured here, for both the bare and the called form

    def decorate(function: Callable[P, R]) -> Block[P, R]:
        if isinstance(function, Block):
            function = function.fn
        label = name if name is not None else getattr(function, "__name__", repr(function))
        spec = read_function(function, name=label, output=output, namespace=namespace)
        return Block(function, name=label, spec=spec, output=output, cache=cache)

    return decorate if fn is None else decorate(fn)
