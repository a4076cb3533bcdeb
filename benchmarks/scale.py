# pyright: reportUnknownVariableType=false, reportUnknownArgumentType=false
"""Throughput of `Pipeline.map` on threads, processes, Dask and Ray, and its cost per item.

Table 1 runs a CPU-bound pipeline made of modblocks blocks -- seeded noise, ten steps of a
small convolutional net in an `mb.loop`, then an 8-bit image -- over many seeds, on each
engine with 1 and 2 workers. Every worker uses one PyTorch thread (`torch.set_num_threads(1)`
in the pool initializer; Dask and Ray set ``OMP_NUM_THREADS=1`` for their workers), so two
workers can use two cores. The *speed-up* is items/s with 2 workers over items/s with 1 on
the same engine; with two cores the ideal is 2.

Items go 16 per task (``batch_size=16``; for Ray, 16 rows per actor call), run one by one:
this saves a round trip per item, which costs milliseconds on Dask and Ray. Dask's workers
run without ``MALLOC_TRIM_THRESHOLD_`` (see `docs/scale.md`). What is timed is the steady
state: each executor first runs a warm-up map (which starts its workers and sends them the
pipeline once), then timed maps, 1 and 2 workers in alternation; the speed-up is the median
of the per-round ratios. Ray Data builds a new actor pool for each dataset, so for Ray the
dataset starts with a warm-up batch per actor (and at least 4 batches per actor to time),
and each item notes when it finished in its actor: the rate is the items finished between the moment every actor was warm and the
moment the first actor ran out of work, over that span (the driver sees results in bursts,
so its clock would count work done before the span). The start-up column is the time to the
first result. The *ceiling* rows show what the
machine gives: a process pool whose one task per worker calls the pipeline in a plain loop.

Table 2 is the framework's cost per item, on a pipeline of one trivial block
(``y = x + 1``): a plain loop calling the function, a loop calling the pipeline, and
`Pipeline.map` in this process and on one-worker pools (one item per task, then 16).

Run it from the repository root::

    python benchmarks/scale.py            # full run, a few minutes
    python benchmarks/scale.py --quick    # smoke run, numbers are noisy
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import logging
import multiprocessing
import os
import pickle
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import torch

import modblocks as mb
from modblocks._map import _dumps, _run_task, _token

if TYPE_CHECKING:
    from benchmarks import _harness
else:
    try:  # run as `python benchmarks/scale.py`, or imported as `benchmarks.scale`
        from benchmarks import _harness
    except ImportError:  # pragma: no cover - depends on how the script is started
        import _harness

STEPS = 10
PER_TASK = 16  # items per task (`batch_size`), and rows per Ray actor call: run one by one,
# as `seed` is not a batchable input, but sent together to save a round trip per item
WORKERS = (1, 2)
ENGINES = ("threads", "processes", "dask", "ray")

# -- the CPU-bound pipeline --------------------------------------------------------------------


class TinyNet(torch.nn.Module):
    """Three 3x3 convolutions: about 40 MFLOP per step on a 32x32 latent."""

    def __init__(self, channels: int = 8, hidden: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(channels, hidden, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(hidden, hidden, 3, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@mb.block(output="timesteps")
def schedule(steps: int = STEPS) -> list[int]:
    """The steps to take, last first."""
    return list(range(steps - 1, -1, -1))


@mb.block(output="latents")
def noise(seed: int, size: int = 32) -> torch.Tensor:
    """Seeded starting noise."""
    return torch.randn(1, 8, size, size, generator=torch.Generator().manual_seed(seed))


@mb.block(output="latents")
def refine(latents: torch.Tensor, net: mb.Component[TinyNet], t: int) -> torch.Tensor:
    """One step: subtract the net's prediction."""
    return latents - 0.05 * (1 + t / STEPS) * net(latents)


