"""Prompt encoding with a T5 encoder next to CLIP: Flux (CLIP pooled + T5) and SD3 (2 CLIP + T5).

Flux takes the pooled output of a `CLIPTextModel` as global embedding and T5's hidden states
as the text sequence; guidance is distilled into the model, and true classifier-free
guidance encodes the negative prompt separately. SD3 concatenates the penultimate hidden
states of two CLIP encoders, pads them to T5's width and puts them before T5's sequence
(zeros without a T5 encoder); its pooled embedding is both CLIP projections side by side.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import torch
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5EncoderModel,
)
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from .clip import check_pooled_prompts, clip_hidden_states, clip_pooled
from .text import negative_texts, per_image, texts_per_prompt, tokenize, warn_if_truncated

__all__ = [
    "FluxPromptEmbeds",
    "SD3PromptEmbeds",
    "encode_prompt_flux",
    "encode_prompt_sd3",
    "t5_hidden_states",
]

_PROMPT = str | list[str] | None
_N_DOC = Doc("number of images to make per prompt")
_PROMPT_DOC = Doc("the prompt or prompts; or give `prompt_embeds` and `pooled_prompt_embeds`")
_EMBEDS_DOC = Doc("precomputed text embeddings, instead of `prompt`")
_POOLED_DOC = Doc("precomputed pooled embeddings (with `prompt_embeds`)")
_NEGATIVE_EMBEDS_DOC = Doc("precomputed negative embeddings, instead of `negative_prompt`")
_NEGATIVE_POOLED_DOC = Doc("precomputed negative pooled embeddings (with the negative embeddings)")


def t5_hidden_states(
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: PreTrainedModel,
    texts: list[str],
    max_sequence_length: int,
) -> torch.Tensor:
    """Encode *texts*, padded and truncated to *max_sequence_length*; return T5's hidden states."""
    ids, _ = tokenize(tokenizer, texts, max_sequence_length)
    warn_if_truncated(tokenizer, texts, ids, "`max_sequence_length` is set to")
    hidden: torch.Tensor = text_encoder(ids.to(text_encoder.device))[0]
    return hidden


