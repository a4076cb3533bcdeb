"""Tiny random adapters for the tiny components of `modblocks.diffusion.testing`.

Built offline with PEFT, as diffusers' own fast tests build theirs: random, non-zero weights,
so that an adapter visibly changes the images.

Examples:
    ```python
    from modblocks.diffusion.testing import tiny_sd_components
    from modblocks.diffusion.testing_adapters import tiny_lora

    state_dict = tiny_lora(tiny_sd_components())
    ```
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor
from diffusers.models.controlnets.controlnet import ControlNetModel
from diffusers.models.embeddings import ImageProjection
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict  # pyright: ignore[reportUnknownVariableType]
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

__all__ = ["tiny_controlnet", "tiny_image_encoder", "tiny_ip_adapter", "tiny_lora"]

# The attention projections, as diffusers' LoRA trainers target them.
_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _lora_layers(
    model: torch.nn.Module, targets: list[str], rank: int, seed: int
) -> dict[str, torch.Tensor]:
    """Add a random adapter to a copy of *model*; return the adapter's weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False
        )
        # PEFT itself, not the models' `add_adapter`: transformers' wants a newer PEFT.
        clone = inject_adapter_in_model(config, copy.deepcopy(model))
    layers: dict[str, torch.Tensor] = get_peft_model_state_dict(clone)
    return {k: v.detach().clone() for k, v in layers.items()}


def tiny_lora(
    components: Mapping[str, Any],
    seed: int = 0,
    *,
    rank: int = 4,
    text_encoders: bool = False,
) -> dict[str, torch.Tensor]:
    """Make a random LoRA state dict for the UNet (and text encoders) of *components*.

    The keys are those `save_lora_weights` writes (`unet.…`, `text_encoder.…`,
    `text_encoder_2.…`), so both `pipe.load_lora_weights` and diffusers' pipelines load it.

    Args:
        components: Tiny components (`tiny_sd_components()` or `tiny_sdxl_components()`); they
            are not changed.
        seed: Seed of the random adapter weights.
        rank: The LoRA rank.
        text_encoders: Also make layers for the text encoders.

    Returns:
        The adapter's weights, by name.
    """
    state: dict[str, torch.Tensor] = {}
    models = [("unet", _UNET_TARGETS)]
    if text_encoders:
        models += [("text_encoder", _TEXT_TARGETS), ("text_encoder_2", _TEXT_TARGETS)]
    for offset, (name, targets) in enumerate(models):
        model = components.get(name)
        if model is None:
            continue
        layers = _lora_layers(model, targets, rank, seed + offset)
        state.update({f"{name}.{key}": value for key, value in layers.items()})
    return state


def tiny_controlnet(components: Mapping[str, Any], seed: int = 0) -> ControlNetModel:
    """Make a ControlNet for the UNet of *components*, with random non-zero output layers.

    A ControlNet starts as a copy of the UNet's encoder whose output convolutions are zero
    (so an untrained one changes nothing); here they are random, so that the control image
    visibly changes the images. Its conditioning embedding downsamples by the tiny VAE's
    factor of 2.

    Args:
        components: Tiny components (SD 1.x or SDXL); their UNet is not changed.
        seed: Seed of the random output layers.

    Returns:
        The ControlNet, in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controlnet: ControlNetModel = ControlNetModel.from_unet(
            components["unet"], conditioning_embedding_out_channels=(16, 32)
        )
        zero_convs: list[torch.nn.Module] = [
            *controlnet.controlnet_down_blocks,
            cast("torch.nn.Module", controlnet.controlnet_mid_block),
            cast("torch.nn.Module", controlnet.controlnet_cond_embedding.conv_out),
        ]
        for conv in zero_convs:
            for parameter in conv.parameters():
                torch.nn.init.normal_(parameter, std=1.0)
    controlnet.eval()
    return controlnet


def tiny_image_encoder(projection_dim: int, seed: int = 0) -> dict[str, Any]:
    """Make a tiny CLIP image encoder and its processor, as diffusers' fast tests do.

    Args:
        projection_dim: The width of the image embeddings: the UNet's cross-attention width
            (32 for `tiny_sd_components`, 64 for `tiny_sdxl_components`).
        seed: Seed of the random weights.

    Returns:
        `image_encoder` and `feature_extractor`, the component names of diffusers' pipelines.
    """
    config = CLIPVisionConfig(
        hidden_size=32,
        image_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_channels=3,
        num_hidden_layers=5,
        patch_size=1,
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(config)
    torch.nn.Module.eval(encoder)
    return {
        "image_encoder": encoder,
        "feature_extractor": CLIPImageProcessor(crop_size=32, size=32),
    }


def tiny_ip_adapter(components: Mapping[str, Any], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Make a random IP-Adapter state dict for the UNet of *components* (diffusers' layout).

    The image projection maps one image embedding (the UNet's cross-attention width) to four
    tokens; each cross-attention layer gets random `to_k_ip` and `to_v_ip` weights.

    Args:
        components: Tiny components; their UNet is not changed.
        seed: Seed of the random weights.

    Returns:
        `{"image_proj": ..., "ip_adapter": ...}`, as `load_ip_adapter` takes it.
    """
    unet = components["unet"]
    width: int = unet.config["cross_attention_dim"]
    channels: list[int] = list(unet.config["block_out_channels"])
    layers: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        key = 1
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue  # self-attention: no image tokens
            if name.startswith("mid_block"):
                hidden = channels[-1]
            elif name.startswith("up_blocks"):
                hidden = channels[::-1][int(name.split(".")[1])]
            else:
                hidden = channels[int(name.split(".")[1])]
            weights = IPAdapterAttnProcessor(  # type: ignore[no-untyped-call]
                hidden_size=hidden, cross_attention_dim=width, scale=1.0
            ).state_dict()
            layers[f"{key}.to_k_ip.weight"] = weights["to_k_ip.0.weight"]
            layers[f"{key}.to_v_ip.weight"] = weights["to_v_ip.0.weight"]
            key += 2
        projection = ImageProjection(
            cross_attention_dim=width, image_embed_dim=width, num_image_text_embeds=4
        ).state_dict()
    image_proj = {
        "proj.weight": projection["image_embeds.weight"],
        "proj.bias": projection["image_embeds.bias"],
        "norm.weight": projection["norm.weight"],
        "norm.bias": projection["norm.bias"],
    }
    return {"image_proj": image_proj, "ip_adapter": layers}
