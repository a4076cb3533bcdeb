"""Rich reprs in Jupyter: a State as an HTML table (thumbnails, summaries), nodes as markdown."""

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import modblocks as mb
from modblocks._html import MAX_IMAGES, THUMBNAIL

_DATA = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _pngs(text: str) -> list[Image.Image]:
    """Decode every inline PNG of an HTML fragment."""
    images = []
    for data in _DATA.findall(text):
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(raw))
        image.load()
        images.append(image)
    return images


def test_state_html_shows_a_pil_image_as_a_small_png_thumbnail():
    picture = Image.new("RGB", (300, 200), color=(200, 30, 30))
    text = mb.State(image=picture)._repr_html_()
    assert '<img src="data:image/png;base64,' in text
    (thumb,) = _pngs(text)
    assert thumb.format == "PNG"
    assert max(thumb.size) <= THUMBNAIL
    assert thumb.size == (128, 85)  # the aspect ratio is kept
    assert thumb.getpixel((10, 10)) == (200, 30, 30)
    assert "300x200 RGB" in text  # the caption gives the real size


def test_state_html_enlarges_tiny_images_without_resampling_them():
    text = mb.State(digit=Image.new("L", (16, 16), color=255))._repr_html_()
    (thumb,) = _pngs(text)
    assert thumb.size == (16, 16)  # the PNG keeps the pixels
    assert 'width="64" height="64"' in text  # drawn larger
    assert "pixelated" in text


def test_state_html_converts_modes_png_cannot_hold():
    text = mb.State(cmyk=Image.new("CMYK", (40, 20)), f=Image.new("F", (8, 8)))._repr_html_()
    assert len(_pngs(text)) == 2


def test_state_html_shows_a_list_of_images_as_a_capped_row():
    images = [Image.new("L", (16, 16), color=i * 10) for i in range(20)]
    text = mb.State(images=images)._repr_html_()
    thumbs = _pngs(text)
    assert len(thumbs) == MAX_IMAGES
    assert [t.getpixel((0, 0)) for t in thumbs] == [i * 10 for i in range(MAX_IMAGES)]
    assert f"20 images, the first {MAX_IMAGES} shown (16x16 L)" in text
    assert "list[Image]" in text


def test_state_html_summarises_tensors_without_printing_them():
    latents = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    text = mb.State(latents=latents)._repr_html_()
    assert "shape=(2, 3, 4)" in text
    assert "torch.float32" in text
    assert "device=cpu" in text
    assert "min=0" in text
    assert "max=23" in text
    assert "mean=11.5" in text
    assert "tensor(" not in text


def test_state_html_summarises_integer_bool_and_half_tensors():
    text = mb.State(
        labels=torch.tensor([3, 1, 4]),
        mask=torch.tensor([True, False]),
        half=torch.ones(2, dtype=torch.float16),
    )._repr_html_()
    assert "torch.int64" in text
    assert "max=4" in text
    assert "torch.bool" in text
    assert "torch.float16" in text


def test_state_html_counts_values_that_are_not_finite():
    text = mb.State(x=torch.tensor([1.0, float("nan"), float("inf")]))._repr_html_()
    assert "2 not finite" in text
    assert "max=1" in text


def test_state_html_skips_statistics_of_large_tensors():
    text = mb.State(big=torch.zeros(1, 4, 256, 256))._repr_html_()
    assert "shape=(1, 4, 256, 256)" in text
    assert "mean=" not in text


def test_state_html_summarises_numpy_arrays():
    text = mb.State(a=np.linspace(0, 1, 5).reshape(5, 1), s=np.array(["x", "y"]))._repr_html_()
    assert "ndarray(shape=(5, 1), dtype=float64, min=0, max=1, mean=0.5)" in text
    assert "ndarray(shape=(2,), dtype=&lt;U1)" in text
    assert "array([" not in text  # the values themselves are not printed


def test_state_html_escapes_values_and_names():
    text = mb.State({"<b>name</b>": "<script>alert(1)</script>"})._repr_html_()
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>" not in text
    assert "&lt;b&gt;name&lt;/b&gt;" in text


def test_state_html_truncates_long_values():
    text = mb.State(many=list(range(10_000)), text="x" * 10_000)._repr_html_()
    assert len(text) < 2000
    assert "len=10000" in text
    assert "[0, 1, 2, 3, 4, 5, 6, 7, ...]" in text
    assert "x" * 300 not in text


def test_state_html_survives_a_failing_repr():
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError

    text = mb.State(b=Broken())._repr_html_()
    assert "Broken" in text


def test_state_html_of_an_empty_state():
    assert "State()" in mb.State()._repr_html_()


def test_state_html_does_not_import_heavy_libraries():
    code = """
import sys
import modblocks as mb
text = mb.State(x=1, s="a", l=[1, 2])._repr_html_()
assert "<table" in text
for module in ("torch", "numpy", "PIL"):
    assert module not in sys.modules, module
"""
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr


# -- nodes and pipelines ---------------------------------------------------------------------


@mb.block(output="y")
def scale(x: torch.Tensor, layer: mb.Component[torch.nn.Linear], gain: mb.Config[float] = 1.0):
    """Scale the input."""
    return layer(x) * gain


def test_node_markdown_has_the_doc_and_the_diagram():
    text = (scale >> scale.named("again").rename(x="y", y="z"))._repr_markdown_()
    assert text.startswith("```text\n")
    assert "scale (Block)" in text
    assert "again (Block)" in text
    assert "```mermaid\nflowchart LR" in text


@pytest.mark.parametrize("configs", [{}, {"gain": 2.0}])
def test_pipeline_markdown_has_the_bound_components_and_the_diagram(configs):
    pipe = mb.Pipeline(scale, components={"layer": torch.nn.Linear(2, 2)}, configs=configs)
    text = pipe._repr_markdown_()
    assert "Bound components:" in text
    assert "layer: Linear" in text
    assert ("gain = 2.0" in text) == bool(configs)
    assert "```mermaid\nflowchart LR" in text
