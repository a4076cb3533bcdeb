"""The errors modblocks raises.

Every error derives from `ModblocksError` and from the builtin a plain-function user would
expect for the same mistake. Each is built as ``Error(message, **fields)``: the finished
message is the only positional argument and the structured data are keyword attributes, so
errors compare by their fields in tests and survive `pickle`.
"""

from __future__ import annotations

import enum
import pickle
import types
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal

import attrs

__all__ = [
    "BlockError",
    "BlockPicklingError",
    "BlocksChangedError",
    "CacheKeyError",
    "CancelledError",
    "DefaultsWarning",
    "DefinitionError",
    "FrozenStateError",
    "InputTypeError",
    "LoadError",
    "MapError",
    "MissingInputError",
    "ModblocksError",
    "OutputError",
    "PathError",
    "UnknownInputError",
    "UnknownOutputError",
    "UnknownValueError",
    "UntrustedCodeError",
    "WiringError",
]


class ModblocksError(Exception):
    """Base class of every error raised by modblocks."""

    def __init__(self, message: str = "", /, **fields: Any) -> None:
        super().__init__(message)
        self.__dict__.update(fields)

    def __str__(self) -> str:
        # The message as written, also for errors that are KeyErrors (whose own __str__
        # would quote it).
        return str(self.args[0]) if self.args else ""

    # BaseException pickles as (class, args, __dict__): the message comes back as the one
    # positional argument and the fields through __dict__, so no __reduce__ is needed.


class DefinitionError(ModblocksError, TypeError):
    """A function can't be made a block (bad parameter kind, return annotation, ...)."""

    function: str | None = None
    parameter: str | None = None


class WiringError(ModblocksError, TypeError):
    """Composing nodes is inconsistent: incompatible types, conflicting components, bad names."""

    name: str | None = None
    producer: str | None = None
    consumer: str | None = None


class MissingInputError(ModblocksError, TypeError):
    """Required inputs were not given (all of them are listed at once)."""

    node: str | None = None
    names: tuple[str, ...] = ()
    path: str = ""
    state: Any = None


class InputTypeError(ModblocksError, TypeError, ValueError):
    """A value given to a run is not of the type its first reader declares, or not usable.

    A `TypeError`, and a `ValueError` for values of the right type that can't be used (a
    ``batch_size`` of 0).
    """

    node: str | None = None
    name: str | None = None
    expected: Any = None
    path: str = ""
    state: Any = None


class UnknownInputError(ModblocksError, TypeError):
    """Inputs were given that the node does not read."""

    node: str | None = None
    names: tuple[str, ...] = ()


class UnknownOutputError(ModblocksError, KeyError):
    """``output=`` names a value the pipeline does not produce."""

    node: str | None = None
    names: tuple[str, ...] = ()
    state: Any = None


class UnknownValueError(ModblocksError, KeyError, AttributeError):
    """A `State` has no value of that name (``state["x"]``, ``state.x``); says the closest one.

    A `KeyError` (as mappings raise) and an `AttributeError` (as attributes do), so
    ``state.get``, ``in``, ``hasattr`` and ``getattr(state, name, default)`` work as usual.
    """

    name: str | None = None


class OutputError(ModblocksError, TypeError):
    """A block returned something other than what its return annotation declares."""

    block: str | None = None
    path: str = ""
    state: Any = None


class BlockError(ModblocksError, RuntimeError):
    """A block raised: ``__cause__`` is the original error, ``.path`` and ``.state`` say where.

    ``.state`` is the last good state: the values computed before the failure, so nothing
    finished is lost. ``node.run(err.state, resume=err.path, ...)`` resumes from the failed block.
    """

    block: str | None = None
    path: str = ""
    state: Any = None


class CancelledError(ModblocksError, RuntimeError):
    """A run was cancelled through its cancellation token; ``.state`` holds what was computed."""

    path: str = ""
    state: Any = None


class PathError(ModblocksError, KeyError, ValueError):
    """A path (``resume=``, ``node[path]``, ``insert(after=...)``) is not one, or names nothing.

    A `KeyError` (no such sub-block) and a `ValueError` (text that isn't a path), so either
    ``except`` clause catches it.
    """

    path: str = ""
    node: str | None = None


class FrozenStateError(ModblocksError, attrs.exceptions.FrozenInstanceError, TypeError):
    """A `State` was changed in place (``state.x = 1``, ``state["x"] = 1``): it never changes.

    Also attrs' `FrozenInstanceError` (an `AttributeError`) and a `TypeError`, as the builtin
    mappings raise for item assignment.
    """

    name: str | None = None

    def __init__(self, message: str = "", /, **fields: Any) -> None:
        BaseException.__init__(self, message)  # attrs' FrozenError takes no message
        self.msg = message
        self.__dict__.update(fields)


class CacheKeyError(ModblocksError, ValueError):
    """A value given to a cached run can't be named by a key (a container that holds itself)."""

    path: str = ""
    state: Any = None


class BlockPicklingError(ModblocksError, pickle.PicklingError):
    """A block that pickle can't find again by its module and qualified name."""

    block: str | None = None
    qualname: str | None = None


class LoadError(ModblocksError, OSError):
    """A component, folder or Hub repo can't be found or loaded (also an `OSError`).

    Raised by `Pipeline.from_pretrained`, lazy components when they load, and `load_blocks`.
    ``.path`` is the folder, Hub id or component (``folder/unet``) it was about.
    """

    path: str = ""


class UntrustedCodeError(ModblocksError, PermissionError):
    """`load_blocks` was asked to import code without ``trust_remote_code=True``.

    ``.hash`` is the digest of the code it would run: pass it as ``pin=`` with the trust, so
    what runs is what you read.
    """

    path: str = ""
    hash: str = ""


class BlocksChangedError(ModblocksError, ValueError):
    """The code `load_blocks` found is not the code it was pinned to (``pin=``, or loaded before).

    ``.expected`` is the pinned hash, ``.found`` the hash of the files there now.
    """

    path: str = ""
    expected: str = ""
    found: str = ""


class DefaultsWarning(UserWarning):
    """Two blocks of one sequence give the same input different defaults; the first one wins."""


class _Failed(enum.Enum):
    FAILED = enum.auto()

    def __repr__(self) -> str:
        return "MapError.FAILED"


FAILED: Final = _Failed.FAILED
"""Stands in `MapError.results` for an item that failed."""


class MapError(ModblocksError, RuntimeError):
    """Some items of `Pipeline.map` failed; the results of the others are kept.

    Attributes:
        results: one entry per input item, in input order: its result, or `MapError.FAILED`
            for an item that failed.
        failures: the exception of each failed item, by its index in the inputs.
        inputs: the inputs of each failed item, by index (to run them again).

    Examples:
        ``except mb.MapError as err: retry = pipe.map(err.inputs.values())`` runs the failed
        items again; ``[r for r in err.results if r is not err.FAILED]`` are the good ones.
    """

    FAILED: ClassVar[Literal[_Failed.FAILED]] = FAILED
    results: Sequence[Any] = ()
    failures: Mapping[int, BaseException] = types.MappingProxyType({})
    inputs: Mapping[int, Any] = types.MappingProxyType({})
