"""Models whose layers are read from their safetensors files for each forward, then dropped.

`streamed` opens a model from its folder (the loader maps the weight files without reading
them), splits it into groups of layers no bigger than a size, and gives each group forward
hooks: before its forward the group's weights are read from the files (a memory map, so
only the pages it touches are read), after it they are replaced by one-element stand-ins of
the same shape, dtype and device, and the memory goes back to the system. The model keeps
its class, config, device and dtype, so the blocks use it as any other.

Weights are matched to the files by their state-dict names, shapes and dtypes; a weight the
files don't hold as it is in the model (a buffer computed at init, a tied weight) stays in
memory. Weights must be used inside the forward of a module that holds them, as diffusers'
and transformers' models do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._sources import Source

if TYPE_CHECKING:
    import torch

__all__ = ["groups_of", "streamed"]


@dataclass
class _Slot:
    """One weight of a group: where it is in the model and in the files."""

    holder: Any  # the module that has it as a parameter or buffer
    attr: str
    key: str  # its state-dict name, also its name in the files
    parameter: bool


@dataclass
class _Group:
    """Layers loaded and dropped together, around the forward of their module."""

    module: Any
    slots: list[_Slot]
    files: dict[str, Path]  # key -> file
    device: Any
    dtype: Any
    meter: Callable[[int], None] | None = None  # told the bytes read in (+) and dropped (-)
    lock: threading.Lock = field(default_factory=threading.Lock)
    uses: int = 0
    nbytes: int = 0

    def before(self, *_: object) -> None:
        """The module's forward pre-hook: read the group in."""
        self.load()

    def after(self, *_: object) -> None:
        """The module's forward hook (also when the forward raised): drop the group."""
        self.drop()

    def load(self) -> None:
        """Read the group's weights from the files (the first of nested or concurrent uses)."""
        from safetensors import safe_open

        with self.lock:
            self.uses += 1
            if self.uses > 1:
                return
            by_file: dict[Path, list[_Slot]] = {}
            for slot in self.slots:
                by_file.setdefault(self.files[slot.key], []).append(slot)
            for path, slots in by_file.items():
                # A map per load: dropping the group's tensors unmaps the pages it read.
                opened: Any = safe_open(str(path), framework="pt", device="cpu")
                with opened as handle:
                    for slot in slots:
                        tensor = self._placed(handle.get_tensor(slot.key))
                        _set(slot, tensor)
                        self.nbytes += tensor.numel() * tensor.element_size()
            if self.meter is not None:
                self.meter(self.nbytes)

    def _placed(self, tensor: torch.Tensor) -> torch.Tensor:
        """*tensor* (a map of the file) in the model's dtype, on its device."""
        if self.dtype is not None and tensor.is_floating_point() and tensor.dtype != self.dtype:
            tensor = tensor.to(self.dtype)
        return tensor.to(self.device)

    def drop(self) -> None:
        """Put the one-element stand-ins back (the last of nested or concurrent uses)."""
        with self.lock:
            self.uses -= 1
            if self.uses > 0:
                return
            for slot in self.slots:
                _set(slot, _stand_in(_get(slot)))
            if self.meter is not None:
                self.meter(-self.nbytes)
            self.nbytes = 0


def _get(slot: _Slot) -> torch.Tensor:
    store = slot.holder._parameters if slot.parameter else slot.holder._buffers
    tensor: torch.Tensor = store[slot.attr]
    return tensor


def _set(slot: _Slot, tensor: torch.Tensor) -> None:
    if slot.parameter:
        slot.holder._parameters[slot.attr].data = tensor
    else:
        slot.holder._buffers[slot.attr] = tensor


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of *tensor*'s shape, dtype and device that holds one element."""
    import torch

    return torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)


def _tensor_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def groups_of(model: Any, limit: int) -> list[tuple[str, Any]]:
    """Split *model* into (name, module) groups of at most *limit* bytes where it can.

    The model itself is never a group (its own forward may not run: a VAE runs ``decode``);
    module lists are split into their elements (they have no forward); a module bigger than
    *limit* is split into its children, and a leaf stays whole however big.
    """
    import torch

    found: list[tuple[str, Any]] = []

    def visit(prefix: str, module: Any, top: bool) -> None:
        container = isinstance(module, torch.nn.ModuleList | torch.nn.ModuleDict)
        if not top and not container and (_tensor_bytes(module) <= limit or not module._modules):
            if _tensor_bytes(module):
                found.append((prefix, module))
            return
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child, top=False)

    visit("", model, top=True)
    return [(name.rstrip("."), module) for name, module in found]


