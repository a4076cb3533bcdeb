"""Every script in ``examples/`` runs and prints what it shows (the docs include the same files).

Each example is listed in `EXPECTED` with lines it must print: results a reader checks
(shapes, equalities with diffusers, what ran and what was served), not timings. Training
scripts (``train_*.py``) take minutes; they get their own tests.
"""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("train_"))

EXPECTED: dict[str, list[str]] = {
    "caching.py": [
        "text2img > encode_prompt                        cached  -",
        "text2img > prepare_latents                      ran",
    ],
    "controlnet_lora.py": [
        "images: (1, 32, 32, 3)",
        "LoRA scale 1 vs 0.5 differ: True",
        "scale 0.5 lies between: True",
    ],
    "compose.py": ["sequence (Sequential)", "    input (Block)", "    image_encoder (Block)"],
    "flux.py": [
        "flux_text2img: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
        "flux_img2img: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
        "flux_inpaint: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
    ],
    "models_memory.py": [
        "one UNet for both: True",
        "Lazy(UNet2DConditionModel, loaded) Lazy(ControlNetModel, not loaded)",
        "{'unet': 'torch.float16', 'vae': 'torch.float32', 'text_encoder': 'torch.float32'}",
        'offload="disk" gives the same image: True',
        "OptimizedModule gives the same image: True",
        "from the Hub cache, the same image: True",
        "exports: ['no_blur'] -> blurry",
    ],
    "qwen_image.py": [
        "no guidance: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
        "true CFG: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
    ],
    "scale_dask.py": ["4 items from 2 Dask workers"],
    "scale_local.py": ["stacked gives the same images: True", "failed: [2], kept: 3"],
    "scale_processes.py": ["6 items, [1, 1, 1, 1, 1, 1] image each"],
    "scale_ray.py": ["a cat, style 0 (1, 64, 64, 3)", "a cat, style 1 (1, 64, 64, 3)"],
    "scale_threads.py": ["[(64, 64), (64, 64), (64, 64), (64, 64)]"],
    "sd3.py": [
        "sd3_text2img (with T5): same as diffusers: True (max diff 0.0)",
        "sd3_img2img (with T5): same as diffusers: True (max diff 0.0)",
        "sd3_text2img (without T5): same as diffusers: True (max diff 0.0)",
        "sd3_text2img (skip-layer guidance): same as diffusers: True (max diff 0.0)",
    ],
    "sdxl.py": [
        "sdxl_text2img: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
        "sdxl_img2img: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
        "sdxl_inpaint: images (2, 32, 48, 3), same as diffusers: True (max diff 0.0)",
    ],
    "stable_diffusion.py": [
        "text2img: ran text2img, picture (32, 32)",
        "img2img: ran img2img, picture (32, 32)",
        "inpaint: ran inpaint, picture (32, 32)",
    ],
    "tutorial_blocks.py": ["4 (4, 3, 2, 2)", "['image', 'batch_size']"],
    "tutorial_composing.py": ["names:   ('input', 'image_encoder')"],
    "tutorial_controlnet.py": ["same as diffusers: True", "two ControlNets: (1, 32, 48, 3)"],
    "tutorial_errors.py": [
        "DefinitionError: block `encode_image`",
        "WiringError: can't feed",
        "LoadError: `runwayml/stable-diffusion-v1-5` is not a folder here",
        "UntrustedCodeError: `style` holds Python code (`blocks.py`)",
        "BlocksChangedError: the code in `style` is not the code pinned",
    ],
    "tutorial_from_diffusers.py": ["class SequentialPipelineBlocks"],
    "tutorial_guiders.py": [
        "guider None is today's CFG: True",
        "APG and CFG-Zero* differ: True",
        "PAG same as diffusers: True",
    ],
    "tutorial_ip_adapter.py": ["image embeddings: [(2, 1, 32)]", "same as diffusers: True"],
    "tutorial_loop.py": ["text2img > denoise step 1/4 t=1000 latents=8"],
    "tutorial_lora.py": [
        "active adapters: ['style']",
        "the LoRA changes the image: True",
        "same as diffusers: True",
        "unloaded, as before: True",
    ],
    "tutorial_pipeline.py": ["(1, 3, 8, 8) (1, 3, 8, 8)"],
    "tutorial_stable_diffusion.py": ["same as diffusers: True", "inpaint:  [(32, 32)]"],
    "tutorial_prompt_weighting.py": [
        "-> [('a ', 1.0), ('cat', 1.3), (' on a ', 1.0), ('mat', 0.909)]",
        "prompt_embeds: (2, 231, 32)",
    ],
    "tutorial_resume.py": [
        "auto > text2img > denoise[step 3] > denoise_step",
        "image(6.6250) image(6.6250)",
        "auto > text2img > denoise[step 2]",
        "('denoise_step', 'clamp') ('denoise_step',)",
    ],
    "tutorial_state.py": ["2 2 False None", "3 2"],
    "tutorial_switch.py": ["prepare [Switch]: Runs one branch"],
    "tutorial_taste.py": ["<image 0.205>"],
    "tutorial_typing.py": ["Encoded(latents=[0.5, 1.0]) ['image', 'vae', 'boost']"],
    "tutorial_wiring.py": ["{'n': 4, 'steps': 4, 'scale': 2.0, 'label': '4 steps'"],
}


def test_examples_are_found():
    assert SCRIPTS, f"no examples found in {EXAMPLES}"


def test_every_example_says_what_it_must_print():
    assert sorted(p.name for p in SCRIPTS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs_and_prints_its_results(path, capsys, monkeypatch):
    # As `python examples/<name>.py`: with no command-line arguments (not pytest's).
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    printed = capsys.readouterr().out
    missing = [line for line in EXPECTED.get(path.name, []) if line not in printed]
    assert not missing, f"examples/{path.name} no longer prints:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_has_a_module_docstring(path):
    namespace = runpy.run_path(str(path), run_name="not_main")
    assert namespace.get("__doc__"), f"{path.name} has no module docstring"
