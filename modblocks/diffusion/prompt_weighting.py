r"""Weighted and long prompts: `(word:1.3)`, `(word)`, `[word]`, and no 77-token limit.

The emphasis syntax is the one of AUTOMATIC1111 and ComfyUI: `(text)` multiplies the weight
of *text* by 1.1, `[text]` divides it by 1.1, `(text:1.3)` sets a factor, brackets nest,
and `\(` writes a literal bracket. `parse_weights` turns a prompt into weighted fragments;
compel (a well-kept library for exactly this) turns those into embeddings, encoding prompts
longer than the encoder's 77 tokens in chunks of 77 and padding the positive and negative
embeddings to the same length, as ComfyUI and compel do. The embeddings then go through
`encode_prompt` / `encode_prompt_xl` as `prompt_embeds`, like a user handing compel's
embeddings to a diffusers pipeline.

`weighted(node)` swaps the prompt encoder of a ready-made node for the weighted one.

Examples:
    ```python
    from modblocks.diffusion import text2img
    from modblocks.diffusion.prompt_weighting import parse_weights, weighted
    from modblocks.diffusion.testing import tiny_sd_components

    assert parse_weights("a (cat:1.3) on a [mat]") == [
        ("a ", 1.0), ("cat", 1.3), (" on a ", 1.0), ("mat", 1 / 1.1)
    ]
    state = weighted(text2img).run(
        **tiny_sd_components(), prompt="a (cat:1.3)", num_inference_steps=2
    )
    ```
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

import torch
from compel import Compel, ReturnedEmbeddingsType
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerBase
from typing_extensions import Doc

import modblocks as mb

from ._edit import replace_block
from ._grad import no_grad
from .clip import PromptEmbeds, PromptEmbedsXL, encode_prompt, encode_prompt_xl
from .text import negative_texts, texts_per_prompt

__all__ = ["encode_weighted_prompt", "encode_weighted_prompt_xl", "parse_weights", "weighted"]

# AUTOMATIC1111's tokens: escapes, brackets, a `:weight)` closing, plain text, a lone colon.
_ATTENTION = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:"
)
_UP, _DOWN = 1.1, 1 / 1.1


def parse_weights(text: str) -> list[tuple[str, float]]:
    r"""Split a prompt into `(text, weight)` fragments, by its emphasis brackets.

    Neighbouring fragments of equal weight are merged; unclosed brackets apply to the end.

    Examples:
        >>> parse_weights(r"a ((cat)) \(not weighted\)")
        [('a ', 1.0), ('cat', 1.2100000000000002), (' (not weighted)', 1.0)]
    """
    fragments: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            fragments.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(fragments))
        elif piece == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            multiply(round_open.pop(), _UP)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), _DOWN)
        else:
            fragments.append([piece, 1.0])
    for start in round_open:
        multiply(start, _UP)
    for start in square_open:
        multiply(start, _DOWN)
    merged: list[tuple[str, float]] = []
    for fragment_text, fragment_weight in fragments:
        if merged and merged[-1][1] == fragment_weight:
            merged[-1] = (merged[-1][0] + fragment_text, fragment_weight)
        else:
            merged.append((fragment_text, fragment_weight))
    return merged or [("", 1.0)]


def _compel(
    tokenizer: PreTrainedTokenizerBase, encoder: Any, kind: ReturnedEmbeddingsType
) -> Compel:
    # A new one per call: compel keeps the empty prompt's embeddings, which a LoRA changes.
    return Compel(
        tokenizer=tokenizer,
        text_encoder=encoder,
        truncate_long_prompts=False,
        returned_embeddings_type=kind,
    )


def _embed(compel: Compel, texts: Sequence[str]) -> list[torch.Tensor]:
    """Weighted embeddings of each text, `(1, 77 * chunks, width)`, by compel."""
    provider: Any = compel.conditioning_provider
    embeds: list[torch.Tensor] = []
    for text in texts:
        fragments = parse_weights(text)
        embeds.append(
            provider.get_embeddings_for_weighted_prompt_fragments(
                text_batch=[[f for f, _ in fragments]],
                fragment_weights_batch=[[w for _, w in fragments]],
                device=compel.device,
            )
        )
    return embeds


def _empty(compel: Compel) -> torch.Tensor:
    """The empty prompt's embeddings, `(1, 77, width)`: compel pads long prompts with them."""
    provider: Any = compel.conditioning_provider
    empty: torch.Tensor = provider.empty_z
    return empty


