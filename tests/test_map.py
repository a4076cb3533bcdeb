"""`Pipeline.map`: in-process, threads and process pools; batching; errors that keep results."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, NamedTuple

import pytest
import torch

import modblocks as mb
from modblocks._map import FAILED, MapError, batchable_inputs, map_pipeline
from modblocks.exceptions import BlockError, UnknownInputError

# The process pools fork (fast, and the case where workers inherit the pipeline); Python 3.12+
# warns that forking a process with threads may deadlock, which these workers don't risk.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:.*use of fork\(\) may lead to deadlocks:DeprecationWarning"
)

# Blocks and components live at module level: worker processes find them by reference
# (`tests.test_map.echo`), as pickle finds any function.


class Tag:
    """A component that notes each copy of itself: one per process that unpickles it."""

    def __init__(self, word: str = "") -> None:
        self.word = word
        self.copy = "original"
        self.calls: list[int] = []  # prompts per call, in this process
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        return {"word": self.word}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(str(state["word"]))
        self.copy = f"{os.getpid()}:{uuid.uuid4().hex}"


class Echo(NamedTuple):
    images: list[str]
    copy: str


@mb.block
def echo(tag: mb.Component[Tag], prompt: str | list[str], times: int = 1) -> Echo:
    """Shout the prompts; fail on "boom"."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    with tag.lock:
        tag.calls.append(len(prompts))
    if "boom" in prompts:
        msg = "boom!"
        raise ValueError(msg)
    return Echo([f"{p.upper()}{tag.word}" * times for p in prompts], tag.copy)


@mb.block(output="images")
def noise(prompt: str | list[str], seed: int = 0) -> torch.Tensor:
    """One row of noise per prompt."""
    count = 1 if isinstance(prompt, str) else len(prompt)
    return torch.randn(count, 3, generator=torch.Generator().manual_seed(seed))


def make_pipe(word: str = "!") -> mb.Pipeline:
    return mb.Pipeline(echo, components={"tag": Tag(word)}, inference_mode=False)


def prompts(count: int) -> list[dict[str, object]]:
    return [{"prompt": f"p{i}"} for i in range(count)]


def expected(count: int, word: str = "!") -> list[list[str]]:
    return [[f"P{i}{word}"] for i in range(count)]


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Two forked workers, started before any map, so they must be sent the pipeline."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        executor.submit(int).result()  # fork both workers now
        yield executor


# -- in this process -------------------------------------------------------------------------


def test_map_runs_each_item_in_input_order():
    pipe = make_pipe()
    assert pipe.map(prompts(5)) == expected(5)


def test_map_returns_what_call_returns_for_each_output_kind():
    pipe = make_pipe()
    items = [{"prompt": "a", "times": 2}, {"prompt": "b"}]
    assert pipe.map(items, output=["images", "copy"]) == [
        (["A!A!"], "original"),
        (["B!"], "original"),
    ]
    states = pipe.map(items, output=None)
    assert [type(s) for s in states] == [mb.State, mb.State]
    assert [s.images for s in states] == [pipe(output="images", **item) for item in items]


def test_map_unordered_gives_index_result_pairs():
    pairs = make_pipe().map(prompts(4), ordered=False)
    assert sorted(pairs) == list(enumerate(expected(4)))


def test_map_of_nothing_is_an_empty_list():
    pipe = make_pipe()
    assert pipe.map([]) == []
    with ThreadPoolExecutor(1) as executor:
        assert pipe.map([], executor=executor, batch_size=4) == []


def test_map_takes_any_iterable_of_mappings():
    items = ({"prompt": p} for p in ("x", "y"))  # a generator, read once
    assert make_pipe().map(items) == [["X!"], ["Y!"]]


