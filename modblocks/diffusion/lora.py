"""LoRA adapters on a pipeline's UNet and text encoders, through diffusers' loaders and PEFT.

`mb.Pipeline.load_lora_weights`, `set_adapters`, `unload_lora_weights`, `fuse_lora` and
`unfuse_lora` call these functions. Each one hands the pipeline's models to diffusers' own
LoRA loader (`StableDiffusionLoraLoaderMixin`, or the SDXL one when there is a
`text_encoder_2`), so every LoRA format diffusers reads works, with the same results.

Shared models change for everyone. As in diffusers, loading, activating, weighting and
fusing adapters change the models *in place*: another pipeline that holds the same UNet
(or text encoder) object sees the adapters too. modblocks does not copy models on load
because a UNet is gigabytes and most programs build one pipeline per model; to keep a pipeline
without the LoRA, give it its own copy first:
``plain = pipe.with_components(unet=copy.deepcopy(pipe.components["unet"]))``.
What modblocks adds is that every change calls `mb.touch` on each model it changed, and a
touch is seen by *every* `mb.Cache`: no pipeline sharing the model serves a result made
before the change, and blocks that don't read a changed model (the VAE's, the schedule's)
are still served.

Examples:
    ```python
    import modblocks as mb
    from modblocks.diffusion import text2img
    from modblocks.diffusion.testing import tiny_sd_components
    from modblocks.diffusion.testing_adapters import tiny_lora

    components = tiny_sd_components()
    pipe = mb.Pipeline(text2img, components=components)
    pipe.load_lora_weights(tiny_lora(components), adapter_name="style")
    pipe.set_adapters(["style"], [0.5])
    images = pipe(prompt="a cat", num_inference_steps=2, output="images")
    pipe.unload_lora_weights()
    ```
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from diffusers.loaders.lora_pipeline import (
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
)
from peft.tuners.tuners_utils import BaseTunerLayer

import modblocks as mb

__all__ = [
    "fuse_lora",
    "get_active_adapters",
    "load_lora_weights",
    "set_adapters",
    "unfuse_lora",
    "unload_lora_weights",
]

_MODELS = ("unet", "text_encoder", "text_encoder_2")

# diffusers keeps the names of fused adapters on the pipeline object; here the pipeline is
# immutable and the fusing is a state of the UNet, so the names live with the UNet.
_fused: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
# Loading an adapter walks and rewrites the modules: one change at a time per process.
_lock = threading.RLock()


class _SDHost(StableDiffusionLoraLoaderMixin):
    """The attributes diffusers' SD 1.x LoRA mixin reads from a pipeline, and nothing else."""

    def __init__(self, models: Mapping[str, Any]) -> None:
        self.unet = models["unet"]
        self.text_encoder = models.get("text_encoder")
        self.components = dict(models)  # read to find (and pause) offloading hooks
        self.hf_device_map = None
        self._merged_adapters = _fused.get(self.unet, set())


class _SDXLHost(StableDiffusionXLLoraLoaderMixin):
    """The attributes diffusers' SDXL LoRA mixin reads from a pipeline, and nothing else."""

    def __init__(self, models: Mapping[str, Any]) -> None:
        self.unet = models["unet"]
        self.text_encoder = models.get("text_encoder")
        self.text_encoder_2 = models.get("text_encoder_2")
        self.components = dict(models)
        self.hf_device_map = None
        self._merged_adapters = _fused.get(self.unet, set())


def _models(pipe: mb.Pipeline) -> dict[str, Any]:
    models = {k: pipe.components[k] for k in _MODELS if pipe.components.get(k) is not None}
    if "unet" not in models:
        msg = (
            f"{pipe!r} has no `unet` component: LoRA weights load into a Stable Diffusion "
            "UNet (and its text encoders). Build the pipeline with its `unet`."
        )
        raise mb.WiringError(msg)
    return models


def _host(pipe: mb.Pipeline) -> _SDHost | _SDXLHost:
    models = _models(pipe)
    return _SDXLHost(models) if "text_encoder_2" in models else _SDHost(models)


def _has_lora(model: torch.nn.Module) -> bool:
    return any(isinstance(module, BaseTunerLayer) for module in model.modules())


