"""Runs of a served pipeline: a bounded queue, worker threads, status, progress, cancellation.

A `RunManager` takes requests (`submit`) into a bounded queue; *concurrency* worker threads
take them out and hand each to a *runner*, a callable that runs one `Job` and returns its
JSON-ready result (`PipelineRunner` runs the pipeline in this process; `modblocks.ray.serve`
gives one that runs it on Ray Serve replicas). Step-level batching is a hook of the pipeline
the runner calls (`modblocks.StepBatcher`): the workers' concurrent runs share each model
call, and the queue, the records and the HTTP API stay as they are.

Each run keeps a bounded log of progress messages, which the event stream replays to late
subscribers; finished runs are kept (for ``GET /runs/{id}``) up to *keep*, oldest first out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Literal, Protocol, TypeAlias, cast

import attrs

from modblocks._engine import CancelToken
from modblocks.exceptions import CancelledError, ModblocksError

__all__ = ["Job", "QueueFullError", "Run", "RunManager", "Runner", "Status"]

Status: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Message: TypeAlias = dict[str, Any]
STATUSES: Final[tuple[Status, ...]] = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL: Final = frozenset(STATUSES[2:])
MAX_MESSAGES: Final = 256  # progress messages a run keeps for late subscribers


class QueueFullError(ModblocksError, RuntimeError):
    """The server's queue of runs is full: try again later (HTTP 503 with Retry-After)."""


@attrs.define(eq=False)
class Job:
    """One run as a runner sees it.

    Attributes:
        id: the run's id.
        inputs: the pipeline inputs, decoded (images as the pipeline takes them).
        seeds: generator inputs by name, as integer seeds (a runner makes the generators, so
            a job pickles to another process).
        preview_every: send a preview image every this many loop steps (0: none).
        cancel: set when the run is cancelled; the pipeline stops at its next check.
        emit: sends a progress message to the run's subscribers.
    """

    id: str
    inputs: dict[str, Any]
    seeds: dict[str, int]
    preview_every: int
    cancel: CancelToken
    emit: Callable[[Message], None]


class Runner(Protocol):
    """Runs one job and returns its JSON-ready result; raises when the run fails."""

    def __call__(self, job: Job) -> dict[str, Any]:
        """Run *job*."""
        ...


