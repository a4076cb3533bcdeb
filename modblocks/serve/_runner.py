"""Running one job on a pipeline: progress messages, previews, and a JSON-ready result."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from modblocks._engine import Step
from modblocks._events import Event
from modblocks._pipeline import Pipeline
from modblocks._specs import OutputSpec
from modblocks._state import State

from ._fields import _has_class, _is_json
from ._images import encode_png, is_image, preview
from ._runs import Job

__all__ = ["PipelineRunner", "default_outputs", "encode_value", "with_generators"]


def default_outputs(outputs: Sequence[OutputSpec]) -> tuple[str, ...]:
    """``images`` when the pipeline makes it; else every output that JSON can carry."""
    names = [spec.name for spec in outputs]
    if "images" in names:
        return ("images",)
    return tuple(
        spec.name
        for spec in outputs
        if _is_json(spec.type) or _has_class(spec.type, "PIL", "Image")
    )


def encode_value(value: Any) -> Any:
    """*value* for JSON: PIL images as base64 PNG, lists of them as lists; None if it can't."""
    if is_image(value):
        return encode_png(value)
    if isinstance(value, (list, tuple)):
        items: list[Any] = [encode_value(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
        return None if any(i is None for i in items) and value else items
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return None


def with_generators(inputs: Mapping[str, Any], seeds: Mapping[str, int]) -> dict[str, Any]:
    """The inputs of a job with a seeded `torch.Generator` for each of its seeds."""
    if not seeds:
        return dict(inputs)
    import torch

    generators = {name: torch.Generator().manual_seed(seed) for name, seed in seeds.items()}
    return {**inputs, **generators}


class PipelineRunner:
    """Runs jobs on *pipe* in the calling thread (a `RunManager` worker).

    Progress messages: ``block`` when a block outside loops starts, ``cached`` when a block
    or loop is served from the pipeline's cache, ``step`` after each loop step (*index* of
    *total*, counted from 1, and the loop's path), and ``preview`` (a PNG of the value
    *preview_value*, see `preview`) every ``job.preview_every`` steps and after the last.
    Previews need the loop's steps, so a loop the cache holds runs again when they are asked.

    Args:
        pipe: the pipeline (thread-safe: one runner serves every worker).
        outputs: the outputs each result holds.
        preview_value: the state value drawn in previews.
    """

    def __init__(
        self, pipe: Pipeline, outputs: Sequence[str], preview_value: str = "latents"
    ) -> None:
        self.pipe = pipe
        self.outputs = tuple(outputs)
        self.preview_value = preview_value

    def __call__(self, job: Job) -> dict[str, Any]:
        """Run *job*; return ``{"outputs": {...}, "seeds": {...}, "cached": [...], ...}``."""
        cached: list[str] = []

        def events(event: Event) -> None:
            if event.kind == "cached":
                cached.append(event.path)
                job.emit({"type": "cached", "path": event.path})
            elif event.kind == "step" and event.index is not None:
                index = event.index + 1
                job.emit({"type": "step", "index": index, "total": event.total, "path": event.path})
            elif event.kind == "started" and "[step" not in event.path:
                job.emit({"type": "block", "path": event.path})

        def on_step(step: Step) -> None:
            every = job.preview_every
            if (step.index + 1) % every == 0 or step.index + 1 == step.total:
                self._preview(job, step.state, step.index + 1)

        began = time.perf_counter()
        # A step callback makes loops run step by step even when the cache holds their result
        # (a callback may change the state): ask for one only when previews are wanted.
        state = self.pipe.run(
            **with_generators(job.inputs, job.seeds),
            on_step=on_step if job.preview_every > 0 else None,
            events=events,
            cancel=job.cancel,
        )
        seconds = time.perf_counter() - began
        encoded = {name: encode_value(state[name]) for name in self.outputs if name in state}
        return {
            "outputs": {k: v for k, v in encoded.items() if v is not None},
            "seeds": dict(job.seeds),
            "cached": cached,
            "seconds": seconds,
        }

    def _preview(self, job: Job, state: State, index: int) -> None:
        value = state.get(self.preview_value)
        torch_tensor = getattr(value, "detach", None)
        if torch_tensor is None or getattr(value, "ndim", 0) not in (3, 4):
            return
        job.emit({"type": "preview", "index": index, "png": encode_png(preview(value))})