def test_map_failure_keeps_the_other_results():
    items = [*prompts(2), {"prompt": "boom"}, {"promt": "typo"}, *prompts(1)]
    with pytest.raises(MapError, match=r"2 of 5 items failed") as info:
        make_pipe().map(items)
    err = info.value
    assert err.results == [["P0!"], ["P1!"], FAILED, FAILED, ["P0!"]]
    assert err.FAILED is FAILED
    assert sorted(err.failures) == [2, 3]
    assert isinstance(err.failures[2], BlockError)
    assert isinstance(err.failures[3], UnknownInputError)
    assert err.inputs == {2: {"prompt": "boom"}, 3: {"promt": "typo"}}
    assert err.__cause__ is err.failures[2]
    message = str(err)
    assert "item 2 (prompt='boom'): BlockError: block `echo` raised ValueError: boom!" in message
    assert "item 3 (promt='typo'): UnknownInputError" in message
    assert "pipe.map(err.inputs.values())" in message


def test_map_error_is_a_modblocks_runtime_error_that_pickles():
    with pytest.raises(MapError) as info:
        make_pipe().map([{"prompt": "boom"}])
    assert isinstance(info.value, mb.ModblocksError)
    assert isinstance(info.value, RuntimeError)
    clone = pickle.loads(pickle.dumps(info.value))
    assert str(clone) == str(info.value)
    assert clone.results == [FAILED]
    assert clone.results[0] is FAILED
    assert isinstance(clone.failures[0], BlockError)


def test_map_reports_an_item_that_is_not_a_mapping():
    with pytest.raises(MapError, match=r"item 1 is not a mapping") as info:
        make_pipe().map([{"prompt": "a"}, "b"])  # type: ignore[list-item]
    assert info.value.results == [["A!"], FAILED]
    assert isinstance(info.value.failures[1], TypeError)


def test_map_checks_its_arguments():
    pipe = make_pipe()
    with pytest.raises(ValueError, match="batch_size"):
        pipe.map(prompts(1), batch_size=0)
    with pytest.raises(UnknownInputError, match=r"`promt`.*Did you mean `prompt`"):
        map_pipeline(pipe, prompts(2), batch_size=2, batch=("promt",))


def test_map_progress_bar_follows_mb_progress(capsys):
    with mb.progress(disable=False, min_steps=1, leave=True, mininterval=0):
        make_pipe().map(prompts(3))
    assert "map: 100%" in capsys.readouterr().err
    with mb.progress(disable=True):
        make_pipe().map(prompts(30))
    assert capsys.readouterr().err == ""


# -- batching --------------------------------------------------------------------------------


def test_batchable_inputs_are_the_ones_taking_a_value_or_a_list_of_them():
    assert batchable_inputs(echo) == ("prompt",)
    assert batchable_inputs(noise) == ("prompt",)

    @mb.block(output="y")
    def plain(x: int, xs: list[int], maybe: int | None = None) -> int:
        return x

    assert batchable_inputs(plain) == ()


def test_map_batch_stacks_items_into_one_call_and_splits_the_results():
    pipe = make_pipe()
    assert pipe.map(prompts(5), batch_size=2) == expected(5)
    assert pipe.components["tag"].calls == [2, 2, 1]


def test_map_batch_stacks_only_items_whose_other_inputs_are_equal():
    pipe = make_pipe()
    items = [{"prompt": "a", "times": 1}, {"prompt": "b", "times": 2}, {"prompt": "c", "times": 1}]
    assert pipe.map(items, batch_size=3) == [["A!"], ["B!B!"], ["C!"]]
    assert sorted(pipe.components["tag"].calls) == [1, 2]  # a and c together, b alone


def test_map_batch_leaves_items_that_already_give_a_list_alone():
    pipe = make_pipe()
    items = [{"prompt": ["a", "b"]}, {"prompt": "c"}, {"prompt": "d"}]
    assert pipe.map(items, batch_size=3) == [["A!", "B!"], ["C!"], ["D!"]]
    assert pipe.components["tag"].calls == [2, 2]


