"""`load_blocks`: import the nodes a folder or Hub repo shares (diffusers' custom blocks).

A folder of blocks holds ``blocks.py`` (and any modules it imports relatively, as a
package). Importing it runs its code, so `load_blocks` refuses unless the caller says they
trust it, and pins what it imported: the SHA-256 of every Python file. ``pin=`` checks the
files against a hash the caller read before; a folder loaded twice in one process must not
have changed in between. The files are read once: their modules are imported from the bytes
that were hashed (also those imported later, inside a block), never again from the disk.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from pathlib import Path

from ._names import did_you_mean, listed
from ._node import Node
from ._sources import resolve_repo
from .exceptions import BlocksChangedError, LoadError, UnknownInputError, UntrustedCodeError

__all__ = ["LoadedBlocks", "code_hash", "load_blocks"]

ENTRY = "blocks.py"
_PACKAGE_PREFIX = "modblocks_shared_"
_loaded: dict[str, tuple[str, LoadedBlocks]] = {}  # folder -> (hash, what it exported)
_lock = threading.Lock()


def _python_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*.py") if "__pycache__" not in p.relative_to(folder).parts
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every Python file of *folder*, read once: its relative path to its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in _python_files(folder)}


def _digest(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0")
        digest.update(files[name] + b"\0")
    return f"sha256:{digest.hexdigest()}"


def code_hash(folder: str | os.PathLike[str]) -> str:
    """The SHA-256 of a folder's Python files (their paths and contents): ``"sha256:..."``."""
    return _digest(_snapshot(Path(folder)))


