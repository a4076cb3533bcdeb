"""`modblocks.ray.map_batches`: a pipeline over a Ray Data dataset on a local two-CPU cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import modblocks as mb

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'modblocks[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'ray[data]'")

import modblocks.ray as mb_ray  # noqa: E402
from modblocks._map import MapError  # noqa: E402

# Ray Data 2.60 warns about its own deprecated settings when it makes its `DataContext`.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")

# Actors import this module by name (`tests.test_ray`) to find the blocks.


class Tag:
    """A component that notes each copy of itself: one per actor."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.copy = "original"

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.copy = f"{os.getpid()}:{id(self)}"


@mb.block(output="images")
def shout(tag: mb.Component[Tag], prompt: str | list[str], times: int = 1) -> list[str]:
    """Shout each prompt; fail on "boom"."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if "boom" in prompts:
        msg = "boom!"
        raise ValueError(msg)
    return [p.upper() * times + tag.word for p in prompts]


@mb.block(output="copy")
def which(tag: mb.Component[Tag]) -> str:
    """Say which copy of the component ran."""
    return tag.copy


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def test_map_batches_adds_the_output_column_with_one_pipeline_per_actor():
    pipe = mb.Pipeline(shout >> which, components={"tag": Tag("!")}, inference_mode=False)
    rows = [{"id": i, "prompt": f"p{i}", "times": 1 + i % 2} for i in range(8)]
    dataset = ray.data.from_items(rows)
    result = mb_ray.map_batches(
        dataset, pipe, output=["images", "copy"], batch_size=2, concurrency=2
    ).take_all()
    result.sort(key=lambda row: row["id"])
    assert [row["id"] for row in result] == list(range(8))  # other columns pass through
    assert [list(row["images"]) for row in result] == [
        pipe(output="images", **{k: v for k, v in row.items() if k != "id"}) for row in rows
    ]
    copies = {row["copy"] for row in result}
    assert "original" not in copies
    pids = [copy.split(":")[0] for copy in copies]
    assert len(pids) == len(set(pids)) <= 2  # one pipeline per actor


def test_map_batches_builds_the_pipeline_from_a_factory_and_reports_failed_rows():
    dataset = ray.data.from_items([{"prompt": "a"}, {"prompt": "boom"}])
    factory = _factory  # built in each actor: nothing but this reference is sent
    out = mb_ray.map_batches(dataset, factory, batch_size=2)
    with pytest.raises(MapError, match=r"1 of 2 items failed") as info:
        out.take_all()
    assert "item 1 (prompt='boom')" in str(info.value)
    # The fields of the failed batch come through Ray's wrapping, not only its text.
    assert info.value.inputs == {1: {"prompt": "boom"}}
    assert info.value.results[0] == ["A?"]
    assert info.value.results[1] is MapError.FAILED
    assert isinstance(info.value.failures[1], mb.BlockError)


def _factory() -> mb.Pipeline:
    return mb.Pipeline(shout, components={"tag": Tag("?")}, inference_mode=False)


def test_pipeline_actor_runs_a_batch_in_this_process():
    np = pytest.importorskip("numpy")
    actor = mb_ray.PipelineActor(_factory, output="images")
    out = actor({"prompt": np.array(["a", "b"]), "times": np.array([2, 2])})
    assert list(out["prompt"]) == ["a", "b"]
    assert out["images"].tolist() == [["AA?"], ["BB?"]]
