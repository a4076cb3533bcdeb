"""IP-Adapter for SD 1.x and SDXL: image prompts, through diffusers' loader and encoder code.

`mb.Pipeline.load_ip_adapter(...)` loads the adapter into the UNet in place, as diffusers
does (new attention processors and an image projection inside the UNet; see
`modblocks.diffusion.lora` for what that means for pipelines sharing the UNet), and
`set_ip_adapter_scale` weights it. The image encoder (`CLIPVisionModelWithProjection`) and
its `CLIPImageProcessor` are the pipeline's components `image_encoder` and
`feature_extractor` when it has them; otherwise the ones `load_ip_adapter` loads from the
adapter's folder are kept with the UNet, the way diffusers keeps them with its pipeline.

`with_ip_adapter(node)` adds `prepare_ip_adapter_image_embeds` after the prompt encoding of
each mode; it encodes `ip_adapter_image` (or takes `ip_adapter_image_embeds`) into the
`image_embeds` that the noise prediction gives the UNet. Without either input it gives
`None` and the node runs as before.

Examples:
    ```python
    import PIL.Image
    import modblocks as mb
    from modblocks.diffusion import text2img
    from modblocks.diffusion.ip_adapter import with_ip_adapter
    from modblocks.diffusion.testing import tiny_sd_components
    from modblocks.diffusion.testing_adapters import tiny_image_encoder, tiny_ip_adapter

    components = {**tiny_sd_components(), **tiny_image_encoder(32)}
    pipe = mb.Pipeline(with_ip_adapter(text2img), components=components)
    pipe.load_ip_adapter(tiny_ip_adapter(components))
    pipe.set_ip_adapter_scale(0.6)
    image = PIL.Image.new("RGB", (32, 32), "red")
    images = pipe(prompt="a cat", ip_adapter_image=image, num_inference_steps=2, output="images")
    ```
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Annotated, Any, cast

import torch
from diffusers.image_processor import PipelineImageInput
from diffusers.loaders.ip_adapter import IPAdapterMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
    StableDiffusionPipeline,
)
from transformers import CLIPVisionModelWithProjection
from transformers.image_processing_utils import BaseImageProcessor
from typing_extensions import Doc

import modblocks as mb

from ._edit import edit_sequences
from ._grad import no_grad
from .common import device_of, dtype_of

__all__ = [
    "load_ip_adapter",
    "prepare_ip_adapter_image_embeds",
    "set_ip_adapter_scale",
    "unload_ip_adapter",
    "with_ip_adapter",
]

# Encoders `load_ip_adapter` loaded for a UNet the pipeline gave none for, by UNet.
_encoders: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class _Host(IPAdapterMixin):
    """What diffusers' IP-Adapter code reads from a pipeline: the UNet and the image encoder."""

    unet_name = "unet"
    # diffusers' own code, on this host: image encoding and the embeddings per image.
    encode_image = vars(StableDiffusionPipeline)["encode_image"]
    prepare_ip_adapter_image_embeds = vars(StableDiffusionPipeline)[
        "prepare_ip_adapter_image_embeds"
    ]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        image_encoder: CLIPVisionModelWithProjection | None,
        feature_extractor: BaseImageProcessor | None,
    ) -> None:
        kept = _encoders.get(unet, (None, None))
        self.unet = unet
        self.image_encoder = kept[0] if image_encoder is None else image_encoder
        self.feature_extractor = kept[1] if feature_extractor is None else feature_extractor

    @property
    def device(self) -> torch.device:
        return device_of(self.unet)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.unet)

    def register_modules(self, **modules: Any) -> None:
        """Keep what `load_ip_adapter` loaded (an image encoder, its processor)."""
        for name, module in modules.items():
            setattr(self, name, module)


def _host(pipe: mb.Pipeline) -> _Host:
    unet = pipe.components.get("unet")
    if unet is None:
        msg = f"{pipe!r} has no `unet` component: IP-Adapters load into a UNet."
        raise mb.WiringError(msg)
    encoder = pipe.components.get("image_encoder")
    return _Host(unet, encoder, pipe.components.get("feature_extractor"))


