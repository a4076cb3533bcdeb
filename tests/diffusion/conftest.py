"""Fixtures for the Stable Diffusion tests: tiny components, images, and diffusers references."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from modblocks.diffusion.testing import tiny_sd_components

HERE = Path(__file__).parent

# numpy 2 warns when diffusers' Euler and DPM schedulers call np.array(tensor) in
# set_timesteps (torch's __array__ lacks `copy`). That is upstream's to fix; the values are right.
NUMPY_COPY_WARNING = (
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

REFERENCE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "text2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """With `-vv`, list the differences to diffusers that the equivalence tests measured."""
    if terminalreporter.config.get_verbosity() < 2:
        return
    rows = [
        (report.nodeid, value)
        for report in terminalreporter.stats.get("passed", [])
        if report.when == "call"
        for name, value in report.user_properties
        if name == "max_diff"
    ]
    if rows:
        terminalreporter.section("max abs difference to diffusers / output range")
        for nodeid, value in rows:
            terminalreporter.write_line(f"{value:9.2e}  {nodeid}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings(NUMPY_COPY_WARNING))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models gain nothing from more, and on a busy machine
    two threads contending for two cores made each UNet call 10 to 40 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def components() -> dict[str, Any]:
    """Tiny random-weight SD components with the 4-channel UNet and DDIM."""
    return tiny_sd_components()


@pytest.fixture(scope="session")
def inpaint_components() -> dict[str, Any]:
    """Tiny random-weight SD components with a 9-channel inpainting UNet."""
    return tiny_sd_components(inpaint_unet=True)


@pytest.fixture(scope="session")
def init_image() -> PIL.Image.Image:
    """A 48x32 (width x height) RGB noise image."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="session")
def mask_image() -> PIL.Image.Image:
    """A 48x32 mask: white (repaint) on the right half, black elsewhere."""
    pixels = np.zeros((32, 48), dtype=np.uint8)
    pixels[:, 24:] = 255
    return PIL.Image.fromarray(pixels)


def _generators(count: int | None, seed: int = 0) -> torch.Generator | list[torch.Generator]:
    if count is None:
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


@pytest.fixture
def generators() -> Callable[..., torch.Generator | list[torch.Generator]]:
    """`generators(None)`: one seeded generator; `generators(n)`: a list of n; new each call."""
    return _generators


Reference = Callable[..., Any]


@pytest.fixture
def reference() -> Reference:
    """Run a diffusers pipeline on the given components: `reference("text2img", comps, **kw)`.

    The pipeline gets its own copy of the scheduler, whose state diffusers changes in place,
    and returns `.images`.
    """

    def run(kind: str, components: dict[str, Any], **kwargs: Any) -> Any:
        pipeline = REFERENCE_CLASSES[kind](
            **{**components, "scheduler": copy.deepcopy(components["scheduler"])},
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        with warnings.catch_warnings():
            # diffusers deprecates repeating fewer images than prompts; modblocks repeats them.
            warnings.filterwarnings("ignore", "You have passed .* initial images", FutureWarning)
            return pipeline(**kwargs).images

    return run


def max_diff(actual: Any, expected: Any) -> float:
    """Return the max absolute difference, relative to the range of *expected*."""
    a = (
        np.stack([np.asarray(x) for x in actual])
        if isinstance(actual, list)
        else np.asarray(actual)
    )
    e = (
        np.stack([np.asarray(x) for x in expected])
        if isinstance(expected, list)
        else np.asarray(expected)
    )
    assert a.shape == e.shape, (a.shape, e.shape)
    span = float(e.max() - e.min()) or 1.0
    return float(np.abs(a.astype(np.float64) - e.astype(np.float64)).max()) / span


@pytest.fixture
def assert_same(request: pytest.FixtureRequest) -> Callable[[Any, Any], float]:
    """`assert_same(actual, expected)`: equal to float32 tolerance (1e-4 of the range).

    Each difference is kept in the test's `user_properties`; `pytest -vv` prints them all.
    """

    def check(actual: Any, expected: Any) -> float:
        diff = max_diff(actual, expected)
        # Not record_property: with junit_family xunit2 it warns, and warnings are errors here.
        request.node.user_properties.append(("max_diff", diff))
        assert diff <= 1e-4, f"max abs difference {diff:.3g} of the output's range"
        return diff

    return check
