"""The documentation can't drift from the code.

Every output a page shows (a `doc`, a `repr`, a state, an error message) was pasted from
running an example under ``examples/``; these tests re-run the examples and check that the
pages still show exactly what they print. They also check that every error class has its
section, that every page is in the navigation, that the API page lists the whole public API,
and that ``mkdocs build --strict`` passes.
"""

import contextlib
import importlib.util
import io
import os
import re
import runpy
import subprocess
import sys
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

import modblocks
from modblocks import exceptions

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"

# The pages that show an example's output, and the examples whose every printed line they show.
OUTPUTS = {
    "index.md": ["tutorial_taste.py"],
    "tutorial/blocks.md": ["tutorial_blocks.py"],
    "tutorial/composing.md": ["compose.py", "tutorial_composing.py"],
    "tutorial/state.md": ["tutorial_state.py"],
    "tutorial/switch.md": ["tutorial_switch.py"],
    "tutorial/loop.md": ["tutorial_loop.py"],
    "tutorial/pipeline.md": ["tutorial_pipeline.py"],
    "tutorial/stable_diffusion.md": ["tutorial_stable_diffusion.py", "stable_diffusion.py"],
    "concepts/wiring.md": ["tutorial_wiring.py"],
    "concepts/typing.md": ["tutorial_typing.py"],
    "concepts/errors.md": ["tutorial_errors.py"],
    "concepts/resume.md": ["tutorial_resume.py"],
    "coming_from_diffusers.md": ["tutorial_from_diffusers.py"],
    "flux.md": ["flux.py"],
    "sd3.md": ["sd3.py"],
    "qwen_image.md": ["qwen_image.py"],
    "memory.md": ["models_memory.py"],
}
SNIPPET = re.compile(r'--8<-- "(?P<path>[^":]+)(?::[\w-]+)?"')


@cache
def example_output(name: str) -> str:
    """Run an example as ``__main__`` (as `tests/test_examples.py` does) and return its stdout."""
    out = io.StringIO()
    # With no command-line arguments (not pytest's), as `python examples/<name>`.
    with contextlib.redirect_stdout(out), mock.patch.object(sys, "argv", [str(EXAMPLES / name)]):
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return out.getvalue()


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def nav_pages() -> list[str]:
    """The pages of ``mkdocs.yml``'s navigation, in order."""
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        """Reads mkdocs.yml's ``!!python/name:`` tags as plain strings."""

    Loader.add_multi_constructor(
        "tag:yaml.org,2002:python/name:", lambda _loader, suffix, _node: suffix
    )
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)

    def walk(entry: object) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, dict):
            return [p for value in entry.values() for p in walk(value)]
        if isinstance(entry, list):
            return [p for item in entry for p in walk(item)]
        return []

    return walk(config["nav"])


def doc_pages() -> list[str]:
    """Every Markdown page under ``docs/``."""
    return sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


@pytest.mark.parametrize(
    ("page_name", "example"),
    [(p, e) for p, examples in OUTPUTS.items() for e in examples],
    ids=[f"{p}-{e}" for p, examples in OUTPUTS.items() for e in examples],
)
def test_page_shows_the_current_output_of_its_example(page_name, example):
    """Each line the example prints is a line of the page: re-paste it if this fails."""
    lines = {line.rstrip() for line in page(page_name).splitlines()}
    printed = [line.rstrip() for line in example_output(example).splitlines() if line.strip()]
    missing = [line for line in printed if line not in lines]
    assert not missing, (
        f"docs/{page_name} no longer shows what examples/{example} prints. "
        "Missing lines:\n" + "\n".join(missing)
    )


def test_every_page_with_output_includes_its_example():
    """A page that shows an example's output also shows the example (or its source file)."""
    for page_name, examples in OUTPUTS.items():
        included = {Path(m["path"]).name for m in SNIPPET.finditer(page(page_name))}
        assert included & set(examples), f"docs/{page_name} includes none of {examples}"


def test_every_tutorial_example_is_on_a_page():
    """No example written for the docs is left out of them."""
    included = {Path(m["path"]).name for name in doc_pages() for m in SNIPPET.finditer(page(name))}
    written = {p.name for p in EXAMPLES.glob("tutorial_*.py")}
    assert written <= included, f"examples on no page: {sorted(written - included)}"


def test_snippets_point_to_existing_files():
    for name in doc_pages():
        for match in SNIPPET.finditer(page(name)):
            assert (ROOT / match["path"]).is_file(), f"docs/{name}: no file {match['path']}"


@pytest.mark.parametrize("name", exceptions.__all__)
def test_every_error_has_a_section_with_a_real_message(name):
    """Like pydantic's docs test: each class of `modblocks.exceptions` is documented."""
    errors = page("concepts/errors.md")
    assert f"\n## {name}\n" in errors, f"docs/concepts/errors.md has no `## {name}` section"
    section = errors.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
    assert f"\n{name}: " in section, f"the `{name}` section shows no message"
    # ... and the message is the one the errors example prints today.
    assert f"{name}: " in example_output("tutorial_errors.py")


def test_every_page_is_in_the_nav():
    nav = nav_pages()
    assert sorted(set(nav)) == doc_pages(), "docs/ pages and mkdocs.yml's nav differ"
    assert len(nav) == len(set(nav)), "a page is in the nav twice"


def test_api_page_lists_the_public_api():
    """`api.md` documents every name of `modblocks.__all__` (errors in their own section)."""
    api = page("api.md")
    listed = set(re.findall(r"^::: modblocks\.(\w+)$", api, flags=re.MULTILINE))
    public = set(modblocks.__all__) - {"__version__"}
    assert (listed - {"exceptions"}) | set(exceptions.__all__) == public
    assert "exceptions" in listed


def test_changelog_page_includes_the_changelog():
    assert '--8<-- "CHANGELOG.md"' in page("changelog.md")
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_why_page_keeps_the_benchmark_placeholders():
    why = page("why.md")
    for bench in ("overhead", "loop"):
        assert f"<!-- bench:{bench} -->" in why


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: snippets, links, anchors and API docs all resolve."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict"]
    done = subprocess.run(  # noqa: S603 - a fixed command line
        [*command, "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "tutorial" / "composing" / "index.html").is_file()
