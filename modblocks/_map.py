"""`Pipeline.map`: run one pipeline over many inputs, in this process or on any executor.

The pipeline reaches workers once, not once per item. Every task carries a short *token*
(a digest naming the pipeline and the version of each component) and the item inputs. A
worker looks the token up in a per-process table, in this order:

1. the pipelines of this process (threads; and forked workers, which inherit the table);
2. the pipelines it loaded before (kept for the two tokens used last);
3. the *payload* some tasks carry: the pickled blocks, components and configs, loaded once
   and kept under the token.

A task that finds nothing answers "miss" at once, and is sent again with the payload. Only
tasks that go where the pipeline can't already be found carry the payload: the first wave of
a process pool whose workers start cold, the tasks that missed, and, on Dask, one copy per
worker scattered before the first task. Everything else ships the token and the inputs.

Items are grouped in *chunks* of up to *batch_size*, one task each. Within a chunk, items whose
other inputs are equal are stacked into one pipeline call: their batched inputs (``prompt``,
``generator``, ... by default every input annotated like ``str | list[str]``) become lists, and
each requested output is split back into equal parts along its first dimension. A stacked call
that fails, or whose outputs can't be split, is run again item by item, so a failure is always
reported for the item that causes it.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import enum
import functools
import hashlib
import os
import pickle
import socket
import threading
import traceback
import types
import typing
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import attrs

from ._cache import fingerprint, generators_in
from ._names import did_you_mean
from ._node import Node
from ._progress import open_bar
from ._state import summarize
from .exceptions import FAILED, InputTypeError, MapError, UnknownInputError

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["FAILED", "MapError", "batchable_inputs", "map_pipeline", "run_items"]

Output: TypeAlias = "str | Sequence[str] | None"
Outcome: TypeAlias = "tuple[bool, Any]"  # (True, result) or (False, exception)


class _Signal(enum.Enum):
    MISS = enum.auto()  # a task found no pipeline for its token and carried no payload


_MAX_LISTED = 5  # failures spelled out in a MapError message


# -- which inputs stack --------------------------------------------------------------------


def batchable_inputs(node: Node) -> tuple[str, ...]:
    """Return the inputs of *node* that take one value or a list of them, as ``prompt`` does.

    An input is batchable when its annotation is a union holding some type ``T`` and
    ``list[T]`` (or ``Sequence[T]``): ``str | list[str] | None``, or diffusers'
    ``torch.Generator | list[torch.Generator] | None``. `Pipeline.map` stacks these.

    Examples:
        >>> import modblocks as mb
        >>> @mb.block(output="n")
        ... def count(prompt: str | list[str], steps: int = 2) -> int:
        ...     return 1 if isinstance(prompt, str) else len(prompt)
        >>> batchable_inputs(count)
        ('prompt',)
    """
    return tuple(spec.name for spec in node.inputs if _takes_list_of_itself(spec.type))


def _takes_list_of_itself(hint: Any) -> bool:
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return False
    members = typing.get_args(hint)
    for member in members:
        if typing.get_origin(member) in (list, collections.abc.Sequence):
            args = typing.get_args(member)
            if len(args) == 1 and args[0] in members:
                return True
    return False


def _batched_names(pipe: Pipeline, batch: Collection[str] | None) -> tuple[str, ...]:
    if batch is None:
        return batchable_inputs(pipe.blocks)
    if isinstance(batch, str):
        batch = (batch,)
    known = [spec.name for spec in pipe.blocks.inputs]
    unknown = tuple(name for name in batch if name not in known)
    if unknown:
        hints = "".join(did_you_mean(name, known) for name in unknown)
        msg = (
            f"`batch` names {', '.join(f'`{n}`' for n in unknown)}, which `{pipe.blocks._label}` "
            f"does not take as an input.{hints} Inputs: {', '.join(f'`{n}`' for n in known)}."
        )
        raise UnknownInputError(msg, node=pipe.blocks._label, names=unknown)
    return tuple(batch)


# -- planning chunks -----------------------------------------------------------------------


@attrs.frozen
class _Chunk:
    """Items sent as one task; *stack* names the inputs stacked into one call (or none)."""

    indices: tuple[int, ...]
    stack: tuple[str, ...] = ()


_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _value_key(value: Any) -> Any:
    """A hashable key equal for equal plain values; other values compare by identity."""
    kind: type[object] = type(cast("object", value))
    if kind in _PLAIN:
        return (kind, value)
    if kind is tuple:
        return (tuple, tuple(_value_key(v) for v in value))
    return (id, id(value))  # the items are alive for the whole map, so ids are not reused


def _plan(
    items: Sequence[Mapping[str, Any]], batch_size: int, batched: tuple[str, ...]
) -> list[_Chunk]:
    """Cut the items into chunks of up to *batch_size*, stacking the items that allow it."""
    if batch_size == 1:
        return [_Chunk((i,)) for i in range(len(items))]
    open_chunks: dict[Any, list[int]] = {}
    chunks: list[_Chunk] = []
    for index, item in enumerate(items):
        stack = tuple(n for n in batched if n in item)
        stackable = bool(stack) and not any(isinstance(item[n], (list, tuple)) for n in stack)
        if stackable:
            rest = frozenset((k, _value_key(v)) for k, v in item.items() if k not in stack)
            key: Any = (stack, rest)
        else:
            key, stack = None, ()  # runs alone, but still rides in a chunk
        members = open_chunks.setdefault(key, [])
        members.append(index)
        if len(members) == batch_size:
            chunks.append(_Chunk(tuple(members), stack))
            del open_chunks[key]
    for key, members in open_chunks.items():
        chunks.append(_Chunk(tuple(members), key[0] if key is not None else ()))
    chunks.sort(key=lambda chunk: chunk.indices[0])
    return chunks


# -- running items (in any process) -------------------------------------------------------


def run_items(
    pipe: Pipeline, items: Sequence[Mapping[str, Any]], output: Output, stack: tuple[str, ...]
) -> list[Outcome]:
    """Run *items*, stacked into one call on the inputs *stack* names where that works.

    Returns one ``(True, result)`` or ``(False, exception)`` per item, in order.
    """
    if stack and output is not None and len(items) > 1:
        # The stacked call draws from the items' generators: if it fails, each item runs again
        # alone, with its generators as they were before (or every seeded result would change).
        generators = generators_in(v for item in items for v in item.values())
        states = [g.get_state() for g in generators]
        stacked = _run_stacked(pipe, items, output, stack)
        if stacked is not None:
            return stacked
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)
    return [_run_one(pipe, item, output) for item in items]


def _run_one(pipe: Pipeline, item: Mapping[str, Any], output: Output) -> Outcome:
    try:
        return (True, pipe(output=output, **item))
    except Exception as exc:  # noqa: BLE001 - each item's failure is reported, the rest go on
        return (False, exc)


def _run_stacked(
    pipe: Pipeline,
    items: Sequence[Mapping[str, Any]],
    output: str | Sequence[str],
    stack: tuple[str, ...],
) -> list[Outcome] | None:
    inputs = dict(items[0])
    for name in stack:
        inputs[name] = [item[name] for item in items]
    try:
        result = pipe(output=output, **inputs)
    except Exception:  # noqa: BLE001 - rerun one by one to find the items that fail
        return None
    count = len(items)
    if isinstance(output, str):
        parts = _split(result, count)
        return None if parts is None else [(True, part) for part in parts]
    columns = [_split(value, count) for value in result]
    if any(column is None for column in columns):
        return None
    return [(True, tuple(cast("list[Any]", c)[i] for c in columns)) for i in range(count)]


def _split(value: Any, count: int) -> list[Any] | None:
    """Split *value* into *count* equal parts along its first dimension, or None."""
    if isinstance(value, (list, tuple)):
        seq = cast("Sequence[Any]", value)
        size, rest = divmod(len(seq), count)
        return None if rest else [seq[i * size : (i + 1) * size] for i in range(count)]
    shape = getattr(value, "shape", None)
    if not shape or not isinstance(shape[0], int) or shape[0] % count:
        return None
    size = shape[0] // count
    parts = [value[i * size : (i + 1) * size] for i in range(count)]
    # Copy the parts (`clone` for torch, `copy` for NumPy): a slice of a tensor keeps, and
    # pickles, the storage of the whole batch.
    for method in ("clone", "copy"):
        if callable(getattr(value, method, None)):
            return [getattr(part, method)() for part in parts]
    return parts


# -- the pipeline in workers ---------------------------------------------------------------

# Pipelines of this process by token (weak: map holds its pipeline while it runs).
_LOCAL: weakref.WeakValueDictionary[str, Pipeline] = weakref.WeakValueDictionary()
# Pipelines this process loaded from a payload, most recently used last.
_LOADED: collections.OrderedDict[str, Pipeline] = collections.OrderedDict()
_KEEP_LOADED = 2
_load_lock = threading.Lock()


def _token(pipe: Pipeline) -> str:
    """Name *pipe* and the version of each component (`mb.touch` and `Pipeline.to` bump it)."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (pipe, *pipe.components.values()):
        key = fingerprint(part)
        digest.update(os.urandom(16) if key is None else key)
    return digest.hexdigest()


