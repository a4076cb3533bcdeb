# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false
"""`modblocks serve` under 8 concurrent clients: throughput and latency, against diffusers.

Each row is one server in this process (uvicorn on 127.0.0.1, a free port), all started
first; then 8 client threads send ``POST /runs?wait=true`` over HTTP, each its share of the
requests, every request with its own seed (the cache is off, so every request runs). Each
row's requests go in ``--rounds`` bursts, the rows taking turns, so that a shared machine's
background load falls on all rows alike. Reported: the
requests per second over the whole burst, and the median and 95th percentile of the latency
each client saw (queueing included). PyTorch uses one thread (``--torch-threads``), so that N
runs at once use N cores. Rows:

* **digits, modblocks**: the demo's class-conditional digits model (`modblocks.demo`),
  ``--concurrency`` runs at once (worker threads sharing one `mb.Pipeline`), and the same
  server with one run at a time;
* **tiny SD, modblocks**: ``modblocks.diffusion.text2img`` on tiny random-weight
  components (`tiny_sd_components`), the same two ways;
* **tiny SD, diffusers**: diffusers' `StableDiffusionPipeline` on the same components behind
  the same endpoint (the same app and request model, its runner calling diffusers), one
  request at a time, since a diffusers pipeline must not be shared between threads;
* **digits, plain loop**: the digits model's denoising loop written out by hand on diffusers'
  UNet and scheduler (what a diffusers pipeline for it would run), one request at a time;
* **batching** (``--batching on``, the default): the modblocks servers with step-level
  batching (`mb.StepBatcher`), ``--batch-concurrency`` runs in flight (8: every client's
  request) whose denoising steps share one model call: in one batch, and spread over two
  batches that run at once (``parallel=2``: one per core, as two runs at once use two).

The closing line gives the throughput of batching over one request at a time.

Run it from the repository root::

    python benchmarks/serve.py            # about two minutes on 2 cores
    python benchmarks/serve.py --quick    # smoke run, numbers are noisy
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import torch
import uvicorn
from PIL import Image

import modblocks as mb
from modblocks.demo import NULL_CLASS, load_pipeline
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components
from modblocks.serve import Job, ServeOptions, create_app
from modblocks.serve._runner import encode_value, with_generators

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # run as `python benchmarks/serve.py`, or imported as `benchmarks.serve`
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

CLIENTS = 8


class DiffusersRunner:
    """Runs jobs on a diffusers `StableDiffusionPipeline`, one at a time (not thread-safe)."""

    def __init__(self, components: dict[str, Any]) -> None:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            StableDiffusionPipeline,
        )

        classic: Any = StableDiffusionPipeline  # diffusers' pipelines are not typed
        self.pipe = classic(
            **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        self.pipe.set_progress_bar_config(disable=True)
        self.lock = threading.Lock()

    def __call__(self, job: Job) -> dict[str, Any]:
        def on_step(pipe: Any, index: int, _t: Any, values: dict[str, Any]) -> dict[str, Any]:
            job.emit({"type": "step", "index": index + 1, "total": pipe.num_timesteps, "path": ""})
            if job.cancel.cancelled:
                pipe._interrupt = True
            return values

        with self.lock, torch.inference_mode():
            images = self.pipe(
                **with_generators(job.inputs, job.seeds), callback_on_step_end=on_step
            ).images
        return {"outputs": {"images": encode_value(images)}, "seeds": job.seeds, "cached": []}


class DigitsLoopRunner:
    """The digits model's loop written out on diffusers' UNet and scheduler, one job at a time."""

    def __init__(self, pipe: mb.Pipeline) -> None:
        self.unet: Any = pipe.components["unet"]
        self.scheduler: Any = pipe.components["scheduler"]
        self.lock = threading.Lock()

    def __call__(self, job: Job) -> dict[str, Any]:
        inputs = with_generators(job.inputs, job.seeds)
        digits, steps = inputs["digits"], inputs["num_inference_steps"]
        scale = inputs.get("guidance_scale", 3.0)
        with self.lock, torch.inference_mode():
            scheduler = copy.deepcopy(self.scheduler)
            scheduler.set_timesteps(steps)
            labels = torch.tensor([int(d) for d in digits])
            labels = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
            size = self.unet.config["sample_size"]
            shape = (len(digits), self.unet.config["in_channels"], size, size)
            latents = torch.randn(shape, generator=inputs.get("generator"))
            latents = latents * scheduler.init_noise_sigma
            for index, t in enumerate(scheduler.timesteps):
                model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                noise = self.unet(model_input, t, class_labels=labels, return_dict=False)[0]
                uncond, cond = noise.chunk(2)
                noise = uncond + scale * (cond - uncond)
                latents = scheduler.step(noise, t, latents).prev_sample
                job.emit({"type": "step", "index": index + 1, "total": steps, "path": ""})
                if job.cancel.cancelled:
                    break
        gray = ((latents.clamp(-1, 1)[:, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
        images = [Image.fromarray(a, mode="L") for a in gray]
        return {"outputs": {"images": encode_value(images)}, "seeds": job.seeds, "cached": []}


@contextlib.contextmanager
def _server(app: Any) -> Generator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def _burst(
    pool: ThreadPoolExecutor, clients: Sequence[httpx.Client], bodies: Sequence[dict[str, Any]]
) -> list[float]:
    """Send *bodies* from the *clients* at once, a thread each; return each request's latency.

    The clients (and their connections) are made before: only requests are timed.
    """

    def client(http: httpx.Client, share: Sequence[dict[str, Any]]) -> list[float]:
        latencies: list[float] = []
        for body in share:
            began = time.perf_counter()
            response = http.post("/runs?wait=true", json=body)
            latencies.append(time.perf_counter() - began)
            record = response.json()
            if record.get("status") != "succeeded":
                msg = f"a run did not succeed: {record}"
                raise RuntimeError(msg)
        return latencies

    shares = [bodies[i :: len(clients)] for i in range(len(clients))]
    return [x for share in pool.map(client, clients, shares) for x in share]


def _table(
    rows: Sequence[tuple[str, Any, Sequence[dict[str, Any]]]], rounds: int, clients: int = CLIENTS
) -> tuple[str, dict[str, float]]:
    """Serve every row at once; send each row's requests in *rounds* bursts, rows interleaved.

    The rows take turns, in an order rotated every round, so that the background load of a
    shared machine falls on all of them alike rather than on whichever ran last.
    """
    spent = [0.0] * len(rows)
    latencies: list[list[float]] = [[] for _ in rows]
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(clients))
        connected: list[list[httpx.Client]] = []
        for _, app, bodies in rows:
            url = stack.enter_context(_server(app))
            made = [httpx.Client(base_url=url, timeout=600) for _ in range(clients)]
            connected.append([stack.enter_context(c) for c in made])
            _burst(pool, connected[-1], bodies[:2])  # warm up: first calls, lazy imports
        for round_ in range(rounds):
            order = list(range(len(rows)))
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            for index in order:
                bodies = rows[index][2][round_::rounds]
                began = time.perf_counter()
                latencies[index] += _burst(pool, connected[index], bodies)
                spent[index] += time.perf_counter() - began
    throughput = [len(bodies) / spent[index] for index, (_, _, bodies) in enumerate(rows)]
    table = [
        [
            name,
            len(bodies),
            _harness.fmt(throughput[index]),
            _harness.fmt(statistics.median(latencies[index])),
            _harness.fmt(statistics.quantiles(latencies[index], n=20)[-1]),
        ]
        for index, (name, _, bodies) in enumerate(rows)
    ]
    text = _harness.markdown_table(
        ["server", "requests", "requests/s", "p50 latency s", "p95 latency s"], table
    )
    return text, dict(zip((name for name, _, _ in rows), throughput, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke run")
    parser.add_argument("--requests", type=int, help="requests per row (default 32, quick 16)")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="PyTorch threads (default 1: a core per run)"
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default 20, quick 10)")
    parser.add_argument("--concurrency", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="bursts per row, interleaved")
    parser.add_argument(
        "--batching", choices=("off", "on"), default="on", help="the rows with step-level batching"
    )
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
    parser.add_argument(
        "--batch-concurrency", type=int, help="runs in flight with batching (default: --clients)"
    )
    args = parser.parse_args(argv)
    count = args.requests or (16 if args.quick else 32)
    # One PyTorch thread by default: N runs at once use N cores, one at a time uses one (small
    # models gain little from threads inside an op, and lose much when the cores are shared).
    torch.set_num_threads(args.torch_threads)
    steps = args.steps or (10 if args.quick else 20)
    mb.progress(disable=True)
    digits = load_pipeline()
    components = tiny_sd_components()
    sd = mb.Pipeline(text2img, components=components)
    digit_bodies = [
        {"digits": str(i % 10), "num_inference_steps": steps, "seed": i} for i in range(count)
    ]
    sd_bodies = [
        {"prompt": f"a photo of a cat, {i}", "num_inference_steps": steps, "seed": i}
        for i in range(count)
    ]
    parallel = ServeOptions(concurrency=args.concurrency, cache=False, max_queue=count)
    serial = ServeOptions(concurrency=1, cache=False, max_queue=count)
    batching = args.batching == "on"
    in_flight = args.batch_concurrency or args.clients

    def batched(pipe: mb.Pipeline, name: str, bodies: list[dict[str, Any]]) -> list[Any]:
        """The batching rows of *pipe*: one batch, and two at once (one per core)."""
        if not batching:
            return []
        found: list[Any] = []
        for parallel in (1, 2):
            batcher = mb.StepBatcher(parallel=parallel)  # a batcher per server
            options = ServeOptions(
                concurrency=in_flight, cache=False, max_queue=count, batching=batcher
            )
            label = "1 batch" if parallel == 1 else f"{parallel} batches at once"
            row = f"{name}, modblocks, batching {in_flight} in flight, {label}"
            found.append((row, create_app(pipe, options), bodies))
        return found

    rows = [
        *batched(digits, "digits", digit_bodies),
        (
            f"digits, modblocks, {args.concurrency} at once",
            create_app(digits, parallel),
            digit_bodies,
        ),
        ("digits, modblocks, 1 at a time", create_app(digits, serial), digit_bodies),
        (
            "digits, plain loop, 1 at a time",
            create_app(digits, serial, runner=DigitsLoopRunner(digits)),
            digit_bodies,
        ),
        *batched(sd, "tiny SD", sd_bodies),
        (f"tiny SD, modblocks, {args.concurrency} at once", create_app(sd, parallel), sd_bodies),
        ("tiny SD, modblocks, 1 at a time", create_app(sd, serial), sd_bodies),
        (
            "tiny SD, diffusers, 1 at a time",
            create_app(text2img, serial, runner=DiffusersRunner(components)),
            sd_bodies,
        ),
    ]
    _harness.emit(_harness.environment(["modblocks", "torch", "diffusers", "fastapi", "uvicorn"]))
    _harness.emit(
        f"{args.clients} concurrent clients, {count} requests per row in {args.rounds} interleaved "
        f"bursts, {steps} steps, cache off, "
        f"batching {args.batching}; torch threads: {torch.get_num_threads()}.\n"
    )
    table, throughput = _table(rows, args.rounds, args.clients)
    _harness.emit(table)
    if batching:
        gains = [
            (name, max(v for k, v in throughput.items() if k.startswith(f"{name}, modblocks, b")))
            for name in ("digits", "tiny SD")
        ]
        one = {"digits": "digits, plain loop", "tiny SD": "tiny SD, diffusers"}
        _harness.emit(
            "\nBatching (the better of its rows) over one request at a time: "
            + ", ".join(
                f"{best / throughput[f'{one[name]}, 1 at a time']:.2f}x for {name} "
                f"({one[name].partition(', ')[2]}), "
                f"{best / throughput[f'{name}, modblocks, 1 at a time']:.2f}x (modblocks)"
                for name, best in gains
            )
            + "."
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(importlib.import_module("benchmarks.serve").main())
