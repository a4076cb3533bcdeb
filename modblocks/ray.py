"""Run a pipeline over a Ray Data dataset: one pipeline per actor, loaded once.

Install with ``pip install "modblocks[ray]"``. The dataset's columns named like the
pipeline's inputs are its inputs (other columns pass through unchanged), and each output
asked for becomes a column. The pipeline travels to each actor once, as its pickled
components or as a factory that builds it there (``Pipeline.from_pretrained`` from a path
every node can read is the cheapest for large models).

Examples:
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

__all__ = ["PipelineActor", "RayMapError", "map_batches", "pipeline_factory", "serve"]


class RayMapError(MapError):
    """The `MapError` of rows that failed in a `PipelineActor`.

    Ray re-raises an actor's error as an instance of a class derived from both its
    ``RayTaskError`` and the error's own class, so ``except mb.MapError`` catches it; that
    instance keeps the original in ``.cause``, and these properties read the fields from it
    (the class defaults of `MapError` would hide them otherwise).
    """

    @property
    def results(self) -> Sequence[Any]:
        """One entry per row of the batch: its result, or `MapError.FAILED`."""
        return cast("Sequence[Any]", _field(self, "results"))

    @results.setter
    def results(  # pyright: ignore[reportIncompatibleVariableOverride] - a property over a field
        self, value: Sequence[Any]
    ) -> None:
        self.__dict__["results"] = value

    @property
    def failures(self) -> Mapping[int, BaseException]:
        """The error of each failed row, by its index in the batch."""
        return cast("Mapping[int, BaseException]", _field(self, "failures"))

    @failures.setter
    def failures(  # pyright: ignore[reportIncompatibleVariableOverride] - a property over a field
        self, value: Mapping[int, BaseException]
    ) -> None:
        self.__dict__["failures"] = value

    @property
    def inputs(self) -> Mapping[int, Any]:
        """The inputs of each failed row, by index."""
        return cast("Mapping[int, Any]", _field(self, "inputs"))

    @inputs.setter
    def inputs(  # pyright: ignore[reportIncompatibleVariableOverride] - a property over a field
        self, value: Mapping[int, Any]
    ) -> None:
        self.__dict__["inputs"] = value


def _field(error: BaseException, name: str) -> Any:
    values = error.__dict__
    if name in values:
        return values[name]
    cause = values.get("cause")  # Ray's wrapper: the original error
    if isinstance(cause, MapError):
        return getattr(cause, name)
    return getattr(MapError, name)


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
            ray_error = RayMapError(
                str(error), results=error.results, failures=error.failures, inputs=error.inputs
            )
            ray_error.add_note(
                "modblocks.ray: in a batch of rows (indices count from its first row)."
            )
            raise ray_error from error.__cause__
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
        MapError: (when the dataset is computed) rows failed: a `RayMapError`, which Ray
            raises as its task error derived from it (``err.failures`` and ``err.inputs``
            are those of the failed batch). The dataset's `DataContext` is set to raise the
            original errors of maps (``raise_original_map_exception``) for that.
    """
    from ray.data import ActorPoolStrategy

    factory = pipeline_factory(pipeline) if isinstance(pipeline, Pipeline) else pipeline
    if isinstance(concurrency, tuple):
        pool = ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    else:
        pool = ActorPoolStrategy(size=concurrency)
    mapped = dataset.map_batches(
        PipelineActor,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"pipeline": factory, "output": output, "batch": batch},
        compute=pool,
        **options,
    )
    # Ray Data wraps an error of a map in its UserCodeException, and the MapError inside is
    # lost on the way back (an exception's cause does not pickle): ask for the original, so
    # that consuming the dataset raises a MapError the caller can catch.
    mapped.context.raise_original_map_exception = True
    return mapped


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


def serve(
    pipeline: Pipeline | Callable[[], Pipeline],
    *,
    num_replicas: int = 1,
    options: Any = None,
    name: str = "modblocks",
    route_prefix: str = "/",
    ray_actor_options: Mapping[str, Any] | None = None,
    blocks: Any = None,
) -> Any:
    """Deploy the app of `modblocks.serve` on Ray Serve, the pipeline on *num_replicas* replicas.

    One ingress replica holds the HTTP API, the page and the queue of runs (so a run's id
    is found by every request that follows it); it hands each run to one of *num_replicas*
    replicas that each hold the pipeline, and relays the progress they stream back.
    Install with ``pip install "modblocks[ray-serve]"``; start Ray Serve first if its HTTP
    address matters (``serve.start(http_options={"host": "127.0.0.1", "port": 8000})``).

    Args:
        pipeline: a `Pipeline` (its components are pickled and sent to each replica once),
            or a picklable function of no arguments that builds one in each replica.
        num_replicas: replicas holding the pipeline.
        options: a `modblocks.serve.ServeOptions` (limits, token, cache, concurrency: the
            runs at once across all replicas; by default one per replica).
        name: the Ray Serve application's name.
        route_prefix: where the app is served on Ray Serve's HTTP proxy.
        ray_actor_options: for each pipeline replica (default ``{"num_cpus": 1}``; add
            ``"num_gpus": 1`` for a GPU each).
        blocks: the pipeline's node, when *pipeline* is a factory (the ingress needs the
            signatures, not the models); read from the pipeline otherwise.

    Returns:
        The Ray Serve handle of the ingress deployment.
    """
    import attrs
    from ray import serve as ray_serve

    from .serve import ServeOptions
    from .serve._ray import Ingress, PipelineWorker

    if isinstance(pipeline, Pipeline):
        blocks = pipeline.blocks
        factory = pipeline_factory(pipeline)
    else:
        factory = pipeline
        if blocks is None:
            msg = "with a pipeline factory, pass `blocks=` (the node) for the request model."
            raise ModblocksError(msg)
    settings = options if options is not None else ServeOptions(concurrency=num_replicas)
    if options is None or options.concurrency < num_replicas:
        settings = attrs.evolve(settings, concurrency=max(settings.concurrency, num_replicas))
    worker = ray_serve.deployment(
        name=f"{name}-pipeline",
        num_replicas=num_replicas,
        ray_actor_options=dict(ray_actor_options or {"num_cpus": 1}),
        max_ongoing_requests=-(-settings.concurrency // num_replicas),  # runs per replica
    )(PipelineWorker).bind(factory, settings)
    ingress = ray_serve.deployment(
        name=f"{name}-ingress", num_replicas=1, ray_actor_options={"num_cpus": 0}
    )(cast("Any", ray_serve.ingress()(Ingress))).bind(worker, blocks, settings)
    return cast("Any", ray_serve.run(ingress, name=name, route_prefix=route_prefix))
