"""Guidance as a swappable part of the denoising loop: CFG, CFG-Zero*, APG and PAG.

The config `guider` picks how the UNet's predictions are combined each step, per pipeline
(`mb.Pipeline(..., configs={"guider": g})`) or per call (`pipe(..., guider=g)`):

- `None` (the default): classifier-free guidance with `guidance_scale` and
  `guidance_rescale`, exactly as before and as diffusers' classic pipelines.
- a guider of `diffusers.guiders` that combines a conditional and an unconditional
  prediction (`ClassifierFreeGuidance`, `ClassifierFreeZeroStarGuidance`,
  `AdaptiveProjectedGuidance`, ...): diffusers' own class does the maths on the same UNet
  batch `[negative, positive]`, with its own `guidance_scale` (the input `guidance_scale`
  then only says whether negatives are encoded, `> 1`). Each run steps its own copy, so
  APG's momentum never leaks between runs or threads.
- `PAG(...)`: perturbed-attention guidance as `StableDiffusionPAGPipeline` and
  `StableDiffusionXLPAGPipeline`: a third batch half whose self-attention in the chosen
  layers is replaced by the identity (diffusers' PAG attention processors).

`guided(node)` puts this into a ready-made node: `prepare_guider` before the denoising loop,
and `predict_noise_guided` (or `_xl`) in place of its `predict_noise`; the noise prediction
also takes `cross_attention_kwargs` (e.g. `{"scale": 0.5}`, the per-call LoRA scale).

Examples:
    ```python
    from diffusers.guiders import AdaptiveProjectedGuidance
    from modblocks.diffusion import text2img
    from modblocks.diffusion.guiders import PAG, guided
    from modblocks.diffusion.testing import tiny_sd_components

    node = guided(text2img)
    kwargs = {"prompt": "a cat", "num_inference_steps": 2, **tiny_sd_components()}
    apg = node.run(**kwargs, guider=AdaptiveProjectedGuidance(guidance_scale=5.0))
    pag = node.run(**kwargs, guider=PAG(scale=3.0, applied_layers=("mid",)))
    ```
"""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Annotated, Any, NamedTuple

import attrs
import torch
from diffusers.guiders.guider_utils import BaseGuidance
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pag.pag_utils import PAGMixin
from typing_extensions import Doc

import modblocks as mb

from ._edit import edit_denoise
from ._grad import no_grad
from .denoise import _DOWN_DOC, _IMAGE_EMBEDS_DOC, _MID_DOC, Residuals
from .guidance import guide, rescale_noise_cfg

__all__ = [
    "PAG",
    "GuidedNoise",
    "Guider",
    "guided",
    "predict_noise_guided",
    "predict_noise_guided_xl",
    "prepare_guider",
]


@attrs.frozen
class PAG:
    """Perturbed-attention guidance (arXiv 2403.17377), as diffusers' PAG pipelines do it.

    Args:
        scale: The PAG weight (`pag_scale`); 0 turns PAG off.
        adaptive_scale: Lowers the weight as timesteps fall (`pag_adaptive_scale`; 0: off).
        applied_layers: The self-attention layers to perturb, as names or regular
            expressions (`pag_applied_layers`: `"mid"`, `"down.block_1"`, ...).
    """

    scale: float = 3.0
    adaptive_scale: float = 0.0
    applied_layers: tuple[str, ...] = attrs.field(default=("mid",), converter=tuple)


Guider = BaseGuidance | PAG
"""What the `guider` config takes (besides `None`, classifier-free guidance)."""


@mb.block(output="guider_state")
def prepare_guider(
    guider: mb.Config[Guider | None] = None,
) -> Annotated[Guider | None, Doc("this run's own copy of the guider, stepped by the loop")]:
    """Copy the guider for this run: its steps change it (APG's momentum); yours stays as is."""
    if isinstance(guider, BaseGuidance):
        return copy.deepcopy(guider)
    return guider


class GuidedNoise(NamedTuple):
    """What a guided noise prediction gives the scheduler step and the next step."""

    noise_pred: Annotated[torch.Tensor, Doc("the noise prediction, guided")]
    guider_state: Annotated[Guider | None, Doc("the guider as this step left it")]


# -- PAG ------------------------------------------------------------------------------------


class _PAGHost(PAGMixin):
    """The attributes diffusers' PAG mixin reads from a pipeline: the UNet and the settings."""

    def __init__(self, unet: UNet2DConditionModel, pag: PAG) -> None:
        self.unet = unet
        self.set_pag_applied_layers(list(pag.applied_layers))
        self._pag_scale = pag.scale
        self._pag_adaptive_scale = pag.adaptive_scale


# PAG swaps attention processors on the (shared) UNet for its calls: one at a time per UNet.
# Runs without PAG don't take the lock (it would cost every step); see docs/adapters/guiders.md.
_pag_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_pag_locks_lock = threading.Lock()


