"""`Components`: one registry of models shared by pipelines (diffusers' `ComponentsManager`).

Pipelines built from one registry bind the same objects, so each weight is in memory once.
`Pipeline.from_pretrained(..., components=registry)` reuses what the registry already holds
from the same place (folder or Hub repo, subfolder, variant, dtype) and adds what it loads.
The registry lists what it holds (size, device, dtype, the pipelines using it) and frees or
moves what is not used.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ._lazy import Lazy
from ._names import did_you_mean, listed
from ._sources import Source
from ._wrapped import unwrapped
from .exceptions import ModblocksError, UnknownInputError

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["ComponentInfo", "Components", "footprint"]


class ComponentInfo(NamedTuple):
    """One row of `Components.info`: what a registry holds under one name.

    Attributes:
        name: the registry's name for it.
        cls: its class name (of the model inside a wrapper such as ``torch.compile``'s).
        loaded: False for a `Lazy` component not loaded now.
        size: bytes of its weights in memory (on disk for a component not loaded); 0 for
            components without weights (schedulers, tokenizers).
        device: the device of its weights (``"cpu"``, ``"cuda:0"``), or None.
        dtype: their dtype (``"float32"``; ``"mixed"`` for several), or None.
        pipelines: how many live pipelines bind it.
        source: where it was loaded from (``folder/unet``), or None.
    """

    name: str
    cls: str
    loaded: bool
    size: int
    device: str | None
    dtype: str | None
    pipelines: int
    source: str | None


def footprint(value: Any) -> tuple[int, str | None, str | None]:
    """Bytes, device and dtype of a torch module's weights; (0, None, None) for anything else."""
    torch = sys.modules.get("torch")
    module = unwrapped(value)
    if torch is None or not isinstance(module, torch.nn.Module):
        return 0, None, None
    seen: set[int] = set()
    size = 0
    devices: set[str] = set()
    dtypes: set[str] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and tensor.device.type != "meta":
            seen.add(key)
            size += storage.nbytes()
        devices.add(str(tensor.device))
        if tensor.is_floating_point():
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
    device = devices.pop() if len(devices) == 1 else ("mixed" if devices else None)
    dtype = dtypes.pop() if len(dtypes) == 1 else ("mixed" if dtypes else None)
    return size, device, dtype


def _human(size: int) -> str:
    if size == 0:
        return "-"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


class Components(Mapping[str, Any]):
    """Models, schedulers and tokenizers shared by several pipelines, each loaded once.

    A registry is a mapping of names to components. Give it to pipelines instead of a dict:
    ``mb.Pipeline(blocks, components=registry)`` binds the registry's objects by name, and
    ``mb.Pipeline.from_pretrained(path, blocks, components=registry)`` reuses what it holds
    from the same place and adds what it loads, so two pipelines over one model hold one
    copy of each weight. ``print(registry)`` lists what is there with its size, device and
    dtype; `free` and `to` release or move what is not used.

    Example:
        ``registry = mb.Components()``;
        ``txt = mb.Pipeline.from_pretrained(folder, text2img, components=registry)``;
        ``img = mb.Pipeline.from_pretrained(folder, img2img, components=registry)``; then
        ``txt.components["unet"] is img.components["unet"]``.
    """

    def __init__(self, components: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = {}
        self._sources: dict[Source, str] = {}  # where each loaded entry came from
        self._users: list[weakref.ref[Pipeline]] = []
        self._lock = threading.RLock()
        for name, value in (components or {}).items():
            self.add(name, value)

    # -- the mapping ---------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            msg = f"the registry holds no component `{name}`.{did_you_mean(name, list(self))}"
            raise UnknownInputError(msg, names=(name,)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def get(self, name: str, default: Any = None) -> Any:
        """The component held as *name*, or *default*."""
        return self._items.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    # -- adding and removing -------------------------------------------------------------

    def add(self, name: str, component: Any, *, source: Source | None = None) -> str:
        """Hold *component* under *name* and return the name it got.

        The same object added again keeps its first name; a different one under a taken
        name gets ``name_2``, ``name_3`` ... (diffusers' manager does the same).
        """
        with self._lock:
            for held, value in self._items.items():
                if value is component:
                    return held
            unique, count = name, 1
            while unique in self._items:
                count += 1
                unique = f"{name}_{count}"
            self._items[unique] = component
            found = source or (component.source if type(component) is Lazy else None)
            found = found or getattr(unwrapped(component), "_modblocks_source", None)
            if isinstance(found, Source):
                self._sources.setdefault(found, unique)
            return unique

    def remove(self, name: str) -> Any:
        """Stop holding *name*; return the component (pipelines that bind it keep it)."""
        with self._lock:
            value = self[name]
            del self._items[name]
            self._sources = {s: n for s, n in self._sources.items() if n != name}
            return value

    def shared(self, name: str, source: Source) -> Any:  # noqa: ARG002 - the lookup's signature
        """The component held for *source* (loaded from the same place the same way), or None."""
        with self._lock:
            held = self._sources.get(source)
            return None if held is None else self._items.get(held)

    def attach(self, pipeline: Pipeline) -> None:
        """Count *pipeline* among the users of the components it binds (weakly)."""
        with self._lock:
            self._users = [ref for ref in self._users if ref() is not None]
            self._users.append(weakref.ref(pipeline))

    # -- what is used --------------------------------------------------------------------

    def _pipelines(self) -> list[Pipeline]:
        alive = [ref() for ref in self._users]
        return [p for p in alive if p is not None]

    def users(self, name: str) -> int:
        """How many live pipelines bind the component held as *name*."""
        value = self[name]
        return sum(
            any(bound is value for bound in pipe.components.values()) for pipe in self._pipelines()
        )

    def unused(self) -> tuple[str, ...]:
        """The names no live pipeline binds."""
        return tuple(name for name in self if self.users(name) == 0)

    def info(self) -> tuple[ComponentInfo, ...]:
        """One `ComponentInfo` per component: class, loaded, size, device, dtype, users, source."""
        rows: list[ComponentInfo] = []
        for name in self:
            value = self._items[name]
            source = self._source_name(name)
            row: tuple[str, bool, int, str | None, str | None]
            if type(value) is Lazy:
                inner = value.value
                cls = value.source.class_name
                if inner is None:
                    row = (cls, False, value.source.disk_size(), None, value.source.torch_dtype)
                else:
                    size, device, dtype = footprint(inner)
                    row = (cls, True, size, device, dtype)
            else:
                size, device, dtype = footprint(value)
                row = (type(unwrapped(value)).__name__, True, size, device, dtype)
            cls, loaded, size, device, dtype = row
            rows.append(
                ComponentInfo(name, cls, loaded, size, device, dtype, self.users(name), source)
            )
        return tuple(rows)

    def _source_name(self, name: str) -> str | None:
        for source, held in self._sources.items():
            if held == name:
                return source.describe()
        return None

    # -- freeing and moving --------------------------------------------------------------

    def free(self, *names: str) -> tuple[str, ...]:
        """Release memory; return the names freed.

        With no names, every component no live pipeline binds. A `Lazy` component drops its
        loaded copy and stays (it loads again when a block reads it); any other component
        is removed from the registry, which is only possible when no pipeline binds it.
        """
        chosen = names or self.unused()
        self._check_names(chosen)
        freed: list[str] = []
        for name in chosen:
            value = self._items[name]
            if type(value) is Lazy:
                if value.free():
                    freed.append(name)
                continue
            users = self.users(name)
            if users:
                msg = (
                    f"`{name}` is bound by {users} live pipeline{'s' if users > 1 else ''} and "
                    "was not loaded lazily, so freeing it would free nothing. Drop those "
                    "pipelines first, or load it with `from_pretrained(..., lazy=True)` to free "
                    "it and load it again on its next use."
                )
                raise ModblocksError(msg)
            self.remove(name)
            freed.append(name)
        return tuple(freed)

    def to(self, device: Any = None, *names: str, dtype: Any = None) -> Components:
        """Move the torch modules *names* (all when none are given) to *device* and/or *dtype*.

        ``registry.to("cpu", *registry.unused())`` moves what no pipeline uses off the GPU.
        A `Lazy` component not loaded moves when it loads.
        """
        from ._cache import touch

        chosen = names or tuple(self)
        self._check_names(chosen)
        for name in chosen:
            value = self._items[name]
            if type(value) is Lazy:
                value.to(device, dtype)
            elif footprint(value)[1] is not None:
                if device is not None:
                    value.to(device)
                if dtype is not None:
                    value.to(dtype=dtype)
            touch(value)  # results cached before the move are stale
        return self

    def _check_names(self, names: tuple[str, ...]) -> None:
        unknown = [n for n in names if n not in self._items]
        if unknown:
            hints = "".join(did_you_mean(n, list(self)) for n in unknown)
            msg = f"the registry holds no {listed(unknown)}.{hints} It holds: {listed(list(self))}."
            raise UnknownInputError(msg, names=tuple(unknown))

    # -- showing -------------------------------------------------------------------------

    def table(self) -> str:
        """What the registry holds, as an aligned text table."""
        header = ("name", "class", "loaded", "size", "device", "dtype", "pipelines", "source")
        rows = [
            (
                i.name,
                i.cls,
                "yes" if i.loaded else "no",
                _human(i.size),
                i.device or "-",
                i.dtype or "-",
                str(i.pipelines),
                i.source or "-",
            )
            for i in self.info()
        ]
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
            for r in [header, *rows]
        ]
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return f"Components({listed(list(self)) or 'empty'})"

    def __str__(self) -> str:
        return self.table()

    def __reduce__(self) -> tuple[Any, ...]:
        # By value, like a pipeline's components: a worker gets the objects, not the users.
        return (Components, (dict(self._items),))