def test_map_batch_failure_is_reported_for_the_failing_item_only():
    pipe = make_pipe()
    items = [{"prompt": "a"}, {"prompt": "boom"}, {"prompt": "c"}]
    with pytest.raises(MapError) as info:
        pipe.map(items, batch_size=3)
    assert info.value.results == [["A!"], FAILED, ["C!"]]
    assert list(info.value.failures) == [1]
    assert pipe.components["tag"].calls == [3, 1, 1, 1]  # the stacked call, then one by one


def test_map_batch_falls_back_to_single_calls_when_outputs_do_not_split():
    pipe = make_pipe()
    assert pipe.map(prompts(2), batch_size=2, output="copy") == ["original", "original"]
    assert pipe.components["tag"].calls == [2, 1, 1]


def test_map_batch_splits_tensors_into_copies():
    pipe = mb.Pipeline(noise)
    items = [{"prompt": "a", "seed": 3}, {"prompt": "b", "seed": 3}]
    parts = pipe.map(items, batch_size=2)
    whole = pipe(prompt=["a", "b"], seed=3, output="images")
    assert [p.shape for p in parts] == [(1, 3), (1, 3)]
    assert torch.equal(torch.cat(parts), whole)
    assert parts[1].untyped_storage().nbytes() == 3 * 4  # not the whole batch's storage


def test_map_batch_names_can_be_explicit():
    pipe = make_pipe()
    assert map_pipeline(pipe, prompts(2), batch_size=2, batch=()) == expected(2)
    assert pipe.components["tag"].calls == [1, 1]


# -- executors -------------------------------------------------------------------------------


def test_map_on_threads_shares_the_pipeline():
    pipe = make_pipe()
    with ThreadPoolExecutor(2) as executor:
        results = pipe.map(prompts(6), executor=executor, output=["images", "copy"])
    assert results == [(images, "original") for images in expected(6)]


def test_map_on_threads_unordered_gives_every_index_once():
    with ThreadPoolExecutor(2) as executor:
        pairs = make_pipe().map(prompts(7), executor=executor, ordered=False, batch_size=2)
    assert sorted(pairs) == list(enumerate(expected(7)))


def test_map_on_threads_keeps_results_of_items_that_succeed():
    with ThreadPoolExecutor(2) as executor, pytest.raises(MapError) as info:
        make_pipe().map([*prompts(3), {"prompt": "boom"}], executor=executor, batch_size=2)
    assert info.value.results == [*expected(3), FAILED]


def test_map_on_processes_loads_the_pipeline_once_per_worker(pool):
    pipe = make_pipe("?")
    results = pipe.map(prompts(12), executor=pool, output=["images", "copy"])
    assert [images for images, _ in results] == expected(12, "?")
    copies = {copy for _, copy in results}
    assert "original" not in copies
    pids = [copy.split(":")[0] for copy in copies]
    assert len(pids) == len(set(pids)) <= 2  # one copy per worker process
    again = pipe.map(prompts(4), executor=pool, output="copy")
    assert set(again) <= copies  # the next map finds the same copies


def test_map_on_processes_sends_changed_components_again(pool):
    pipe = make_pipe("?")
    first = set(pipe.map(prompts(4), executor=pool, output="copy"))
    mb.touch(pipe.components["tag"])  # changed in place: workers must not reuse their copy
    second = set(pipe.map(prompts(4), executor=pool, output="copy"))
    assert first.isdisjoint(second)


def test_map_on_processes_reloads_an_evicted_pipeline():
    """A worker keeps two pipelines; a third pushes the first out, and a task that misses it
    is sent again with the pipeline."""
    pipes = [make_pipe(word) for word in "abc"]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as executor:
        executor.submit(int).result()
        first = pipes[0].map(prompts(2), executor=executor, output="copy")
        for pipe in pipes[1:]:
            pipe.map(prompts(1), executor=executor)
        results = pipes[0].map(prompts(3), executor=executor, output=["images", "copy"])
    assert [images for images, _ in results] == expected(3, "a")
    assert {copy for _, copy in results}.isdisjoint(first)


