"""Prompt encoding with CLIP text encoders: one (SD 1.x), or a pair (SDXL, and SD3's two).

SD 1.x takes the last hidden state (or an earlier one through the final norm, `clip_skip`).
SDXL and SD3 take the penultimate hidden state of each encoder, and the pooled projection
(`CLIPTextModelWithProjection`'s first output) as a global text embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, NamedTuple, cast

import torch
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from .text import negative_texts, per_image, texts_per_prompt, tokenize, warn_if_truncated

__all__ = [
    "PromptEmbeds",
    "PromptEmbedsXL",
    "check_pooled_prompts",
    "clip_hidden_states",
    "clip_pooled",
    "encode_prompt",
    "encode_prompt_xl",
]

_PROMPT = str | list[str] | None


class PromptEmbeds(NamedTuple):
    """What `encode_prompt` gives the UNet."""

    prompt_embeds: Annotated[
        torch.Tensor,
        Doc(
            "text embeddings for the UNet, one per image; with classifier-free guidance the "
            "negative embeddings come first, then the positive ones (one UNet batch)"
        ),
    ]
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on (`guidance_scale > 1`)")]
    batch_size: Annotated[int, Doc("number of images: prompts × `num_images_per_prompt`")]


def _last_hidden_state(
    text_encoder: CLIPTextModel,
    tokens: tuple[torch.Tensor, torch.Tensor],
    clip_skip: int | None = None,
) -> torch.Tensor:
    """Run the text encoder; with *clip_skip*, take an earlier layer through the final norm."""
    ids, attention_mask = (t.to(text_encoder.device) for t in tokens)
    # SD's CLIP was trained without an attention mask; only a few fine-tunes set this flag.
    mask = attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    if clip_skip is None:
        hidden: torch.Tensor = text_encoder(ids, attention_mask=mask)[0]
        return hidden
    states = text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # The last hidden state goes through the final LayerNorm; so must the earlier one we take.
    # transformers 5 moved it from `text_encoder.text_model` to the model itself.
    model = getattr(text_encoder, "text_model", text_encoder)
    skipped: torch.Tensor = model.final_layer_norm(states[-(clip_skip + 1)])
    return skipped


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_prompt(
    text_encoder: mb.Component[CLIPTextModel],
    tokenizer: mb.Component[PreTrainedTokenizerBase],
    prompt: Annotated[
        str | list[str] | None, Doc("the prompt or prompts; or give `prompt_embeds`")
    ] = None,
    negative_prompt: Annotated[
        str | list[str] | None,
        Doc("what not to draw (same type as `prompt`); empty when not given"),
    ] = None,
    prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed text embeddings, instead of `prompt`")
    ] = None,
    negative_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed negative embeddings, instead of `negative_prompt`")
    ] = None,
    num_images_per_prompt: Annotated[int, Doc("number of images to make per prompt")] = 1,
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 7.5,
    clip_skip: Annotated[
        int | None,
        Doc("number of final CLIP layers to skip (1: use the pre-final layer's output)"),
    ] = None,
) -> PromptEmbeds:
    """Encode the prompt (and the negative prompt, for guidance) into text embeddings.

    The same computation as `StableDiffusionPipeline.encode_prompt`, followed by the
    pipeline's concatenation `[negative, positive]` so that the UNet sees one batch.
    """
    if negative_prompt is not None and negative_prompt_embeds is not None:
        msg = "give at most one of `negative_prompt` and `negative_prompt_embeds`."
        raise ValueError(msg)
    device, dtype = text_encoder.device, text_encoder.dtype
    if prompt is not None and prompt_embeds is None:
        batch_size = 1 if isinstance(prompt, str) else len(prompt)
        # transformers sets this attribute without an annotation.
        max_length = cast("int", tokenizer.model_max_length)
        tokens = tokenize(tokenizer, prompt, max_length)
        warn_if_truncated(tokenizer, prompt, tokens[0])
        prompt_embeds = _last_hidden_state(text_encoder, tokens, clip_skip)
    elif prompt is None and prompt_embeds is not None:
        batch_size = prompt_embeds.shape[0]
    else:
        msg = "give exactly one of `prompt` and `prompt_embeds`."
        raise ValueError(msg)
    prompt_embeds = per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)

    do_cfg = guidance_scale > 1
    if not do_cfg:
        return PromptEmbeds(prompt_embeds, do_cfg, batch_size * num_images_per_prompt)
    if negative_prompt_embeds is None:
        texts = negative_texts(prompt, negative_prompt, batch_size)
        # Without clip_skip: diffusers encodes negative prompts from the last layer, always.
        negative_prompt_embeds = _last_hidden_state(
            text_encoder, tokenize(tokenizer, texts, prompt_embeds.shape[1])
        )
    negative_prompt_embeds = per_image(
        negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt
    )
    if negative_prompt_embeds.shape != prompt_embeds.shape:
        msg = (
            f"`negative_prompt_embeds` has shape {tuple(negative_prompt_embeds.shape)}, but "
            f"`prompt_embeds` has shape {tuple(prompt_embeds.shape)}. Give them the same shape."
        )
        raise ValueError(msg)
    embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
    return PromptEmbeds(embeds, do_cfg, batch_size * num_images_per_prompt)


# --- pairs of encoders: SDXL, SD3 ----------------------------------------------------------


def clip_hidden_states(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: PreTrainedModel,
    texts: list[str],
    layer: int,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode *texts*; return hidden states *layer* and the encoder's first output.

    The first output is the pooled projection for `CLIPTextModelWithProjection` (2-D), the
    last hidden state for `CLIPTextModel` (3-D). Without *max_length* the tokenizer's own
    limit applies, and truncated text is logged.
    """
    # transformers sets this attribute without an annotation.
    length = max_length or cast("int", tokenizer.model_max_length)
    ids, _ = tokenize(tokenizer, texts, length)
    if max_length is None:
        warn_if_truncated(tokenizer, texts, ids)
    output = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    hidden: torch.Tensor = output.hidden_states[layer]
    first: torch.Tensor = output[0]
    return hidden, first


