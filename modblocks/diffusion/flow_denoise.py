"""The denoising loops of flow-matching transformers: Flux, SD3 and Qwen-Image.

Both loops end with the shared `scheduler_step`. Flux's transformer reads its guidance
weight as an input (guidance distillation) and makes a second call for the negative prompt
only with true CFG; its inpainting re-blends the unmasked area after every step. SD3 guides
one call on the batch `[negative, positive]` (made by the shared `scale_model_input`) and
can add skip-layer guidance. Qwen-Image is Flux's loop with a Qwen2.5-VL text sequence (and
its attention mask), and true CFG that keeps the positive prediction's norm.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import torch
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from ._scheduler import typed
from .denoise import scale_model_input, scheduler_step
from .guidance import cfg, cfg_keeping_norm, skip_layer_guidance
from .packing import PackedTransformer

__all__ = [
    "blend_masked_latents_flow",
    "denoise_flux",
    "denoise_inpaint_flux",
    "denoise_qwen",
    "denoise_sd3",
    "predict_noise_flux",
    "predict_noise_qwen",
    "predict_noise_sd3",
    "prepare_guidance_flux",
]

_T_DOC = Doc("the current timestep")
_KWARGS_DOC = Doc("extra arguments for the attention processors (e.g. a LoRA `scale`)")


@mb.block(output="guidance")
def prepare_guidance_flux(
    latents: Annotated[torch.Tensor, Doc("the initial latents (one guidance value per row)")],
    transformer: mb.Component[PackedTransformer],
    guidance_scale: Annotated[
        float, Doc("the guidance weight the model was distilled with (guidance-embedding models)")
    ] = 3.5,
) -> Annotated[torch.Tensor | None, Doc("the guidance weight per image, for the transformer")]:
    """Give a guidance-distilled transformer its guidance weight (FLUX.1-dev; none for schnell)."""
    if not transformer.config["guidance_embeds"]:
        return None
    guidance = torch.full([1], guidance_scale, device=latents.device, dtype=torch.float32)
    return guidance.expand(latents.shape[0])


@mb.block(output="noise_pred")
@no_grad  # inference only, also when run outside a Pipeline
def predict_noise_flux(
    latents: Annotated[torch.Tensor, Doc("the current latents, packed")],
    t: Annotated[torch.Tensor, _T_DOC],
    prompt_embeds: Annotated[torch.Tensor, Doc("T5 hidden states")],
    pooled_prompt_embeds: Annotated[torch.Tensor, Doc("CLIP pooled embeddings")],
    text_ids: Annotated[torch.Tensor, Doc("positions of the text tokens")],
    latent_image_ids: Annotated[torch.Tensor, Doc("positions of the latent tokens")],
    guidance: Annotated[torch.Tensor | None, Doc("the guidance weight per image")],
    do_true_cfg: Annotated[bool, Doc("whether true CFG is on")],
    negative_prompt_embeds: Annotated[torch.Tensor | None, Doc("the negative T5 hidden states")],
    negative_pooled_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("the negative pooled embeddings")
    ],
    transformer: mb.Component[FluxTransformer2DModel],
    true_cfg_scale: Annotated[float, Doc("true classifier-free guidance weight")] = 1.0,
    joint_attention_kwargs: Annotated[dict[str, Any] | None, _KWARGS_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the predicted velocity, with true CFG if on")]:
    """Predict with one transformer call, and a second for the negative prompt with true CFG."""
    timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000

    def predict(embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        prediction: torch.Tensor = transformer(
            hidden_states=latents,
            timestep=timestep,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=latent_image_ids,
            joint_attention_kwargs=joint_attention_kwargs,
            return_dict=False,
        )[0]
        return prediction

    noise_pred = predict(prompt_embeds, pooled_prompt_embeds)
    if not do_true_cfg:
        return noise_pred
    assert negative_prompt_embeds is not None
    assert negative_pooled_prompt_embeds is not None
    negative = predict(negative_prompt_embeds, negative_pooled_prompt_embeds)
    return cfg(negative, noise_pred, true_cfg_scale)


@mb.block(output="noise_pred")
@no_grad  # inference only, also when run outside a Pipeline
def predict_noise_qwen(
    latents: Annotated[torch.Tensor, Doc("the current latents, packed")],
    t: Annotated[torch.Tensor, _T_DOC],
    prompt_embeds: Annotated[torch.Tensor, Doc("Qwen2.5-VL hidden states")],
    prompt_embeds_mask: Annotated[torch.Tensor | None, Doc("their attention mask")],
    img_shapes: Annotated[list[list[tuple[int, int, int]]], Doc("the grid of latent tokens")],
    guidance: Annotated[torch.Tensor | None, Doc("the guidance weight per image")],
    do_true_cfg: Annotated[bool, Doc("whether true CFG is on")],
    negative_prompt_embeds: Annotated[torch.Tensor | None, Doc("the negative hidden states")],
    negative_prompt_embeds_mask: Annotated[torch.Tensor | None, Doc("their attention mask")],
    transformer: mb.Component[QwenImageTransformer2DModel],
    true_cfg_scale: Annotated[float, Doc("true classifier-free guidance weight")] = 4.0,
    attention_kwargs: Annotated[dict[str, Any] | None, _KWARGS_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the predicted velocity, with true CFG if on")]:
    """Predict with one transformer call; with true CFG a second, keeping the norm per token."""
    timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000

    def predict(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        prediction: torch.Tensor = transformer(
            hidden_states=latents,
            timestep=timestep,
            guidance=guidance,
            encoder_hidden_states_mask=mask,
            encoder_hidden_states=embeds,
            img_shapes=img_shapes,
            attention_kwargs=attention_kwargs or {},
            return_dict=False,
        )[0]
        return prediction

    noise_pred = predict(prompt_embeds, prompt_embeds_mask)
    if not do_true_cfg:
        return noise_pred
    assert negative_prompt_embeds is not None
    negative = predict(negative_prompt_embeds, negative_prompt_embeds_mask)
    return cfg_keeping_norm(negative, noise_pred, true_cfg_scale)


@mb.block(output="latents")
def blend_masked_latents_flow(
    latents: Annotated[torch.Tensor, Doc("the latents after this step")],
    i: Annotated[int, Doc("the index of the current step")],
    timesteps: Annotated[torch.Tensor, Doc("all timesteps of the run")],
    image_latents: Annotated[torch.Tensor | None, Doc("the image's latents")],
    noise: Annotated[torch.Tensor, Doc("the noise the initial latents were made from")],
    mask: Annotated[torch.Tensor, Doc("the mask at the latents' size")],
    scheduler: mb.Component[SchedulerMixin],
) -> Annotated[torch.Tensor, Doc("the latents, with the unmasked area put back")]:
    """Put back the unmasked area, mixed with the noise of the next timestep."""
    assert image_latents is not None  # flow-matching inpainting always encodes the image
    init_latents = image_latents
    if i < len(timesteps) - 1:
        next_t = torch.tensor([timesteps[i + 1]])
        init_latents = typed(scheduler).scale_noise(image_latents, next_t, noise)
    return (1 - mask) * init_latents + mask * latents


@mb.block(output="noise_pred")
@no_grad  # inference only, also when run outside a Pipeline
def predict_noise_sd3(
    latent_model_input: Annotated[torch.Tensor, Doc("the transformer's input")],
    latents: Annotated[torch.Tensor, Doc("the current latents")],
    t: Annotated[torch.Tensor, _T_DOC],
    i: Annotated[int, Doc("the index of the current step")],
    num_inference_steps: Annotated[int, Doc("the number of denoising steps")],
    prompt_embeds: Annotated[torch.Tensor, Doc("text embeddings, negative first with guidance")],
    pooled_prompt_embeds: Annotated[torch.Tensor, Doc("pooled embeddings, negative first")],
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on")],
    transformer: mb.Component[SD3Transformer2DModel],
    guidance_scale: Annotated[float, Doc("classifier-free guidance weight")] = 7.0,
    skip_guidance_layers: Annotated[
        list[int] | None, Doc("transformer layers to skip for skip-layer guidance (SD3.5)")
    ] = None,
    skip_layer_guidance_scale: Annotated[float, Doc("skip-layer guidance weight")] = 2.8,
    skip_layer_guidance_start: Annotated[
        float, Doc("the fraction of the steps after which skip-layer guidance starts")
    ] = 0.01,
    skip_layer_guidance_stop: Annotated[
        float, Doc("the fraction of the steps at which skip-layer guidance stops")
    ] = 0.2,
    joint_attention_kwargs: Annotated[dict[str, Any] | None, _KWARGS_DOC] = None,
) -> Annotated[torch.Tensor, Doc("the predicted velocity, guided")]:
    """Predict with one transformer call, guide it, and add skip-layer guidance if asked."""
    noise_pred: torch.Tensor = transformer(
        hidden_states=latent_model_input,
        timestep=t.expand(latent_model_input.shape[0]),
        encoder_hidden_states=prompt_embeds,
        pooled_projections=pooled_prompt_embeds,
        joint_attention_kwargs=joint_attention_kwargs,
        return_dict=False,
    )[0]
    if not do_cfg:
        return noise_pred
    uncond, cond = noise_pred.chunk(2)
    guided = cfg(uncond, cond, guidance_scale)
    start, stop = skip_layer_guidance_start, skip_layer_guidance_stop
    if skip_guidance_layers is None or not (
        num_inference_steps * start < i < num_inference_steps * stop
    ):
        return guided
    skipped: torch.Tensor = transformer(
        hidden_states=latents,
        timestep=t.expand(latents.shape[0]),
        encoder_hidden_states=prompt_embeds.chunk(2)[1],
        pooled_projections=pooled_prompt_embeds.chunk(2)[1],
        joint_attention_kwargs=joint_attention_kwargs,
        return_dict=False,
        skip_layers=skip_guidance_layers,
    )[0]
    return skip_layer_guidance(guided, cond, skipped, skip_layer_guidance_scale)


_loop = functools.partial(mb.loop, over="timesteps", index="i", item="t")

denoise_flux = _loop(predict_noise_flux >> scheduler_step).named("denoise")
"""The denoising loop of Flux text-to-image and image-to-image."""

denoise_inpaint_flux = _loop(
    predict_noise_flux >> scheduler_step >> blend_masked_latents_flow
).named("denoise")
"""The denoising loop of Flux inpainting: the unmasked area is put back after every step."""

denoise_qwen = _loop(predict_noise_qwen >> scheduler_step).named("denoise")
"""The denoising loop of Qwen-Image."""

denoise_sd3 = _loop(scale_model_input >> predict_noise_sd3 >> scheduler_step).named("denoise")
"""The denoising loop of SD3."""
