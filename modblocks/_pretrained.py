"""Load and save components as diffusers-format repos, local folders or Hub ids.

``model_index.json`` maps each component to ``[library, class]``, its files in the
subfolder of the same name. diffusers' modular repos write ``modular_model_index.json``
instead, mapping each component to ``[library, class, spec]`` where the spec says where it
lives (``pretrained_model_name_or_path``, ``subfolder``, ``variant``, ``revision``): a repo
may take its VAE from another one. Both are read (the modular one first, as diffusers
does) and both can be written.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import attrs

from ._lazy import Lazy
from ._sources import Source, dtype_name, resolve_repo
from ._specs import InputSpec
from ._wrapped import unwrapped
from .exceptions import InputTypeError, LoadError, MissingInputError, ModblocksError

__all__ = ["INDEX", "MODULAR_INDEX", "load_pretrained", "save_components", "sources_of"]

INDEX = "model_index.json"
MODULAR_INDEX = "modular_model_index.json"


def _read_index(root: Path, shown: str) -> tuple[dict[str, Any], bool]:
    """The repo's index and whether it is the modular one."""
    for name, modular in ((MODULAR_INDEX, True), (INDEX, False)):
        index_file = root / name
        if index_file.is_file():
            index: dict[str, Any] = json.loads(index_file.read_text(encoding="utf-8"))
            return index, modular
    msg = (
        f"`{shown}` is not a diffusers-format folder: it has no `{INDEX}` (nor "
        f"`{MODULAR_INDEX}`). Point to the folder written by `save_pretrained`, or to a Hub "
        "repo that has one."
    )
    raise LoadError(msg, path=shown)


