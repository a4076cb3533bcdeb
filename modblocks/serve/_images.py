"""Images over HTTP: PNG in (checked against size limits before decoding) and out, previews."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import TYPE_CHECKING, Any, Final

from modblocks.exceptions import ModblocksError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["ImageError", "decode_image", "encode_png", "is_image", "preview", "to_input"]

FORMATS: Final = frozenset({"PNG", "JPEG", "WEBP"})

# Approximate RGB of Stable Diffusion 1.x latents (a linear map, as ComfyUI's and A1111's
# cheap previews use): shows the picture forming without running the VAE.
_SD_LATENT_RGB: Final = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


class ImageError(ModblocksError, ValueError):
    """An uploaded image is not a readable PNG/JPEG/WebP, or exceeds the server's limits."""

    field: str = ""
    status: int = 422


def _reject(field: str, message: str, status: int = 422) -> ImageError:
    return ImageError(f"`{field}`: {message}", field=field, status=status)


def decode_image(data: str | bytes, field: str, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Read an image given as base64 text (a data URL works too) or raw bytes.

    The size in pixels is read from the header and checked against *max_pixels* before any
    pixel is decoded, so a small file that expands to a huge image (a decompression bomb) is
    refused without the memory it would take.

    Raises:
        ImageError: not an image, a format other than PNG/JPEG/WebP, or over a limit.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, str):
        text = data.partition(",")[2] if data.startswith("data:") else data
        if len(text) > max_bytes * 4 // 3 + 4:
            raise _reject(field, f"the image is over the limit of {max_bytes} bytes", 413)
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _reject(field, "not valid base64 (send a PNG encoded as base64)") from None
    else:
        raw = data
    if len(raw) > max_bytes:
        raise _reject(field, f"the image is {len(raw)} bytes, over the limit of {max_bytes}", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if image.format not in FORMATS:
                raise _reject(field, f"{image.format} images are not accepted; send a PNG")
            if width * height > max_pixels:
                msg = (
                    f"the image is {width}x{height} = {width * height} pixels, over the "
                    f"limit of {max_pixels}"
                )
                raise _reject(field, msg, 413)
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:  # over PIL's own limit, which is far above ours
        raise _reject(field, f"the image is over the limit of {max_pixels} pixels", 413) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Warning) as exc:
        raise _reject(field, f"not a readable image ({exc}); send a PNG") from None
    return image


def to_input(image: Image.Image, *, tensor: bool, mask: bool) -> Any:
    """Give *image* as the pipeline expects it.

    As a PIL image: RGB for pictures, grayscale (``"L"``) for masks. As a tensor: float32
    ``(1, C, H, W)``, in [-1, 1] for pictures (C is 1 for a grayscale PNG, else 3) and in
    [0, 1] with one channel for masks (white repaints), as diffusers' image processors make.
    """
    if mask:
        image = image.convert("L")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    if not tensor:
        return image
    import numpy as np
    import torch

    array = np.asarray(image, dtype=np.float32) / 255.0
    pixels = torch.from_numpy(array.copy())
    pixels = pixels[None, None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)[None]
    return pixels if mask else pixels * 2.0 - 1.0


def is_image(value: object) -> bool:
    """Whether *value* is a PIL image (without importing PIL when nobody did)."""
    import sys

    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def encode_png(image: Image.Image) -> str:
    """The image as base64 PNG text."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def preview(latents: torch.Tensor, *, min_side: int = 64) -> Image.Image:
    """A cheap picture of a batch of latents, side by side, without a VAE.

    One channel is shown as gray and three as RGB (pixel-space models, such as the demo's);
    four are mapped with Stable Diffusion's approximate latent-to-RGB factors; others show
    their first channel. Values are taken as lying in [-1, 1]. Small images are enlarged to
    *min_side* pixels (nearest neighbour).
    """
    import torch
    from PIL import Image

    x = latents.detach().float().cpu()
    if x.ndim == 3:
        x = x[None]
    channels = x.shape[1]
    if channels == 4:
        factors = torch.tensor(_SD_LATENT_RGB, dtype=x.dtype)
        x = torch.einsum("bchw,cr->brhw", x, factors)
    elif channels not in (1, 3):
        x = x[:, :1]
    x = torch.cat(list(x), dim=-1)  # the batch side by side
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    scale = max(1, -(-min_side // image.height))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image
