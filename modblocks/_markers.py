"""`Component[T]` and `Config[T]`: inputs that a pipeline binds once instead of per call.

Both are `Annotated[T, marker]`, so type checkers see plain ``T`` while modblocks finds the
marker in the hints it reads when decorating.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeAlias, TypeVar

__all__ = ["COMPONENT", "CONFIG", "Component", "Config", "Kind"]

T = TypeVar("T")


class Kind:
    """A marker that puts an input in a category: a component, a config."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return self.label.upper()

    def __reduce__(self) -> str:
        return self.label.upper()


COMPONENT: Final = Kind("component")
CONFIG: Final = Kind("config")

Component: TypeAlias = Annotated[T, COMPONENT]
"""A model, scheduler, tokenizer, ...: bound once by a `Pipeline`, typed as plain ``T``."""

Config: TypeAlias = Annotated[T, CONFIG]
"""A setting bound once by a `Pipeline` (usually with a default), typed as plain ``T``."""
