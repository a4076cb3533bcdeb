"""Prompt encoding with Qwen2.5-VL (Qwen-Image): a chat template, its prefix dropped.

Each prompt is put in Qwen-Image's chat template and encoded by the multimodal language
model; the last hidden states of the real tokens, without the template's first 34 tokens,
are the text sequence, padded to the longest prompt with an attention mask. True
classifier-free guidance encodes the negative prompt the same way.
"""

from __future__ import annotations

import logging
from typing import Annotated, NamedTuple, cast

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
)
from typing_extensions import Doc

import modblocks as mb

from ._grad import no_grad
from .text import texts_per_prompt, tokenize

__all__ = ["QwenPromptEmbeds", "encode_prompt_qwen", "qwen_hidden_states"]

logger = logging.getLogger(__name__)

_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
_TEMPLATE_TOKENS = 34  # the template's tokens before the prompt, in Qwen2.5's vocabulary
_MAX_LENGTH = 1024
_PROMPT = str | list[str] | None


def qwen_hidden_states(
    tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode *prompts* in the chat template; return hidden states and their attention mask."""
    texts = [_TEMPLATE.format(prompt) for prompt in prompts]
    ids, mask = tokenize(tokenizer, texts, _MAX_LENGTH + _TEMPLATE_TOKENS, longest=True)
    device = text_encoder.device
    output = text_encoder(
        input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
    )
    hidden: torch.Tensor = output.hidden_states[-1]
    real = mask.to(device).bool()
    lengths = cast("list[int]", real.sum(dim=1).tolist())
    rows = torch.split(hidden[real], lengths, dim=0)
    rows = tuple(row[_TEMPLATE_TOKENS:] for row in rows)
    longest = max(row.size(0) for row in rows)
    embeds = torch.stack(
        [torch.cat([r, r.new_zeros(longest - r.size(0), r.size(1))]) for r in rows]
    )
    ones = [torch.ones(r.size(0), dtype=torch.long, device=r.device) for r in rows]
    masks = torch.stack([torch.cat([m, m.new_zeros(longest - m.size(0))]) for m in ones])
    return embeds.to(dtype=text_encoder.dtype, device=device), masks


class QwenPromptEmbeds(NamedTuple):
    """What `encode_prompt_qwen` gives the transformer."""

    prompt_embeds: Annotated[torch.Tensor, Doc("Qwen2.5-VL hidden states, one row per image")]
    prompt_embeds_mask: Annotated[
        torch.Tensor | None, Doc("their attention mask (`None` when no token is padding)")
    ]
    negative_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("the negative prompt's hidden states, with true CFG")
    ]
    negative_prompt_embeds_mask: Annotated[
        torch.Tensor | None, Doc("their attention mask, with true CFG")
    ]
    do_true_cfg: Annotated[
        bool, Doc("whether true classifier-free guidance is on: a second model call per step")
    ]
    batch_size: Annotated[int, Doc("number of images: prompts × `num_images_per_prompt`")]


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_prompt_qwen(
    text_encoder: mb.Component[Qwen2_5_VLForConditionalGeneration],
    tokenizer: mb.Component[PreTrainedTokenizerBase],
    prompt: Annotated[_PROMPT, Doc("the prompt or prompts; or give `prompt_embeds`")] = None,
    negative_prompt: Annotated[
        _PROMPT, Doc("what not to draw, for true CFG (`true_cfg_scale` > 1)")
    ] = None,
    prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed text embeddings, instead of `prompt`")
    ] = None,
    prompt_embeds_mask: Annotated[
        torch.Tensor | None, Doc("the attention mask of `prompt_embeds` (none: all tokens count)")
    ] = None,
    negative_prompt_embeds: Annotated[
        torch.Tensor | None, Doc("precomputed negative embeddings, instead of `negative_prompt`")
    ] = None,
    negative_prompt_embeds_mask: Annotated[
        torch.Tensor | None, Doc("the attention mask of `negative_prompt_embeds`")
    ] = None,
    true_cfg_scale: Annotated[
        float, Doc("true classifier-free guidance weight; on when > 1 and a negative is given")
    ] = 4.0,
    num_images_per_prompt: Annotated[int, Doc("number of images to make per prompt")] = 1,
    max_sequence_length: Annotated[int, Doc("keep at most this many text tokens (≤ 1024)")] = 512,
) -> QwenPromptEmbeds:
    """Encode the prompt with Qwen2.5-VL, and the negative prompt for true CFG.

    `QwenImagePipeline.encode_prompt`, called for the prompt and, with true classifier-free
    guidance, for the negative prompt.
    """
    if (prompt is None) == (prompt_embeds is None):
        msg = "give exactly one of `prompt` and `prompt_embeds`."
        raise ValueError(msg)
    if negative_prompt is not None and negative_prompt_embeds is not None:
        msg = "give at most one of `negative_prompt` and `negative_prompt_embeds`."
        raise ValueError(msg)
    if max_sequence_length > _MAX_LENGTH:
        msg = f"`max_sequence_length` is {max_sequence_length}; Qwen-Image takes at most 1024."
        raise ValueError(msg)
    has_negative = negative_prompt is not None or negative_prompt_embeds is not None
    do_true_cfg = true_cfg_scale > 1 and has_negative
    if has_negative and not do_true_cfg:
        logger.warning("a negative prompt is given but true CFG is off: `true_cfg_scale` <= 1.")

    def encode(
        texts: list[str] | None, embeds: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if embeds is None:
            assert texts is not None
            embeds, mask = qwen_hidden_states(tokenizer, text_encoder, texts)
        embeds = embeds[:, :max_sequence_length].repeat_interleave(num_images_per_prompt, dim=0)
        if mask is None:
            return embeds, None
        mask = mask[:, :max_sequence_length].repeat_interleave(num_images_per_prompt, dim=0)
        # All-ones masks are dropped, as diffusers does: the attention then needs none.
        return embeds, None if bool(mask.all()) else mask

    texts = None if prompt is None else ([prompt] if isinstance(prompt, str) else prompt)
    batch_size = len(texts) if texts is not None else _rows(prompt_embeds)
    embeds, mask = encode(texts, prompt_embeds, prompt_embeds_mask)
    negative, negative_mask = None, None
    if do_true_cfg:
        negative_texts = None
        if negative_prompt is not None:
            negative_texts = texts_per_prompt(negative_prompt, batch_size, "negative_prompt")
        negative, negative_mask = encode(
            negative_texts, negative_prompt_embeds, negative_prompt_embeds_mask
        )
    return QwenPromptEmbeds(
        embeds, mask, negative, negative_mask, do_true_cfg, batch_size * num_images_per_prompt
    )


def _rows(embeds: torch.Tensor | None) -> int:
    assert embeds is not None  # checked above
    return embeds.shape[0]
