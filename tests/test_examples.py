"""Every script in ``examples/`` runs (the docs include the same files, so they can't rot).

Training scripts (``train_*.py``) take minutes; they get their own tests.
"""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("train_"))


def test_examples_are_found():
    assert SCRIPTS, f"no examples found in {EXAMPLES}"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_runs(path, capsys, monkeypatch):
    # As `python examples/<name>.py`: with no command-line arguments (not pytest's).
    monkeypatch.setattr(sys, "argv", [str(path)])
    runpy.run_path(str(path), run_name="__main__")
    capsys.readouterr()


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_example_has_a_module_docstring(path):
    namespace = runpy.run_path(str(path), run_name="not_main")
    assert namespace.get("__doc__"), f"{path.name} has no module docstring"
