"""`import modblocks` stays light: heavy libraries are imported only when used."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["torch", "tqdm", "diffusers", "transformers", "numpy", "fastapi", "ray"]
)
def test_import_modblocks_does_not_import(module):
    code = f"import modblocks, sys; assert {module!r} not in sys.modules, 'imported {module}'"
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_import_defining_and_running_blocks_does_not_import_torch():
    code = """
import sys
from typing import NamedTuple
import modblocks as mb

class Out(NamedTuple):
    y: int

@mb.block
def f(x: int) -> Out:
    return Out(x + 1)

@mb.block(output="z")
def g(y: int) -> int:
    return y * 2

pipe = mb.loop(f.rename(y="x") >> g.rename(y="x"), over="ts")
final = pipe.run(x=0, ts=[1, 2])
assert (final["x"], final["z"]) == (2, 4)
assert list((f >> g).stream(x=1))[-1]["z"] == 4
(f >> g).doc, repr(f >> g), (f >> g).to_mermaid()
assert "torch" not in sys.modules
"""
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_import_exposes_public_names():
    import modblocks as mb

    for name in mb.__all__:
        assert hasattr(mb, name), name
    assert isinstance(mb.__version__, str)
