"""The documentation site, built strictly and opened in a real headless Chromium, offline.

Runs the check of ``scripts/check_site.py``: every page loads without errors or requests that
leave the site, every mermaid diagram renders to an ``<svg>``, no link inside the site is
broken. Skipped only where no Chromium is installed (Debian: ``apt-get install chromium``)
and never in CI (``CI=true``), where a missing browser is a failure.
"""

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_check_site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "scripts" / "check_site.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


check_site = _load_check_site()


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        return check_site.find_chromium(None)
    except check_site.CheckError as err:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must check the site in a browser: {err}")
        pytest.skip(str(err))


@pytest.mark.slow
def test_site_builds_and_renders_in_a_headless_browser(chromium, tmp_path, capsys):
    start = time.monotonic()
    site = tmp_path / "site"
    check_site.build_site(site)  # mkdocs build --strict; raises with mkdocs' log on failure
    pages = check_site.site_pages(site)
    assert "" in pages  # the home page
    assert len(pages) > 1
    problems = check_site.check_site(site, chromium, None)
    assert not problems, "the site check failed:\n" + "\n".join(problems)
    with capsys.disabled():
        print(f"\nsite check: {len(pages)} pages in {time.monotonic() - start:.0f} s")  # noqa: T201


def test_site_check_finds_broken_links_and_unrendered_diagrams(chromium, tmp_path, monkeypatch):
    """The check is not vacuous: a page with faults of each kind fails it."""
    monkeypatch.setattr(check_site, "DIAGRAM_TIMEOUT", 1.0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.html").write_text('<html><body><p id="here">ok</p></body></html>')
    (tmp_path / "index.html").write_text(
        "<html><body>"
        '<a href="other/">fine</a> <a href="other/#here">fine anchor</a>'
        '<a href="missing/">broken</a> <a href="other/#nowhere">broken anchor</a>'
        '<pre class="mermaid"><code>flowchart LR\n a --> b</code></pre>'
        "</body></html>"
    )
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "index.html").write_text(
        "<html><body><details class='example'><summary>Example</summary>"
        "<blockquote><blockquote><p>&gt;&gt;&gt; double(2) 4</p></blockquote></blockquote>"
        "</details><pre><code>&gt;&gt;&gt; fine(1)</code></pre></body></html>"
    )
    (tmp_path / "index.html").write_text(
        (tmp_path / "index.html").read_text().replace("</body>", '<a href="api/">api</a></body>')
    )
    problems = "\n".join(check_site.check_site(tmp_path, chromium, None))
    assert "/api/: an example renders as text, not code: '>>> double(2) 4'" in problems
    assert "fine(1)" not in problems
    assert "mermaid.min.js is not in the site" in problems
    assert "/: broken link to /missing/" in problems
    assert "/: link to missing anchor /other/#nowhere" in problems
    assert "/: 0 of 1 mermaid diagrams rendered" in problems
    assert "other" not in problems.replace("/other/#nowhere", "")
