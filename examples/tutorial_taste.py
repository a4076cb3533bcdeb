"""A taste of modblocks: three functions, a loop, one pipeline (the docs' front page)."""

import modblocks as mb


@mb.block(output="timesteps")
def set_timesteps(num_inference_steps: int = 4) -> list[int]:
    """Pick the timesteps to denoise at."""
    return list(range(1000, 0, -1000 // num_inference_steps))


@mb.block(output="latents")
def denoise_step(latents: float, t: int) -> float:
    """Remove a little noise (a unet and a scheduler, in real life)."""
    return latents * (1 - t / 2000)


@mb.block(output="images")
def decode(latents: float) -> str:
    """Turn latents into an image."""
    return f"<image {latents:.3f}>"


text2img = set_timesteps >> mb.loop(denoise_step, over="timesteps", name="denoise") >> decode

if __name__ == "__main__":
    print(text2img.run(latents=1.0)["images"])
    print(text2img.doc)
