"""How a `State` shows itself in Jupyter: a table of its values, with image thumbnails.

Tensors and arrays are summarised (shape, dtype, device, and min / max / mean when they are
small), PIL images are drawn as inline PNG thumbnails, everything else is a short, escaped
``repr``. Nothing here imports torch, PIL or numpy: a value can only be one of theirs when its
library is already in ``sys.modules``.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import itertools
import reprlib
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["render_state_html", "render_value_html"]

THUMBNAIL = 128
"""The largest side, in pixels, of an image's thumbnail."""

SMALL_IMAGE = 64
"""Images smaller than this are shown enlarged (pixelated) to about this size."""

MAX_IMAGES = 8
"""At most this many thumbnails for a list of images."""

MAX_STATS = 1 << 16
"""Min / max / mean are computed for tensors and arrays of at most this many elements."""

MAX_TEXT = 200
"""The longest ``repr`` shown, in characters."""

MAX_ITEMS = 8
"""At most this many items of a list, tuple, dict or set in its ``repr``."""

_repr = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_repr.maxlevel = 3
_repr.maxtuple = _repr.maxlist = _repr.maxarray = _repr.maxdict = MAX_ITEMS
_repr.maxset = _repr.maxfrozenset = _repr.maxdeque = MAX_ITEMS
_repr.maxstring = _repr.maxother = MAX_TEXT
_repr.maxlong = 60
_CONTAINERS = (list, tuple, dict, set, frozenset)

_TABLE = '<table class="modblocks-state">'
_CELL = 'style="text-align:left;vertical-align:top"'


def render_state_html(values: Mapping[str, Any]) -> str:
    """Render the values of a state as an HTML table: name, type and a summary of each."""
    if not values:
        return "<code>State()</code>"
    count = f"{len(values)} value{'' if len(values) == 1 else 's'}"
    rows = "".join(
        f"<tr><td {_CELL}><code>{html.escape(str(name))}</code></td>"
        f"<td {_CELL}><code>{html.escape(_type_label(value))}</code></td>"
        f"<td {_CELL}>{render_value_html(value)}</td></tr>"
        for name, value in values.items()
    )
    return (
        f"{_TABLE}<caption style='text-align:left'>State ({count})</caption>"
        f"<thead><tr><th {_CELL}>name</th><th {_CELL}>type</th><th {_CELL}>value</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )


def render_value_html(value: Any) -> str:
    """Render one value: a thumbnail, a tensor or array summary, or a short escaped repr."""
    with contextlib.suppress(Exception):  # a repr must never raise: fall back to the text
        if _is_image(value):
            return _thumbnail(value)
        images = _image_list(value)
        if images is not None:
            return _thumbnail_row(images)
        summary = _tensor_summary(value) or _array_summary(value)
        if summary is not None:
            return f"<code>{html.escape(summary)}</code>"
    return f"<code>{html.escape(_short_repr(value))}</code>"


# -- plain values --------------------------------------------------------------------------


def _type_label(value: Any) -> str:
    cls: type[object] = type(cast("object", value))
    if cls in (list, tuple) and value:
        head = itertools.islice(cast("Sequence[Any]", value), 1000)  # enough to tell
        items = {type(cast("object", v)).__name__ for v in head}
        inner = items.pop() if len(items) == 1 else "..."
        return f"{cls.__name__}[{inner}]"
    return cls.__name__


def _short_repr(value: Any) -> str:
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - any object's repr may fail
        cls: type[object] = type(cast("object", value))
        return f"<{cls.__qualname__} (repr failed)>"
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 3] + "..."
    kind = type(cast("object", value))
    if kind in _CONTAINERS and len(value) > MAX_ITEMS:
        return f"{text} (len={len(value)})"
    if kind in (str, bytes) and len(value) > MAX_TEXT - 2:
        return f"{text} (len={len(value)})"
    return text


def _stats(low: float, high: float, mean: float) -> str:
    return f", min={low:.4g}, max={high:.4g}, mean={mean:.4g}"


# -- tensors and arrays --------------------------------------------------------------------


def _tensor_summary(value: Any) -> str | None:
    if "torch" not in sys.modules:
        return None
    import torch

    if not isinstance(value, torch.Tensor):
        return None
    text = f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device}"
    small = 0 < value.numel() <= MAX_STATS and value.device.type != "meta"
    if small and value.layout == torch.strided and not value.is_complex():
        with contextlib.suppress(Exception):  # a tensor subclass may refuse: no statistics
            data = value.detach().to("cpu", torch.float64)
            finite = data[data.isfinite()]
            if finite.numel():
                text += _stats(finite.min().item(), finite.max().item(), finite.mean().item())
            if finite.numel() < data.numel():
                text += f", {data.numel() - finite.numel()} not finite"
    return text + ")"


def _array_summary(value: Any) -> str | None:
    if "numpy" not in sys.modules:
        return None
    import numpy as np

    if not isinstance(value, np.ndarray):
        return None
    array = cast("np.ndarray[Any, np.dtype[Any]]", value)
    text = f"ndarray(shape={array.shape}, dtype={array.dtype}"
    numeric = array.dtype.kind in "biuf"
    if numeric and 0 < array.size <= MAX_STATS:
        data = array.astype(np.float64)
        finite = data[np.isfinite(data)]
        if finite.size:
            text += _stats(float(finite.min()), float(finite.max()), float(finite.mean()))
        if finite.size < data.size:
            text += f", {data.size - finite.size} not finite"
    return text + ")"


# -- images --------------------------------------------------------------------------------


def _is_image(value: Any) -> bool:
    if "PIL.Image" not in sys.modules:
        return False
    from PIL import Image

    return isinstance(value, Image.Image)


def _image_list(value: Any) -> Sequence[Image] | None:
    if type(cast("object", value)) not in (list, tuple) or not value:
        return None
    items = cast("Sequence[Any]", value)
    return cast("Sequence[Image]", items) if all(_is_image(v) for v in items) else None


def _thumbnail_png(image: Image) -> tuple[str, int, int]:
    """The image as a base64 PNG of at most THUMBNAIL pixels a side, and its size."""
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL, THUMBNAIL))
    if thumb.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        thumb = thumb.convert("RGBA" if "A" in thumb.getbands() else "RGB")
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), thumb.width, thumb.height


def _img_tag(image: Image) -> str:
    data, width, height = _thumbnail_png(image)
    style = ""
    if max(width, height) < SMALL_IMAGE:  # tiny images (16x16 digits): enlarge, pixelated
        scale = SMALL_IMAGE // max(width, height)
        width, height = width * scale, height * scale
        style = ' style="image-rendering:pixelated"'
    title = html.escape(f"{image.width}x{image.height} {image.mode}")
    return (
        f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
        f'alt="{title}" title="{title}"{style}>'
    )


def _thumbnail(image: Image) -> str:
    caption = html.escape(f"{image.width}x{image.height} {image.mode}")
    return f"{_img_tag(image)}<br><small>{caption}</small>"


def _thumbnail_row(images: Sequence[Image]) -> str:
    shown = " ".join(_img_tag(image) for image in images[:MAX_IMAGES])
    kinds = {f"{image.width}x{image.height} {image.mode}" for image in images}
    caption = f"{len(images)} images"
    if len(images) > MAX_IMAGES:
        caption += f", the first {MAX_IMAGES} shown"
    caption += f" ({kinds.pop()})" if len(kinds) == 1 else " (of different sizes or modes)"
    return f"{shown}<br><small>{html.escape(caption)}</small>"