class Run:
    """The record of one request: status, progress messages, result or error."""

    def __init__(self, job: Job, created: float) -> None:
        self.job: Job | None = job
        self.id = job.id
        self.status: Status = "queued"
        self.created = created
        self.started: float | None = None
        self.finished: float | None = None
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.cancel = job.cancel
        self._messages: collections.deque[Message] = collections.deque(maxlen=MAX_MESSAGES)
        self._count = 0  # messages emitted so far; the deque holds the last of them
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.done = threading.Event()

    # -- what the worker calls ------------------------------------------------------------

    def emit(self, message: Message) -> None:
        """Record a progress message and wake the subscribers."""
        with self._lock:
            self._messages.append(message)
            self._count += 1
        self._wake()

    def _finish(self, status: Status, **fields: Any) -> bool:
        with self._lock:
            if self.status in FINAL:
                return False
            self.status = status
            self.finished = time.time()
            for name, value in fields.items():
                setattr(self, name, value)
            self.job = None  # the inputs (images, tensors) are not needed any more
            self._messages.append({"type": "status", "status": status})
            self._count += 1
        self.done.set()
        self._wake()
        return True

    def _wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody listens
                loop.call_soon_threadsafe(event.set)

    # -- what the API reads ---------------------------------------------------------------

    def messages_since(self, index: int) -> tuple[list[Message], int, bool]:
        """Messages from number *index* on (those still kept), the next index, whether done."""
        with self._lock:
            first = self._count - len(self._messages)
            kept = list(self._messages)[max(0, index - first) :]
            return kept, self._count, self.status in FINAL

    async def updates(self, index: int = 0) -> AsyncIterator[list[Message]]:
        """Yield new progress messages as they come, until the run has finished."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.add(waiter)
        try:
            while True:
                event.clear()
                batch, index, finished = self.messages_since(index)
                if batch:
                    yield batch
                if finished:
                    return
                await event.wait()
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def to_json(self) -> dict[str, Any]:
        """The record as the API shows it."""
        with self._lock:
            last_step = next((m for m in reversed(self._messages) if m["type"] == "step"), None)
            return {
                "id": self.id,
                "status": self.status,
                "created": self.created,
                "started": self.started,
                "finished": self.finished,
                "progress": None
                if last_step is None
                else {k: last_step[k] for k in ("index", "total", "path")},
                "result": self.result,
                "error": self.error,
            }


class RunManager:
    """Queues runs and runs them on worker threads; see the module's docstring.

    Args:
        runner: runs one job (in a worker thread) and returns its result.
        concurrency: runs at once (worker threads).
        max_queue: runs waiting beyond those; more are refused with `QueueFullError`.
        keep: finished runs kept for ``GET /runs/{id}``.
    """

    def __init__(
        self, runner: Runner, *, concurrency: int = 1, max_queue: int = 64, keep: int = 256
    ) -> None:
        if concurrency < 1 or max_queue < 0 or keep < 1:
            msg = "`concurrency` and `keep` must be 1 or more, `max_queue` 0 or more."
            raise ValueError(msg)
        self.runner = runner
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.keep = keep
        self._queue: queue.Queue[Run | None] = queue.Queue()
        self._runs: dict[str, Run] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._active = 0  # queued or running
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._work, name=f"modblocks-serve-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for worker in self._workers:
            worker.start()

    def submit(
        self,
        inputs: Mapping[str, Any],
        seeds: Mapping[str, int] | None = None,
        *,
        preview_every: int = 0,
    ) -> Run:
        """Queue a run; raises `QueueFullError` when *max_queue* runs already wait."""
        token = CancelToken()
        run_id = uuid.uuid4().hex
        job = Job(run_id, dict(inputs), dict(seeds or {}), preview_every, token, _nobody)
        run = Run(job, time.time())
        job.emit = run.emit
        with self._lock:
            if self._active >= self.concurrency + self.max_queue:
                msg = (
                    f"the server is busy: {self.concurrency} runs are running and "
                    f"{self.max_queue} queued, its limit. Try again in a moment."
                )
                raise QueueFullError(msg)
            self._active += 1
            self._runs[run_id] = run
        self._queue.put(run)
        return run

    def get(self, run_id: str) -> Run | None:
        """The run with *run_id*, or None (never existed, or expired)."""
        with self._lock:
            return self._runs.get(run_id)

    def cancel(self, run_id: str) -> Run | None:
        """Cancel a run: a queued one at once, a running one at its next block or step."""
        run = self.get(run_id)
        if run is None:
            return None
        run.cancel.cancel()
        with run._lock:
            queued = run.status == "queued"
        if queued and run._finish("cancelled", error=_cancelled_error(run_id)):
            self._retire(run)
        return run

    def stats(self) -> dict[str, int]:
        """Counts of the runs still kept, by status."""
        with self._lock:
            runs = list(self._runs.values())
        counts = collections.Counter(r.status for r in runs)
        return {status: counts[status] for status in STATUSES}

    def close(self) -> None:
        """Cancel every run and stop the workers."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self.cancel(run.id)
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=30)

    def _work(self) -> None:
        while True:
            run = self._queue.get()
            if run is None:
                return
            with run._lock:
                job = run.job
                if run.status != "queued" or job is None:
                    continue  # cancelled while queued
                run.status = "running"
                run.started = time.time()
            run.emit({"type": "status", "status": "running"})
            try:
                result = self.runner(job)
            except CancelledError:
                run._finish("cancelled", error=_cancelled_error(run.id))
            except Exception as exc:  # noqa: BLE001 - a failed run is reported, not raised
                run._finish("failed", error=error_json(exc))
            else:
                if job.cancel.cancelled and not result:
                    run._finish("cancelled", error=_cancelled_error(run.id))
                else:
                    run._finish("succeeded", result=result)
            self._retire(run)

    def _retire(self, run: Run) -> None:
        with self._lock:
            self._active -= 1
            self._finished.append(run.id)
            while len(self._finished) > self.keep:
                self._runs.pop(self._finished.popleft(), None)


def _nobody(message: Message) -> None:
    del message  # replaced by the run's own `emit` as soon as the run exists


def error_json(exc: BaseException) -> dict[str, Any]:
    """An error as the API reports it: its type, message and (for block errors) path.

    An error that already carries such a report (``exc.report``: one from another process)
    is reported as it says.
    """
    report = getattr(exc, "report", None)
    if isinstance(report, dict):
        return cast("dict[str, Any]", report)
    return {"type": type(exc).__name__, "message": str(exc), "path": getattr(exc, "path", "")}


def _cancelled_error(run_id: str) -> dict[str, Any]:
    return {"type": "CancelledError", "message": f"run {run_id} was cancelled", "path": ""}
