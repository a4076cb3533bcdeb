"""`Pipeline.map` on Dask: ``client.get_executor()`` of a local cluster of two worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import modblocks as mb
from modblocks._map import FAILED, MapError

distributed = pytest.importorskip(
    "distributed", reason="Dask is not installed: pip install 'modblocks[dask]'"
)

from modblocks.exceptions import BlockError  # noqa: E402

# The workers import this module by name (`tests.test_dask`) to find the blocks, as pickle
# does for any function; the pipeline's components travel to them once.


class Tag:
    """A component that notes each copy of itself: one per worker process."""

    def __init__(self) -> None:
        self.copy = "original"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.copy = f"{os.getpid()}:{id(self)}"


@mb.block(output="images")
def shout(tag: mb.Component[Tag], prompt: str | list[str]) -> list[tuple[str, str]]:
    """Shout each prompt, saying which copy of the component did; fail on "boom"."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if "boom" in prompts:
        msg = "boom!"
        raise ValueError(msg)
    return [(p.upper(), tag.copy) for p in prompts]


@pytest.fixture(scope="module")
def executor() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client.get_executor()


def test_map_on_dask_runs_items_in_order_loading_the_pipeline_once_per_worker(executor):
    pipe = mb.Pipeline(shout, components={"tag": Tag()}, inference_mode=False)
    items = [{"prompt": f"p{i}"} for i in range(10)]
    results = pipe.map(items, executor=executor)
    assert [r[0][0] for r in results] == [f"P{i}" for i in range(10)]
    copies = {r[0][1] for r in results}
    assert "original" not in copies
    pids = [copy.split(":")[0] for copy in copies]
    assert len(pids) == len(set(pids)) <= 2
    stacked = pipe.map(items, executor=executor, batch_size=4)
    assert [r[0][0] for r in stacked] == [f"P{i}" for i in range(10)]
    assert {r[0][1] for r in stacked} <= copies  # the same copies serve the next map


def test_map_on_dask_keeps_results_when_an_item_fails(executor):
    pipe = mb.Pipeline(shout, components={"tag": Tag()}, inference_mode=False)
    items = [{"prompt": "a"}, {"prompt": "boom"}, {"prompt": "c"}]
    with pytest.raises(MapError, match=r"item 1 \(prompt='boom'\): BlockError") as info:
        pipe.map(items, executor=executor, output="images", batch_size=3)
    err = info.value
    assert [r if r is FAILED else r[0][0] for r in err.results] == ["A", FAILED, "C"]
    assert isinstance(err.failures[1], BlockError)
    assert "raised in worker process" in "\n".join(err.failures[1].__notes__)
