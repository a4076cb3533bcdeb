"""Weighted and long prompts: `(word:1.3)`, `(word)`, `[word]` and more than 77 tokens.

`weighted(node)` swaps the prompt encoder for one that parses the emphasis syntax of
AUTOMATIC1111 and ComfyUI and lets compel make the embeddings, chunking long prompts.
"""

from modblocks.diffusion import stable_diffusion
from modblocks.diffusion.prompt_weighting import parse_weights, weighted
from modblocks.diffusion.testing import tiny_sd_components

if __name__ == "__main__":
    for text in ["a (cat:1.3) on a [mat]", "((very)) important", r"a \(literal\) bracket"]:
        print(f"{text!r:28} ->", [(t, round(w, 3)) for t, w in parse_weights(text)])

    node = weighted(stable_diffusion)
    long_prompt = "a photo of a (cat:1.2) sitting on a [red] mat in the sun, " * 8
    state = node.run(
        **tiny_sd_components(),
        prompt=long_prompt,
        negative_prompt="(blurry:1.4)",
        height=32,
        width=32,
        num_inference_steps=2,
    )
    # [negative, positive] embeddings, several chunks of 77 tokens each.
    print("prompt_embeds:", tuple(state["prompt_embeds"].shape))
