"""`node.stream()`: a run that hands over a state after each loop step.

The run goes on in a worker thread that waits for the consumer before each step, so the
iterator is lazy (no run-ahead) and closing it cancels the run at the next step.
"""

from __future__ import annotations

import contextvars
import queue
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._engine import Hook, Runnable, execute
from ._state import State

__all__ = ["stream"]


class _Closed(BaseException):
    """Raised in the worker when the consumer closed the stream (not a failure of a block)."""


def _grad_modes() -> tuple[bool, bool] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def stream(
    node: Runnable,
    state: Mapping[str, Any] | None,
    inputs: Mapping[str, Any],
    *,
    base: Mapping[str, Any] | None = None,
    hooks: Iterable[Hook] = (),
    inference_mode: bool = False,
    check_types: bool = True,
) -> Iterator[State]:
    """Run *node*, yielding the state after each loop step and the final state last."""
    to_consumer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    to_worker: queue.Queue[bool] = queue.Queue(maxsize=1)
    # torch's grad and inference modes are per thread: carry the caller's over to the worker.
    modes = (False, True) if inference_mode else _grad_modes()

    def sink(step_state: State) -> None:
        to_consumer.put(("step", step_state))
        if not to_worker.get():
            raise _Closed

    hooks = tuple(hooks)

    def run() -> State:
        return execute(
            node, state, inputs, base=base, sink=sink, hooks=hooks, check_types=check_types
        )

    def work() -> None:
        try:
            if modes is not None:
                import torch

                with torch.inference_mode(modes[1]), torch.set_grad_enabled(modes[0]):
                    final = run()
            else:
                final = run()
        except _Closed:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer to raise
            to_consumer.put(("error", exc))
            return
        to_consumer.put(("final", final))

    context = contextvars.copy_context()
    worker = threading.Thread(
        target=context.run, args=(work,), daemon=True, name="modblocks-stream"
    )
    worker.start()
    finished = False
    try:
        while True:
            kind, value = to_consumer.get()
            if kind == "error":
                finished = True
                raise value
            yield value
            if kind == "final":
                finished = True
                return
            to_worker.put(True)
    finally:
        if not finished:
            to_worker.put(False)  # the consumer stopped early: end the run at its next step
        worker.join()
