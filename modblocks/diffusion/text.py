"""Prompt encoding: `StableDiffusionPipeline.encode_prompt` as a block."""

from __future__ import annotations

import logging
import threading
from typing import Annotated, NamedTuple, cast

import torch
from transformers import CLIPTextModel, PreTrainedTokenizerBase
from typing_extensions import Doc

import modblocks as mb

__all__ = ["PromptEmbeds", "encode_prompt"]

logger = logging.getLogger(__name__)

# A fast (Rust) tokenizer keeps its padding and truncation settings in the tokenizer itself,
# and each call sets them: two threads tokenizing at once get each other's settings. So
# tokenize under a lock; it takes microseconds next to the text encoder.
_TOKENIZER_LOCK = threading.Lock()


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


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, text: str | list[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize *text* padded and truncated to *max_length*; return ids and attention mask."""
    with _TOKENIZER_LOCK:
        tokens = tokenizer(
            text, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
    ids: torch.Tensor = tokens["input_ids"]
    attention_mask: torch.Tensor = tokens["attention_mask"]
    return ids, attention_mask


def _warn_if_truncated(
    tokenizer: PreTrainedTokenizerBase, text: str | list[str], ids: torch.Tensor
) -> None:
    """Log the part of *text* that didn't fit, as diffusers does: it is silently ignored."""
    with _TOKENIZER_LOCK:
        untruncated: torch.Tensor = tokenizer(text, padding="longest", return_tensors="pt")[
            "input_ids"
        ]
    if untruncated.shape[-1] >= ids.shape[-1] and not torch.equal(ids, untruncated):
        removed = tokenizer.batch_decode(untruncated[:, ids.shape[-1] - 1 : -1])
        logger.warning(
            "The following part of your input was truncated because CLIP can only handle "
            "sequences up to %d tokens: %s",
            ids.shape[-1],
            removed,
        )


def _encode(
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


def _per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """Repeat each prompt's embeddings *num_images_per_prompt* times, next to each other."""
    return embeds.repeat_interleave(num_images_per_prompt, dim=0)


@mb.block
@torch.no_grad()  # inference only, also when run outside a Pipeline
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
        tokens = _tokenize(tokenizer, prompt, max_length)
        _warn_if_truncated(tokenizer, prompt, tokens[0])
        prompt_embeds = _encode(text_encoder, tokens, clip_skip)
    elif prompt is None and prompt_embeds is not None:
        batch_size = prompt_embeds.shape[0]
    else:
        msg = "give exactly one of `prompt` and `prompt_embeds`."
        raise ValueError(msg)
    prompt_embeds = _per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)

    do_cfg = guidance_scale > 1
    if not do_cfg:
        return PromptEmbeds(prompt_embeds, do_cfg, batch_size * num_images_per_prompt)
    if negative_prompt_embeds is None:
        texts = _negative_texts(prompt, negative_prompt, batch_size)
        # Without clip_skip: diffusers encodes negative prompts from the last layer, always.
        negative_prompt_embeds = _encode(
            text_encoder, _tokenize(tokenizer, texts, prompt_embeds.shape[1])
        )
    negative_prompt_embeds = _per_image(
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


def _negative_texts(
    prompt: str | list[str] | None, negative_prompt: str | list[str] | None, batch_size: int
) -> list[str]:
    """Return one negative text per prompt, checked as diffusers checks them."""
    if negative_prompt is None:
        return [""] * batch_size
    if prompt is not None and type(prompt) is not type(negative_prompt):
        msg = (
            f"`negative_prompt` is a {type(negative_prompt).__name__} but `prompt` is a "
            f"{type(prompt).__name__}. Give both as `str` or both as `list[str]`."
        )
        raise TypeError(msg)
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch_size
    if len(negative_prompt) != batch_size:
        msg = (
            f"`negative_prompt` has {len(negative_prompt)} texts for {batch_size} prompts. "
            "Give one negative prompt per prompt."
        )
        raise ValueError(msg)
    return negative_prompt
