"""Run events (block started, served from cache, finished, loop step) and the run report."""

from __future__ import annotations

from typing import Literal, TypeAlias

import attrs

__all__ = ["Event", "EventKind", "Report"]

EventKind: TypeAlias = Literal["started", "finished", "cached", "step"]


@attrs.frozen
class Event:
    """Something that happened in a run, passed to ``run(..., events=fn)``.

    Attributes:
        kind: ``"started"``, ``"finished"`` (with *seconds*), ``"cached"`` (served from a
            cache instead of running) or ``"step"`` (a loop finished step *index* of *total*).
        path: where, e.g. ``"text2img > denoise[step 3] > unet"`` or ``"text2img > denoise"``.
        seconds: how long the block ran, for ``"finished"``.
        index: the step number, for ``"step"``.
        total: the number of steps, for ``"step"``.
    """

    kind: EventKind
    path: str
    seconds: float | None = None
    index: int | None = None
    total: int | None = None


_new = object.__new__
_set_kind, _set_path, _set_seconds, _set_index, _set_total = (
    Event.__dict__[name].__set__ for name in ("kind", "path", "seconds", "index", "total")
)


def make_event(
    kind: EventKind,
    path: str,
    seconds: float | None = None,
    index: int | None = None,
    total: int | None = None,
) -> Event:
    """`Event(...)` for the engine, through the slots' own setters (a few per block matter)."""
    event: Event = _new(Event)
    _set_kind(event, kind)
    _set_path(event, path)
    _set_seconds(event, seconds)
    _set_index(event, index)
    _set_total(event, total)
    return event


@attrs.define
class Report:
    """Collects the events of a run: pass it as ``events=`` and print it afterwards.

    Examples:
        >>> report = Report()
        >>> report(Event("finished", "a", seconds=0.002)); report(Event("cached", "b"))
        >>> print(report)
        block  status  ms
        -----  ------  ---
        a      ran     2.0
        b      cached  -
        >>> report.ran, report.cached
        (['a'], ['b'])
    """

    events: list[Event] = attrs.Factory(list[Event])

    def __call__(self, event: Event) -> None:
        """Record *event* (a `Report` is itself an events callback)."""
        self.events.append(event)

    @property
    def ran(self) -> list[str]:
        """The paths of the blocks that ran, in order."""
        return [e.path for e in self.events if e.kind == "finished"]

    @property
    def cached(self) -> list[str]:
        """The paths of the blocks (and loops) served from the cache, in order."""
        return [e.path for e in self.events if e.kind == "cached"]

    @property
    def seconds(self) -> float:
        """The time spent running blocks (nested loops' blocks included)."""
        return sum(e.seconds or 0.0 for e in self.events if e.kind == "finished")

    def rows(self) -> list[tuple[str, str, float | None]]:
        """One row per block: path, ``"ran"`` or ``"cached"``, and milliseconds."""
        return [
            (e.path, "ran" if e.kind == "finished" else "cached", _ms(e.seconds))
            for e in self.events
            if e.kind in ("finished", "cached")
        ]

    def __str__(self) -> str:
        rows = [(p, s, "-" if ms is None else f"{ms:.1f}") for p, s, ms in self.rows()]
        header = ("block", "status", "ms")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, tuple("-" * w for w in widths), *rows]
        ]
        return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000
