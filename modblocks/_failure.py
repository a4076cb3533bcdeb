"""`Failure`: how an error travels up through a run, and the public error it becomes at the top.

Every compiled unit raises only `Failure` (the block's own exception is its ``cause``); each
enclosing node adds its segment on the way up, so the path costs nothing until something fails.
"""

from __future__ import annotations

from typing import Any, Final

from ._names import listed
from ._paths import Path, Segment
from ._state import State
from .exceptions import (
    BlockError,
    CancelledError,
    InputTypeError,
    MissingInputError,
    ModblocksError,
    OutputError,
)

__all__ = [
    "BLOCK",
    "CANCELLED",
    "ERROR",
    "MISSING",
    "OUTPUT",
    "TYPE",
    "Failure",
    "missing_message",
]

BLOCK: Final = "block"
MISSING: Final = "missing"
OUTPUT: Final = "output"
CANCELLED: Final = "cancelled"
TYPE: Final = "type"
ERROR: Final = "error"  # a finished modblocks error (the cause), to be given its path and state


class Failure(Exception):
    """Carries a failure up through the nodes, each adding its segment to the path."""

    def __init__(
        self, kind: str, cause: BaseException | None = None, message: str = "", **fields: Any
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.cause = cause
        self.message = message
        self.fields = fields
        self.segments: list[Segment] = []  # innermost first
        self._step: int | None = None

    def add(self, name: str) -> Failure:
        """Add the segment of an enclosing node (with the step a loop marked on it)."""
        self.segments.append(Segment(name, self._step))
        self._step = None
        return self

    def at_step(self, index: int) -> Failure:
        """Mark the loop step where it happened, on the loop's segment added next."""
        self._step = index
        return self

    @property
    def path(self) -> Path:
        """The path from the root, outermost first."""
        return Path.of(reversed(self.segments))


def missing_message(node: str, missing: tuple[str, ...]) -> str:
    """Say which required inputs are missing and how to give them."""
    what, it = ("input", "it") if len(missing) == 1 else ("inputs", "them")
    return (
        f"`{node}` is missing required {what} {listed(missing)}. "
        f"Pass {it} to `run(...)` or bind {it} with `.bind(...)`."
    )


def to_error(failure: Failure, state: State) -> ModblocksError:
    """Turn a failure that reached the top of a run into the public error."""
    path = failure.path
    fields = failure.fields
    if failure.kind == BLOCK:
        cause = failure.cause
        block = fields.get("block") or (path.segments[-1].name if path.segments else "")
        what = failure.message or f"raised {type(cause).__name__}: {cause}"
        msg = (
            f"block `{block}` {what} (at `{path}`). "
            "`err.state` holds the values computed before it; fix the cause and resume with "
            "`node.run(err.state, resume=err.path, ...)`."
        )
        return BlockError(msg, block=block, path=path, state=state)
    if failure.kind == OUTPUT:
        block = fields.get("block", "")
        msg = f"{failure.message} (at `{path}`). {fields.get('fix', '')}".rstrip()
        return OutputError(msg, block=block, path=path, state=state)
    if failure.kind == MISSING:
        names = fields["names"]
        where = fields.get("node") or str(path)
        why = fields.get("why") or (
            f"no earlier block produced {'it' if len(names) == 1 else 'them'}"
        )
        msg = f"{missing_message(where, names)} (at `{path}`: {why}).{fields.get('hint', '')}"
        return MissingInputError(msg, node=where, names=names, path=path, state=state)
    if failure.kind == ERROR and isinstance(failure.cause, ModblocksError):
        error = failure.cause
        error.__dict__.update(path=path, state=state)
        error.args = (f"{error} (at `{path}`)",)
        return error
    if failure.kind == TYPE:
        msg = f"{failure.message} (at `{path}`). {fields.get('fix', '')}".rstrip()
        details = {k: v for k, v in fields.items() if k != "fix"}
        return InputTypeError(msg, path=path, state=state, **details)
    msg = (
        f"the run was cancelled before `{path}` ran. `err.state` holds the values computed so "
        "far; `node.run(err.state, resume=err.path)` goes on from there."
    )
    return CancelledError(msg, path=path, state=state)
