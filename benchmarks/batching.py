# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false
"""How far a batched run is from its solo run: per operation, and per request end to end.

`mb.StepBatcher` runs the model calls of concurrent runs as one call. Each row of a batched
call is computed by the same operations as alone, but some CPU kernels pick their algorithm
(and so their order of additions) by the batch size. This script measures which:

1. **Per operation**: one batched UNet call on the rows of 8 requests, each module's inputs
   captured; then each module runs again on the first request's rows alone. The table gives
   the largest difference relative to the output's largest value, by kind of module (0: bit
   for bit). A module that only passes its children's differences on is not listed.
2. **Per request, end to end**: 8 requests (different seeds, digits or prompts, step counts)
   run at once through a `StepBatcher` and one by one; the largest difference of each
   request's final output relative to its largest value, and the pixels of the 8-bit images
   that differ.

Run it from the repository root (about a minute on 2 cores)::

    python benchmarks/batching.py
"""

from __future__ import annotations

import argparse
import collections
import importlib
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch

import modblocks as mb
from modblocks.demo import load_pipeline
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # run as `python benchmarks/batching.py`, or imported as `benchmarks.batching`
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

REQUESTS = 8


def _kind(module: torch.nn.Module) -> str:
    name = type(module).__name__
    kernel = getattr(module, "kernel_size", None)
    return f"{name} {kernel[0]}x{kernel[1]}" if isinstance(kernel, tuple) else name


def per_operation(
    unet: torch.nn.Module, call: Callable[[int], tuple[Any, ...]]
) -> dict[str, float]:
    """The largest relative difference, by kind of leaf or attention module, batch vs alone.

    *call(rows)* gives the UNet's positional and keyword arguments for *rows* rows.
    """
    args, kwargs, rows, alone = call(REQUESTS)
    seen: list[tuple[torch.nn.Module, tuple[Any, ...], dict[str, Any], Any]] = []
    modules = [
        m for m in unet.modules() if not list(m.children()) or "Attention" in type(m).__name__
    ]
    handles = [
        m.register_forward_hook(lambda m, a, k, o: seen.append((m, a, k, o)), with_kwargs=True)
        for m in modules
    ]
    try:
        unet(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()

    def first(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
            return value[:alone]
        return value

    worst: dict[str, float] = collections.defaultdict(float)
    for module, m_args, m_kwargs, out in seen:
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != rows:
            continue  # not per row (the time embedding of a scalar step)
        solo = module(*map(first, m_args), **{k: first(v) for k, v in m_kwargs.items()})
        scale = out[:alone].abs().max().item() or 1.0
        difference = (solo - out[:alone]).abs().max().item() / scale
        kind = _kind(module)
        worst[kind] = max(worst[kind], difference)
    return dict(worst)


def _digits_call(rows: int) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2 * rows, 1, 16, 16, generator=generator)
    labels = torch.randint(0, 11, (2 * rows,), generator=generator)
    return (sample, torch.tensor(500)), {"class_labels": labels}, 2 * rows, 2


def _sd_call(rows: int) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2 * rows, 4, 32, 32, generator=generator)
    text = torch.randn(2 * rows, 77, 32, generator=generator)
    return (sample, torch.tensor(500)), {"encoder_hidden_states": text}, 2 * rows, 2


def end_to_end(
    pipe: mb.Pipeline, requests: Sequence[dict[str, Any]], output: str
) -> list[tuple[float, int]]:
    """Per request: (largest relative difference of *output*, 8-bit pixels that differ)."""

    def run(p: mb.Pipeline, index: int) -> Any:
        state = p.run(**requests[index], generator=torch.Generator().manual_seed(index))
        return state[output], state["images"]

    solo = [run(pipe, i) for i in range(len(requests))]
    batcher = mb.StepBatcher(max_wait=5.0)
    batched_pipe = attrs.evolve(pipe, hooks=[batcher])
    batched: list[Any] = [None] * len(requests)

    def worker(index: int) -> None:
        batched[index] = run(batched_pipe, index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found: list[tuple[float, int]] = []
    for (value, images), (got, got_images) in zip(solo, batched, strict=True):
        relative = (got - value).abs().max().item() / value.abs().max().item()
        pixels = sum(
            int(np.count_nonzero(np.asarray(a) != np.asarray(b)))
            for a, b in zip(images, got_images, strict=True)
        )
        found.append((relative, pixels))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the two tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--torch-threads", type=int, default=1, help="PyTorch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    mb.progress(disable=True)
    digits = load_pipeline()
    sd = mb.Pipeline(text2img, components=tiny_sd_components())
    _harness.emit(_harness.environment(["modblocks", "torch", "diffusers"]))
    _harness.emit(f"torch threads: {torch.get_num_threads()}; {REQUESTS} requests per batch.\n")
    with torch.inference_mode():
        ops = {
            "digits UNet": per_operation(digits.components["unet"], _digits_call),
            "tiny SD UNet": per_operation(sd.components["unet"], _sd_call),
        }
    kinds = sorted({k for found in ops.values() for k in found})
    _harness.emit(
        _harness.markdown_table(
            ["operation", *ops],
            [[kind, *(_relative(found.get(kind)) for found in ops.values())] for kind in kinds],
        )
    )
    steps = args.steps
    digit_requests = [
        {"digits": str(i), "num_inference_steps": steps + i % 3, "guidance_scale": 3.0 + i % 2}
        for i in range(REQUESTS)
    ]
    sd_requests = [
        {"prompt": f"a photo of a cat, {i}", "num_inference_steps": steps + i % 3}
        for i in range(REQUESTS)
    ]
    rows = [
        ("digits (pixels)", end_to_end(digits, digit_requests, "pixels")),
        ("tiny SD (latents)", end_to_end(sd, sd_requests, "latents")),
    ]
    _harness.emit()
    _harness.emit(
        _harness.markdown_table(
            ["requests at once", "largest relative difference", "8-bit pixels that differ"],
            [
                [
                    f"{name}, {REQUESTS} x {steps}-{steps + 2} steps",
                    _relative(max(r for r, _ in found)),
                    sum(p for _, p in found),
                ]
                for name, found in rows
            ],
        )
    )
    return 0


def _relative(value: float | None) -> str:
    if value is None:
        return _harness.NA
    return "0 (bit for bit)" if value == 0 else f"{value:.1e}"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(importlib.import_module("benchmarks.batching").main())