class LoadedBlocks(Mapping[str, Node]):
    """The nodes a folder of blocks exports, by name (also as attributes).

    Attributes:
        path: the folder they were imported from.
        hash: the SHA-256 of its Python files, to pass as ``pin=`` next time.
    """

    def __init__(self, path: str, hash_: str, nodes: Mapping[str, Node]) -> None:
        self.path = path
        self.hash = hash_
        self._nodes = dict(nodes)

    def __getitem__(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError:
            msg = (
                f"`{self.path}` exports no node `{name}`.{did_you_mean(name, list(self._nodes))} "
                f"It exports: {listed(list(self._nodes))}."
            )
            raise UnknownInputError(msg, names=(name,)) from None

    def __getattr__(self, name: str) -> Node:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"LoadedBlocks({self.path!r}, {listed(list(self._nodes))}, {self.hash[:19]}...)"


def load_blocks(
    path_or_repo: str | os.PathLike[str],
    *,
    trust_remote_code: bool = False,
    pin: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> LoadedBlocks:
    """Import the nodes that a folder or Hugging Face Hub repo of blocks exports.

    The folder holds ``blocks.py``; its ``__all__`` (or else every module-level node) are the
    exports. Importing runs the folder's code, so it must be trusted explicitly.

    Args:
        path_or_repo: a local folder or a Hub id (``"org/name"``, from the Hugging Face cache
            when offline).
        trust_remote_code: True to run the folder's code; without it nothing is imported and
            `UntrustedCodeError` says the hash of what would run.
        pin: the hash (``"sha256:..."``) of the code you read: if the files differ,
            `BlocksChangedError` is raised and nothing runs.
        revision: the Hub revision (a commit hash pins a Hub repo too).
        cache_dir: the Hugging Face cache to read Hub ids from.
        local_files_only: never reach the Hub (None: ``HF_HUB_OFFLINE`` decides).

    Returns:
        The exported nodes by name, with the folder's ``.hash``.
    """
    shown = os.fspath(path_or_repo)
    folder = resolve_repo(
        path_or_repo,
        revision=revision,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        local_files_only=local_files_only,
        allow_patterns=["*.py", "*.json", "*.md", "*.txt"],
    )
    if not (folder / ENTRY).is_file():
        msg = (
            f"`{shown}` has no `{ENTRY}`: a folder of blocks keeps the nodes it shares in "
            f"`{ENTRY}` (listed in its `__all__`)."
        )
        raise LoadError(msg, path=shown)
    # The bytes hashed are the bytes run: files changed after this read are never imported.
    files = _snapshot(folder)
    found = _digest(files)
    if not trust_remote_code:
        msg = (
            f"`{shown}` holds Python code ({listed([p.name for p in _python_files(folder)])}), "
            "and loading it runs that code. Read it, then load it with "
            f"`trust_remote_code=True, pin={found!r}` (the pin makes sure the code that runs "
            "is the code you read)."
        )
        raise UntrustedCodeError(msg, path=shown, hash=found)
    if pin is not None and pin != found:
        msg = (
            f"the code in `{shown}` is not the code pinned: expected {pin}, found {found}. "
            "Nothing was run. Read what changed; if you trust it, pin the new hash."
        )
        raise BlocksChangedError(msg, path=shown, expected=pin, found=found)
    key = str(folder.resolve())
    with _lock:
        before = _loaded.get(key)
        if before is not None:
            if before[0] == found:
                return before[1]
            if pin is None:
                msg = (
                    f"the code in `{shown}` changed since this process loaded it: it was "
                    f"{before[0]}, it is {found}. Nothing was run. Pass `pin={found!r}` to load "
                    "the new code (the nodes loaded before keep the old code)."
                )
                raise BlocksChangedError(msg, path=shown, expected=before[0], found=found)
        loaded = LoadedBlocks(shown, found, _import(folder, found, files))
        _loaded[key] = (found, loaded)
    return loaded


class _Snapshot(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a loaded folder's modules from the bytes that were hashed, never from disk."""

    def __init__(self, package: str, folder: Path, files: Mapping[str, bytes]) -> None:
        self.package = package
        self.folder = folder
        self.files = dict(files)

    def find_spec(
        self,
        fullname: str,
        path: object = None,  # noqa: ARG002 - the finder protocol's; modules are found by name
        target: object = None,  # noqa: ARG002
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.package + "."):
            return None
        relative = fullname.removeprefix(self.package + ".").replace(".", "/")
        if relative + ".py" in self.files:
            origin = str(self.folder / (relative + ".py"))
            return importlib.util.spec_from_loader(fullname, self, origin=origin)
        prefix = relative + "/"
        if any(name.startswith(prefix) for name in self.files):  # a subpackage
            origin = str(self.folder / relative / "__init__.py")
            spec = importlib.util.spec_from_loader(fullname, self, origin=origin, is_package=True)
            if spec is not None:
                spec.submodule_search_locations = []  # found by name, here, not on disk
            return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:  # noqa: ARG002
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None
        assert spec.origin is not None
        relative = Path(spec.origin).relative_to(self.folder).as_posix()
        source = self.files.get(relative)
        if source is None:  # a subpackage without `__init__.py`: an empty module
            return
        exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102 - trusted, pinned


def _import(folder: Path, found: str, files: Mapping[str, bytes]) -> dict[str, Node]:
    """Import ``blocks.py`` as a module of a package made for this folder and hash."""
    package = _PACKAGE_PREFIX + found.removeprefix("sha256:")[:16]
    if package not in sys.modules:
        finder = _Snapshot(package, folder, files)
        sys.meta_path.insert(0, finder)
        module = types.ModuleType(package)
        module.__path__ = []  # its modules come from the snapshot (the finder), not the folder
        module.__file__ = str(folder / "__init__.py")
        sys.modules[package] = module
    name = f"{package}.{ENTRY.removesuffix('.py')}"
    try:
        module = importlib.import_module(name)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    names: list[str] = list(getattr(module, "__all__", ()))
    if not names:
        names = [
            n for n, v in vars(module).items() if isinstance(v, Node) and not n.startswith("_")
        ]
    nodes = {n: getattr(module, n) for n in names if isinstance(getattr(module, n, None), Node)}
    if not nodes:
        msg = f"`{folder / ENTRY}` exports no node (no block, sequence, switch or loop)."
        raise LoadError(msg, path=str(folder))
    return nodes
