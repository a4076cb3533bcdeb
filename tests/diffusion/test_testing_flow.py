"""The tiny Flux and SD3 components and the T5 tokenizer are built offline, the same each time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from modblocks.diffusion.qwen import qwen_hidden_states
from modblocks.diffusion.testing import (
    tiny_flux_components,
    tiny_qwen_image_components,
    tiny_qwen_tokenizer,
    tiny_sd3_components,
    tiny_t5_tokenizer,
)

BUILDERS = {
    "flux": tiny_flux_components,
    "sd3": tiny_sd3_components,
    "qwen_image": tiny_qwen_image_components,
}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_tiny_components_are_deterministic_and_leave_the_global_rng_alone(family):
    build = BUILDERS[family]
    torch.manual_seed(5)
    expected_draw = torch.rand(1)
    torch.manual_seed(5)
    first, second = build(seed=1), build(seed=1)
    assert torch.rand(1) == expected_draw
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        if name not in first:
            continue
        for a, b in zip(first[name].parameters(), second[name].parameters(), strict=True):
            assert torch.equal(a, b), name
    other = build(seed=2)["transformer"]
    assert not all(
        torch.equal(a, b)
        for a, b in zip(first["transformer"].parameters(), other.parameters(), strict=True)
    )


def test_tiny_components_fit_together():
    flux = tiny_flux_components()
    assert flux["transformer"].config.joint_attention_dim == flux["text_encoder_2"].config.d_model
    assert flux["transformer"].config.in_channels == 4 * flux["vae"].config.latent_channels
    sd3 = tiny_sd3_components(t5=False)
    assert sd3["text_encoder_3"] is None
    assert sd3["tokenizer_3"] is None
    assert not sd3["scheduler"].config.use_dynamic_shifting
    assert tiny_sd3_components(dynamic_shifting=True)["scheduler"].config.use_dynamic_shifting


def test_tiny_t5_tokenizer_is_t5_like_and_round_trips(tmp_path):
    tokenizer = tiny_t5_tokenizer()
    ids = tokenizer("A photo of the cat, on a DOG!", padding="max_length", max_length=24).input_ids
    assert ids[-1] == tokenizer.pad_token_id == 0
    assert tokenizer.eos_token_id == 1
    assert tokenizer.unk_token_id not in ids  # every character has a piece
    tokens = tokenizer.convert_ids_to_tokens(ids[:7])
    # Known words are one piece; others are spelled out after a lone "▁".
    assert tokens == ["▁", "A", "▁photo", "▁of", "▁the", "▁cat", ","]
    assert max(ids) < tiny_flux_components()["text_encoder_2"].config.vocab_size
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = ["a painting of a squirrel eating a burger", "Zebra? (blue)"]
    assert (
        loaded(texts, padding="max_length", max_length=20).input_ids
        == tokenizer(texts, padding="max_length", max_length=20).input_ids
    )


def test_tiny_qwen_tokenizer_drops_the_template_and_round_trips(tmp_path):
    """The chat template's system part is 34 tokens, as with Qwen2.5's vocabulary, so what
    Qwen-Image keeps of the text sequence starts with the prompt."""
    tokenizer = tiny_qwen_tokenizer()
    components = tiny_qwen_image_components()
    embeds, mask = qwen_hidden_states(tokenizer, components["text_encoder"], ["a cat", "a dog"])
    assert embeds.shape[1] == 2 + 5  # the prompt, then `<|im_end|>`, "\n", `<|im_start|>`...
    assert mask.tolist() == [[1] * 7, [1] * 7]
    texts = ["<|im_start|>user\na photo of a cat<|im_end|>", "Zebra? (blue)"]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(texts).input_ids == tokenizer(texts).input_ids
    assert tokenizer.convert_ids_to_tokens(tokenizer("a photo").input_ids) == ["a", "Ġphoto"]
