"""Step-level batching: concurrent runs of a pipeline share each model call of their loops.

`StepBatcher` is a hook. Around the blocks it batches (by default the noise predictions of
`modblocks.diffusion` and of the demo), it hands the block a stand-in for each model the
block reads. The stand-in's calls, from every run in flight, wait at a gate until each run
inside a loop that calls the model has made its call (or *max_wait* has passed); then each
group of stackable calls (see `_stacking`) runs as one call, in the thread of one of its
runs, and every run takes its own rows of the result back. The rest of each step (the
scheduler step, generators, callbacks, events, cancellation) stays in the run's own thread,
and runs come into the batch and leave it between steps. With *parallel* gates, each run
entering a loop goes to the least busy one, and the gates batch at their own pace.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Final, cast

import attrs

from ._codegen import Cursor
from ._engine import Hook, Run, UnitCall
from ._plan import BLOCK, LOOP, Call, Choice, Plan, Repeat, Scope, Seq
from ._stacking import layout, parameter_names, split, stack

__all__ = ["BatchStats", "StepBatcher"]

Values = dict[str, Any]

NOISE_PREDICTIONS: Final = ("predict_noise", "predict_noise_xl")
"""The blocks a `StepBatcher` batches by default: one plain UNet call per step each."""


@attrs.frozen
class BatchStats:
    """What a `StepBatcher` has done so far.

    Attributes:
        calls: model calls the runs made through it.
        batches: the batches that served them (a call that ran alone counts as one).
        largest: the most runs' calls served by one model call.
        fallbacks: stacked calls that failed (or gave a result that doesn't split) and were
            run again call by call, so that a failure belongs to the run that causes it.
        timeouts: batches that left after *max_wait* without the calls of every run in a
            loop. A run that missed one is not waited for again until its next call.
    """

    calls: int = 0
    batches: int = 0
    largest: int = 0
    fallbacks: int = 0
    timeouts: int = 0


class StepBatcher(Hook):
    """Batches the model calls of concurrent runs, step by step (continuous batching).

    Give it to a pipeline (``mb.Pipeline(..., hooks=[StepBatcher()])``) and run the pipeline
    from several threads (a server's workers, a thread pool): at each step, the runs inside
    the denoising loop make one model call together instead of one each. Runs join and leave
    between steps; each keeps its own generator, scheduler, callbacks and cancel token.

    Which calls share one model call: those to the same model, by the same method, in the
    same grad mode, whose tensors have the same shape but for the first dimension (so the
    same image size, and prompt length), and whose other arguments are equal. The step (the
    ``timestep``) and the number of steps may differ, as may everything the model doesn't
    see (guidance scale, seed, scheduler). Other calls run alone, as does every call of a
    model in training mode. A stacked call that fails is run again call by call, so only the
    run that causes a failure fails.

    The model must treat the rows of a batch independently (diffusers' UNets do). Rows
    computed in a batch can differ from the same rows computed alone in the last bits, as
    the kernels of some operations depend on the batch size: see "Serving" in the docs.

    Args:
        blocks: the blocks whose model calls are batched, by name or as `Block` objects
            (default: ``predict_noise`` and ``predict_noise_xl``).
        models: the models to batch in those blocks, by the name of the input they come
            from (default: every `torch.nn.Module` component they read).
        per_row: names of scalar tensor arguments that may differ between the calls of a
            batch; each is repeated for its call's rows (the model must take one per row).
        max_rows: the most rows in one model call (None: no limit).
        max_wait: the longest a call waits, in seconds, for the calls of other runs.
        parallel: spread the runs over this many independent batches, each making its own
            model calls at its own pace (on a CPU with one PyTorch thread per run, the
            number of cores to use; on a GPU, 1).
    """

    def __init__(
        self,
        blocks: Iterable[str | Any] = NOISE_PREDICTIONS,
        *,
        models: Iterable[str] | None = None,
        per_row: Iterable[str] = ("timestep",),
        max_rows: int | None = None,
        max_wait: float = 0.05,
        parallel: int = 1,
    ) -> None:
        if (max_rows is not None and max_rows < 1) or max_wait < 0 or parallel < 1:
            msg = "`max_rows` and `parallel` must be 1 or more, `max_wait` 0 or more."
            raise ValueError(msg)
        self.blocks = tuple(blocks)
        self.models = None if models is None else tuple(models)
        self.per_row = frozenset(per_row)
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.parallel = parallel
        self._names = frozenset(b for b in self.blocks if isinstance(b, str))
        self._nodes = frozenset(id(b) for b in self.blocks if not isinstance(b, str))
        self._loops: weakref.WeakKeyDictionary[Plan, bool] = weakref.WeakKeyDictionary()
        self._gates = tuple(_Gate(self) for _ in range(parallel))
        self._choosing = threading.Lock()

    @property
    def stats(self) -> BatchStats:
        """Counts of model calls and of the batches that served them."""
        counts = [gate.counts() for gate in self._gates]
        calls, batches, largest, fallbacks, timeouts = zip(*counts, strict=True)
        return BatchStats(sum(calls), sum(batches), max(largest), sum(fallbacks), sum(timeouts))

    def wrap(self, call: UnitCall, run: Run) -> UnitCall:
        """Register the run's loops that call a batched block; hand its blocks stand-ins."""
        del run  # a run is known by its lane, made here once per run
        lane = _Lane()

        def wrapped(plan: Plan, values: Values, at: Cursor | None) -> None:
            kind = plan.kind
            if kind == BLOCK and self._batches(plan):
                self._in_block(lane, plan, values, lambda: call(plan, values, at))
            elif kind == LOOP and self._calls_in(plan):
                gate = self._enter(lane)
                try:
                    call(plan, values, at)
                finally:
                    gate.leave(lane)
            else:
                call(plan, values, at)

        return wrapped

    def _enter(self, lane: _Lane) -> _Gate:
        """Count *lane* in at its gate, the least busy one when it enters its first loop."""
        with self._choosing:  # one at a time, so that runs entering together spread evenly
            gate = lane.gate or self._least_busy()
            gate.enter(lane)
        return gate

    def _least_busy(self) -> _Gate:
        """The gate with the fewest runs in its loops (a run keeps its gate in a loop)."""
        return min(self._gates, key=_Gate.load)

    def _batches(self, plan: Plan) -> bool:
        return plan.name in self._names or id(plan.node) in self._nodes

    def _calls_in(self, loop: Plan) -> bool:
        """Whether a loop's body runs a batched block (so its runs are waited for)."""
        found = self._loops.get(loop)
        if found is None:
            found = self._loops[loop] = self._contains(loop)
        return found

    def _contains(self, plan: Plan) -> bool:
        if isinstance(plan, Call):
            return self._batches(plan)
        if isinstance(plan, Seq):
            return any(self._contains(c) for c in plan.children)
        if isinstance(plan, Choice):
            return any(self._contains(b) for b in plan.branches)
        if isinstance(plan, Repeat):
            return self._contains(plan.body)
        assert isinstance(plan, Scope)
        return self._contains(plan.inner)

    def _in_block(
        self, lane: _Lane, plan: Plan, values: Values, proceed: Callable[[], None]
    ) -> None:
        torch: Any = sys.modules.get("torch")
        if torch is None:  # no model can be a torch module
            proceed()
            return
        swapped: dict[str, Any] = {}
        names = plan.components if self.models is None else self.models
        for name in names:
            model = values.get(name) if name in plan.inputs else None
            if isinstance(model, torch.nn.Module):
                swapped[name] = model
                values[name] = BatchedModel(model, lane, lane.gate or self._least_busy())
        try:
            proceed()
        finally:
            for name, model in swapped.items():
                if isinstance(values.get(name), BatchedModel):
                    values[name] = model

    def __reduce__(self) -> tuple[Any, ...]:
        # A pipeline pickled to another process takes a batcher of its own, with no runs.
        settings = (self.models, tuple(self.per_row), self.max_rows, self.max_wait, self.parallel)
        return (_remake, (self.blocks, *settings))

    def __repr__(self) -> str:
        blocks = ", ".join(
            b if isinstance(b, str) else getattr(b, "name", "?") for b in self.blocks
        )
        return f"StepBatcher({blocks}, max_wait={self.max_wait}, parallel={self.parallel})"


def _remake(
    blocks: tuple[Any, ...],
    models: tuple[str, ...] | None,
    per_row: tuple[str, ...],
    max_rows: int | None,
    max_wait: float,
    parallel: int,
) -> StepBatcher:
    return StepBatcher(
        blocks,
        models=models,
        per_row=per_row,
        max_rows=max_rows,
        max_wait=max_wait,
        parallel=parallel,
    )


class _Lane:
    """One run, as the gate knows it."""

    __slots__ = ("__weakref__", "absent", "gate", "loops")

    def __init__(self) -> None:
        self.gate: _Gate | None = None  # where its calls go while it is in a loop
        self.loops = 0  # how deep inside loops that call a batched block
        # Don't wait for its next call: its last one could not be stacked, or it missed the
        # last batch (it is busy elsewhere: a slow callback, a paused stream).
        self.absent = False


class _Call:
    __slots__ = ("args", "batch", "fn", "key", "kwargs", "lane", "result", "rows", "since")

    def __init__(
        self,
        lane: _Lane,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        key: Hashable,
        rows: int,
    ) -> None:
        self.lane, self.fn, self.args, self.kwargs = lane, fn, args, kwargs
        self.key, self.rows = key, rows
        self.since = time.monotonic()
        self.batch: _Batch | None = None
        self.result: Any = _NO_RESULT


_NO_RESULT: Final = object()


class _Batch:
    __slots__ = ("calls", "done")

    def __init__(self, calls: list[_Call]) -> None:
        self.calls = calls
        self.done = threading.Event()


class _Gate:
    """Where the model calls of concurrent runs meet, and leave as batches."""

    def __init__(self, batcher: StepBatcher) -> None:
        self.batcher = batcher
        self._cond = threading.Condition()
        self._looping: set[_Lane] = set()
        self._pending: list[_Call] = []
        self._busy: set[_Lane] = set()  # runs whose calls left in a batch, not yet back
        self._counts = [0, 0, 0, 0, 0]  # calls, batches, largest, fallbacks, timeouts

    def counts(self) -> tuple[int, int, int, int, int]:
        with self._cond:
            calls, batches, largest, fallbacks, timeouts = self._counts
            return calls, batches, largest, fallbacks, timeouts

    def load(self) -> int:
        return len(self._looping)

    def enter(self, lane: _Lane) -> None:
        with self._cond:
            lane.loops += 1
            lane.gate = self
            self._looping.add(lane)

    def leave(self, lane: _Lane) -> None:
        with self._cond:
            lane.loops -= 1
            if lane.loops == 0:
                lane.gate = None
                self._looping.discard(lane)
                self._flush_if_ready()

    def call(self, lane: _Lane, model: Any, method: str, args: tuple[Any, ...], kwargs: Any) -> Any:
        """Call *model* (its *method*) for *lane*'s run: in a batch, or alone."""
        fn: Callable[..., Any] = model if method == "__call__" else getattr(model, method)
        torch: Any = sys.modules["torch"]
        batcher = self.batcher
        names = parameter_names(model)
        found = None if model.training else layout(args, kwargs, names, batcher.per_row)
        if found is None:
            with self._cond:
                self._counts[0] += 1
                self._counts[1] += 1
                self._counts[2] = max(self._counts[2], 1)
                lane.absent = True
                self._flush_if_ready()
            return fn(*args, **kwargs)
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        key = (id(model), method, modes, found[0])
        call = _Call(lane, fn, args, kwargs, key, found[1])
        with self._cond:
            self._counts[0] += 1
            lane.absent = False
            self._pending.append(call)
            self._flush_if_ready()
            while call.batch is None:
                remaining = self._pending[0].since + batcher.max_wait - time.monotonic()
                if remaining <= 0:
                    self._flush(timed_out=True)
                    break
                self._cond.wait(remaining)
        try:
            return self._served(call, names)
        finally:
            with self._cond:
                self._busy.discard(lane)

    def _served(self, call: _Call, names: Sequence[str]) -> Any:
        """The result of *call*, once its batch has left the gate."""
        batch = call.batch
        assert batch is not None
        if len(batch.calls) == 1:
            return call.fn(*call.args, **call.kwargs)
        if batch.calls[0] is call:
            self._run(batch, names)
        else:
            batch.done.wait()
        if call.result is _NO_RESULT:  # the stacked call failed: this one runs alone
            return call.fn(*call.args, **call.kwargs)
        return call.result

    def _flush_if_ready(self) -> None:
        """Flush when every run in a batched loop has a call waiting (lock held)."""
        if not self._pending:
            return
        waiting = {c.lane for c in self._pending}
        if all(lane in waiting or lane.absent for lane in self._looping):
            self._flush()

    def _flush(self, *, timed_out: bool = False) -> None:
        """Make batches of the pending calls and wake their runs (lock held).

        After a timeout, the runs that neither sent a call nor have one in a batch are busy
        elsewhere: they are not waited for until they call again.
        """
        calls, self._pending = self._pending, []
        if timed_out:
            self._counts[4] += 1
            here = {c.lane for c in calls} | self._busy
            for lane in self._looping - here:
                lane.absent = True
        self._busy.update(c.lane for c in calls)
        groups: dict[Hashable, list[_Call]] = {}
        for call in calls:
            groups.setdefault(call.key, []).append(call)
        counts = self._counts
        for group in groups.values():
            for part in _parts(group, self.batcher.max_rows):
                batch = _Batch(part)
                for call in part:
                    call.batch = batch
                counts[1] += 1
                counts[2] = max(counts[2], len(part))
        self._cond.notify_all()

    def _run(self, batch: _Batch, names: Sequence[str]) -> None:
        """Run a batch as one call and hand each run its rows (in the first run's thread)."""
        calls = batch.calls
        first = calls[0]
        counts = [c.rows for c in calls]
        try:
            args, kwargs = stack(
                [(c.args, c.kwargs) for c in calls], counts, names, self.batcher.per_row
            )
            results = split(first.fn(*args, **kwargs), counts)
        except Exception:  # noqa: BLE001 - each call runs again alone (`Unstackable` too)
            with self._cond:
                self._counts[3] += 1
        else:
            for call, result in zip(calls, results, strict=True):
                call.result = result
        finally:
            batch.done.set()


def _parts(calls: list[_Call], max_rows: int | None) -> list[list[_Call]]:
    """Split stackable calls into batches of at most *max_rows* rows, in the order they came."""
    if max_rows is None:
        return [calls]
    batches: list[list[_Call]] = []
    batch: list[_Call] = []
    rows = 0
    for call in calls:
        if batch and rows + call.rows > max_rows:
            batches.append(batch)
            batch, rows = [], 0
        batch.append(call)
        rows += call.rows
    batches.append(batch)
    return batches


class BatchedModel:
    """The stand-in for a model inside a batched block: its calls go through the gate.

    ``model(...)`` and ``model.forward(...)`` are batched; every other attribute is the
    model's own (``config``, ``dtype``, ...), and ``isinstance`` sees the model's class.
    """

    __slots__ = ("_gate", "_lane", "_model")

    def __init__(self, model: Any, lane: _Lane, gate: _Gate) -> None:
        self._model = model
        self._lane = lane
        self._gate = gate

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._gate.call(self._lane, self._model, "__call__", args, kwargs)

    @property
    def forward(self) -> Callable[..., Any]:
        gate, lane, model = self._gate, self._lane, self._model

        def forward(*args: Any, **kwargs: Any) -> Any:
            return gate.call(lane, model, "forward", args, kwargs)

        return forward

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    @property  # type: ignore[misc]
    def __class__(self) -> type[object]:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        return type(cast("object", self._model))

    def __repr__(self) -> str:
        return f"<batched {type(self._model).__name__}>"
