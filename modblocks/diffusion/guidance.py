"""Guidance: classifier-free guidance, its rescaling, and skip-layer guidance.

UNets and SD3 guide one model call on the batch `[negative, positive]`; Flux's and
Qwen-Image's true CFG make a second call for the negative prompt (Qwen-Image's keeps the
norm of the positive prediction). Skip-layer guidance (SD3.5) moves the result
away from a third prediction made without some of the transformer's layers.
"""

from __future__ import annotations

from typing import cast

import torch

__all__ = ["cfg", "cfg_keeping_norm", "guide", "rescale_noise_cfg", "skip_layer_guidance"]


def cfg(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Return classifier-free guidance: *uncond* moved *scale* times towards *cond*."""
    return uncond + scale * (cond - uncond)


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Rescale guided noise towards the text prediction's std (arXiv 2305.08891, section 3.4).

    Args:
        noise_cfg: The guided noise prediction.
        noise_pred_text: The noise prediction for the prompt alone.
        guidance_rescale: How much of the rescaled prediction to take, from 0 to 1.

    Returns:
        The mix of the rescaled and the guided prediction.
    """
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    # Rescaling fixes overexposure; mixing back avoids plain-looking images.
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def cfg_keeping_norm(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Return classifier-free guidance rescaled, per token, to the norm of *cond* (Qwen-Image)."""
    guided = cfg(uncond, cond, scale)
    # torch.norm as diffusers calls it (its stubs leave the return type open).
    cond_norm = cast("torch.Tensor", torch.norm(cond, dim=-1, keepdim=True))
    guided_norm = cast("torch.Tensor", torch.norm(guided, dim=-1, keepdim=True))
    return guided * (cond_norm / guided_norm)


def guide(
    noise_pred: torch.Tensor, do_cfg: bool, guidance_scale: float, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Apply classifier-free guidance to a model output on the batch `[negative, positive]`.

    Args:
        noise_pred: The model's prediction, negative half first when *do_cfg*.
        do_cfg: Whether classifier-free guidance is on; if not, *noise_pred* is returned.
        guidance_scale: The guidance weight.
        guidance_rescale: How much to rescale the guided prediction (0: not at all).

    Returns:
        The guided prediction.
    """
    if not do_cfg:
        return noise_pred
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    noise_pred = cfg(noise_pred_uncond, noise_pred_text, guidance_scale)
    if guidance_rescale > 0.0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale)
    return noise_pred


def skip_layer_guidance(
    noise_pred: torch.Tensor, cond: torch.Tensor, skipped: torch.Tensor, scale: float
) -> torch.Tensor:
    """Move the guided *noise_pred* away from *skipped*, the prediction without some layers.

    Args:
        noise_pred: The guided prediction.
        cond: The prediction for the prompt alone.
        skipped: The prediction for the prompt alone, with the skipped layers left out.
        scale: How far to move (SD3's `skip_layer_guidance_scale`).

    Returns:
        `noise_pred + (cond - skipped) * scale`.
    """
    return noise_pred + (cond - skipped) * scale