def clip_pooled(
    tokenizer: PreTrainedTokenizerBase, text_encoder: CLIPTextModel, texts: list[str]
) -> torch.Tensor:
    """Encode *texts*; return `CLIPTextModel`'s pooled output (Flux's global text embedding)."""
    # transformers sets this attribute without an annotation.
    ids, _ = tokenize(tokenizer, texts, cast("int", tokenizer.model_max_length))
    warn_if_truncated(tokenizer, texts, ids)
    pooled: torch.Tensor = text_encoder(ids.to(text_encoder.device)).pooler_output
    return pooled


def _encode_pair(
    encoders: Sequence[tuple[PreTrainedTokenizerBase, PreTrainedModel]],
    texts: Sequence[list[str]],
    max_length: int | None,
    layer: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode *texts* with each encoder; concatenate hidden states *layer*, pool the last."""
    hidden: list[torch.Tensor] = []
    pooled = torch.empty(0)
    for (tokenizer, encoder), text in zip(encoders, texts, strict=False):
        states, first = clip_hidden_states(tokenizer, encoder, text, layer, max_length)
        # The first output is the pooled projection for CLIPTextModelWithProjection only.
        if first.ndim == 2:
            pooled = first
        hidden.append(states)
    return torch.cat(hidden, dim=-1), pooled


class PromptEmbedsXL(NamedTuple):
    """What `encode_prompt_xl` gives the UNet."""

    prompt_embeds: Annotated[
        torch.Tensor,
        Doc("both encoders' hidden states, concatenated; negative first with guidance"),
    ]
    add_text_embeds: Annotated[
        torch.Tensor, Doc("pooled embeddings of the second encoder; negative first with guidance")
    ]
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on (`guidance_scale > 1`)")]
    batch_size: Annotated[int, Doc("number of images: prompts × `num_images_per_prompt`")]


def check_pooled_prompts(
    prompt: bool,
    prompt_2: bool,
    embeds: bool,
    pooled: bool,
    negative: bool,
    negative_embeds: bool,
    negative_pooled: bool,
) -> None:
    """Check which prompts and embeddings were given (each flag: given), as diffusers does.

    For the encoders that give pooled embeddings too (SDXL, SD3, Flux).
    """
    if prompt == embeds or (prompt_2 and not prompt):
        msg = "give exactly one of `prompt` (and `prompt_2`) and `prompt_embeds`."
        raise ValueError(msg)
    if embeds and not pooled:
        msg = "with `prompt_embeds`, give `pooled_prompt_embeds` too (from the same encoder)."
        raise ValueError(msg)
    if negative_embeds and (negative or not negative_pooled):
        msg = (
            "with `negative_prompt_embeds`, give `negative_pooled_prompt_embeds` and no "
            "`negative_prompt` or `negative_prompt_2`."
        )
        raise ValueError(msg)


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_prompt_xl(
    text_encoder_2: mb.Component[CLIPTextModelWithProjection],
    tokenizer_2: mb.Component[PreTrainedTokenizerBase],
    text_encoder: mb.Component[CLIPTextModel | None] = None,
    tokenizer: mb.Component[PreTrainedTokenizerBase | None] = None,
    prompt: Annotated[_PROMPT, Doc("the prompt or prompts; or give `prompt_embeds`")] = None,
    prompt_2: Annotated[
        _PROMPT, Doc("the prompt(s) for the second text encoder; `prompt` if not given")
    ] = None,
    negative_prompt: Annotated[
        _PROMPT, Doc("what not to draw; without it the negative embeddings are zeros")
    ] = None,
    negative_prompt_2: Annotated[
        _PROMPT,
        Doc("the negative prompt(s) for the second encoder; `negative_prompt` if not given"),
    ] = None,
    prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed text embeddings, instead of `prompt`")
    ] = None,
    negative_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed negative embeddings, instead of `negative_prompt`")
    ] = None,
    pooled_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed pooled embeddings (with `prompt_embeds`)")
    ] = None,
    negative_pooled_prompt_embeds: Annotated[
        torch.Tensor | None,
        Doc("precomputed negative pooled embeddings (with `negative_prompt_embeds`)"),
    ] = None,
    num_images_per_prompt: Annotated[int, Doc("number of images to make per prompt")] = 1,
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 5.0,
    clip_skip: Annotated[
        int | None, Doc("number of final CLIP layers to skip, after SDXL's usual one")
    ] = None,
    force_zeros_for_empty_prompt: mb.Config[bool] = True,
) -> PromptEmbedsXL:
    """Encode the prompt with both text encoders, and the negative prompt for guidance.

    `StableDiffusionXLPipeline.encode_prompt`, followed by the pipeline's concatenation
    `[negative, positive]`. Without a refiner's first encoder (`text_encoder=None`), only
    the second one encodes.
    """
    check_pooled_prompts(
        prompt is not None,
        prompt_2 is not None,
        prompt_embeds is not None,
        pooled_prompt_embeds is not None,
        negative_prompt is not None or negative_prompt_2 is not None,
        negative_prompt_embeds is not None,
        negative_pooled_prompt_embeds is not None,
    )
    encoders: list[tuple[PreTrainedTokenizerBase, PreTrainedModel]] = [
        (tokenizer_2, text_encoder_2)
    ]
    if text_encoder is not None and tokenizer is not None:
        encoders.insert(0, (tokenizer, text_encoder))
    # Without a first encoder, the second one reads `prompt`, not `prompt_2` (as diffusers).
    if prompt is not None:
        texts = [prompt] if isinstance(prompt, str) else prompt
        texts_2 = texts_per_prompt(prompt_2 or prompt, len(texts), "prompt_2")
        layer = -2 if clip_skip is None else -(clip_skip + 2)  # SDXL skips one layer already
        prompt_embeds, pooled = _encode_pair(encoders, [texts, texts_2], None, layer)
        pooled_prompt_embeds = pooled if pooled_prompt_embeds is None else pooled_prompt_embeds
    assert prompt_embeds is not None
    assert pooled_prompt_embeds is not None
    batch_size = prompt_embeds.shape[0]
    do_cfg = guidance_scale > 1
    if do_cfg and negative_prompt_embeds is None:
        if negative_prompt is None and force_zeros_for_empty_prompt:
            # diffusers' SDXL default: zeros, even when `negative_prompt_2` is given.
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        else:
            negative = texts_per_prompt(negative_prompt or "", batch_size, "negative_prompt")
            negative_2 = texts_per_prompt(
                negative_prompt_2 or negative, batch_size, "negative_prompt_2"
            )
            negative_prompt_embeds, negative_pooled_prompt_embeds = _encode_pair(
                encoders, [negative, negative_2], prompt_embeds.shape[1], -2
            )

    def repeat(embeds: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        embeds = embeds.to(dtype=dtype or embeds.dtype, device=text_encoder_2.device)
        return per_image(embeds, num_images_per_prompt)

    # diffusers casts the hidden states to the second encoder's dtype, not the pooled ones.
    embeds = repeat(prompt_embeds, text_encoder_2.dtype)
    pooled = repeat(pooled_prompt_embeds)
    if do_cfg:
        assert negative_prompt_embeds is not None
        assert negative_pooled_prompt_embeds is not None
        if negative_prompt_embeds.shape != prompt_embeds.shape:
            msg = (
                f"`negative_prompt_embeds` has shape {tuple(negative_prompt_embeds.shape)}, but "
                f"`prompt_embeds` has {tuple(prompt_embeds.shape)}. Give them the same shape."
            )
            raise ValueError(msg)
        embeds = torch.cat([repeat(negative_prompt_embeds, text_encoder_2.dtype), embeds])
        pooled = torch.cat([repeat(negative_pooled_prompt_embeds), pooled])
    return PromptEmbedsXL(embeds, pooled, do_cfg, batch_size * num_images_per_prompt)