@mb.block(output="images")
def to_image(latents: torch.Tensor) -> torch.Tensor:
    """The first three channels as an 8-bit image."""
    return ((latents[:, :3].clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


render = schedule >> noise >> mb.loop(refine, over="timesteps", progress=False) >> to_image


def cpu_pipeline() -> mb.Pipeline:
    return mb.Pipeline(render, components={"net": TinyNet().eval()})


@functools.cache
def _worker_pipeline() -> mb.Pipeline:
    return cpu_pipeline()


def _bare_loop(items: int) -> None:
    """The ceiling: call the pipeline *items* times in a worker, one task for them all."""
    pipe = _worker_pipeline()
    for seed in range(items):
        pipe(seed=seed, output="images")


@mb.block(output="y")
def inc(x: int) -> int:
    """The trivial block of table 2."""
    return x + 1


# -- engines -----------------------------------------------------------------------------------


def _process_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)
    )


@contextlib.contextmanager
def _dask(workers: int) -> Generator[Executor]:
    import dask.config
    from distributed import Client, LocalCluster

    # Dask's workers return freed memory to the OS at once (MALLOC_TRIM_THRESHOLD_=65536),
    # which halves the speed of this PyTorch pipeline: unset it, as `docs/scale.md` advises.
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client.get_executor()


@contextlib.contextmanager
def _executor(engine: str, workers: int) -> Generator[Executor]:
    if engine == "threads":
        with ThreadPoolExecutor(workers) as executor:
            yield executor
    elif engine in ("processes", "bare"):
        with _process_pool(workers) as executor:
            yield executor
    else:
        with _dask(workers) as executor:
            yield executor


def _seeds(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"seed": start + i} for i in range(count)]


