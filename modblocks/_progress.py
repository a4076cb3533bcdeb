"""Progress bars for loops: one global setting that reaches every loop, nested ones too."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any, Protocol, Self

__all__ = ["Bar", "open_bar", "progress", "settings"]

_lock = threading.Lock()
_settings: dict[str, Any] = {"disable": False, "min_steps": 10, "leave": None}


class Bar(Protocol):
    """What a loop needs from a progress bar (tqdm has it)."""

    def update(self, n: int = 1) -> object: ...
    def close(self) -> None: ...


def settings() -> dict[str, Any]:
    """Return a copy of the current global progress settings."""
    return dict(_settings)


class progress(contextlib.ContextDecorator):  # noqa: N801 - a function-style entry point
    """Configure the progress bars of every loop; usable as a call or a ``with`` block.

    Bars show by default for loops of ``min_steps`` steps or more, on a terminal or not (as in
    diffusers): ``disable=True`` hides them, ``disable=None`` lets tqdm hide them where the
    output is not a terminal (CI logs), ``min_steps`` is the shortest loop that gets a bar,
    and every other keyword goes to `tqdm.tqdm` (``file=``, ``ncols=``, ``colour=`` ...).
    Per-loop settings (``mb.loop(..., progress=...)``) take precedence.

    Examples:
        >>> with progress(disable=True):
        ...     settings()["disable"]
        True
        >>> settings()["disable"]
        False
    """

    def __init__(self, **options: Any) -> None:
        with _lock:
            self._previous = dict(_settings)
            _settings.update(options)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _settings.clear()
            _settings.update(self._previous)


def open_bar(
    total: int, desc: str, option: bool | Mapping[str, Any] | None, initial: int = 0
) -> Bar | None:
    """Open a bar for a loop of *total* steps, or return None when none should show.

    A resumed loop starts its bar at *initial*, the step it resumes at.
    """
    if option is False:
        return None
    options = dict(_settings)
    if isinstance(option, Mapping):
        options.update(option)
    min_steps = options.pop("min_steps")
    if option is None and total < min_steps:
        return None
    if option is True:
        options["disable"] = False
    if options.get("disable"):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but keep running without it
        return None
    options.setdefault("desc", desc)
    if initial:
        options["initial"] = initial
    return tqdm(total=total, **options)  # type: ignore[no-any-return]
