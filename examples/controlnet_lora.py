"""ControlNet and LoRA in one pipeline, with a per-call LoRA scale.

The additions compose: `guided(stable_diffusion_controlnet)` is the ControlNet node with a
swappable guider and `cross_attention_kwargs`; the LoRA loads into the same pipeline's UNet.
All models are tiny random ones, built offline.
"""

import numpy as np
import PIL.Image
import torch

import modblocks as mb
from modblocks.diffusion import stable_diffusion_controlnet
from modblocks.diffusion.guiders import guided
from modblocks.diffusion.testing import tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_controlnet, tiny_lora


def main() -> None:
    components = tiny_sd_components()
    components["controlnet"] = tiny_controlnet(components)
    pipe = mb.Pipeline(guided(stable_diffusion_controlnet), components=components)
    pipe.load_lora_weights(tiny_lora(components, seed=1), adapter_name="style")

    edges = PIL.Image.fromarray(
        np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    )

    def run(**inputs: object) -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        return pipe(
            prompt="a cat",
            control_image=edges,
            num_inference_steps=3,
            output_type="np",
            generator=generator,
            output="images",
            **inputs,
        )

    full = run()
    half = run(cross_attention_kwargs={"scale": 0.5})  # the LoRA at half strength
    pipe.unload_lora_weights()
    none = run()
    print("images:", full.shape)
    print("LoRA scale 1 vs 0.5 differ:", not np.allclose(full, half))
    print("scale 0.5 lies between:", bool(np.abs(half - none).max() < np.abs(full - none).max()))


if __name__ == "__main__":
    main()
