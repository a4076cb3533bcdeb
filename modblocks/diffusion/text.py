"""Tokenizing, shared by every text encoder: padding, truncation warnings, texts per prompt."""

from __future__ import annotations

import logging
import threading

import torch
from transformers import PreTrainedTokenizerBase

__all__ = ["negative_texts", "per_image", "texts_per_prompt", "tokenize", "warn_if_truncated"]

logger = logging.getLogger(__name__)

# A fast (Rust) tokenizer keeps its padding and truncation settings in the tokenizer itself,
# and each call sets them: two threads tokenizing at once get each other's settings. So
# tokenize under a lock; it takes microseconds next to the text encoder.
_TOKENIZER_LOCK = threading.Lock()


def tokenize(
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


def warn_if_truncated(
    tokenizer: PreTrainedTokenizerBase,
    text: str | list[str],
    ids: torch.Tensor,
    limit: str = "CLIP can only handle sequences up to",
) -> None:
    """Log the part of *text* that didn't fit, as diffusers does: it is silently ignored.

    *limit* says why, before the number of tokens (T5's limit is `max_sequence_length`).
    """
    with _TOKENIZER_LOCK:
        untruncated: torch.Tensor = tokenizer(text, padding="longest", return_tensors="pt")[
            "input_ids"
        ]
    if untruncated.shape[-1] >= ids.shape[-1] and not torch.equal(ids, untruncated):
        removed = tokenizer.batch_decode(untruncated[:, ids.shape[-1] - 1 : -1])
        logger.warning(
            "The following part of your input was truncated because %s %d tokens: %s",
            limit,
            ids.shape[-1],
            removed,
        )


def per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """Repeat each prompt's embeddings *num_images_per_prompt* times, next to each other."""
    return embeds.repeat_interleave(num_images_per_prompt, dim=0)


def texts_per_prompt(text: str | list[str], batch_size: int, what: str) -> list[str]:
    """Return *text* as one text per prompt (a string is repeated), checking the count."""
    texts = [text] * batch_size if isinstance(text, str) else text
    if len(texts) != batch_size:
        msg = f"`{what}` has {len(texts)} texts for {batch_size} prompts. Give one per prompt."
        raise ValueError(msg)
    return texts


def negative_texts(
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
