"""Peak memory of a full Stable Diffusion 1.x text-to-image call: diffusers vs modblocks' options.

The models have Stable Diffusion 1.5's shapes (its UNet, VAE and CLIP text encoder configs:
860M + 84M + 123M parameters, 4.1 GB of float32 weights) with random weights, written once
as a diffusers-format folder (safetensors) to a temporary folder and reused by later runs
(``--folder`` to choose it). Each contender runs in a fresh Python process, which loads the
folder and makes one image (``--size`` pixels, ``--steps`` steps, guidance 7.5, seeded):

* **diffusers classic**: ``StableDiffusionPipeline.from_pretrained(folder)``.
* **modblocks default**: ``mb.Pipeline.from_pretrained(folder, text2img)``.
* **modblocks lazy=True**: each model loads when a block first reads it.
* **modblocks offload="disk"**: each model's weights stay in its safetensors files; every
  group of layers is read in for its forward and dropped after.

Reported per contender: the peak resident set size of its process (``ru_maxrss``: the
imports, loading and the call; the median of ``--repeats`` processes, run interleaved with
the other contenders' so background load hits them alike), that peak over diffusers', the
time to load and the time of the call, and the largest difference of its image from
diffusers'. Targets: the default no more than diffusers, ``offload="disk"`` at most 0.6x
diffusers' peak. Allocator noise moves one process's peak by about 2% either way.

Run it from the repository root::

    python benchmarks/memory.py            # writes the folder the first time (4 GB, ~1 min)
    python benchmarks/memory.py --repeats 1 --steps 2 --size 128 --folder /data/sd15-random
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import REPO_ROOT, emit, environment, markdown_table

CONTENDERS = {
    "diffusers": "diffusers classic",
    "default": "modblocks default",
    "lazy": "modblocks lazy=True",
    "disk": 'modblocks offload="disk"',
}
DEFAULT_FOLDER = Path(tempfile.gettempdir()) / "modblocks-bench-sd15-random"
DONE = ".complete"

# Stable Diffusion 1.5's model configs (runwayml/stable-diffusion-v1-5), written with random
# weights: the shapes, and so the memory, are the real model's.
UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "sample_size": 64,
}
VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def write_folder(folder: Path) -> None:
    """Write SD 1.5-shaped random models as a diffusers-format folder (once)."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        StableDiffusionPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from modblocks.diffusion.testing import tiny_scheduler, tiny_sd_components

    torch.manual_seed(0)
    classic: Any = StableDiffusionPipeline  # diffusers types its optional parts as required
    pipeline: Any = classic(
        unet=UNet2DConditionModel(**UNET),
        vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)),
        # The tiny CLIP tokenizer's ids are valid for the real vocabulary too.
        tokenizer=tiny_sd_components()["tokenizer"],
        scheduler=tiny_scheduler("pndm"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    (folder / DONE).write_text("written by benchmarks/memory.py\n")


def run_contender(name: str, folder: Path, size: int, steps: int, out: Path) -> None:
    """Load *folder* the way *name* does, make one image, print the measures as JSON."""
    import numpy as np
    import torch

    start = time.perf_counter()
    call: dict[str, Any] = {
        "prompt": "a photo of a cat",
        "height": size,
        "width": size,
        "num_inference_steps": steps,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(0),
    }
    if name == "diffusers":
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            StableDiffusionPipeline,
        )

        classic: Any = StableDiffusionPipeline.from_pretrained(folder)
        classic.set_progress_bar_config(disable=True)
        loaded = time.perf_counter()
        images: Any = classic(**call).images
    else:
        import modblocks as mb
        from modblocks.diffusion import text2img

        choices: dict[str, dict[str, Any]] = {"lazy": {"lazy": True}, "disk": {"offload": "disk"}}
        options = choices.get(name, {})
        pipe = mb.Pipeline.from_pretrained(folder, text2img, **options)
        loaded = time.perf_counter()
        with mb.progress(disable=True):
            images = pipe(**call, output="images")
    done = time.perf_counter()
    np.save(out, np.asarray(images))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"peak": peak, "load": loaded - start, "call": done - loaded}))


def measure(name: str, folder: Path, size: int, steps: int, out: Path) -> dict[str, Any]:
    """Run one contender in a fresh process and return its measures."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--contender",
        name,
        "--folder",
        str(folder),
        "--size",
        str(size),
        "--steps",
        str(steps),
        "--out",
        str(out),
    ]
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        command, capture_output=True, text=True, check=False, cwd=REPO_ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--size", type=int, default=128, help="image height and width")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh processes per contender (the median)"
    )
    parser.add_argument("--contender", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    if args.contender:
        run_contender(args.contender, args.folder, args.size, args.steps, args.out)
        return
    import numpy as np

    if not (args.folder / DONE).is_file():
        print(f"writing SD 1.5-shaped random models to {args.folder} (once) ...")
        code = (
            "from pathlib import Path; from benchmarks.memory import write_folder; "
            f"write_folder(Path({str(args.folder)!r}))"
        )
        # In a process of its own, which gives the memory of the models back when it ends.
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)  # noqa: S603
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            # Interleaved: background load (other processes) hits every contender alike.
            for name in CONTENDERS:
                out = Path(scratch) / f"{name}-{repeat}.npy"
                result = measure(name, args.folder, args.size, args.steps, out)
                result["image"] = np.load(out)
                runs[name].append(result)
    base_image = runs["diffusers"][0]["image"].astype(np.float64)
    base_peak = statistics.median(float(r["peak"]) for r in runs["diffusers"])
    rows: list[list[str]] = []
    for name, label in CONTENDERS.items():
        peak = statistics.median(float(r["peak"]) for r in runs[name])
        diff = max(float(np.abs(r["image"] - base_image).max()) for r in runs[name])
        rows.append(
            [
                label,
                f"{peak / 2**30:.2f} GB",
                f"{peak / base_peak:.2f}x",
                f"{statistics.median(float(r['load']) for r in runs[name]):.1f} s",
                f"{statistics.median(float(r['call']) for r in runs[name]):.1f} s",
                f"{diff:.1e}",
            ]
        )
    header = ["contender", "peak RSS", "vs diffusers", "load", "call", "max image diff"]
    emit("## Peak memory: SD 1.x text2img\n")
    emit(markdown_table(header, rows))
    emit(
        f"\nSD 1.5 shapes, random weights, {args.size}x{args.size} pixels, {args.steps} steps, "
        "guidance 7.5. Peak RSS: ru_maxrss of a fresh process (imports, loading, the call), "
        f"median of {args.repeats} processes per contender, run interleaved; times are medians."
    )
    emit('Targets: modblocks default <= diffusers; offload="disk" <= 0.60x diffusers.')
    emit(environment(["torch", "diffusers", "transformers", "safetensors"]))


if __name__ == "__main__":
    main()