def sources_of(
    path: str | os.PathLike[str],
    names: Sequence[str],
    *,
    subfolder: str | None = None,
    torch_dtype: Any = None,
    variant: str | None = None,
    revision: str | None = None,
    use_safetensors: bool = True,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
) -> tuple[dict[str, Source | None], dict[str, Any]]:
    """Where each of *names* lives in the repo at *path*, and the plain config values it sets.

    A name the index lists as ``[null, null]`` (an optional part left out) maps to None; a
    name it doesn't list is absent.
    """
    text = os.fspath(path)
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    patterns = [prefix + MODULAR_INDEX, prefix + INDEX]
    root = resolve_repo(
        text,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        allow_patterns=patterns,
        use_safetensors=use_safetensors,
    )
    index, modular = _read_index(root / prefix if prefix else root, text + "/" + prefix.rstrip("/"))
    local = Path(text).expanduser().is_dir()
    repo = str(Path(text).expanduser().resolve()) if local else text
    configs = {k: v for k, v in index.items() if _is_config_value(v) and not k.startswith("_")}
    found: dict[str, Source | None] = {}
    for name in names:
        parts = cast("list[Any] | None", index.get(name))
        if not isinstance(parts, list) or len(parts) not in (2, 3):
            continue
        library, class_name = parts[:2]
        if library is None or class_name is None:
            found[name] = None
            continue
        where: dict[str, Any] = {"repo": repo, "subfolder": prefix + name, "revision": revision}
        if modular and len(parts) == 3:
            spec = cast("dict[str, Any]", parts[2])
            where = _modular_location(spec, root, prefix, where, local=local)
            if where["repo"] is None:
                found[name] = None
                continue
        source = Source(
            repo=where["repo"],
            subfolder=where["subfolder"],
            library=str(library),
            class_name=str(class_name),
            variant=variant if variant is not None else where.get("variant"),
            revision=where["revision"],
            torch_dtype=dtype_name(_dtype_for(name, torch_dtype)),
            use_safetensors=use_safetensors,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        # A dtype is for models: a scheduler loaded "in float16" is the float32 one.
        found[name] = source if source.is_model() else attrs.evolve(source, torch_dtype=None)
    return found, configs


def _modular_location(
    spec: dict[str, Any], root: Path, prefix: str, here: dict[str, Any], *, local: bool
) -> dict[str, Any]:
    """Where a ``modular_model_index.json`` entry says a component lives."""
    elsewhere = spec.get("pretrained_model_name_or_path") or spec.get("repo")
    subfolder = str(spec.get("subfolder") or "")
    # A local copy of a repo keeps the index that names the original: a component whose
    # files are in the copy is loaded from the copy, as diffusers does.
    inside = root / prefix / subfolder
    if local and subfolder and inside.is_dir() and any(inside.iterdir()):
        return {**here, "subfolder": prefix + subfolder, "variant": spec.get("variant")}
    if elsewhere is None:
        return {**here, "repo": None}
    return {
        "repo": str(elsewhere),
        "subfolder": subfolder,
        "revision": spec.get("revision"),
        "variant": spec.get("variant"),
    }


def _dtype_for(name: str, torch_dtype: Any) -> Any:
    """A dtype for every component, or diffusers' per-component dict with a ``"default"``."""
    if isinstance(torch_dtype, Mapping):
        dtypes = cast("Mapping[str, Any]", torch_dtype)
        return dtypes.get(name, dtypes.get("default"))
    return torch_dtype


def load_pretrained(
    path: str | os.PathLike[str],
    specs: Sequence[InputSpec],
    configs: Sequence[InputSpec],
    *,
    lazy: bool = False,
    shared: Callable[[str, Source], Any] | None = None,
    **options: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the components in *specs* and read the *configs* that the repo's index sets.

    Each component comes from where the index says, with the class it names; with *lazy*,
    a `Lazy` that loads on first use stands in for each. *shared* (a registry's lookup)
    may return an already loaded copy for a source instead. *options* go to `sources_of`.
    Diffusers pipelines register their configs in the index too, e.g. SDXL's
    ``requires_aesthetics_score``.
    """
    _check_dtypes(options.get("torch_dtype"), [s.name for s in specs])
    sources, index_configs = sources_of(path, [s.name for s in specs], **options)
    wanted = {c.name for c in configs}
    found = {k: v for k, v in index_configs.items() if k in wanted}
    loaded: dict[str, Any] = {}
    missing = [s.name for s in specs if s.required and sources.get(s.name) is None]
    if missing:
        listed = ", ".join(f"`{n}`" for n in missing)
        msg = (
            f"`{os.fspath(path)}`'s index has no entry for component {listed}. Add it to the "
            "folder, or pass it with `components={...}`."
        )
        raise MissingInputError(msg, names=tuple(missing))
    for name, source in sources.items():
        if source is None:
            continue
        reused = shared(name, source) if shared is not None else None
        if reused is not None:
            loaded[name] = reused
        else:
            loaded[name] = Lazy(source) if lazy else source.load()
    return loaded, found


def _check_dtypes(torch_dtype: Any, names: Sequence[str]) -> None:
    given: Mapping[str, Any] = (
        cast("Mapping[str, Any]", torch_dtype) if isinstance(torch_dtype, Mapping) else {}
    )
    values: list[Any] = list(given.values()) if given else [torch_dtype]
    for value in values:
        if value is not None and not _is_dtype(value):
            msg = (
                f"`torch_dtype` must be a torch dtype (`torch.float16`, or its name "
                f'`"float16"`), a dict of them per component with a `"default"`, or None (each '
                f"model in the dtype it was saved in), not {value!r}."
            )
            raise InputTypeError(msg, name="torch_dtype")
    if not given:
        return
    unknown = [k for k in given if k != "default" and k not in names]
    if unknown:
        msg = (
            f"`torch_dtype` names {', '.join(f'`{k}`' for k in unknown)}, which these blocks "
            f"don't load. Its keys are component names ({', '.join(f'`{n}`' for n in names)}) "
            'and `"default"`.'
        )
        raise ModblocksError(msg)


def _is_dtype(value: object) -> bool:
    import torch

    found = getattr(torch, value, None) if isinstance(value, str) else value
    return isinstance(found, torch.dtype)


def _is_config_value(value: Any) -> bool:
    # Components are `[library, class]` pairs; plain JSON scalars are pipeline configs.
    return isinstance(value, bool | int | float | str)


# -- saving --------------------------------------------------------------------------------


def save_components(
    path: str | os.PathLike[str],
    components: Mapping[str, Any],
    *,
    configs: Mapping[str, Any] | None = None,
    pipeline_class: str | None = None,
    modular: bool = False,
    reference: bool = False,
) -> None:
    """Save each component to its subfolder and write the repo's index.

    ``model_index.json`` by default; ``modular_model_index.json`` with *modular* (diffusers'
    modular format), where *reference* records a component loaded from a folder or Hub repo
    by where it came from instead of copying its weights. Configs that are plain JSON values
    go in the index too, where diffusers pipelines keep theirs.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": pipeline_class or "DiffusionPipeline"}
    try:
        import diffusers

        index["_diffusers_version"] = diffusers.__version__
        expected = _pipeline_parameters(diffusers, pipeline_class)
        blocks = getattr(
            getattr(diffusers, pipeline_class or "", None), "default_blocks_name", None
        )
        if modular and isinstance(blocks, str):
            index["_blocks_class_name"] = blocks  # what diffusers' modular pipeline runs
    except ImportError:  # pragma: no cover - saving without diffusers is still possible
        expected = []
    here = str(folder.resolve())
    for name, value in components.items():
        if value is None:  # an optional part left out, e.g. SD3 without T5
            index[name] = [None, None, _empty_spec()] if modular else [None, None]
            continue
        source = _source_of(value)
        if modular and reference and source is not None:
            index[name] = source.index_entry()
            continue
        component = unwrapped(value.get() if type(value) is Lazy else value)
        _save_one(name, component, folder / name)
        library = type(component).__module__.partition(".")[0]
        class_name = type(component).__name__
        if modular:
            saved = Source(repo=here, subfolder=name, library=library, class_name=class_name)
            index[name] = saved.index_entry()
        else:
            index[name] = [library, class_name]
    index.update({k: v for k, v in (configs or {}).items() if _is_config_value(v)})
    for name in expected:  # optional parts of that pipeline class
        index.setdefault(name, [None, None, _empty_spec()] if modular else [None, None])
    target = folder / (MODULAR_INDEX if modular else INDEX)
    target.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _empty_spec() -> dict[str, Any]:
    return {
        "pretrained_model_name_or_path": None,
        "revision": None,
        "subfolder": "",
        "type_hint": [None, None],
        "variant": None,
    }


def _source_of(value: Any) -> Source | None:
    if type(value) is Lazy:
        return value.source
    found = getattr(unwrapped(value), "_modblocks_source", None)
    return found if isinstance(found, Source) else None


def _save_one(name: str, component: Any, folder: Path) -> None:
    save = getattr(component, "save_pretrained", None)
    if save is None:
        msg = (
            f"component `{name}` ({type(component).__name__}) has no `save_pretrained`, so it "
            "can't be written to a diffusers-format folder."
        )
        raise ModblocksError(msg)
    save(str(folder))


def _pipeline_parameters(diffusers: Any, pipeline_class: str | None) -> list[str]:
    cls = getattr(diffusers, pipeline_class or "", None)
    classic = getattr(diffusers, "DiffusionPipeline", None)
    if cls is None or classic is None or not issubclass(cls, classic):
        return []  # a modular pipeline's parameters are not components
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