class _Engine:
    """One engine with 1 and 2 workers: started once, then timed in interleaved rounds."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.stack = contextlib.ExitStack()
        self.executors: dict[int, Executor] = {}
        self.startup: dict[int, float] = {}
        self.pipe = cpu_pipeline()

    def __enter__(self) -> Self:
        if self.engine == "ray":
            _start_ray()
            self.stack.callback(_stop_ray)
            return self
        for workers in WORKERS:
            began = time.perf_counter()
            executor = self.stack.enter_context(_executor(self.engine, workers))
            warm_up = _seeds(PER_TASK * workers)  # starts the workers, sends the pipeline
            if self.engine == "bare":
                list(executor.map(_bare_loop, [PER_TASK] * workers))
            else:
                self.pipe.map(warm_up, executor=executor, output="images", batch_size=PER_TASK)
            self.startup[workers] = time.perf_counter() - began
            self.executors[workers] = executor
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def rate(self, workers: int, items: int) -> float:
        """Items/s of one timed map (for Ray, also notes the start-up of its actors)."""
        if self.engine == "bare":
            began = time.perf_counter()
            list(self.executors[workers].map(_bare_loop, [items // workers] * workers))
            return items // workers * workers / (time.perf_counter() - began)
        if self.engine == "ray":
            startup, rate = _ray_run(workers, items)
            self.startup[workers] = startup
            return rate
        seeds = _seeds(items, 1000)
        began = time.perf_counter()
        self.pipe.map(seeds, executor=self.executors[workers], output="images", batch_size=PER_TASK)
        return items / (time.perf_counter() - began)


class Stamp(NamedTuple):
    done_at: float
    worker: int


@mb.block
def stamp(images: torch.Tensor) -> Stamp:
    """When and in which process an item finished: the Ray rows are timed by these."""
    del images  # read only so that the stamp comes after the image
    return Stamp(time.time(), os.getpid())


def stamped_pipeline() -> mb.Pipeline:
    return mb.Pipeline(render >> stamp, components={"net": TinyNet().eval()})


def _ray_run(workers: int, items: int) -> tuple[float, float]:
    """Run *items* after a warm-up batch per actor; return start-up s and items/s.

    Items/s counts the items the actors finished while every actor was past its warm-up and
    still busy, over that span, by the time each item finished in its actor. The driver's
    clock can't tell: Ray Data hands results over in bursts (the last blocks of a dataset
    arrive within milliseconds of each other, computed long before), so rows counted
    from the arrival of the warm-up's last block include work done before it, which made 2
    actors look 13 times as fast as one on 2 cores.
    """
    import ray

    import modblocks.ray

    warm_up = PER_TASK
    # Enough items that every actor works well past its warm-up (a quick run has few), in
    # blocks of one batch, which Ray Data hands to whichever actor is free.
    total = warm_up * workers + max(items, 4 * PER_TASK * workers)
    began = time.perf_counter()
    dataset = ray.data.from_items(_seeds(total), override_num_blocks=total // PER_TASK)
    out = modblocks.ray.map_batches(
        dataset,
        stamped_pipeline(),
        output=["done_at", "worker"],
        batch_size=PER_TASK,
        concurrency=workers,
    )
    first = 0.0
    finished: dict[int, list[float]] = {}
    # Whole blocks of results, as a job writing them out would take them: iterating row by
    # row would spend the driver's CPU, which the actors need on two cores.
    for block in out.iter_batches(batch_size=None, batch_format="numpy"):
        if not first:
            first = time.perf_counter()
        for done_at, worker in zip(block["done_at"], block["worker"], strict=True):
            finished.setdefault(int(worker), []).append(float(done_at))
    times = [sorted(t) for t in finished.values()]
    start = max(t[min(warm_up, len(t)) - 1] for t in times)  # every actor warmed up
    end = min(t[-1] for t in times)  # every actor still had work until then
    if len(times) < workers or end <= start:
        counts = [len(t) for t in times]
        msg = f"the Ray actors' work did not overlap past their warm-up (items each: {counts})"
        raise RuntimeError(msg)
    done = sum(start < x <= end for t in times for x in t)
    return first - began, done / (end - start)


def _engine_available(engine: str) -> str | None:
    needs = {"dask": "distributed", "ray": "ray"}.get(engine)
    if needs is not None and importlib.util.find_spec(needs) is None:
        return f"{needs} is not installed"
    return None


def throughput_table(items: int, rounds: int, engines: Sequence[str], notes: dict[str, str]) -> str:
    torch.set_num_threads(1)
    pipe = cpu_pipeline()
    pipe.map(_seeds(2), output="images")
    local: list[float] = []
    for _ in range(rounds):
        began = time.perf_counter()
        pipe.map(_seeds(items, 1000), output="images")
        local.append(items / (time.perf_counter() - began))
    rows: list[list[object]] = [
        ["local (no executor)", "1", "-", _harness.fmt(statistics.median(local), 1), "-"]
    ]
    for engine in ["bare", *engines]:
        why = _engine_available(engine)
        if why is not None:
            notes[engine] = why
            continue
        rates: dict[int, list[float]] = {workers: [] for workers in WORKERS}
        with _Engine(engine) as runner:
            for round_ in range(rounds):
                # Alternate which goes first, so that neither always meets the same load.
                for workers in WORKERS if round_ % 2 == 0 else WORKERS[::-1]:
                    rates[workers].append(runner.rate(workers, items))
        # The speed-up is the median of the per-round ratios: both ran under that round's load.
        ratios = [two / one for one, two in zip(rates[1], rates[2], strict=True)]
        rows.extend(
            [
                engine,
                str(workers),
                f"{runner.startup[workers]:.1f}",
                _harness.fmt(statistics.median(rates[workers]), 1),
                _harness.fmt(statistics.median(ratios)) if workers > 1 else "-",
            ]
            for workers in WORKERS
        )
    rows[1][0] = "ceiling: no `map`, a bare loop per process"
    rows[2][0] = rows[1][0]
    return _harness.markdown_table(
        ["engine", "workers", "start-up s", "items/s", "speed-up (2 vs 1)"], rows
    )


def _start_ray() -> None:
    import ray

    warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(
        num_cpus=max(WORKERS),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False


def _stop_ray() -> None:
    import ray

    ray.shutdown()


# -- cost per item -----------------------------------------------------------------------------


def _per_item_us(run: Callable[[], object], items: int) -> float:
    run()  # warm up (and start the workers)
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best / items * 1e6


def overhead_table(items: int, engines: Sequence[str], notes: dict[str, str]) -> str:
    pipe = mb.Pipeline(inc, inference_mode=False)
    xs = [{"x": i} for i in range(items)]
    fn = inc.__wrapped__
    rows: list[list[object]] = []

    def add(name: str, run: Callable[[], object]) -> None:
        rows.append([name, _harness.fmt(_per_item_us(run, items), 1)])

    add("plain loop: `f(x)`", lambda: [fn(x["x"]) for x in xs])
    add("loop of `pipe(x=..., output='y')`", lambda: [pipe(output="y", **x) for x in xs])
    add("`pipe.map(items)` in this process", lambda: pipe.map(xs, output="y"))
    for engine in ("threads", "processes", "dask"):
        if engine not in engines:
            continue
        why = _engine_available(engine)
        if why is not None:
            notes[f"{engine} (table 2)"] = why
            continue
        with _executor(engine, 1) as executor:
            for batch in (1, 16):
                run = functools.partial(
                    pipe.map, xs, executor=executor, output="y", batch_size=batch
                )
                add(f"`pipe.map` on {engine}, 1 worker, {batch} per task", run)
    return _harness.markdown_table(["how", "µs per item"], rows)


def shipped_note() -> str:
    """What one task carries, and what the pipeline weighs when it is sent."""
    pipe = cpu_pipeline()
    task = (_run_task, os.getpid(), _token(pipe), None, [{"seed": 7}], "images", ())
    per_item = len(pickle.dumps(task))
    payload = len(_dumps(pipe))
    return (
        f"Shipped per item (one item per task): {per_item} bytes (the task function by "
        f"name, a 32-character token, the item's inputs, the output name). The pipeline "
        f"itself ({payload / 1e3:.0f} kB pickled here: the net's weights) goes to each "
        "worker once."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few items: a fast smoke run")
    parser.add_argument("--items", type=int, help="items per timed map (table 1)")
    parser.add_argument("--rounds", type=int, help="timed maps per engine and worker count")
    parser.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="engines to run"
    )
    args = parser.parse_args(argv)
    mb.progress(disable=True)  # the bars of `map` would be timed too
    # 480 items make 15 tasks per worker: with only a few, the last task of the slower
    # worker leaves the other core idle for up to a task's time, which measures the tail,
    # not the throughput.
    items = args.items or (48 if args.quick else 480)
    rounds = args.rounds or (1 if args.quick else 5)
    small = 500 if args.quick else 5000
    notes: dict[str, str] = {}
    _harness.emit(_harness.environment(["modblocks", "torch", "dask", "distributed", "ray"]))
    _harness.emit(
        f"Table 1: {items} items per timed map, median of {rounds} interleaved rounds. "
        f"Table 2: {small} trivial items, best of 3.\n"
    )
    _harness.emit(f"## Throughput of a CPU-bound pipeline ({STEPS} conv steps per item)\n")
    _harness.emit(throughput_table(items, rounds, args.engines, notes))
    _harness.emit(f"\n{shipped_note()}\n")
    _harness.emit("## Framework cost per item (one trivial block)\n")
    _harness.emit(overhead_table(small, args.engines, notes))
    _harness.emit_notes(notes)
    return 0


if __name__ == "__main__":
    # Workers find the blocks by module name: run this file's `main` as `benchmarks.scale`,
    # not as `__main__` (which Dask and Ray workers can't import).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(importlib.import_module("benchmarks.scale").main())
