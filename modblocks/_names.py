"""Names: what a value or a sub-block may be called, and suggestions for misspelt ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Final, cast

from .exceptions import WiringError

__all__ = ["RUN_OPTIONS", "check_identifier", "check_not_reserved", "did_you_mean", "listed"]

RUN_OPTIONS: Final = frozenset({"on_step", "events", "cancel", "cache", "resume"})
"""Keyword arguments of `Node.run`: no input may be called so, or `run` couldn't be given it."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` Did you mean `x`?`` for the closest choice, or an empty string.

    Examples:
        >>> did_you_mean("prompt_embed", ["prompt_embeds", "latents"])
        ' Did you mean `prompt_embeds`?'
    """
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean `{close[0]}`?" if close else ""


def listed(names: Iterable[str]) -> str:
    """Spell names for a message: ```a`, `b```, or ``nothing``."""
    return ", ".join(f"`{n}`" for n in names) or "nothing"


def check_identifier(name: str, node: str) -> None:
    """Raise `WiringError` unless *name* can name a value or a sub-block of *node*."""
    if not isinstance(cast("object", name), str) or not name.isidentifier():
        msg = f"`{node}`: {name!r} is not a valid name. Use a Python identifier."
        raise WiringError(msg, name=str(name), consumer=node)


def check_not_reserved(name: str, node: str) -> None:
    """Raise `WiringError` when *name* would be taken by `run` as one of its own options."""
    if name in RUN_OPTIONS:
        msg = (
            f"`{node}` can't read or write a value called `{name}`: `run({name}=...)` is a run "
            f"option, so the value could never be given. Rename it, e.g. "
            f"`.rename({name}='{name}_value')`, or rename the parameter."
        )
        raise WiringError(msg, name=name, consumer=node)
