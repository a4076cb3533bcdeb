"""`Lazy`: a component that records where it lives and loads when a block first reads it."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Generator
from typing import Any

from ._fingerprint import changes
from ._sources import Source

__all__ = ["Lazy", "ordinary_tensors", "resolve"]


@contextlib.contextmanager
def ordinary_tensors() -> Generator[None]:
    """Make tensors outside `torch.inference_mode()`, also when a run (which is in it) asks.

    Weights loaded or moved inside inference mode would be inference tensors for good: no
    in-place change (``load_state_dict``, fusing a LoRA) outside it, no autograd, and no
    version counter for a cache to watch.
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.is_inference_mode_enabled():
        yield
        return
    with torch.inference_mode(False):
        yield


class Lazy:
    """A component loaded on first use: `Pipeline.from_pretrained(..., lazy=True)` makes them.

    A pipeline binds the `Lazy` itself; a run hands the blocks that read it the loaded
    component (loading it the first time), so a branch that never runs never loads its models.
    The loaded copy is kept (shared by every pipeline that binds this `Lazy`, e.g. through a
    `Components` registry) until `free` drops it; the next run loads it again.

    Example:
        ``pipe = mb.Pipeline.from_pretrained(folder, text2img, lazy=True)``; then
        ``pipe.components["unet"].loaded`` is False until a run reaches the denoising loop.
    """

    __slots__ = ("__weakref__", "_as_loaded", "_device", "_dtype", "_lock", "_value", "source")

    def __init__(self, source: Source) -> None:
        self.source = source
        self._value: Any = None
        self._as_loaded: bytes | None = None  # `changes` of the loaded copy as it loaded
        self._lock = threading.Lock()
        self._device: Any = None  # where `to` moved it: applied to every later load
        self._dtype: Any = None

    @property
    def cls(self) -> Any:
        """The component's class (imported, not loaded)."""
        return self.source.cls()

    @property
    def loaded(self) -> bool:
        """Whether a loaded copy is held now."""
        return self._value is not None

    @property
    def value(self) -> Any:
        """The loaded copy, or None when none is held (see `get`)."""
        return self._value

    def get(self) -> Any:
        """Return the loaded component, loading it the first time (thread-safe)."""
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is None:
                value = self.load()
                self._as_loaded = changes(value)
                self._value = value
            return self._value

    def load(self) -> Any:
        """Load a new copy from the source; it is not kept (see `get`)."""
        with ordinary_tensors():
            return self._moved(self.source.load())

    def free(self) -> bool:
        """Drop the loaded copy (the next `get` loads it again); return whether one was held."""
        with self._lock:
            held = self._value is not None
            self._value = self._as_loaded = None
        return held

    def changed_copy(self) -> Any:
        """The loaded copy if it changed in place since it loaded (a LoRA, new weights), else None.

        Caches key a `Lazy` by itself while this is None, and by the copy once it changed.
        """
        value, as_loaded = self._value, self._as_loaded
        if value is None:
            return None
        now = changes(value)
        return value if now is None or now != as_loaded else None

    def to(self, device: Any = None, dtype: Any = None) -> Lazy:
        """Move the loaded copy, if any, and every later one, to *device* and/or *dtype*."""
        with self._lock:
            if device is not None:
                self._device = device
            if dtype is not None:
                self._dtype = dtype
            if self._value is not None:
                self._moved(self._value)
        return self

    def _moved(self, value: Any) -> Any:
        move = getattr(value, "to", None)
        if move is None or not hasattr(value, "parameters"):
            return value
        if self._device is not None:
            move(self._device)
        if self._dtype is not None:
            move(dtype=self._dtype)
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        # Travels as where it lives (a worker process loads its own copy), with its moves;
        # a loaded copy changed since it loaded (a LoRA) travels itself, as the disk lacks it.
        changed = self.changed_copy()
        if changed is not None:
            return (_itself, (changed,))
        return (_unpickle, (self.source, self._device, self._dtype))

    def __copy__(self) -> Lazy:
        return self  # a handle: copies of a state share it, as they share models

    def __deepcopy__(self, memo: dict[int, Any]) -> Lazy:
        return self

    def __repr__(self) -> str:
        # Short, so a pipeline's doc shows it whole; `source` says where it lives.
        return f"Lazy({self.source.class_name}, {'loaded' if self.loaded else 'not loaded'})"


def _unpickle(source: Source, device: Any, dtype: Any) -> Lazy:
    lazy = Lazy(source)
    lazy._device, lazy._dtype = device, dtype
    return lazy


def _itself(value: Any) -> Any:
    return value


def resolve(value: Any) -> Any:
    """The component a block gets for a bound *value*: a `Lazy` loads, anything else is itself."""
    return value.get() if type(value) is Lazy else value
