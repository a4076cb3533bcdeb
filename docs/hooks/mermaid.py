"""mkdocs hook: ship mermaid with the site, so diagrams render without reaching a CDN.

mkdocs-material draws ```` ```mermaid ```` fences in the browser with the `mermaid` library,
which it loads from unpkg.com unless the page already has it. This hook gives every built
site its own copy, `javascripts/mermaid.min.js`, found or fetched by
``modblocks/serve/_mermaid.py`` (which the served page uses too): a pinned release from the
npm registry, checked against its sha512 and cached in ``~/.cache/modblocks-docs``.

``MODBLOCKS_MERMAID_JS=/path/to/mermaid.min.js`` uses that file instead. Without npm or the
registry the site still builds (with a note in the log), and material falls back to its CDN.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from mkdocs.structure.files import File, Files

SITE_PATH = "javascripts/mermaid.min.js"


def _load() -> ModuleType:
    # By path: importing `modblocks.serve` would need the serve extra (FastAPI).
    path = Path(__file__).resolve().parents[2] / "modblocks" / "serve" / "_mermaid.py"
    spec = importlib.util.spec_from_file_location("_modblocks_mermaid", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


_mermaid = _load()


def mermaid_js() -> Path | None:
    """Return the local mermaid.min.js, fetching it the first time; None when unavailable."""
    path: Path | None = _mermaid.mermaid_js()
    return path


def on_config(config: Any) -> Any:
    """Load the bundled mermaid on every page (material then uses it instead of the CDN)."""
    if mermaid_js() is not None and SITE_PATH not in config.extra_javascript:
        config.extra_javascript.append(SITE_PATH)
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the cached mermaid.min.js to the site as if it were in ``docs/``."""
    path = mermaid_js()
    if path is not None:
        files.append(File.generated(config, SITE_PATH, abs_src_path=str(path)))
    return files