def _padded(embeds: list[torch.Tensor], empty: torch.Tensor, length: int) -> torch.Tensor:
    """Pad each text's embeddings with the empty prompt's, to *length* tokens; stack them."""
    return torch.cat(
        [
            torch.cat([e, *[empty] * ((length - e.shape[1]) // empty.shape[1])], dim=1)
            for e in embeds
        ]
    )


def _plain(text: str) -> str:
    """The prompt without its emphasis syntax, for the pooled embeddings (one vector)."""
    return "".join(fragment for fragment, _ in parse_weights(text))


_PROMPT_DOC = Doc("the prompt(s), with `(word:1.3)`, `(word)`, `[word]` emphasis; any length")
_NEGATIVE_DOC = Doc("what not to draw, with the same syntax; empty when not given")


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_weighted_prompt(
    text_encoder: mb.Component[CLIPTextModel],
    tokenizer: mb.Component[PreTrainedTokenizerBase],
    prompt: Annotated[str | list[str] | None, _PROMPT_DOC] = None,
    negative_prompt: Annotated[str | list[str] | None, _NEGATIVE_DOC] = None,
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
) -> PromptEmbeds:
    """Encode weighted prompts of any length with compel, then as `encode_prompt`."""
    if prompt is not None and prompt_embeds is None:
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives: list[str] = []
        if guidance_scale > 1 and negative_prompt_embeds is None:
            negatives = negative_texts(prompt, negative_prompt, len(texts))
        compel = _compel(
            tokenizer, text_encoder, ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
        )
        embeds = _embed(compel, texts + negatives)
        length = max(e.shape[1] for e in embeds)
        both = _padded(embeds, _empty(compel), length)
        prompt_embeds = both[: len(texts)]
        if negatives:
            negative_prompt_embeds, negative_prompt = both[len(texts) :], None
        prompt = None
    return encode_prompt(
        text_encoder,
        tokenizer,
        prompt=prompt,
        negative_prompt=negative_prompt,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        num_images_per_prompt=num_images_per_prompt,
        guidance_scale=guidance_scale,
    )


@mb.block
@no_grad  # inference only, also when run outside a Pipeline
def encode_weighted_prompt_xl(
    text_encoder: mb.Component[CLIPTextModel],
    tokenizer: mb.Component[PreTrainedTokenizerBase],
    text_encoder_2: mb.Component[CLIPTextModelWithProjection],
    tokenizer_2: mb.Component[PreTrainedTokenizerBase],
    prompt: Annotated[str | list[str] | None, _PROMPT_DOC] = None,
    prompt_2: Annotated[
        str | list[str] | None, Doc("the prompt(s) for the second text encoder; `prompt` if not")
    ] = None,
    negative_prompt: Annotated[
        str | list[str] | None, Doc("what not to draw; without it the negatives are zeros")
    ] = None,
    negative_prompt_2: Annotated[
        str | list[str] | None, Doc("the negative prompt(s) for the second encoder")
    ] = None,
    num_images_per_prompt: Annotated[int, Doc("number of images to make per prompt")] = 1,
    guidance_scale: Annotated[
        float, Doc("classifier-free guidance weight; guidance is on when it is > 1")
    ] = 5.0,
    force_zeros_for_empty_prompt: mb.Config[bool] = True,
) -> PromptEmbedsXL:
    """Encode weighted SDXL prompts of any length with compel (both encoders), then as usual.

    Hidden states come from the penultimate layer of each encoder, weighted and chunked by
    compel; the pooled embedding, one vector, is the second encoder's of the plain text.
    """
    if prompt is None:
        msg = "give `prompt`: weighted prompts are encoded from text."
        raise ValueError(msg)
    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts_2 = texts_per_prompt(prompt_2 or prompt, len(texts), "prompt_2")
    negatives: list[str] = []
    negatives_2: list[str] = []
    zeros = negative_prompt is None and force_zeros_for_empty_prompt
    if guidance_scale > 1 and not zeros:
        negatives = texts_per_prompt(negative_prompt or "", len(texts), "negative_prompt")
        negatives_2 = texts_per_prompt(
            negative_prompt_2 or negatives, len(texts), "negative_prompt_2"
        )
    kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    first, second = (
        _compel(tokenizer, text_encoder, kind),
        _compel(tokenizer_2, text_encoder_2, kind),
    )
    left, right = _embed(first, texts + negatives), _embed(second, texts_2 + negatives_2)
    length = max(e.shape[1] for e in left + right)
    hidden = torch.cat(
        [
            _padded(left, _empty(first), length),
            _padded(right, _empty(second), length),
        ],
        dim=-1,
    )
    provider: Any = second.conditioning_provider
    pooled: torch.Tensor = provider.get_pooled_embeddings(
        [_plain(t) for t in texts_2 + negatives_2], device=second.device
    )
    count = len(texts)
    return encode_prompt_xl(
        text_encoder_2,
        tokenizer_2,
        text_encoder,
        tokenizer,
        prompt_embeds=hidden[:count],
        pooled_prompt_embeds=pooled[:count],
        negative_prompt_embeds=hidden[count:] if negatives else None,
        negative_pooled_prompt_embeds=pooled[count:] if negatives else None,
        num_images_per_prompt=num_images_per_prompt,
        guidance_scale=guidance_scale,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
    )


def weighted(node: mb.Node) -> mb.Node:
    """Return *node* (SD 1.x or SDXL) with its prompt encoder swapped for the weighted one."""
    node = replace_block(node, "encode_prompt", encode_weighted_prompt)
    return replace_block(node, "encode_prompt_xl", encode_weighted_prompt_xl)
