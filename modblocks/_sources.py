"""Where a component lives: a folder or a Hugging Face Hub repo, its class and load options.

A `Source` is what ``model_index.json`` and ``modular_model_index.json`` say about one
component, plus the options it is loaded with. It loads the component (`Source.load`),
finds its weight files, and is the identity under which a `Components` registry shares
one loaded copy between pipelines.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import attrs

from .exceptions import LoadError

__all__ = ["Source", "dtype_name", "resolve_repo"]

# Weight files in a pickle format: never loaded unless asked (`use_safetensors=False`).
PICKLE_PATTERNS = ("*.bin", "*.ckpt", "*.pt", "*.pth", "*.pkl", "*.msgpack", "*.h5")


def dtype_name(dtype: Any) -> str | None:
    """``torch.float16`` → ``"float16"`` (a plain string keeps sources light and hashable)."""
    if dtype is None:
        return None
    return str(dtype).removeprefix("torch.")


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def resolve_repo(
    repo: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    allow_patterns: list[str] | None = None,
    use_safetensors: bool = True,
) -> Path:
    """Return the local folder of *repo*: a folder as it is, a Hub id through ``huggingface_hub``.

    A Hub id is looked up with ``huggingface_hub.snapshot_download``: from its cache when
    offline (``local_files_only=True`` or ``HF_HUB_OFFLINE=1``), downloaded otherwise. Only
    the files *allow_patterns* names are fetched, and pickle weights only with
    ``use_safetensors=False``.
    """
    folder = Path(repo).expanduser()
    if folder.is_dir():
        return folder
    text = os.fspath(repo)
    if not _is_hub_id(text):
        msg = (
            f"`{text}` is not a folder. Give a diffusers-format folder (written by "
            "`save_pretrained`) or a Hugging Face Hub id such as `org/name`."
        )
        raise LoadError(msg, path=text)
    try:
        hub: Any = importlib.import_module("huggingface_hub")
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        msg = (
            f"`{text}` is a Hub id: install `huggingface_hub` to load it (`pip install diffusers`)."
        )
        raise LoadError(msg, path=text) from None
    options: dict[str, Any] = {
        "revision": revision,
        "cache_dir": cache_dir,
        "allow_patterns": allow_patterns,
        "ignore_patterns": None if not use_safetensors else list(PICKLE_PATTERNS),
    }
    if local_files_only is not None:
        options["local_files_only"] = local_files_only
    try:
        return Path(hub.snapshot_download(text, **options))
    except Exception as exc:
        msg = (
            f"`{text}` is not a folder here, and huggingface_hub can't give it "
            f"({type(exc).__name__}: {exc}). Check the Hub id, download it once with network "
            f"access (`huggingface_hub.snapshot_download({text!r})`), or give a local folder."
        )
        raise LoadError(msg, path=text) from exc


@attrs.frozen
class Source:
    """Where one component lives and how it is loaded.

    Attributes:
        repo: a local folder or a Hugging Face Hub id.
        subfolder: the component's folder inside *repo* (``""`` for the repo itself).
        library: the module its class comes from (``"diffusers"``, ``"transformers"``).
        class_name: the class whose ``from_pretrained`` loads it.
        variant: the weights variant (``"fp16"`` for ``*.fp16.safetensors``), if any.
        revision: the Hub revision (branch, tag or commit).
        torch_dtype: the dtype models are loaded in (``"float16"``), or None for their own.
        use_safetensors: load only safetensors weights (the default; pickle files can run code).
        cache_dir: the Hugging Face cache to read Hub ids from (None: the default one).
        local_files_only: never reach the Hub (None: ``HF_HUB_OFFLINE`` decides).
    """

    repo: str
    subfolder: str
    library: str
    class_name: str
    variant: str | None = None
    revision: str | None = None
    torch_dtype: str | None = None
    use_safetensors: bool = True
    cache_dir: str | None = attrs.field(default=None, eq=False)
    local_files_only: bool | None = attrs.field(default=None, eq=False)

    # -- what it is -------------------------------------------------------------------------

    def cls(self) -> Any:
        """Import and return the component's class."""
        try:
            module = importlib.import_module(self.library)
        except ImportError:
            # diffusers' indexes name pipeline modules too (`["stable_diffusion", ...]`).
            try:
                module = importlib.import_module(f"diffusers.pipelines.{self.library}")
            except ImportError:
                module = None
        found = getattr(module, self.class_name, None)
        if found is None:
            msg = (
                f"component `{self.describe()}` is a `{self.library}.{self.class_name}`, which "
                f"can't be imported here. Install `{self.library}` (a version that has "
                f"`{self.class_name}`)."
            )
            raise LoadError(msg, path=self.describe())
        return found

    def is_model(self) -> bool:
        """Whether the component is a torch module (it has weights, a dtype and a device)."""
        if importlib.util.find_spec("torch") is None:  # pragma: no cover - torch is required
            return False
        import torch

        cls = self.cls()
        return isinstance(cls, type) and issubclass(cls, torch.nn.Module)

    def describe(self) -> str:
        """``folder/subfolder`` (or ``org/name/subfolder``), as messages show it."""
        return f"{self.repo}/{self.subfolder}" if self.subfolder else self.repo

    # -- where its files are ----------------------------------------------------------------

    def folder(self) -> Path:
        """The component's local folder (a Hub repo is fetched or read from the cache)."""
        patterns = [f"{self.subfolder}/*"] if self.subfolder else None
        root = resolve_repo(
            self.repo,
            revision=self.revision,
            cache_dir=self.cache_dir,
            local_files_only=self.local_files_only,
            allow_patterns=patterns,
            use_safetensors=self.use_safetensors,
        )
        folder = root / self.subfolder if self.subfolder else root
        if not folder.is_dir():
            msg = f"component folder `{self.describe()}` does not exist."
            raise LoadError(msg, path=self.describe())
        return folder

    def weight_files(self, folder: Path | None = None) -> list[Path]:
        """The safetensors files holding the weights (of the variant, when there are some)."""
        folder = self.folder() if folder is None else folder
        files = sorted(folder.glob("*.safetensors"))
        if self.variant is not None:
            chosen = [f for f in files if f".{self.variant}." in f.name]
            if chosen:
                return chosen
        return [f for f in files if not _has_variant(f.name)] or files

    def disk_size(self) -> int:
        """Bytes of weights on disk (0 for components without weight files)."""
        try:
            folder = self.folder()
        except LoadError:
            return 0
        return sum(f.stat().st_size for f in self.weight_files(folder))

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> Any:
        """Load the component with its class's ``from_pretrained``."""
        cls = self.cls()
        folder = self.folder()
        kwargs: dict[str, Any] = {}
        if self.is_model():
            self._check_weights(folder)
            kwargs = self._model_options(cls, folder)
        try:
            loaded = cls.from_pretrained(str(folder), **kwargs)
        except LoadError:
            raise
        except (OSError, ValueError) as exc:
            msg = f"can't load component `{self.describe()}`: {exc}"
            raise LoadError(msg, path=self.describe()) from exc
        with contextlib.suppress(AttributeError, TypeError):  # objects that refuse attributes
            loaded._modblocks_source = self  # where it came from, to save a reference to it
        return loaded

    def _check_weights(self, folder: Path) -> None:
        if not self.use_safetensors or self.weight_files(folder):
            return
        pickles = [p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)]
        if not pickles:
            return  # no weight files at all: the class's own loader says what is wrong
        msg = (
            f"component `{self.describe()}` has weights only in a pickle format "
            f"({', '.join(sorted(pickles))}), and loading those can run code. Convert them to "
            "safetensors, or pass `use_safetensors=False` if you trust the files."
        )
        raise LoadError(msg, path=self.describe())

    def _model_options(self, cls: Any, folder: Path) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.torch_dtype is not None:
            import torch

            dtype = getattr(torch, self.torch_dtype)
            # transformers 5 calls it `dtype` (and warns about `torch_dtype`); diffusers not.
            kwargs["dtype" if _is_transformers_model(cls) else "torch_dtype"] = dtype
        if self.variant is not None and any(
            f".{self.variant}." in f.name for f in folder.iterdir()
        ):
            kwargs["variant"] = self.variant
        kwargs["use_safetensors"] = self.use_safetensors or None
        if _is_diffusers_model(cls) and importlib.util.find_spec("accelerate") is None:
            # diffusers' default needs accelerate and warns on every load without it.
            kwargs["low_cpu_mem_usage"] = False
        return kwargs

    # -- modular_model_index.json -----------------------------------------------------------

    def index_entry(self) -> list[Any]:
        """The entry diffusers' ``modular_model_index.json`` keeps for this component."""
        spec = {
            "pretrained_model_name_or_path": self.repo,
            "revision": self.revision,
            "subfolder": self.subfolder,
            "type_hint": [self.library, self.class_name],
            "variant": self.variant,
        }
        return [self.library, self.class_name, spec]


def _has_variant(name: str) -> bool:
    # `diffusion_pytorch_model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors`
    return name.count(".") >= 2


def _is_diffusers_model(cls: Any) -> bool:
    return any(
        base.__name__ == "ModelMixin" and base.__module__.startswith("diffusers.")
        for base in getattr(cls, "__mro__", ())
    )


def _is_transformers_model(cls: Any) -> bool:
    return any(
        base.__name__ == "PreTrainedModel" and base.__module__.startswith("transformers.")
        for base in getattr(cls, "__mro__", ())
    )