def _pag_lock(unet: UNet2DConditionModel) -> threading.Lock:
    with _pag_locks_lock:
        return _pag_locks.setdefault(unet, threading.Lock())


def _perturbed(x: torch.Tensor, do_cfg: bool) -> torch.Tensor:
    """The PAG batch: `[negative, positive, positive]`, or `[positive, positive]` without CFG."""
    return torch.cat([x, x.chunk(2)[1]]) if do_cfg else torch.cat([x, x])


def _layout(pag: bool, do_cfg: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """How to lay out each batch tensor of a UNet call: as it is, or with PAG's extra half."""
    return functools.partial(_perturbed, do_cfg=do_cfg) if pag else _same


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _residuals(
    layout: Callable[[torch.Tensor], torch.Tensor], down: Residuals, mid: torch.Tensor | None
) -> dict[str, Any]:
    """The UNet's ControlNet arguments, laid out like the rest of the batch."""
    return {
        "down_block_additional_residuals": None if down is None else [layout(r) for r in down],
        "mid_block_additional_residual": None if mid is None else layout(mid),
    }


def _perturbed_time_ids(ids: torch.Tensor, do_cfg: bool) -> torch.Tensor:
    """SDXL's time ids for PAG: diffusers repeats `[neg, pos, pos]` per image (not halves)."""
    if not do_cfg:
        return torch.cat([ids, ids])
    return torch.cat([ids[:2], ids[1:2]]).repeat(ids.shape[0] // 2, 1)


def _predict_pag(
    unet: UNet2DConditionModel,
    call: Callable[[bool], torch.Tensor],
    pag: PAG,
    t: torch.Tensor,
    do_cfg: bool,
    guidance_scale: float,
    guidance_rescale: float,
) -> torch.Tensor:
    host: Any = _PAGHost(unet, pag)  # diffusers leaves the mixin's methods unannotated
    with _pag_lock(unet):
        original = unet.attn_processors
        host._set_pag_attn_processor(host.pag_applied_layers, do_cfg)
        try:
            noise_pred = call(True)
        finally:
            unet.set_attn_processor(original)
    guided_pred: torch.Tensor
    text: torch.Tensor
    guided_pred, text = host._apply_perturbed_attention_guidance(
        noise_pred, do_cfg, guidance_scale, t, return_pred_text=True
    )
    if do_cfg and guidance_rescale > 0.0:
        return rescale_noise_cfg(guided_pred, text, guidance_rescale)
    return guided_pred


# -- any guider -----------------------------------------------------------------------------


def _predict(
    unet: UNet2DConditionModel,
    call: Callable[[bool], torch.Tensor],
    *,
    t: torch.Tensor,
    step: int,
    steps: int,
    do_cfg: bool,
    guidance_scale: float,
    guidance_rescale: float,
    guider: Guider | None,
) -> GuidedNoise:
    """Run the UNet through *call* and guide its prediction.

    *call(pag)* runs the UNet on the step's batch, with PAG's extra half when *pag* is true.
    """
    if isinstance(guider, PAG) and guider.scale > 0 and guider.applied_layers:
        noise = _predict_pag(unet, call, guider, t, do_cfg, guidance_scale, guidance_rescale)
        return GuidedNoise(noise, guider)
    noise_pred = call(False)
    if not isinstance(guider, BaseGuidance):
        return GuidedNoise(guide(noise_pred, do_cfg, guidance_scale, guidance_rescale), guider)
    # The previous step's state stays as it was. Any: diffusers annotates these loosely.
    stepped: Any = copy.deepcopy(guider)
    if len(stepped._input_predictions) != 2:
        msg = (
            f"{type(guider).__name__} needs more than a conditional and an unconditional "
            "prediction. Use `modblocks.diffusion.guiders.PAG` for perturbed attention."
        )
        raise ValueError(msg)
    stepped.set_state(step=step, num_inference_steps=steps, timestep=t)
    stepped.prepare_inputs({})  # counts the batches, and starts APG's momentum at step 0
    if do_cfg:
        uncond, cond = noise_pred.chunk(2)
        return GuidedNoise(stepped.forward(pred_cond=cond, pred_uncond=uncond).pred, stepped)
    if stepped.num_conditions > 1:
        msg = (
            f"{type(guider).__name__} needs an unconditional prediction: give "
            "`guidance_scale` > 1 so that the negative prompt is encoded."
        )
        raise ValueError(msg)
    return GuidedNoise(stepped.forward(pred_cond=noise_pred).pred, stepped)


_GUIDER_STATE_DOC = Doc("the guider, as `prepare_guider` or the previous step left it")
_KWARGS_DOC = Doc('passed to the attention processors, e.g. `{"scale": 0.5}` for LoRAs')


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def predict_noise_guided(
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input")],
    t: Annotated[torch.Tensor, Doc("the current timestep")],
    i: Annotated[int, Doc("the index of the current step")],
    timesteps: Annotated[torch.Tensor, Doc("all timesteps of the run")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    guidance_scale: Annotated[float, Doc("classifier-free guidance weight")] = 7.5,
    guidance_rescale: Annotated[
        float, Doc("rescale guided noise to fix overexposure (0: off), arXiv 2305.08891")
    ] = 0.0,
    guider_state: Annotated[Guider | None, _GUIDER_STATE_DOC] = None,
    cross_attention_kwargs: Annotated[dict[str, Any] | None, _KWARGS_DOC] = None,
    down_block_res_samples: Annotated[Residuals, _DOWN_DOC] = None,
    mid_block_res_sample: Annotated[torch.Tensor | None, _MID_DOC] = None,
    image_embeds: Annotated[list[torch.Tensor] | None, _IMAGE_EMBEDS_DOC] = None,
) -> GuidedNoise:
    """Predict the noise with the UNet and guide it with the run's guider (CFG by default)."""

    def call(pag: bool) -> torch.Tensor:
        layout = _layout(pag, do_cfg)
        out: torch.Tensor = unet(
            layout(latent_model_input),
            t,
            encoder_hidden_states=layout(prompt_embeds),
            added_cond_kwargs=None
            if image_embeds is None
            else {"image_embeds": [layout(e) for e in image_embeds]},
            cross_attention_kwargs=cross_attention_kwargs,
            **_residuals(layout, down_block_res_samples, mid_block_res_sample),
            return_dict=False,
        )[0]
        return out

    return _predict(
        unet,
        call,
        t=t,
        step=i,
        steps=len(timesteps),
        do_cfg=do_cfg,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guider=guider_state,
    )


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def predict_noise_guided_xl(
    latent_model_input: Annotated[torch.Tensor, Doc("the UNet's input")],
    t: Annotated[torch.Tensor, Doc("the current timestep")],
    i: Annotated[int, Doc("the index of the current step")],
    timesteps: Annotated[torch.Tensor, Doc("all timesteps of the run")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    add_text_embeds: Annotated[torch.Tensor, Doc("pooled text embeddings")],
    add_time_ids: Annotated[torch.Tensor, Doc("micro-conditioning time ids")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    unet: mb.Component[UNet2DConditionModel],
    guidance_scale: Annotated[float, Doc("classifier-free guidance weight")] = 5.0,
    guidance_rescale: Annotated[
        float, Doc("rescale guided noise to fix overexposure (0: off), arXiv 2305.08891")
    ] = 0.0,
    guider_state: Annotated[Guider | None, _GUIDER_STATE_DOC] = None,
    cross_attention_kwargs: Annotated[dict[str, Any] | None, _KWARGS_DOC] = None,
    down_block_res_samples: Annotated[Residuals, _DOWN_DOC] = None,
    mid_block_res_sample: Annotated[torch.Tensor | None, _MID_DOC] = None,
    image_embeds: Annotated[list[torch.Tensor] | None, _IMAGE_EMBEDS_DOC] = None,
) -> GuidedNoise:
    """Predict the noise with SDXL's UNet and guide it with the run's guider (CFG by default)."""

    def call(pag: bool) -> torch.Tensor:
        layout = _layout(pag, do_cfg)
        added: dict[str, Any] = {
            "text_embeds": layout(add_text_embeds),
            "time_ids": _perturbed_time_ids(add_time_ids, do_cfg) if pag else add_time_ids,
        }
        if image_embeds is not None:
            added["image_embeds"] = [layout(e) for e in image_embeds]
        out: torch.Tensor = unet(
            layout(latent_model_input),
            t,
            encoder_hidden_states=layout(prompt_embeds),
            added_cond_kwargs=added,
            cross_attention_kwargs=cross_attention_kwargs,
            **_residuals(layout, down_block_res_samples, mid_block_res_sample),
            return_dict=False,
        )[0]
        return out

    return _predict(
        unet,
        call,
        t=t,
        step=i,
        steps=len(timesteps),
        do_cfg=do_cfg,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        guider=guider_state,
    )


def guided(node: mb.Node) -> mb.Node:
    """Return *node* (SD 1.x or SDXL) with a swappable guider and `cross_attention_kwargs`.

    `prepare_guider` goes before each denoising loop and the loop's `predict_noise` becomes
    `predict_noise_guided` (`predict_noise_guided_xl` for SDXL's), keeping its name.
    """

    def body(loop_body: mb.Sequential) -> mb.Sequential:
        name = next(n for n in loop_body.names if n.startswith("predict_noise"))
        xl = "add_time_ids" in {spec.name for spec in loop_body[name].inputs}
        return loop_body.replace(name, predict_noise_guided_xl if xl else predict_noise_guided)

    return edit_denoise(node, body, before=prepare_guider)
