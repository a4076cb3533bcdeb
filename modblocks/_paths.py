"""Paths: where a block sits in a run (``text2img > denoise[step 12] > scheduler_step``).

A `Path` is a value made of segments (`Segment`), formatted once. It is also the string it
prints as, so ``err.path == "outer > denoise[step 2] > unet"`` holds and paths read well in
messages. `parse` turns a path the user wrote back into segments; nothing else in modblocks
parses path text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple, Self, cast

from .exceptions import PathError

__all__ = ["Path", "Segment", "parse"]


class Segment(NamedTuple):
    """One step down a path: a sub-block's name, and the loop step for a loop."""

    name: str
    step: int | None = None

    def __str__(self) -> str:
        return self.name if self.step is None else f"{self.name}[step {self.step}]"


class Path(str):  # noqa: SLOT000 - a str subclass can't have non-empty __slots__
    """Where a block sits in a run: a string such as ``text2img > denoise[step 3] > unet``.

    Compares and prints as that string; ``path.segments`` holds the structure (a tuple of
    `Segment`), and ``resume=`` takes either form.

    Examples:
        >>> p = Path.of([Segment("text2img"), Segment("denoise", 3), Segment("unet")])
        >>> p, p.segments[1].step
        ('text2img > denoise[step 3] > unet', 3)
    """

    segments: tuple[Segment, ...]

    @classmethod
    def of(cls, segments: Iterable[Segment]) -> Self:
        """Make the path of *segments*, outermost first."""
        parts = tuple(segments)
        path = super().__new__(cls, " > ".join(map(str, parts)))
        path.segments = parts
        return path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (tuple(tuple(s) for s in self.segments),))

    def __repr__(self) -> str:
        return str.__repr__(self)


def _rebuild(segments: tuple[tuple[str, int | None], ...]) -> Path:
    return Path.of(Segment(*s) for s in segments)


_SEGMENT = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\[\s*step\s+(\d+)\s*\])?\s*$")


def parse(path: str | Path) -> tuple[Segment, ...]:
    """Return the segments of *path*, or raise `PathError` for text that is not a path.

    Examples:
        >>> parse("outer > denoise[step 2] > unet")
        (Segment(name='outer', step=None), Segment(name='denoise', step=2), Segment(name='unet', step=None))
    """  # noqa: E501 - a doctest line
    if isinstance(path, Path):
        return path.segments
    if not isinstance(cast("object", path), str):  # user input
        msg = (
            f"a path is a string such as 'text2img > denoise[step 3]' (or `err.path`), "
            f"not {type(path).__name__} {path!r}."
        )
        raise PathError(msg, path=repr(path))
    segments: list[Segment] = []
    for part in path.split(">"):
        match = _SEGMENT.match(part)
        if match is None:
            msg = (
                f"{path!r} is not a path: {part.strip()!r} should be a name, or a loop's name "
                "with its step such as `denoise[step 3]`. Parts are joined by ` > `."
            )
            raise PathError(msg, path=path)
        name, step = match.groups()
        segments.append(Segment(name, None if step is None else int(step)))
    return tuple(segments)
