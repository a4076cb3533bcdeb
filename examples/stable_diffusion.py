"""Stable Diffusion 1.5 from a local folder: text-to-image, image-to-image and inpainting.

One `mb.Pipeline(stable_diffusion, ...)` does all three: the `stable_diffusion` switch runs
`inpaint` when `mask_image` is given, `img2img` when `image` is, and `text2img` otherwise.
The components (`unet`, `vae`, `text_encoder`, `tokenizer`, `scheduler`) are loaded with
`mb.Pipeline.from_pretrained` from a local diffusers-format folder (`model_index.json` and
one subfolder per component); nothing is downloaded.

With a real checkpoint, e.g. a local snapshot of stable-diffusion-v1-5, it makes real
512x512 pictures (guidance 7.5, 30 steps or `--steps N`) and saves them as PNG files::

    python examples/stable_diffusion.py --model path/to/stable-diffusion-v1-5 --out images

It runs on a GPU if there is one (in float16), else on the CPU (a few minutes per picture).
Without `--model` it writes tiny random-weight components to a temporary folder
(`modblocks.diffusion.testing.save_tiny_sd`) and loads them the same way: it takes seconds,
and the pictures are noise, but every step is the real one::

    python examples/stable_diffusion.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import modblocks as mb
from modblocks.diffusion import stable_diffusion
from modblocks.diffusion.testing import save_tiny_sd

PROMPT = "a photo of an astronaut riding a horse on the moon"
REAL = {"height": 512, "width": 512, "num_inference_steps": 30, "guidance_scale": 7.5}
TINY = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": 7.5}


def centre_mask(size: tuple[int, int]) -> Image.Image:
    """A mask that repaints the middle of the picture: white is repainted, black is kept."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, 3 * width // 4, 3 * height // 4), 255)
    return mask


def generate(model: Path, out: Path | None, settings: dict[str, float]) -> None:
    """Load *model* into one pipeline and run text2img, img2img and inpaint with it."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = mb.Pipeline.from_pretrained(model, stable_diffusion, torch_dtype=dtype).to(device)

    def run(name: str, **inputs: object) -> Image.Image:
        branch = stable_diffusion.resolve(**inputs)  # the branch the switch will run
        generator = torch.Generator(device).manual_seed(0)  # same seed: reproducible pictures
        picture: Image.Image = pipe(**inputs, **settings, generator=generator, output="images")[0]
        print(f"{name}: ran {branch.name if branch else None}, picture {picture.size}")
        if out is not None:
            picture.save(out / f"{name}.png")
        return picture

    picture = run("text2img", prompt=PROMPT)
    run("img2img", prompt=f"{PROMPT}, oil painting", image=picture, strength=0.6)
    run("inpaint", prompt="a red planet", image=picture, mask_image=centre_mask(picture.size))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stable Diffusion 1.5 from a local folder.")
    parser.add_argument("--model", type=Path, help="a local diffusers folder of SD 1.x")
    parser.add_argument("--out", type=Path, default=Path("sd-images"), help="where PNGs go")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (with --model)")
    args = parser.parse_args(argv)
    if args.model is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        generate(args.model, args.out, {**REAL, "num_inference_steps": args.steps})
        print(f"saved text2img.png, img2img.png and inpaint.png in {args.out}")
        return
    with tempfile.TemporaryDirectory() as folder:
        # Tiny random weights, saved as a diffusers folder: the same loading path as above.
        generate(save_tiny_sd(folder), None, TINY)


if __name__ == "__main__":
    main()
