"""`no_grad`: blocks that never build autograd graphs, at no cost inside a pipeline."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

__all__ = ["no_grad"]

P = ParamSpec("P")
R = TypeVar("R")


def no_grad(fn: Callable[P, R]) -> Callable[P, R]:
    """`torch.no_grad()` as a decorator, entered only where gradients are on.

    A `Pipeline` runs under `torch.inference_mode()`, where gradients are already off: there
    the context manager would cost several microseconds per call of a per-step block for
    nothing. Called outside a pipeline with gradients on, the block still builds no graph.
    """

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if torch.is_grad_enabled():
            with torch.no_grad():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return call
