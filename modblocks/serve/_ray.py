"""The served app on Ray Serve: one ingress replica with the queue, pipeline replicas behind it.

The ingress (the same FastAPI app as `create_app`, its runs and their records in one place,
so ``GET``/``DELETE /runs/{id}`` always find them) hands each job to a `PipelineWorker`
deployment of *num_replicas* replicas, each holding the pipeline, and relays the progress
messages they stream back. Cancelling a run cancels the replica's request, which cancels the
pipeline run at its next block or step.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from modblocks._engine import CancelToken
from modblocks._node import Node
from modblocks._pipeline import Pipeline
from modblocks._progress import progress
from modblocks.exceptions import CancelledError, ModblocksError

from ._app import ServeOptions, create_app, local_runner
from ._runs import Job, error_json

__all__ = ["Ingress", "PipelineWorker", "RayRunner", "RemoteRunError"]


class RemoteRunError(ModblocksError, RuntimeError):
    """A run failed on a replica; ``report`` is its error as the API shows it."""

    report: dict[str, Any] | None = None


class PipelineWorker:
    """A Ray Serve replica holding the pipeline: runs jobs, streaming their progress.

    Args:
        factory: builds the pipeline in the replica (see `modblocks.ray.pipeline_factory`).
        options: the cache, outputs and preview settings (the ingress keeps the limits).
    """

    def __init__(self, factory: Callable[[], Pipeline], options: ServeOptions) -> None:
        progress(disable=True)  # steps go to the events, not as bars to the replica's log
        self.runner = local_runner(factory(), options)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    async def run(self, wire: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Run one job; yield its progress messages, then ``result`` or ``error``."""
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        token = CancelToken()

        def put(message: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(messages.put_nowait, message)

        job = Job(wire["id"], wire["inputs"], wire["seeds"], wire["preview_every"], token, put)

        def work() -> None:
            try:
                result = self.runner(job)
            except CancelledError as exc:
                put({"type": "error", "error": error_json(exc), "cancelled": True})
            except Exception as exc:  # noqa: BLE001 - reported to the ingress
                put({"type": "error", "error": error_json(exc), "cancelled": False})
            else:
                put({"type": "result", "result": {**result, "worker": self.where}})

        thread = threading.Thread(target=work, name=f"modblocks-run-{job.id}", daemon=True)
        thread.start()
        try:
            while True:
                message = await messages.get()
                yield message
                if message["type"] in ("result", "error"):
                    return
        finally:
            token.cancel()  # the request was cancelled (or is over): stop the run


class RayRunner:
    """Runs jobs on `PipelineWorker` replicas through a Ray Serve deployment handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle.options(stream=True)

    def __call__(self, job: Job) -> dict[str, Any]:
        """Run *job* on a replica, relaying its progress; cancel it there when it is cancelled."""
        wire = {
            "id": job.id,
            "inputs": job.inputs,
            "seeds": job.seeds,
            "preview_every": job.preview_every,
        }
        stream = self.handle.run.remote(wire)
        stop = threading.Event()

        def watch() -> None:  # a cancel reaches the replica even between messages
            while not stop.wait(0.05):
                if job.cancel.cancelled:
                    stream.cancel()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        last: dict[str, Any] = {"type": "error", "cancelled": False, "error": None}
        try:
            for message in stream:
                if message["type"] in ("result", "error"):
                    last = message
                    break
                job.emit(message)
        except Exception as exc:
            if job.cancel.cancelled:  # the request to the replica was cancelled
                raise CancelledError(f"run {job.id} was cancelled") from exc
            raise
        finally:
            stop.set()
        return _outcome(job, last)


def _outcome(job: Job, last: dict[str, Any]) -> dict[str, Any]:
    """The result in the replica's last message, or its error raised."""
    if last["type"] == "result":
        result: dict[str, Any] = last["result"]
        return result
    error = last["error"]
    if error is None:
        msg = f"the replica ended run {job.id} without a result"
        raise RemoteRunError(msg)
    if last["cancelled"]:
        raise CancelledError(error["message"])
    raise RemoteRunError(error["message"], report=error)


class Ingress:
    """The ingress replica: builds the app (`create_app`) around a `RayRunner`."""

    def __init__(self, worker: Any, blocks: Node, options: ServeOptions) -> None:
        self.worker = worker
        self.blocks = blocks
        self.options = options

    def __serve_build_asgi_app__(self) -> Any:
        """Called by Ray Serve in the replica: the app, its jobs run by the workers."""
        return create_app(self.blocks, self.options, runner=RayRunner(self.worker))