def load_ip_adapter(
    pipe: mb.Pipeline,
    pretrained_model_name_or_path_or_dict: str
    | os.PathLike[str]
    | dict[str, Any]
    | list[str | dict[str, Any]],
    subfolder: str | list[str] | None = None,
    weight_name: str | list[str] | None = None,
    image_encoder_folder: str | None = "image_encoder",
    **kwargs: Any,
) -> None:
    """Load IP-Adapter weights into the pipeline's UNet (diffusers' `load_ip_adapter`).

    Args:
        pipe: The pipeline whose UNet gets the adapter (in place).
        pretrained_model_name_or_path_or_dict: A folder, or a state dict with `image_proj`
            and `ip_adapter`; a list of them for several adapters.
        subfolder: The subfolder of the weights in the folder (one per adapter).
        weight_name: The weights' file name (one per adapter).
        image_encoder_folder: Where the image encoder is, if the pipeline has none.
        **kwargs: Passed to diffusers' `load_ip_adapter`.
    """
    given: Any = pretrained_model_name_or_path_or_dict
    source: Any = (
        os.fspath(cast("os.PathLike[str]", given)) if isinstance(given, os.PathLike) else given
    )
    with _lock:
        host = _host(pipe)
        try:
            cast("Any", host).load_ip_adapter(
                source,
                subfolder=subfolder or "",
                weight_name=weight_name or "",
                image_encoder_folder=image_encoder_folder,
                **kwargs,
            )
        finally:
            if host.image_encoder is not pipe.components.get("image_encoder"):
                _encoders[host.unet] = (host.image_encoder, host.feature_extractor)
            mb.touch(host.unet)


def set_ip_adapter_scale(pipe: mb.Pipeline, scale: float | list[Any] | dict[str, Any]) -> None:
    """Weight the loaded IP-Adapter(s): one number, one per adapter, or per block (diffusers)."""
    host = _host(pipe)
    cast("Any", host).set_ip_adapter_scale(scale)
    mb.touch(host.unet)


def unload_ip_adapter(pipe: mb.Pipeline) -> None:
    """Remove the IP-Adapter(s) from the UNet, and forget an image encoder loaded with them."""
    host = _host(pipe)
    cast("Any", host).unload_ip_adapter()
    _encoders.pop(host.unet, None)
    mb.touch(host.unet)


@mb.block(output="image_embeds")
@no_grad  # inference only, also when run outside a Pipeline
def prepare_ip_adapter_image_embeds(
    batch_size: Annotated[int, Doc("number of images")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    image_encoder: mb.Component[CLIPVisionModelWithProjection | None] = None,
    # Any image processor: `CLIPImageProcessor` names a different class with torchvision.
    feature_extractor: mb.Component[BaseImageProcessor | None] = None,
    ip_adapter_image: Annotated[
        PipelineImageInput | list[PipelineImageInput] | None,
        Doc("the image prompt(s) for the IP-Adapter(s): one per loaded adapter"),
    ] = None,
    ip_adapter_image_embeds: Annotated[
        list[torch.Tensor] | None,
        Doc("precomputed image embeddings, one tensor per adapter (negative half first)"),
    ] = None,
) -> Annotated[
    list[torch.Tensor] | None, Doc("image embeddings for the UNet, one per adapter, or None")
]:
    """Encode the image prompt for the IP-Adapter (`prepare_ip_adapter_image_embeds`)."""
    if ip_adapter_image is None and ip_adapter_image_embeds is None:
        return None
    host = _Host(unet, image_encoder, feature_extractor)
    if ip_adapter_image_embeds is None and host.image_encoder is None:
        msg = (
            "`ip_adapter_image` needs an image encoder: give the pipeline an `image_encoder` "
            "component, or give `ip_adapter_image_embeds` instead."
        )
        raise ValueError(msg)
    embeds: list[torch.Tensor] = cast("Any", host).prepare_ip_adapter_image_embeds(
        ip_adapter_image, ip_adapter_image_embeds, host.device, batch_size, do_cfg
    )
    return embeds


def with_ip_adapter(node: mb.Node) -> mb.Node:
    """Return *node* (SD 1.x or SDXL, any mode) with the IP-Adapter image prompt added."""

    def add(seq: mb.Sequential) -> mb.Sequential:
        encoder = next(n for n in seq.names if n.startswith("encode_"))
        return seq.insert(prepare_ip_adapter_image_embeds, after=encoder)

    return edit_sequences(node, add)
