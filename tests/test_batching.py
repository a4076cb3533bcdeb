"""`mb.StepBatcher`: concurrent runs share their model calls, step by step, and each run's
result stays its solo run's (bit for bit alone; within 1e-5 relative in a batch).

The runs are threads on one `mb.Pipeline`, as a server's workers are. A test hook holds the
runs at the start of their loops until all are there, so that which calls share a batch
does not depend on how the machine schedules the threads.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import attrs
import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

import modblocks as mb
from modblocks._stacking import Unstackable, layout, split, stack
from modblocks.demo import MODEL_PATH, NULL_CLASS, decode, denoise, prepare_latents, set_timesteps
from modblocks.demo import digits as digits_blocks
from modblocks.diffusion import text2img
from modblocks.diffusion.testing import tiny_sd_components

WAIT = 60.0  # max_wait: long enough that the runs a test holds together always meet
RTOL = 1e-5  # the documented bound of a batched run against its solo run


@pytest.fixture(scope="module", autouse=True)
def _quiet() -> Iterator[None]:
    mb.progress(disable=True)
    yield
    mb.progress(disable=False)


@pytest.fixture(scope="module")
def pipe() -> mb.Pipeline:
    return mb.Pipeline.from_pretrained(MODEL_PATH, digits_blocks)


class AtLoop(mb.Hook):
    """Calls *action* when a run's loop starts (inside the batcher: the run is registered)."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action = action

    def around(self, unit: Any, values: Any, proceed: Callable[[], None]) -> None:  # noqa: ARG002
        if unit.kind == "loop":
            self.action()
        proceed()


