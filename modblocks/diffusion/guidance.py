"""Guidance: classifier-free guidance on a `[negative, positive]` batch, and its rescaling."""

from __future__ import annotations

import torch

__all__ = ["guide", "rescale_noise_cfg"]


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
    noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
    if guidance_rescale > 0.0:
        noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale)
    return noise_pred
