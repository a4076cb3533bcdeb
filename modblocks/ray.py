"""Run a pipeline over a Ray Data dataset: one pipeline per actor, loaded once.

Install with ``pip install "modblocks[ray]"``. The dataset's columns named like the
pipeline's inputs are its inputs (other columns pass through unchanged), and each output
asked for becomes a column. The pipeline travels to each actor once, as its pickled
components or as a factory that builds it there (``Pipeline.from_pretrained`` from a path
every node can read is the cheapest for large models).

Example:
    ```python
    import ray
    import modblocks.ray

    ds = ray.data.from_items([{"prompt": "a cat"}, {"prompt": "a dog"}])
    images = modblocks.ray.map_batches(ds, pipe, output="images", concurrency=2)
    ```
"""

from __future__ import annotations

import functools
import pickle
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ._map import MapError, _batched_names, _collect, _dumps, _plan, run_items
from ._pipeline import Pipeline
from .exceptions import ModblocksError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from ray.data import Dataset

__all__ = ["PipelineActor", "map_batches", "pipeline_factory"]


def _load(payload: bytes) -> Pipeline:
    return cast("Pipeline", pickle.loads(payload)())  # noqa: S301 - our own payload


def pipeline_factory(pipe: Pipeline) -> Callable[[], Pipeline]:
    """Return a picklable function that rebuilds *pipe* (blocks, components and configs).

    The function holds the pickled components; calling it in another process loads them
    once. `map_batches` uses it to send a `Pipeline` to its actors.
    """
    return functools.partial(_load, _dumps(pipe))


class PipelineActor:
    """What each actor of `map_batches` holds: a pipeline, run on batches of rows.

    Ray builds one per actor (so the pipeline loads once per actor) and calls it with batches
    in NumPy format: a mapping of column names to arrays, one element per row.

    Args:
        pipeline: a `Pipeline`, or a picklable function of no arguments that returns one,
            called once in the actor (for example ``functools.partial(
            mb.Pipeline.from_pretrained, path, blocks)``).
        output: the output to add as a column, or several names (one column each).
        batch: the inputs stacked into one pipeline call for the rows of a batch; None for
            those annotated like ``str | list[str]`` (see `Pipeline.map`).
    """

    def __init__(
        self,
        pipeline: Pipeline | Callable[[], Pipeline],
        *,
        output: str | Sequence[str] = "images",
        batch: Collection[str] | None = None,
    ) -> None:
        pipe = pipeline if isinstance(pipeline, Pipeline) else pipeline()
        if not isinstance(cast("object", pipe), Pipeline):
            msg = (
                f"the pipeline factory returned {type(pipe).__name__}, not an `mb.Pipeline`. "
                "Pass a `Pipeline` or a function that returns one."
            )
            raise ModblocksError(msg)
        self.pipeline = pipe
        self.output = output
        self.batched = _batched_names(pipe, batch)
        self.inputs = tuple(spec.name for spec in pipe.blocks.inputs)

    def __call__(self, rows: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Run the pipeline on each row of *rows* and add the output column(s)."""
        columns = [name for name in self.inputs if name in rows]
        count = len(next(iter(rows.values()))) if rows else 0
        items = [{name: _python(rows[name][i]) for name in columns} for i in range(count)]
        outcomes: dict[int, tuple[bool, Any]] = {}
        for chunk in _plan(items, max(count, 1), self.batched):
            chunk_items = [items[i] for i in chunk.indices]
            results = run_items(self.pipeline, chunk_items, self.output, chunk.stack)
            outcomes.update(zip(chunk.indices, results, strict=True))
        try:
            results = _collect(items, outcomes, [], ordered=True)
        except MapError as error:
            error.add_note("modblocks.ray: in a batch of rows (indices count from its first row).")
            raise
        out = dict(rows)
        if isinstance(self.output, str):
            out[self.output] = _column(results)
        else:
            for position, name in enumerate(self.output):
                out[name] = _column([result[position] for result in results])
        return out


def map_batches(
    dataset: Dataset,
    pipeline: Pipeline | Callable[[], Pipeline],
    *,
    output: str | Sequence[str] = "images",
    batch_size: int = 1,
    batch: Collection[str] | None = None,
    concurrency: int | tuple[int, int] = 1,
    **options: Any,
) -> Dataset:
    """Run *pipeline* on every row of *dataset* with an actor pool; return the new dataset.

    Args:
        dataset: rows whose columns named like the pipeline's inputs are its inputs; other
            columns pass through.
        pipeline: a `Pipeline` (its components are pickled and sent once to each actor), or
            a picklable function of no arguments that builds one in each actor.
        output: the output to add as a column, or several names (one column each).
        batch_size: rows per call of an actor; rows whose other inputs are equal are stacked
            into one pipeline call on their batched inputs, as `Pipeline.map` does.
        batch: the inputs stacked as lists; None for those annotated like ``str | list[str]``.
        concurrency: the number of actors (each holding one pipeline), or ``(min, max)``
            for a pool that grows with the work (a `ray.data.ActorPoolStrategy`).
        **options: passed to `ray.data.Dataset.map_batches` (``num_cpus``, ``num_gpus``,
            ``memory``, ``accelerator_type``, ...).

    Returns:
        The lazily computed dataset with the output column(s).

    Raises:
        MapError: (when the dataset is computed) rows failed; Ray wraps it in its task error.
    """
    from ray.data import ActorPoolStrategy

    factory = pipeline_factory(pipeline) if isinstance(pipeline, Pipeline) else pipeline
    if isinstance(concurrency, tuple):
        pool = ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ActorPoolStrategy(size=concurrency)
    return dataset.map_batches(
        PipelineActor,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"pipeline": factory, "output": output, "batch": batch},
        compute=pool,
        **options,
    )


def _python(value: Any) -> Any:
    """Turn a NumPy scalar of a column into the Python value a block expects (`str`, `int`)."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", None) == 0:
        return item()
    return value


def _column(values: list[Any]) -> NDArray[Any]:
    """One column from per-row results: stacked arrays where they fit, else Python objects."""
    import numpy as np

    torch = sys.modules.get("torch")
    if torch is not None:
        values = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for v in values]
    arrays: list[NDArray[Any]] = [v for v in values if isinstance(v, np.ndarray)]
    if values and len(arrays) == len(values):
        first = arrays[0]
        if all(a.shape == first.shape and a.dtype == first.dtype for a in arrays):
            return np.stack(arrays)
    if all(isinstance(v, (int, float, str, bool)) for v in values):
        return np.asarray(values)
    column: np.ndarray[Any, np.dtype[np.object_]] = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        column[index] = value
    return column