def _done(host: _SDHost | _SDXLHost, touched: Sequence[Any]) -> None:
    """Keep the fused adapters' names; tell every cache which models changed.

    *touched*: the models that held LoRA layers before the change. With those that hold
    some after it, they are the models the change can have altered; a text encoder that
    never had an adapter is left alone, so the prompt's encoding is still served.
    """
    _fused[host.unet] = set(host._merged_adapters)
    for model in host.components.values():
        if any(model is m for m in touched) or _has_lora(model):
            mb.touch(model)


def _with_lora(host: _SDHost | _SDXLHost) -> list[Any]:
    return [model for model in host.components.values() if _has_lora(model)]


def load_lora_weights(
    pipe: mb.Pipeline,
    pretrained_model_name_or_path_or_dict: str | os.PathLike[str] | dict[str, torch.Tensor],
    adapter_name: str | None = None,
    **kwargs: Any,
) -> None:
    """Load LoRA weights into the pipeline's UNet and text encoders (diffusers' loader).

    Args:
        pipe: The pipeline whose models get the adapter (in place: see the module's doc).
        pretrained_model_name_or_path_or_dict: A folder or `.safetensors` file, or a state
            dict, in any format `StableDiffusionPipeline.load_lora_weights` reads.
        adapter_name: The adapter's name, for `set_adapters`; `default_0`, ... if not given.
        **kwargs: Passed to diffusers' `load_lora_weights` (e.g. `weight_name`).
    """
    with _lock:
        host = _host(pipe)
        before = _with_lora(host)
        source = pretrained_model_name_or_path_or_dict
        source = source if isinstance(source, dict) else os.fspath(source)
        try:
            host.load_lora_weights(source, adapter_name=adapter_name, **kwargs)
        finally:
            _done(host, before)  # a failed load may have injected some layers already


def set_adapters(
    pipe: mb.Pipeline,
    adapter_names: str | Sequence[str],
    adapter_weights: float | Sequence[float] | Sequence[dict[str, Any]] | None = None,
) -> None:
    """Activate the named adapters, with a weight each (1.0 if not given).

    Args:
        pipe: The pipeline whose models' adapters change.
        adapter_names: The adapters to use, by the names they were loaded with.
        adapter_weights: One weight for all, or one per adapter (a number, or a dict of
            weights per component as diffusers accepts).
    """
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    weights: Any = (
        adapter_weights
        if adapter_weights is None or isinstance(adapter_weights, float | int)
        else list(adapter_weights)
    )
    with _lock:
        host = _host(pipe)
        before = _with_lora(host)
        try:
            host.set_adapters(names, weights)
        finally:
            _done(host, before)


def get_active_adapters(pipe: mb.Pipeline) -> list[str]:
    """Return the names of the adapters the pipeline's UNet uses now."""
    active: list[str] = _host(pipe).get_active_adapters()
    return active


def unload_lora_weights(pipe: mb.Pipeline) -> None:
    """Remove every LoRA adapter from the pipeline's models (fused ones stay fused)."""
    with _lock:
        host = _host(pipe)
        before = _with_lora(host)
        try:
            cast("Any", host).unload_lora_weights()  # diffusers leaves it unannotated
        finally:
            _done(host, before)


def fuse_lora(
    pipe: mb.Pipeline,
    lora_scale: float = 1.0,
    adapter_names: Sequence[str] | None = None,
    *,
    safe_fusing: bool = False,
) -> None:
    """Merge the active (or the named) adapters into the models' weights, scaled.

    Fused models run at the speed of plain ones; `unfuse_lora` takes the adapters out again.
    """
    with _lock:
        host = _host(pipe)
        before = _with_lora(host)
        components = [k for k in _MODELS if k in host.components]
        names = None if adapter_names is None else list(adapter_names)
        try:
            host.fuse_lora(
                components=components,
                lora_scale=lora_scale,
                safe_fusing=safe_fusing,
                adapter_names=names,
            )
        finally:
            _done(host, before)


def unfuse_lora(pipe: mb.Pipeline) -> None:
    """Take fused adapters back out of the models' weights (the adapters stay loaded)."""
    with _lock:
        host = _host(pipe)
        before = _with_lora(host)
        try:
            host.unfuse_lora(components=[k for k in _MODELS if k in host.components])
        finally:
            _done(host, before)
