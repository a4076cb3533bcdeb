"""The demo: the shipped digits model, drawn by a modblocks pipeline, makes recognisable digits."""

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import modblocks as mb
from modblocks.demo import MODEL_PATH, digits, load_pipeline

ROOT = Path(__file__).resolve().parent.parent
TRAIN = runpy.run_path(str(ROOT / "examples" / "train_digits.py"))


@pytest.fixture(scope="module")
def pipe() -> mb.Pipeline:
    return load_pipeline()


def test_demo_weights_ship_small_and_in_diffusers_format():
    size = sum(f.stat().st_size for f in MODEL_PATH.rglob("*") if f.is_file())
    assert size < 5 * 1024 * 1024
    assert (MODEL_PATH / "model_index.json").is_file()


def test_demo_pipeline_is_made_of_blocks_with_a_loop_and_a_switch():
    assert digits.names == (
        "digit_labels",
        "set_timesteps",
        "prepare_latents",
        "denoise",
        "decode",
    )
    assert isinstance(digits["denoise"], mb.Loop)
    assert {s.name for s in digits.components} == {"unet", "scheduler"}


def test_demo_digits_are_recognisable(pipe, capsys):
    """A classifier trained on the real digits labels most generated ones as requested."""
    torch.manual_seed(0)
    classifier, real_accuracy = TRAIN["train_digit_classifier"](seed=0)
    assert real_accuracy > 0.95
    wanted = "0123456789" * 3
    state = pipe.run(
        digits=wanted, num_inference_steps=25, generator=torch.Generator().manual_seed(0)
    )
    predicted = [int(p) for p in classifier.predict(TRAIN["to_sklearn_features"](state["pixels"]))]
    hits = sum(p == int(d) for p, d in zip(predicted, wanted, strict=True))
    accuracy = hits / len(wanted)
    wrong = [f"{d}->{p}" for p, d in zip(predicted, wanted, strict=True) if p != int(d)]
    figure = f"{hits}/{len(wanted)} ({accuracy:.0%}) recognised; mistakes: {wrong or 'none'}"
    with capsys.disabled():  # the figure, in the test log whether it passes or not
        print(f"\ndemo digits (25 steps, guidance 3): {figure}")  # noqa: T201
    assert accuracy >= 0.8, f"too few generated digits were recognised: {figure}"


def test_demo_repaints_only_the_masked_half(pipe):
    first = pipe.run(
        digits="38", num_inference_steps=10, generator=torch.Generator().manual_seed(1)
    )
    mask = torch.zeros_like(first["pixels"])
    mask[..., 8:, :] = 1.0
    again = pipe.run(
        digits="38",
        num_inference_steps=10,
        image=first["pixels"],
        mask_image=mask,
        generator=torch.Generator().manual_seed(2),
    )
    top = slice(0, 8)
    assert torch.allclose(again["pixels"][..., top, :], first["pixels"][..., top, :], atol=1e-5)
    assert not torch.allclose(again["pixels"][..., 8:, :], first["pixels"][..., 8:, :])


def test_demo_command_line_writes_a_png(tmp_path):
    out = tmp_path / "digits.png"
    done = subprocess.run(  # noqa: S603 - our own module, by sys.executable
        [
            sys.executable,
            "-m",
            "modblocks.demo",
            "--digits",
            "42",
            "--steps",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert out.is_file()
    assert "wrote" in done.stdout
