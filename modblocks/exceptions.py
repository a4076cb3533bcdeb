"""The errors modblocks raises.

Every error derives from `ModblocksError` and from the builtin a plain-function user would
expect for the same mistake. Each is built as ``Error(message, **fields)``: the finished
message is the only positional argument and the structured data are keyword attributes, so
errors compare by their fields in tests and survive `pickle`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BlockError",
    "CancelledError",
    "DefinitionError",
    "MissingInputError",
    "ModblocksError",
    "OutputError",
    "UnknownInputError",
    "WiringError",
]


class ModblocksError(Exception):
    """Base class of every error raised by modblocks."""

    def __init__(self, message: str = "", /, **fields: Any) -> None:
        super().__init__(message)
        self.__dict__.update(fields)

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


class UnknownInputError(ModblocksError, TypeError):
    """Inputs were given that the node does not read."""

    node: str | None = None
    names: tuple[str, ...] = ()


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
