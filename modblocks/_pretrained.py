"""Load and save components as a local diffusers-format folder (``model_index.json``)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from ._specs import InputSpec
from .exceptions import MissingInputError, ModblocksError

__all__ = ["load_pretrained", "save_components"]

_INDEX = "model_index.json"


def _read_index(folder: Path) -> dict[str, Any]:
    index_file = folder / _INDEX
    if not index_file.is_file():
        msg = (
            f"`{folder}` is not a diffusers-format folder: it has no `{_INDEX}`. Point to the "
            "folder written by `save_pretrained` (local folders only: nothing is downloaded)."
        )
        raise ModblocksError(msg)
    index: dict[str, Any] = json.loads(index_file.read_text())
    return index


def load_pretrained(
    path: str | os.PathLike[str],
    specs: Sequence[InputSpec],
    configs: Sequence[InputSpec],
    *,
    torch_dtype: Any = None,
    variant: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the components in *specs* and read the *configs* that ``model_index.json`` sets.

    Each component comes from its subfolder, with the class the index names. Diffusers
    pipelines register their configs in the index too, e.g. SDXL's
    ``requires_aesthetics_score``.
    """
    folder = Path(path)
    index = _read_index(folder)
    found = {c.name: index[c.name] for c in configs if _is_config_value(index.get(c.name))}
    loaded: dict[str, Any] = {}
    missing: list[str] = []
    for spec in specs:
        entry = cast("list[str | None] | None", index.get(spec.name))
        if not entry or len(entry) != 2 or entry[0] is None:
            if spec.required:
                missing.append(spec.name)
            continue
        library, class_name = str(entry[0]), str(entry[1])
        cls = getattr(importlib.import_module(library), class_name)
        loaded[spec.name] = _load_one(cls, folder / spec.name, torch_dtype, variant)
    if missing:
        listed = ", ".join(f"`{n}`" for n in missing)
        msg = (
            f"`{folder / _INDEX}` has no entry for component {listed}. Add it to the folder, "
            "or pass it with `components={...}`."
        )
        raise MissingInputError(msg, names=tuple(missing))
    return loaded, found


def _is_config_value(value: Any) -> bool:
    # Components are `[library, class]` pairs; plain JSON scalars are pipeline configs.
    return isinstance(value, bool | int | float | str)


def _load_one(cls: Any, subfolder: Path, torch_dtype: Any, variant: str | None) -> Any:
    kwargs: dict[str, Any] = {}
    if _is_torch_module(cls):
        if torch_dtype is not None:
            kwargs["torch_dtype"] = torch_dtype
        if variant is not None:
            kwargs["variant"] = variant  # weights saved as `*.fp16.safetensors`
        if _is_diffusers_model(cls) and importlib.util.find_spec("accelerate") is None:
            # diffusers' default needs accelerate and warns on every load without it.
            kwargs["low_cpu_mem_usage"] = False
    return cls.from_pretrained(str(subfolder), **kwargs)


def _is_diffusers_model(cls: Any) -> bool:
    return any(
        base.__name__ == "ModelMixin" and base.__module__.startswith("diffusers.")
        for base in getattr(cls, "__mro__", ())
    )


def _is_torch_module(cls: Any) -> bool:
    import torch

    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def save_components(
    path: str | os.PathLike[str],
    components: Mapping[str, Any],
    *,
    configs: Mapping[str, Any] | None = None,
    pipeline_class: str | None = None,
) -> None:
    """Save each component to its subfolder and write ``model_index.json``.

    Configs that are plain JSON values go in ``model_index.json`` too, where diffusers
    pipelines keep theirs.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": pipeline_class or "DiffusionPipeline"}
    try:
        import diffusers

        index["_diffusers_version"] = diffusers.__version__
        expected = _pipeline_parameters(diffusers, pipeline_class)
    except ImportError:  # pragma: no cover - saving without diffusers is still possible
        expected = []
    for name, component in components.items():
        if component is None:  # an optional part left out, e.g. SD3 without T5
            index[name] = [None, None]
            continue
        save = getattr(component, "save_pretrained", None)
        if save is None:
            msg = (
                f"component `{name}` ({type(component).__name__}) has no `save_pretrained`, so it "
                "can't be written to a diffusers-format folder."
            )
            raise ModblocksError(msg)
        save(str(folder / name))
        index[name] = [type(component).__module__.partition(".")[0], type(component).__name__]
    index.update({k: v for k, v in (configs or {}).items() if _is_config_value(v)})
    for name in expected:
        index.setdefault(name, [None, None])  # optional parts of that pipeline class
    (folder / _INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _pipeline_parameters(diffusers: Any, pipeline_class: str | None) -> list[str]:
    cls = getattr(diffusers, pipeline_class or "", None)
    if cls is None:
        return []
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