def _as_list(prompt: str | list[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else prompt


class FluxPromptEmbeds(NamedTuple):
    """What `encode_prompt_flux` gives the transformer."""

    prompt_embeds: Annotated[torch.Tensor, Doc("T5 hidden states, one row per image")]
    pooled_prompt_embeds: Annotated[torch.Tensor, Doc("CLIP pooled embeddings, one per image")]
    text_ids: Annotated[torch.Tensor, Doc("position ids of the text tokens: zeros `(seq, 3)`")]
    negative_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("the negative prompt's T5 hidden states, with true CFG")
    ]
    negative_pooled_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("the negative prompt's pooled embeddings, with true CFG")
    ]
    do_true_cfg: Annotated[
        bool, Doc("whether true classifier-free guidance is on: a second model call per step")
    ]
    batch_size: Annotated[int, Doc("number of images: prompts × `num_images_per_prompt`")]


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_prompt_flux(
    text_encoder: mb.Component[CLIPTextModel],
    tokenizer: mb.Component[PreTrainedTokenizerBase],
    text_encoder_2: mb.Component[T5EncoderModel],
    tokenizer_2: mb.Component[PreTrainedTokenizerBase],
    prompt: Annotated[_PROMPT, _PROMPT_DOC] = None,
    prompt_2: Annotated[_PROMPT, Doc("the prompt(s) for T5; `prompt` if not given")] = None,
    negative_prompt: Annotated[
        _PROMPT, Doc("what not to draw, for true CFG (`true_cfg_scale` > 1)")
    ] = None,
    negative_prompt_2: Annotated[
        _PROMPT, Doc("the negative prompt(s) for T5; `negative_prompt` if not given")
    ] = None,
    prompt_embeds: Annotated[torch.Tensor | None, _EMBEDS_DOC] = None,
    pooled_prompt_embeds: Annotated[torch.Tensor | None, _POOLED_DOC] = None,
    negative_prompt_embeds: Annotated[torch.Tensor | None, _NEGATIVE_EMBEDS_DOC] = None,
    negative_pooled_prompt_embeds: Annotated[torch.Tensor | None, _NEGATIVE_POOLED_DOC] = None,
    true_cfg_scale: Annotated[
        float, Doc("true classifier-free guidance weight; on when > 1 and a negative is given")
    ] = 1.0,
    num_images_per_prompt: Annotated[int, _N_DOC] = 1,
    max_sequence_length: Annotated[int, Doc("T5's sequence length (at most 512)")] = 512,
) -> FluxPromptEmbeds:
    """Encode the prompt with CLIP (pooled) and T5, and the negative prompt for true CFG.

    `FluxPipeline.encode_prompt`, called for the prompt and, with true classifier-free
    guidance, for the negative prompt.
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
    if max_sequence_length > 512:
        msg = f"`max_sequence_length` is {max_sequence_length}; Flux's T5 takes at most 512."
        raise ValueError(msg)
    has_negative = negative_prompt is not None or (
        negative_prompt_embeds is not None and negative_pooled_prompt_embeds is not None
    )
    do_true_cfg = true_cfg_scale > 1 and has_negative
    if (
        do_true_cfg
        and prompt_embeds is not None
        and negative_prompt_embeds is not None
        and prompt_embeds.shape != negative_prompt_embeds.shape
    ):
        msg = (
            f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
            f"{tuple(negative_prompt_embeds.shape)} must have the same shape when passed directly."
        )
        raise ValueError(msg)
    device = text_encoder_2.device

    def encode(
        texts: list[str] | None,
        texts_2: list[str] | None,
        embeds: torch.Tensor | None,
        pooled: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if embeds is None or pooled is None:
            assert texts is not None
            assert texts_2 is not None
            pooled = clip_pooled(tokenizer, text_encoder, texts)
            embeds = t5_hidden_states(tokenizer_2, text_encoder_2, texts_2, max_sequence_length)
        embeds = embeds.to(dtype=text_encoder_2.dtype, device=device)
        pooled = pooled.to(dtype=text_encoder.dtype, device=device)
        return per_image(embeds, num_images_per_prompt), per_image(pooled, num_images_per_prompt)

    texts = None if prompt is None else _as_list(prompt)
    batch_size = len(texts) if texts is not None else _rows(prompt_embeds)
    texts_2 = None if texts is None else texts_per_prompt(prompt_2 or texts, batch_size, "prompt_2")
    embeds, pooled = encode(texts, texts_2, prompt_embeds, pooled_prompt_embeds)
    negative, negative_pooled = None, None
    if do_true_cfg:
        negative_texts_ = negative_texts_2 = None
        if negative_prompt is not None:
            negative_texts_ = texts_per_prompt(negative_prompt, batch_size, "negative_prompt")
            negative_texts_2 = texts_per_prompt(
                negative_prompt_2 or negative_texts_, batch_size, "negative_prompt_2"
            )
        negative, negative_pooled = encode(
            negative_texts_, negative_texts_2, negative_prompt_embeds, negative_pooled_prompt_embeds
        )
    text_ids = torch.zeros(embeds.shape[1], 3).to(device=device, dtype=text_encoder.dtype)
    return FluxPromptEmbeds(
        embeds,
        pooled,
        text_ids,
        negative,
        negative_pooled,
        do_true_cfg,
        batch_size * num_images_per_prompt,
    )


def _rows(embeds: torch.Tensor | None) -> int:
    assert embeds is not None  # checked by check_pooled_prompts
    return embeds.shape[0]


class SD3PromptEmbeds(NamedTuple):
    """What `encode_prompt_sd3` gives the transformer."""

    prompt_embeds: Annotated[
        torch.Tensor,
        Doc("CLIP hidden states (padded) then T5's, per image; negative first with guidance"),
    ]
    pooled_prompt_embeds: Annotated[
        torch.Tensor, Doc("both CLIP projections side by side; negative first with guidance")
    ]
    do_cfg: Annotated[bool, Doc("whether classifier-free guidance is on (`guidance_scale > 1`)")]
    batch_size: Annotated[int, Doc("number of images: prompts × `num_images_per_prompt`")]


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_prompt_sd3(
    text_encoder: mb.Component[CLIPTextModelWithProjection],
    tokenizer: mb.Component[PreTrainedTokenizerBase],
    text_encoder_2: mb.Component[CLIPTextModelWithProjection],
    tokenizer_2: mb.Component[PreTrainedTokenizerBase],
    transformer: mb.Component[SD3Transformer2DModel],
    text_encoder_3: mb.Component[T5EncoderModel | None] = None,
    tokenizer_3: mb.Component[PreTrainedTokenizerBase | None] = None,
    prompt: Annotated[_PROMPT, _PROMPT_DOC] = None,
    prompt_2: Annotated[
        _PROMPT, Doc("the prompt(s) for the second CLIP; `prompt` if not given")
    ] = None,
    prompt_3: Annotated[_PROMPT, Doc("the prompt(s) for T5; `prompt` if not given")] = None,
    negative_prompt: Annotated[_PROMPT, Doc("what not to draw; empty when not given")] = None,
    negative_prompt_2: Annotated[
        _PROMPT, Doc("the negative prompt(s) for the second CLIP; `negative_prompt` if not given")
    ] = None,
    negative_prompt_3: Annotated[
        _PROMPT, Doc("the negative prompt(s) for T5; `negative_prompt` if not given")
    ] = None,
    prompt_embeds: Annotated[torch.Tensor | None, _EMBEDS_DOC] = None,
    negative_prompt_embeds: Annotated[torch.Tensor | None, _NEGATIVE_EMBEDS_DOC] = None,
    pooled_prompt_embeds: Annotated[torch.Tensor | None, _POOLED_DOC] = None,
    negative_pooled_prompt_embeds: Annotated[torch.Tensor | None, _NEGATIVE_POOLED_DOC] = None,
    num_images_per_prompt: Annotated[int, _N_DOC] = 1,
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 7.0,
    clip_skip: Annotated[
        int | None, Doc("number of final CLIP layers to skip, after SD3's usual one")
    ] = None,
    max_sequence_length: Annotated[int, Doc("T5's sequence length (at most 512)")] = 256,
) -> SD3PromptEmbeds:
    """Encode the prompt with two CLIP encoders and T5, and the negative prompt for guidance.

    `StableDiffusion3Pipeline.encode_prompt`, followed by the pipeline's concatenation
    `[negative, positive]`. Without T5 (`text_encoder_3=None`) its part is zeros.
    """
    check_pooled_prompts(
        prompt is not None,
        prompt_2 is not None or prompt_3 is not None,
        prompt_embeds is not None,
        pooled_prompt_embeds is not None,
        any(p is not None for p in (negative_prompt, negative_prompt_2, negative_prompt_3)),
        negative_prompt_embeds is not None,
        negative_pooled_prompt_embeds is not None,
    )
    if max_sequence_length > 512:
        msg = f"`max_sequence_length` is {max_sequence_length}; SD3's T5 takes at most 512."
        raise ValueError(msg)
    device, dtype = text_encoder.device, text_encoder.dtype

    def encode(
        texts: list[str], texts_2: list[str], texts_3: list[str], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = clip_hidden_states(tokenizer, text_encoder, texts, layer)
        hidden_2, pooled_2 = clip_hidden_states(tokenizer_2, text_encoder_2, texts_2, layer)
        clip = torch.cat([hidden.to(dtype=dtype), hidden_2.to(dtype=dtype)], dim=-1)
        if text_encoder_3 is None or tokenizer_3 is None:
            width: int = transformer.config["joint_attention_dim"]
            t5 = torch.zeros((len(texts), max_sequence_length, width), device=device, dtype=dtype)
        else:
            t5 = t5_hidden_states(tokenizer_3, text_encoder_3, texts_3, max_sequence_length)
            t5 = t5.to(dtype=text_encoder_3.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(device)], dim=-2), torch.cat([pooled, pooled_2], dim=-1)

    if prompt is not None:
        texts = _as_list(prompt)
        batch_size = len(texts)
        layer = -2 if clip_skip is None else -(clip_skip + 2)
        prompt_embeds, pooled_prompt_embeds = encode(
            texts,
            texts_per_prompt(prompt_2 or texts, batch_size, "prompt_2"),
            texts_per_prompt(prompt_3 or texts, batch_size, "prompt_3"),
            layer,
        )
    assert prompt_embeds is not None
    assert pooled_prompt_embeds is not None
    batch_size = prompt_embeds.shape[0]
    do_cfg = guidance_scale > 1
    embeds = per_image(prompt_embeds.to(device), num_images_per_prompt)
    pooled = per_image(pooled_prompt_embeds.to(device), num_images_per_prompt)
    if not do_cfg:
        return SD3PromptEmbeds(embeds, pooled, do_cfg, batch_size * num_images_per_prompt)
    if negative_prompt_embeds is None or negative_pooled_prompt_embeds is None:
        negative = negative_texts(prompt, negative_prompt, batch_size)
        negative_prompt_embeds, negative_pooled_prompt_embeds = encode(
            negative,
            texts_per_prompt(negative_prompt_2 or negative, batch_size, "negative_prompt_2"),
            texts_per_prompt(negative_prompt_3 or negative, batch_size, "negative_prompt_3"),
            -2,  # diffusers encodes negative prompts without `clip_skip`
        )
    if negative_prompt_embeds.shape != prompt_embeds.shape:
        msg = (
            f"`negative_prompt_embeds` has shape {tuple(negative_prompt_embeds.shape)}, but "
            f"`prompt_embeds` has {tuple(prompt_embeds.shape)}. Give them the same shape."
        )
        raise ValueError(msg)
    negative_embeds = per_image(negative_prompt_embeds.to(device), num_images_per_prompt)
    negative_pooled = per_image(negative_pooled_prompt_embeds.to(device), num_images_per_prompt)
    return SD3PromptEmbeds(
        torch.cat([negative_embeds, embeds]),
        torch.cat([negative_pooled, pooled]),
        do_cfg,
        batch_size * num_images_per_prompt,
    )