def test_map_on_processes_batches_and_reports_failures_with_worker_tracebacks(pool):
    items = [*prompts(3), {"prompt": "boom"}, *prompts(2)]
    with pytest.raises(MapError) as info:
        make_pipe().map(items, executor=pool, batch_size=2)
    err = info.value
    assert err.results == [*expected(3), FAILED, *expected(2)]
    failure = err.failures[3]
    assert isinstance(failure, BlockError)
    assert failure.path == "echo"
    notes = "\n".join(getattr(failure, "__notes__", []))
    assert "raised in worker process" in notes
    assert "raise ValueError(msg)" in notes  # the original traceback, from the worker


def test_map_on_processes_with_a_cache_gives_each_worker_an_empty_one(pool):
    pipe = mb.Pipeline(echo, components={"tag": Tag()}, inference_mode=False, cache=mb.Cache())
    assert pipe.map(prompts(3), executor=pool) == expected(3, "")


def test_map_on_processes_reports_a_pipeline_that_cannot_be_pickled(pool):
    class LocalTag(Tag):  # defined in a function: pickle can't find it again
        pass

    pipe = mb.Pipeline(echo, components={"tag": LocalTag()}, inference_mode=False)
    with pytest.raises(MapError, match=r"items 0, 1, 2: TypeError: can't send the pipeline"):
        pipe.map(prompts(3), executor=pool)


def test_map_on_processes_runs_a_real_torch_pipeline(pool):
    pipe = mb.Pipeline(noise)
    items = [{"prompt": "a", "seed": s} for s in range(4)]
    remote = pipe.map(items, executor=pool, batch_size=2)
    local = pipe.map(items)
    assert all(torch.equal(r, m) for r, m in zip(remote, local, strict=True))


def test_map_on_a_fork_pool_started_by_map_inherits_the_pipeline():
    """Workers forked after `map` began hold the pipeline already: nothing is sent."""
    pipe = make_pipe()
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        results = pipe.map(prompts(4), executor=executor, output=["images", "copy"])
    assert results == [(images, "original") for images in expected(4)]


def test_map_keeps_the_results_of_items_after_one_that_is_not_a_mapping():
    with pytest.raises(MapError, match=r"item 0 is not a mapping") as info:
        make_pipe().map(["a", {"prompt": "b"}, {"prompt": "c"}])  # type: ignore[list-item]
    assert info.value.results == [FAILED, ["B!"], ["C!"]]
    assert list(info.value.failures) == [0]


def test_map_fallback_runs_each_item_with_its_generators_as_they_were():
    @mb.block(output="images")
    def noise(
        prompt: str | list[str], generator: torch.Generator | list[torch.Generator]
    ) -> torch.Tensor:
        gens = generator if isinstance(generator, list) else [generator]
        return torch.stack([torch.randn(2, generator=g) for g in gens])

    @mb.block(output="count")
    def count(images: torch.Tensor) -> int:
        return 7

    pipe = mb.Pipeline(noise >> count)

    def items() -> list[dict[str, Any]]:
        return [
            {"prompt": p, "generator": torch.Generator().manual_seed(i)}
            for i, p in enumerate("abcd")
        ]

    single = [pipe(output="images", **item) for item in items()]
    # `count` can't be split into four, so the stacked call falls back to one call per item.
    fallback = pipe.map(items(), batch_size=4, output=["images", "count"])
    assert all(torch.equal(a[0], b) for a, b in zip(fallback, single, strict=True))


def test_map_checks_output_before_running_any_item():
    pipe = make_pipe()
    with pytest.raises(mb.UnknownOutputError, match="Did you mean `images`"):
        pipe.map(prompts(3), output="imagez")
    with pytest.raises(mb.InputTypeError, match="batch_size"):
        pipe.map(prompts(3), batch_size="two")  # type: ignore[arg-type]