def _same(value: Pipeline) -> Pipeline:
    return value


def _dumps(pipe: Pipeline) -> bytes:
    """Pickle a recipe that rebuilds *pipe*: blocks (by reference), components, configs.

    The pipeline pickles itself (its cache travels as an empty one with the same settings);
    the recipe is a call that returns it, so workers can tell a payload from a result.
    """
    recipe = functools.partial(_same, pipe)
    try:
        return pickle.dumps(recipe, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        msg = (
            f"can't send the pipeline `{pipe.blocks._label}` to worker processes: pickling it "
            f"raised {type(exc).__name__}: {exc}. Make the components picklable, define blocks "
            "at module level (they pickle by reference), or use a thread pool."
        )
        raise TypeError(msg) from exc


def _pipeline_for(token: str, payload: bytes | None) -> Pipeline | None:
    """Find the pipeline named *token* in this process, loading *payload* the first time."""
    pipe = _LOCAL.get(token)
    if pipe is not None:
        return pipe
    with _load_lock:
        pipe = _LOADED.get(token)
        if pipe is not None:
            _LOADED.move_to_end(token)
            return pipe
        if payload is None:
            return None
        try:
            pipe = cast("Pipeline", pickle.loads(payload)())  # noqa: S301 - our own payload
        except Exception as exc:
            exc.add_note(
                f"modblocks: while loading the pipeline in worker process {os.getpid()}. "
                "Workers import the modules that define the blocks and components: they must "
                "be importable there (not defined in `__main__` of an interactive session)."
            )
            raise
        _LOADED[token] = pipe
        while len(_LOADED) > _KEEP_LOADED:
            _LOADED.popitem(last=False)
        return pipe


def _run_task(
    origin: int,
    token: str,
    payload: bytes | None,
    items: list[Mapping[str, Any]],
    output: Output,
    stack: tuple[str, ...],
) -> list[Outcome] | _Signal:
    """The task a worker runs: find the pipeline and run a chunk of items."""
    pipe = _pipeline_for(token, payload)
    if pipe is None:
        return _Signal.MISS
    outcomes = run_items(pipe, items, output, stack)
    if os.getpid() == origin:
        return outcomes
    return [(True, v) if ok else (False, _portable(v)) for ok, v in outcomes]


def _portable(exc: BaseException) -> BaseException:
    """Make *exc* safe to send back: keep its traceback as a note, replace it if it can't pickle."""
    where = f"process {os.getpid()} on {socket.gethostname()}"
    detail = "".join(traceback.format_exception(exc)).rstrip()
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    except Exception:  # noqa: BLE001 - anything unpicklable is replaced by its text
        exc = RuntimeError(f"{type(exc).__qualname__}: {exc} (the error couldn't be pickled)")
    exc.add_note(f"modblocks: raised in worker {where}:\n{detail}")
    return exc


# -- dispatching to an executor ------------------------------------------------------------

# Tokens that workers of an executor already hold, so the next map starts without payload.
_WARM: weakref.WeakKeyDictionary[Executor, set[str]] = weakref.WeakKeyDictionary()


def _dask_client(executor: Executor) -> Any:
    if type(executor).__module__.startswith("distributed."):
        return getattr(executor, "_client", None)
    return None


def _worker_count(executor: Executor) -> int:
    count = getattr(executor, "_max_workers", None)
    if isinstance(count, int):
        return count
    client = _dask_client(executor)
    if client is not None:
        threads: dict[str, int] = client.nthreads()
        return max(1, sum(threads.values()))
    return 4


def _starts_cold(executor: Executor) -> bool:
    """Whether the executor's workers surely lack the pipeline: processes not forked from here."""
    if not isinstance(executor, ProcessPoolExecutor):
        return False
    context = getattr(executor, "_mp_context", None)
    forks = context is not None and context.get_start_method() == "fork"
    # A fork pool starts its processes at the first submit; started later, they inherit _LOCAL.
    return not forks or bool(getattr(executor, "_processes", None))


class _Dispatch:
    """Sends chunks to an executor, with the payload only where it is needed."""

    def __init__(self, pipe: Pipeline, executor: Executor, token: str) -> None:
        self.pipe = pipe
        self.executor = executor
        self.token = token
        self.client = _dask_client(executor)
        self._payload: Any = None
        self._error: Exception | None = None  # pickling the pipeline failed: don't try again
        warm = token in _WARM.get(executor, ())
        self.heavy_left = _worker_count(executor) if _starts_cold(executor) and not warm else 0

    def payload(self) -> Any:
        if self._error is not None:
            raise self._error
        if self._payload is None:
            try:
                data = _dumps(self.pipe)
            except TypeError as exc:
                self._error = exc
                raise
            # On Dask, one copy per worker, and tasks carry a reference to it.
            self._payload = (
                data
                if self.client is None
                else self.client.scatter(data, broadcast=True, hash=False)
            )
        return self._payload

    def submit(
        self, items: list[Any], output: Output, chunk: _Chunk, heavy: bool = False
    ) -> Future[list[Outcome] | _Signal]:
        """Send *chunk*; with the payload when *heavy*, on Dask, or in a cold pool's first wave."""
        if self.client is not None or self.heavy_left > 0:
            heavy = True
            self.heavy_left = max(0, self.heavy_left - 1)
        payload = self.payload() if heavy else None
        chunk_items = [items[i] for i in chunk.indices]
        args = (os.getpid(), self.token, payload, chunk_items, output, chunk.stack)
        if self.client is not None:
            # Not `pure`: Dask would name equal tasks alike, and a name released by the last
            # map and reused by this one can be cancelled under it.
            submit: Any = self.executor.submit  # Dask's takes client.submit's options
            return cast("Future[list[Outcome] | _Signal]", submit(_run_task, *args, pure=False))
        return self.executor.submit(_run_task, *args)

    def done(self) -> None:
        with contextlib.suppress(TypeError):  # an executor that can't be weakly referenced
            _WARM.setdefault(self.executor, set()).add(self.token)


# -- map -----------------------------------------------------------------------------------


def map_pipeline(
    pipe: Pipeline,
    inputs: Iterable[Mapping[str, Any]],
    *,
    executor: Executor | None = None,
    batch_size: int = 1,
    output: Output = "images",
    ordered: bool = True,
    batch: Collection[str] | None = None,
) -> list[Any]:
    """Run *pipe* on each mapping of *inputs*; see `Pipeline.map`.

    Args:
        pipe: the pipeline to run.
        inputs: one mapping of inputs per item.
        executor: None to run here, or any `concurrent.futures.Executor`.
        batch_size: items per task, stacked into one pipeline call where they allow it.
        output: what to return per item, as for `Pipeline.__call__`.
        ordered: results in input order; otherwise ``(index, result)`` pairs in the order
            the items finished.
        batch: the inputs stacked as lists; None: those annotated like ``str | list[str]``.

    Returns:
        One result per item (or ``(index, result)`` pairs when not *ordered*).

    Raises:
        MapError: some items failed; ``err.results`` holds the others' results.
    """
    if (
        not isinstance(cast("object", batch_size), int)
        or isinstance(cast("object", batch_size), bool)
        or batch_size < 1
    ):
        msg = f"`batch_size` must be a whole number of items, 1 or more; got {batch_size!r}."
        raise InputTypeError(msg, name="batch_size")
    pipe._check_output(output)  # a misspelt output fails here, not after every item ran
    if executor is not None and not callable(getattr(executor, "submit", None)):
        msg = (
            f"`executor` is a `concurrent.futures.Executor` (threads, processes, Dask's "
            f"`client.get_executor()`), not {type(executor).__name__} {executor!r:.60}."
        )
        raise InputTypeError(msg, name="executor")
    items = list(inputs)
    outcomes: dict[int, Outcome] = {}
    finished: list[int] = []  # indices in the order they finished
    valid: list[int] = []
    for index, item in enumerate(items):
        if isinstance(cast("object", item), Mapping):
            valid.append(index)
        else:
            msg = (
                f"item {index} is not a mapping of input names to values but "
                f"{type(item).__name__} {summarize(item)}. Give each item as a dict of inputs."
            )
            outcomes[index] = (False, TypeError(msg))
            finished.append(index)
    batched = _batched_names(pipe, batch) if batch_size > 1 and output is not None else ()
    plan = [
        _Chunk(tuple(valid[i] for i in chunk.indices), chunk.stack)
        for chunk in _plan([items[i] for i in valid], batch_size, batched)
    ]
    bar = open_bar(len(items), "map", None)
    if bar is not None and finished:
        bar.update(len(finished))

    def record(chunk: _Chunk, results: list[Outcome]) -> None:
        for index, outcome in zip(chunk.indices, results, strict=True):
            outcomes[index] = outcome
            finished.append(index)
        if bar is not None:
            bar.update(len(chunk.indices))

    try:
        if executor is None:
            for chunk in plan:
                record(
                    chunk, run_items(pipe, [items[i] for i in chunk.indices], output, chunk.stack)
                )
        else:
            _run_on(executor, pipe, items, plan, output, record)
    finally:
        if bar is not None:
            bar.close()
    return _collect(items, outcomes, finished, ordered)


def _run_on(
    executor: Executor,
    pipe: Pipeline,
    items: list[Any],
    plan: list[_Chunk],
    output: Output,
    record: Callable[[_Chunk, list[Outcome]], None],
) -> None:
    token = _token(pipe)
    _LOCAL[token] = pipe  # workers in this process (and forked from it) find it here
    dispatch = _Dispatch(pipe, executor, token)
    # A bounded number of tasks in flight: where a task can miss, few, so that it is not sent
    # again behind all the others; elsewhere (threads, Dask) enough to hide the latency.
    workers = _worker_count(executor)
    misses = dispatch.client is None and not isinstance(executor, ThreadPoolExecutor)
    limit = 2 * workers + 2 if misses else 16 * workers + 16
    todo = collections.deque(plan)
    pending: dict[Future[list[Outcome] | _Signal], _Chunk] = {}

    def send(chunk: _Chunk, heavy: bool = False) -> None:
        try:
            pending[dispatch.submit(items, output, chunk, heavy)] = chunk
        except Exception as exc:  # noqa: BLE001 - can't send (pickling, shut down): items fail
            record(chunk, [(False, exc)] * len(chunk.indices))

    try:
        while todo or pending:
            while todo and len(pending) < limit:
                send(todo.popleft())
            if not pending:
                continue
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                chunk = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - the executor failed these items
                    record(chunk, [(False, exc)] * len(chunk.indices))
                    continue
                if result is _Signal.MISS:
                    send(chunk, heavy=True)
                else:
                    record(chunk, result)
        if plan:
            dispatch.done()
    finally:
        for future in pending:
            future.cancel()


def _collect(
    items: list[Any], outcomes: dict[int, Outcome], finished: list[int], ordered: bool
) -> list[Any]:
    results: list[Any] = [FAILED] * len(items)
    failures: dict[int, BaseException] = {}
    for index, (ok, value) in outcomes.items():
        if ok:
            results[index] = value
        else:
            failures[index] = value
    if failures:
        raise _map_error(items, results, dict(sorted(failures.items())))
    if ordered:
        return results
    return [(index, results[index]) for index in finished]


def _map_error(
    items: list[Any], results: list[Any], failures: dict[int, BaseException]
) -> MapError:
    # One line per distinct error: an error that failed a whole chunk (the executor broke, the
    # pipeline couldn't be sent) is listed once with the items it failed.
    by_error: dict[int, list[int]] = {}
    for index, exc in failures.items():
        by_error.setdefault(id(exc), []).append(index)
    lines: list[str] = []
    for indices in list(by_error.values())[:_MAX_LISTED]:
        exc = failures[indices[0]]
        first = str(exc).splitlines()[0] if str(exc) else ""
        lines.append(f"  - {_describe(items, indices)}: {type(exc).__name__}: {first}")
    if len(by_error) > _MAX_LISTED:
        lines.append(f"  - ... and {len(by_error) - _MAX_LISTED} more (see `err.failures`)")
    msg = (
        f"{len(failures)} of {len(items)} items failed:\n" + "\n".join(lines) + "\n"
        "The results of the others are in `err.results` (`MapError.FAILED` marks the failed "
        "items), each error is in `err.failures` by index, and `err.inputs` holds the failed "
        "items' inputs: fix the cause and run them again with `pipe.map(err.inputs.values())`."
    )
    error = MapError(
        msg,
        results=results,
        failures=failures,
        inputs={index: items[index] for index in failures},
    )
    error.__cause__ = next(iter(failures.values()))
    return error


def _describe(items: list[Any], indices: list[int]) -> str:
    """Name the failed items: ``item 3 (prompt='a cat')``, or ``items 0, 1, 2 and 7 more``."""
    if len(indices) > 1:
        listed = ", ".join(str(i) for i in indices[:3])
        more = f" and {len(indices) - 3} more" if len(indices) > 3 else ""
        return f"items {listed}{more}"
    item: object = items[indices[0]]
    if isinstance(item, Mapping):
        values = cast("Mapping[str, Any]", item)
        shown = ", ".join(f"{k}={summarize(v)}" for k, v in values.items())
    else:
        shown = summarize(item)
    return f"item {indices[0]} ({shown})"
