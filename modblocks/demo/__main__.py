"""Draw handwritten digits with the demo pipeline: ``python -m modblocks.demo --out digits.png``."""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image

from modblocks.demo import load_pipeline, make_grid


def main(argv: list[str] | None = None) -> None:
    """Draw a grid of digits; ``--repaint`` adds a row with their lower halves redrawn."""
    parser = argparse.ArgumentParser(prog="python -m modblocks.demo", description=__doc__)
    parser.add_argument("--digits", default="0123456789", help="digits to draw (default: all)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="CFG scale (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--out", default="digits.png", help="PNG to write (default: digits.png)")
    parser.add_argument(
        "--repaint", action="store_true", help="add a row with the bottom half of each repainted"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    start = time.perf_counter()
    pipe = load_pipeline()
    inputs = {
        "digits": args.digits,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
    }
    drawn = pipe.run(**inputs, generator=torch.Generator().manual_seed(args.seed))
    rows: list[list[Image.Image]] = [drawn["images"]]
    if args.repaint:
        mask = torch.zeros_like(drawn["pixels"])
        mask[..., mask.shape[-2] // 2 :, :] = 1.0  # redraw the lower half
        again = pipe.run(
            **inputs,
            image=drawn["pixels"],
            mask_image=mask,
            generator=torch.Generator().manual_seed(args.seed + 1),
        )
        rows.append(again["images"])
    make_grid(rows).save(args.out)
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}: {len(args.digits)} digits, {args.steps} steps, {seconds:.1f} s")


if __name__ == "__main__":
    main()
