"""Models and memory: a shared registry, lazy loading, offloading, compiled models, repos.

Runs on tiny random-weight Stable Diffusion components (built offline by
`modblocks.diffusion.testing`) written to a temporary folder, as a downloaded model would be.
Each section prints what it shows; the "Models and memory" page shows the same lines.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import modblocks as mb
from modblocks.diffusion import img2img, stable_diffusion, text2img
from modblocks.diffusion.controlnet import stable_diffusion_controlnet
from modblocks.diffusion.testing import save_tiny_sd, tiny_sd_components
from modblocks.diffusion.testing_adapters import tiny_controlnet

SMALL: dict[str, Any] = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}


def image(pipe: mb.Pipeline, **inputs: Any) -> np.ndarray:
    """One seeded image: the same seed gives the same image in every section."""
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt="a cat", **SMALL, **inputs, generator=generator, output="images")


def write_folder(folder: Path) -> Path:
    """A diffusers-format folder with a ControlNet too, as if downloaded."""
    save_tiny_sd(folder, seed=1)
    tiny_controlnet(tiny_sd_components(seed=1), seed=2).save_pretrained(folder / "controlnet")
    index = json.loads((folder / "model_index.json").read_text())
    index["controlnet"] = ["diffusers", "ControlNetModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


# --8<-- [start:registry]
def share_a_registry(folder: Path) -> None:
    """Two pipelines over one model: each weight is loaded once."""
    registry = mb.Components()
    txt = mb.Pipeline.from_pretrained(folder, text2img, components=registry)
    img = mb.Pipeline.from_pretrained(folder, img2img, components=registry)
    print("one UNet for both:", txt.components["unet"] is img.components["unet"])
    print(str(registry).replace(str(folder.resolve()), "<folder>"))
    del img
    print("pipelines using the UNet after `del img`:", registry.users("unet"))
    del txt  # no pipeline uses the models any more: the registry frees them
    print("freed:", registry.free())
    # --8<-- [end:registry]


# --8<-- [start:lazy]
def load_lazily(folder: Path) -> mb.Pipeline:
    """Models load when a block first reads them: a branch that doesn't run loads nothing."""
    auto = mb.switch({"control_image": stable_diffusion_controlnet}, default=stable_diffusion)
    pipe = mb.Pipeline.from_pretrained(folder, auto, lazy=True)
    print(pipe.components["unet"], pipe.components["controlnet"])
    image(pipe)  # text-to-image: the ControlNet branch doesn't run
    print(pipe.components["unet"], pipe.components["controlnet"])
    # --8<-- [end:lazy]
    return pipe


# --8<-- [start:dtypes]
def per_component_dtypes(folder: Path) -> None:
    """A dtype per component, with a default for the others (as diffusers takes it)."""
    dtypes = {"unet": torch.float16, "default": torch.float32}
    pipe = mb.Pipeline.from_pretrained(folder, text2img, torch_dtype=dtypes)
    print({name: str(pipe.components[name].dtype) for name in ("unet", "vae", "text_encoder")})
    # --8<-- [end:dtypes]


# --8<-- [start:offload]
def offload(folder: Path, expected: np.ndarray) -> None:
    """Where models are while blocks run: on the device one block at a time, or on disk."""

    def mover(model: torch.nn.Module, device: str) -> None:  # prints instead of moving
        print(f"  {type(model).__name__} -> {device}")

    pipe = mb.Pipeline.from_pretrained(
        folder, text2img, offload=mb.ModelOffload("cuda", mover=mover)
    )
    print('offload="model" moves:')
    image(pipe)

    disk = mb.Pipeline.from_pretrained(folder, text2img, offload="disk")
    print('offload="disk" gives the same image:', np.array_equal(image(disk), expected))
    policy = disk.placement
    assert isinstance(policy, mb.DiskOffload)
    models = ("text_encoder", "unet", "vae")
    weights = sum(f.stat().st_size for m in models for f in (folder / m).glob("*.safetensors"))
    print(f"most weights held at once: {policy.peak / weights:.0%} of the models'")
    # --8<-- [end:offload]


# --8<-- [start:compiled]
def compiled_unet(expected: np.ndarray) -> None:
    """`torch.compile(unet)` is accepted where a UNet2DConditionModel is declared."""
    components = tiny_sd_components(seed=1)
    components["unet"] = torch.compile(components["unet"], backend="eager")
    pipe = mb.Pipeline(text2img, components=components)
    print(type(pipe.components["unet"]).__name__, "gives the same image:", end=" ")
    print(np.array_equal(image(pipe), expected))
    # --8<-- [end:compiled]


# --8<-- [start:repos]
def repos(folder: Path, work: Path, expected: np.ndarray) -> None:
    """Write diffusers' modular index; load a Hub id from the local cache, offline."""
    lazy = mb.Pipeline.from_pretrained(folder, text2img, lazy=True)
    lazy.save_pretrained(work / "modular", modular=True, reference=True)
    index = json.loads((work / "modular" / "modular_model_index.json").read_text())
    print("vae:", json.dumps(index["vae"]).replace(str(folder.resolve()), "<folder>"))

    # A Hub download, as huggingface_hub caches it (filled by hand here: no network).
    repo = work / "hub" / "models--tester--tiny-sd"
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    hub = mb.Pipeline.from_pretrained(
        "tester/tiny-sd", text2img, cache_dir=work / "hub", local_files_only=True
    )
    print("from the Hub cache, the same image:", np.array_equal(image(hub), expected))
    # --8<-- [end:repos]


# --8<-- [start:blocks]
SHARED = '''
import modblocks as mb

@mb.block(output="negative_prompt")
def no_blur(negative_prompt: str = "") -> str:
    """Always ask for sharp images."""
    return ", ".join(p for p in (negative_prompt, "blurry") if p)

__all__ = ["no_blur"]
'''


def shared_blocks(work: Path) -> None:
    """Blocks from a folder (or a Hub repo): code runs only when trusted, pinned by hash."""
    (work / "style").mkdir()
    (work / "style" / "blocks.py").write_text(SHARED)
    try:
        mb.load_blocks(work / "style")
    except mb.UntrustedCodeError as err:
        print("refused without trust; pin:", err.hash[:19] + "...")
        pin = err.hash
    blocks = mb.load_blocks(work / "style", trust_remote_code=True, pin=pin)
    print("exports:", list(blocks), "->", blocks.no_blur.run()["negative_prompt"])
    # --8<-- [end:blocks]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        folder = write_folder(work / "tiny-sd")
        expected = image(mb.Pipeline.from_pretrained(folder, text2img))
        share_a_registry(folder)
        print()
        load_lazily(folder)
        print()
        per_component_dtypes(folder)
        print()
        offload(folder, expected)
        print()
        compiled_unet(expected)
        print()
        repos(folder, work, expected)
        print()
        shared_blocks(work)
