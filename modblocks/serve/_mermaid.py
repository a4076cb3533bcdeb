"""A local copy of the mermaid library, so diagrams render without reaching a CDN.

Shared by the documentation build (``docs/hooks/mermaid.py`` loads this file) and the served
page: a pinned release, fetched once from the npm registry with ``npm pack``, checked against
the registry's sha512, and cached in ``~/.cache/modblocks-docs`` (3.5 MB, too big to keep in
the repository). ``MODBLOCKS_MERMAID_JS=/path/to/mermaid.min.js`` uses that file instead.
Standard library only: the docs build imports it without the ``serve`` extra.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Final

__all__ = ["MERMAID_VERSION", "mermaid_js"]

MERMAID_VERSION: Final = "11.17.2"  # the release unpkg's `mermaid@11` (material's default) served
INTEGRITY: Final = (  # npm's `dist.integrity` of that release
    "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/"
    "qt5gHO73aCleBBg=="
)

log = logging.getLogger("modblocks.mermaid")
_found: dict[str, Path | None] = {}
_lock = threading.Lock()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modblocks-docs"


def _fetch(target: Path) -> None:
    """Download the pinned tarball with npm, check it, and extract ``dist/mermaid.min.js``."""
    npm = shutil.which("npm")
    if npm is None:
        msg = "npm is not installed"
        raise OSError(msg)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(  # noqa: S603 - a fixed command line
            [npm, "pack", f"mermaid@{MERMAID_VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        tarball = (Path(tmp) / f"mermaid-{MERMAID_VERSION}.tgz").read_bytes()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != INTEGRITY:
        msg = f"mermaid@{MERMAID_VERSION} from npm has digest {digest}, expected {INTEGRITY}"
        raise OSError(msg)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        member = archive.extractfile("package/dist/mermaid.min.js")
        if member is None:
            msg = "the mermaid package has no dist/mermaid.min.js"
            raise OSError(msg)
        data = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a concurrent reader never sees half a file


def mermaid_js() -> Path | None:
    """Return the local mermaid.min.js, fetching it the first time; None when unavailable."""
    with _lock:
        if "path" in _found:
            return _found["path"]
        override = os.environ.get("MODBLOCKS_MERMAID_JS")
        path = Path(override) if override else _cache_dir() / f"mermaid-{MERMAID_VERSION}.min.js"
        if not path.is_file() and not override:
            try:
                _fetch(path)
            except (OSError, subprocess.SubprocessError) as exc:
                log.info("mermaid is not available (%s): diagrams are shown as text.", exc)
        _found["path"] = path if path.is_file() else None
        return _found["path"]