def batched(pipe: mb.Pipeline, together: int = 0, **options: Any) -> tuple[mb.Pipeline, Any]:
    """*pipe* with a batcher (and a hook holding *together* runs at the loop's start)."""
    batcher = mb.StepBatcher(max_wait=options.pop("max_wait", WAIT), **options)
    hooks: list[mb.Hook] = [batcher]
    if together:
        hooks.append(AtLoop(threading.Barrier(together, timeout=120).wait))
    return attrs.evolve(pipe, hooks=hooks), batcher


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own thread; return results, or the exceptions raised."""

    def attempt(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(attempt, calls))


def digits(
    pipe: mb.Pipeline, digit: str, seed: int, steps: int, **inputs: Any
) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        state = pipe.run(digits=digit, generator=generator, num_inference_steps=steps, **inputs)
        pixels: torch.Tensor = state["pixels"]
        return pixels

    return call


def assert_close(got: torch.Tensor, solo: torch.Tensor) -> None:
    """Within `RTOL` of the solo run, relative to its largest value."""
    assert got.shape == solo.shape
    difference = (got - solo).abs().max().item()
    assert difference <= RTOL * solo.abs().max().item(), difference


# -- the runs' results ----------------------------------------------------------------------


def test_concurrent_runs_share_each_step_and_match_their_solo_runs(pipe):
    # Different digits, seeds, guidance (with and without CFG: 2 rows or 1) and step counts.
    requests = [("0", 0, 4, 3.0), ("7", 1, 4, 5.0), ("3", 2, 6, 1.0), ("42", 3, 5, 3.0)]
    solo = [digits(pipe, d, s, n, guidance_scale=g)() for d, s, n, g in requests]
    together, batcher = batched(pipe, together=len(requests))
    results = concurrently(
        *(digits(together, d, s, n, guidance_scale=g) for d, s, n, g in requests)
    )
    for got, expected in zip(results, solo, strict=True):
        assert_close(got, expected)
    stats = batcher.stats
    assert stats.calls == 4 + 4 + 6 + 5
    assert stats.largest == 4  # every run in one model call
    assert stats.batches == 6  # one per step of the longest run
    assert stats.fallbacks == 0


def test_parallel_batches_split_the_runs(pipe):
    requests = [("1", 0), ("2", 1), ("3", 2), ("4", 3)]
    together, batcher = batched(pipe, together=4, parallel=2)
    results = concurrently(*(digits(together, d, s, 3) for d, s in requests))
    for got, (d, s) in zip(results, requests, strict=True):
        assert_close(got, digits(pipe, d, s, 3)())
    # Two runs in each of two batches, each at its own pace.
    assert batcher.stats == mb.BatchStats(calls=12, batches=6, largest=2, fallbacks=0)


def test_a_run_alone_is_bit_exact(pipe):
    alone, batcher = batched(pipe)
    assert torch.equal(digits(alone, "5", 9, 3)(), digits(pipe, "5", 9, 3)())
    assert batcher.stats == mb.BatchStats(calls=3, batches=3, largest=1, fallbacks=0)


def test_runs_join_and_leave_between_steps(pipe):
    entered = threading.Event()
    batcher = mb.StepBatcher(max_wait=WAIT)
    joined = attrs.evolve(pipe, hooks=[batcher, AtLoop(entered.set)])
    late = digits(joined, "8", 5, 3)
    later: list[Any] = []

    def start_the_other_run(step: mb.Step) -> None:
        if step.index == 2:  # after 3 steps alone, a second run comes in
            entered.clear()
            thread = threading.Thread(target=lambda: later.append(late()))
            thread.start()
            later.append(thread)
            assert entered.wait(60)  # it is in its loop: the next step waits for it

    def first() -> torch.Tensor:
        state = joined.run(
            digits="1",
            generator=torch.Generator().manual_seed(4),
            num_inference_steps=8,
            on_step=start_the_other_run,
        )
        pixels: torch.Tensor = state["pixels"]
        return pixels

    got = first()
    later[0].join()
    assert_close(got, digits(pipe, "1", 4, 8)())
    assert_close(later[1], digits(pipe, "8", 5, 3)())
    # Steps 3, 4 and 5 of the first run carried the second run's 3 steps; the rest ran alone.
    assert batcher.stats == mb.BatchStats(calls=11, batches=8, largest=2, fallbacks=0)


def test_a_cancelled_run_leaves_the_batch_and_the_others_go_on(pipe):
    together, batcher = batched(pipe, together=3)
    token = mb.CancelToken()

    def cancel_after_two_steps(step: mb.Step) -> None:
        if step.index == 1:
            token.cancel()

    cancelled = digits(together, "2", 1, 6, cancel=token, on_step=cancel_after_two_steps)
    results = concurrently(digits(together, "0", 0, 6), cancelled, digits(together, "9", 2, 6))
    assert isinstance(results[1], mb.CancelledError)
    assert_close(results[0], digits(pipe, "0", 0, 6)())
    assert_close(results[2], digits(pipe, "9", 2, 6)())
    # Two steps of three runs, then four of two: nobody waited for the cancelled run.
    assert batcher.stats == mb.BatchStats(calls=14, batches=6, largest=3, fallbacks=0)


def test_a_run_busy_between_steps_is_waited_for_once(pipe):
    together, batcher = batched(pipe, together=2, max_wait=1.0)
    first_done = threading.Event()

    def first() -> torch.Tensor:
        try:
            return digits(together, "3", 0, 4)()
        finally:
            first_done.set()

    def pause_until_the_first_run_is_done(step: mb.Step) -> None:
        if step.index == 0:
            assert first_done.wait(120)  # a slow step callback, or a paused stream

    second = digits(together, "6", 1, 4, on_step=pause_until_the_first_run_is_done)
    results = concurrently(first, second)
    assert_close(results[0], digits(pipe, "3", 0, 4)())
    assert_close(results[1], digits(pipe, "6", 1, 4)())
    # Step 0 together; the first run's step 1 waited for the paused one (1 s) and went on,
    # and its steps 2 and 3 did not wait again.
    expected = mb.BatchStats(calls=8, batches=7, largest=2, fallbacks=0, timeouts=1)
    assert batcher.stats == expected


def test_model_offload_keeps_a_batched_model_on_the_device_until_every_run_is_done(pipe):
    # The batcher hands blocks a stand-in for the UNet; the policy must see the UNet in it,
    # not a model of its own that it moves back while the other runs still compute.
    moves: list[tuple[str, str]] = []
    policy = mb.ModelOffload("gpu", mover=lambda m, d: moves.append((type(m).__name__, d)))
    offloaded = mb.Pipeline(pipe.blocks, components=pipe.components, offload=policy)
    together, batcher = batched(offloaded, together=2)
    results = concurrently(digits(together, "1", 0, 3), digits(together, "2", 1, 5))
    assert_close(results[0], digits(pipe, "1", 0, 3)())
    assert_close(results[1], digits(pipe, "2", 1, 5)())
    assert batcher.stats.largest == 2
    assert moves == [("UNet2DModel", "gpu"), ("UNet2DModel", "cpu")]


class Labels(NamedTuple):
    class_labels: torch.Tensor
    batch_size: int


@mb.block
def raw_labels(labels: list[int]) -> Labels:
    """Class labels as given (11 is out of the model's range), the null class first."""
    tensor = torch.tensor(labels)
    return Labels(torch.cat([torch.full_like(tensor, NULL_CLASS), tensor]), len(labels))


def test_a_failure_in_a_batched_call_fails_only_its_own_run():
    blocks = raw_labels >> set_timesteps >> prepare_latents >> denoise >> decode
    pipe = mb.Pipeline.from_pretrained(MODEL_PATH, blocks)
    together, batcher = batched(pipe, together=3)

    def labels(values: list[int], seed: int) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            generator = torch.Generator().manual_seed(seed)
            state = together.run(labels=values, generator=generator, num_inference_steps=3)
            pixels: torch.Tensor = state["pixels"]
            return pixels

        return call

    results = concurrently(labels([1], 0), labels([11], 1), labels([2, 3], 2))
    failed = results[1]
    assert isinstance(failed, mb.BlockError)
    assert "predict_noise" in str(failed.path)
    assert isinstance(failed.__cause__, IndexError)
    for got, (values, seed) in zip((results[0], results[2]), (([1], 0), ([2, 3], 2)), strict=True):
        generator = torch.Generator().manual_seed(seed)
        solo = pipe.run(labels=values, generator=generator, num_inference_steps=3)["pixels"]
        assert_close(got, solo)
    # The first step's stacked call failed and ran again call by call; then two runs went on.
    assert batcher.stats == mb.BatchStats(calls=7, batches=3, largest=3, fallbacks=1)


# -- what can share a call ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd() -> mb.Pipeline:
    return mb.Pipeline(text2img, components=tiny_sd_components())


def test_runs_of_another_size_are_batched_apart(sd):
    requests = [
        {"prompt": "a cat", "height": 64, "width": 64, "guidance_scale": 7.5},
        {"prompt": "a small dog", "height": 32, "width": 32, "guidance_scale": 7.5},
        {"prompt": "a red bird", "height": 64, "width": 64, "guidance_scale": 1.0},
    ]

    def run(pipe: mb.Pipeline, seed: int, inputs: dict[str, Any]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            generator = torch.Generator().manual_seed(seed)
            latents: torch.Tensor = pipe.run(**inputs, generator=generator, num_inference_steps=3)[
                "latents"
            ]
            return latents

        return call

    solo = [run(sd, seed, inputs)() for seed, inputs in enumerate(requests)]
    together, batcher = batched(sd, together=3)
    results = concurrently(*(run(together, seed, inputs) for seed, inputs in enumerate(requests)))
    for got, expected in zip(results, solo, strict=True):
        assert_close(got, expected)
    # At each step, the two 64x64 runs share a call (with and without CFG); the 32x32 one
    # runs alone, at the same time.
    assert batcher.stats == mb.BatchStats(calls=9, batches=6, largest=2, fallbacks=0)


def test_calls_stack_when_only_their_rows_differ():
    names = ("sample", "timestep")  # the model's positional parameters
    per_row = frozenset({"timestep"})

    def key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        found = layout(args, kwargs, names, per_row)
        return None if found is None else found[0]

    step = torch.tensor(10)
    first = ((torch.zeros(2, 3), step), {"labels": torch.tensor([1, 2]), "flag": True})
    second = ((torch.ones(1, 3), torch.tensor(20)), {"labels": torch.tensor([3]), "flag": True})
    assert layout(*first, names, per_row) == (key(*first), 2)
    assert layout(*second, names, per_row) == (key(*first), 1)  # another step, one row
    # What is not per row must be equal; tensors must have the call's rows.
    assert key(first[0], {**first[1], "flag": False}) != key(*first)
    assert key((torch.zeros(2, 3),), {"scale": torch.tensor(1.0)}) != key(
        (torch.zeros(2, 3),), {"scale": torch.tensor(2.0)}
    )
    assert key((torch.zeros(2, 3), torch.zeros(3)), {}) is None
    assert key((1, "x"), {}) is None  # nothing to stack
    args, kwargs = stack([first, second], [2, 1], names, per_row)
    assert torch.equal(args[0], torch.cat([torch.zeros(2, 3), torch.ones(1, 3)]))
    assert torch.equal(args[1], torch.tensor([10, 10, 20]))  # each call's step, per row
    assert torch.equal(kwargs["labels"], torch.tensor([1, 2, 3]))
    assert kwargs["flag"] is True
    same_step = ((torch.ones(1, 3), torch.tensor(10)), second[1])
    assert stack([first, same_step], [2, 1], names, per_row)[0][1] is step  # passed as it is


def test_results_split_back_per_call():
    out = torch.arange(6.0).reshape(3, 2)
    parts = split((out, None, {"x": out}, UNet2DOutput(sample=out)), [2, 1])
    assert torch.equal(parts[0][0], out[:2])
    assert torch.equal(parts[1][2]["x"], out[2:])
    assert parts[1][1] is None
    assert isinstance(parts[1][3], UNet2DOutput)
    assert torch.equal(parts[1][3].sample, out[2:])
    with pytest.raises(Unstackable):
        split(torch.zeros(4, 2), [2, 1])  # not the stacked rows
    with pytest.raises(Unstackable):
        split(object(), [2, 1])


def test_a_model_in_training_mode_runs_alone(pipe):
    unet = pipe.components["unet"]
    together, batcher = batched(pipe, together=2)
    unet.train()
    try:
        results = concurrently(digits(together, "1", 0, 2), digits(together, "2", 1, 2))
    finally:
        unet.eval()
    assert all(isinstance(r, torch.Tensor) for r in results)
    assert batcher.stats.largest == 1


def test_a_pipeline_with_a_batcher_pickles_with_a_batcher_of_its_own():
    batcher = mb.StepBatcher(["predict_noise"], max_rows=8, max_wait=0.01, parallel=2)
    copy = pickle.loads(pickle.dumps(batcher))
    assert isinstance(copy, mb.StepBatcher)
    assert copy is not batcher
    assert (copy.blocks, copy.max_rows, copy.max_wait, copy.parallel) == (
        ("predict_noise",),
        8,
        0.01,
        2,
    )
    with pytest.raises(ValueError, match="1 or more"):
        mb.StepBatcher(parallel=0)