def _file_index(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """Every tensor in *files*: its file, shape and dtype (as safetensors names it)."""
    from safetensors import safe_open

    index: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for path in files:
        opened: Any = safe_open(str(path), framework="pt", device="cpu")
        with opened as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                sliced: Any = handle.get_slice(key)
                index[key] = (path, tuple(sliced.get_shape()), str(sliced.get_dtype()))
    return index


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def streamed(
    source: Source,
    *,
    device: Any,
    group_size: int | None = None,
    meter: Callable[[int], None] | None = None,
) -> Any:
    """Open the model *source* names with its layer groups read from disk per forward.

    Args:
        source: a model's `Source` (its weights in safetensors files).
        device: where the layers compute.
        group_size: the most bytes a group holds (default: an eighth of the model).
        meter: called with the bytes each group reads in, and minus them when it drops them.
    """
    import torch

    target = getattr(torch, source.torch_dtype) if source.torch_dtype else None
    # Loaded in the files' own dtype, so the model's tensors are maps of the files.
    model = attrs.evolve(source, torch_dtype=None).load()
    files = _file_index(source.weight_files())
    limit = group_size or max(_tensor_bytes(model) // 8, 1 << 20)
    device = torch.device(device)
    shared: dict[int, int] = {}  # storages several weights use (tied weights)
    for tensor in [*model.parameters(), *model.buffers()]:
        ptr = tensor.untyped_storage().data_ptr()
        shared[ptr] = shared.get(ptr, 0) + 1
    on_disk: set[tuple[int, str]] = set()
    for prefix, module in groups_of(model, limit):
        slots = _slots(prefix, module, files, shared)
        if not slots:
            continue
        where = {s.key: files[s.key][0] for s in slots}
        group = _Group(module, slots, where, device, target, meter)
        for slot in slots:
            tensor = _get(slot)
            dtype = target if target is not None and tensor.is_floating_point() else tensor.dtype
            _set(slot, torch.zeros((), dtype=dtype, device=device).expand(tensor.shape))
            on_disk.add((id(slot.holder), slot.attr))
        module.register_forward_pre_hook(group.before)
        module.register_forward_hook(group.after, always_call=True)
    _settle(model, on_disk, device, target)
    return model


def _slots(
    prefix: str,
    module: Any,
    files: dict[str, tuple[Path, tuple[int, ...], str]],
    shared: dict[int, int],
) -> list[_Slot]:
    """The weights of *module* that the files hold as they are (and no other weight shares)."""
    slots: list[_Slot] = []
    start = f"{prefix}." if prefix else ""
    for holder_name, holder in module.named_modules():
        base = f"{start}{holder_name}." if holder_name else start
        for parameter, store in ((True, holder._parameters), (False, holder._buffers)):
            for attr, tensor in store.items():
                if tensor is None:
                    continue
                key = f"{base}{attr}"
                entry = files.get(key)
                if entry is None or entry[1] != tuple(tensor.shape):
                    continue
                if _SAFETENSORS_DTYPES.get(entry[2]) != str(tensor.dtype).removeprefix("torch."):
                    continue
                if shared.get(tensor.untyped_storage().data_ptr(), 0) > 1:
                    continue  # tied to another weight: kept in memory
                slots.append(_Slot(holder, attr, key, parameter))
    return slots


def _settle(model: Any, on_disk: set[tuple[int, str]], device: Any, dtype: Any) -> None:
    """Put the weights that stay in memory on *device*, in *dtype*."""
    for module in model.modules():
        for parameter, store in ((True, module._parameters), (False, module._buffers)):
            for attr, tensor in store.items():
                if tensor is None or (id(module), attr) in on_disk:
                    continue
                moved = tensor.to(device)
                if dtype is not None and moved.is_floating_point():
                    moved = moved.to(dtype)
                if moved is tensor:
                    continue
                if parameter:
                    store[attr].data = moved
                else:
                    store[attr] = moved
