"""Where models are while blocks run: lazy loading and the offloading policies, as hooks.

Every policy is a `Placement`, a `Hook` around each block and loop of a pipeline's runs.
Before the unit it hands the blocks the components they read, placed (loaded, moved to the
execution device, or streamed from disk); after the unit it puts them back. A loop places
its components once for all its steps; blocks inside find them placed. A unit served from
a cache never reaches the policy, so nothing is loaded or moved for it.

- `Placement`: loads `Lazy` components on first use (a pipeline with lazy components and
  no ``offload=`` gets it).
- `ModelOffload` (``offload="model"``): each model moves to the device before its unit and
  back after (diffusers' ``enable_model_cpu_offload``), or stays while memory allows.
- `GroupOffload` (``offload="sequential"``): diffusers' group offloading hooks move each
  layer (or group of blocks) to the device for its forward only.
- `DiskOffload` (``offload="disk"``): each lazy model is opened from its folder before its
  unit and dropped after, and its layers are read from the safetensors files for their
  forward only, so the process holds about one group of layers at a time.

The device mover and the memory probe are arguments, so the policies run (and are tested)
on a machine without an accelerator; moving a model only saves memory where there is a
second kind of memory to move it to (a GPU), and streaming from disk saves RAM anywhere.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, cast

from ._batching import BatchedModel
from ._codegen import Cursor
from ._engine import Hook, Run, UnitCall
from ._lazy import Lazy, ordinary_tensors, resolve
from ._plan import BLOCK, LOOP, Plan
from .exceptions import WiringError

__all__ = [
    "OFFLOAD_NAMES",
    "DiskOffload",
    "GroupOffload",
    "ModelOffload",
    "Placement",
    "default_device",
    "placement_for",
]

Values = dict[str, Any]
Mover = Callable[[Any, Any], None]
Probe = Callable[[], int]

OFFLOAD_NAMES = ("model", "sequential", "disk")
_ABSENT: Any = object()


def _is_module(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _model_of(value: Any) -> Any:
    """The model a `StepBatcher`'s stand-in stands for (placed as that model), or *value*."""
    return value._model if type(value) is BatchedModel else value


def default_device() -> Any:
    """The accelerator to compute on: CUDA, then Apple's MPS, then XPU, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu")
    return torch.device("cpu")


class Placement(Hook):
    """The base policy: hands blocks their components, loading `Lazy` ones on first use.

    Subclasses decide what placing the components of a unit means (`acquire`), what happens
    after the unit (`release`) and at the end of a run (`finish`). Components are placed
    around blocks and loops only: a loop holds them for all its steps, and a switch places
    nothing, so only the branch that runs loads or moves its models.
    """

    def manages(self, value: Any) -> bool:
        """Whether this policy places *value* (others go to the blocks as they are)."""
        return type(value) is Lazy

    def acquire(self, values: list[Any]) -> list[Any]:
        """Return what the unit's blocks get for the bound *values* (one unit's, at once)."""
        return [resolve(value) for value in values]

    def release(self, values: list[Any], placed: list[Any]) -> None:
        """After the unit: undo what `acquire` did (nothing by default)."""

    def finish(self) -> None:
        """After the last unit of a run (nothing by default)."""

    def around(
        self, unit: Plan, values: MutableMapping[str, Any], proceed: Callable[[], None]
    ) -> None:
        """Place the unit's components, run it, and release them (runs use `wrap`)."""
        self._around(unit, values, proceed, set())

    def wrap(self, call: UnitCall, run: Run) -> UnitCall:  # noqa: ARG002 - the run is not needed
        """Place components per run: what an enclosing loop placed is not placed again."""
        active: set[int] = set()
        depth = [0]

        def placed(plan: Plan, values: Values, at: Cursor | None) -> None:
            depth[0] += 1
            try:
                self._around(plan, values, lambda: call(plan, values, at), active)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    self.finish()

        return placed

    def _around(
        self,
        unit: Plan,
        values: MutableMapping[str, Any],
        proceed: Callable[[], None],
        active: set[int],
    ) -> None:
        if unit.kind not in (BLOCK, LOOP) or not unit.components:
            proceed()
            return
        names: list[str] = []
        for name in unit.components:
            value = values.get(name, _ABSENT)
            if value is not _ABSENT and id(_model_of(value)) not in active and self.manages(value):
                names.append(name)
        if not names:
            proceed()
            return
        bound = [values[name] for name in names]
        placed = self.acquire(bound)
        try:
            for name, one in zip(names, placed, strict=True):
                active.add(id(_model_of(one)))
                values[name] = one
            proceed()
        finally:
            for name, value, one in zip(names, bound, placed, strict=True):
                active.discard(id(_model_of(one)))
                if values.get(name) is one:
                    values[name] = value  # the pipeline's own binding, for the next unit
            self.release(bound, placed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _Residency:
    """Which models `ModelOffload` policies hold on a device, shared by every pipeline.

    Counts the units using each model (runs in several threads, pipelines sharing a
    registry), so a model leaves the device only when no unit uses it.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.uses: dict[int, int] = {}
        # id -> (model, last use, the policy that moved it there)
        self.resident: dict[int, tuple[Any, float, ModelOffload]] = {}

    def idle(self, device: str) -> list[tuple[float, int, Any, ModelOffload]]:
        """Models on *device* that no unit uses now, least recently used first."""
        found = [
            (last, key, model, policy)
            for key, (model, last, policy) in self.resident.items()
            if self.uses.get(key, 0) == 0 and policy._key() == device
        ]
        return sorted(found, key=lambda item: item[:2])


_RESIDENCY = _Residency()


def device_key(device: Any) -> str:
    """One spelling per device: ``"cuda"`` and ``torch.device("cuda:0")`` are the same one.

    A device without an index is the backend's current one; names torch doesn't know (a
    test's fake device) are kept as they are.
    """
    import torch

    try:
        found = torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        return str(device)
    index: int | None = cast("int | None", found.index)  # None at run time, whatever stubs say
    if index is None and found.type != "cpu":
        backend = getattr(torch, found.type, None)
        available = getattr(backend, "is_available", None)
        current = getattr(backend, "current_device", None)
        if available is not None and current is not None and available():
            return f"{found.type}:{current()}"
    return str(found)


def _nbytes(module: Any) -> int:
    from ._components import footprint

    return footprint(module)[0]


class ModelOffload(Placement):
    """``offload="model"``: models are on the device only while units that read them run.

    Before a block or loop, the models it reads move to *device*, and models on the device
    that it doesn't read go back to *offload_device*; at the end of a run every model goes
    back. So the device holds the models of one block at a time (diffusers'
    ``enable_model_cpu_offload``), and a model that consecutive blocks read doesn't move in
    between. With *keep_free* (bytes), models stay on the device while the *memory* probe
    reports more than *keep_free* bytes free, also after the run; the least recently used go
    back only when a model that must come in doesn't fit (diffusers' ``ComponentsManager``
    and ComfyUI do so).

    Args:
        device: where blocks compute (default: CUDA, MPS or XPU when there is one, else CPU).
        offload_device: where models wait (default: the CPU).
        keep_free: bytes to keep free on *device*; None: only the running block's models
            stay on it.
        mover: ``mover(model, device)`` moves a model (default: ``model.to(device)``).
        memory: returns the free bytes on *device* (default: asks torch for CUDA, MPS, XPU;
            the free RAM for the CPU).
    """

    def __init__(
        self,
        device: Any = None,
        *,
        offload_device: Any = "cpu",
        keep_free: int | None = None,
        mover: Mover | None = None,
        memory: Probe | None = None,
    ) -> None:
        self.device = device
        self.offload_device = offload_device
        self.keep_free = keep_free
        self.mover = mover
        self.memory = memory
        self._keyed: tuple[Any, str] | None = None  # (device, its `device_key`)

    def manages(self, value: Any) -> bool:
        """Lazy components and torch modules."""
        return type(value) is Lazy or _is_module(value)

    def _device(self) -> Any:
        if self.device is None:
            self.device = default_device()
        return self.device

    def _key(self) -> str:
        """The device's `device_key`, worked out once per device (units ask for it often)."""
        device = self._device()
        keyed = self._keyed
        if keyed is None or keyed[0] is not device:
            keyed = self._keyed = (device, device_key(device))
        return keyed[1]

    def _move(self, model: Any, device: Any) -> None:
        if self.mover is not None:
            self.mover(model, device)
        else:
            with ordinary_tensors():  # the run is in inference mode: keep the weights usable
                model.to(device)

    def _free_bytes(self) -> int:
        if self.memory is not None:
            return self.memory()
        return free_memory(self._device())

    @staticmethod
    def _evict(key: int, model: Any, policy: ModelOffload) -> None:
        policy._move(model, policy.offload_device)  # by the policy that moved it there
        del _RESIDENCY.resident[key]

    def acquire(self, values: list[Any]) -> list[Any]:
        """Move the unit's models to the device, after making room for them."""
        placed = [resolve(value) for value in values]
        models = {id(m): m for m in map(_model_of, placed) if _is_module(m)}
        with _RESIDENCY.lock:
            incoming = [m for k, m in models.items() if k not in _RESIDENCY.resident]
            needed = sum(_nbytes(m) for m in incoming) if self.keep_free is not None else 0
            for _, key, model, policy in _RESIDENCY.idle(self._key()):
                if key in models:
                    continue
                if self.keep_free is not None and self._free_bytes() - needed >= self.keep_free:
                    break
                self._evict(key, model, policy)
            now = time.monotonic()
            counted: list[int] = []
            try:
                for key, model in models.items():
                    _RESIDENCY.uses[key] = _RESIDENCY.uses.get(key, 0) + 1
                    counted.append(key)
                    found = _RESIDENCY.resident.get(key)
                    if found is None:
                        self._move(model, self._device())
                    _RESIDENCY.resident[key] = (model, now, self if found is None else found[2])
            except BaseException:
                # A move failed (out of memory): the unit doesn't run, so it uses nothing,
                # and the end of the run moves back what did move.
                _uncount(counted)
                raise
        return placed

    def release(self, values: list[Any], placed: list[Any]) -> None:  # noqa: ARG002
        """The unit's models stay on the device for the next unit (see `finish`)."""
        with _RESIDENCY.lock:
            _uncount({id(m) for m in map(_model_of, placed) if _is_module(m)})

    def finish(self) -> None:
        """At the end of a run, every idle model goes back (unless *keep_free* keeps it)."""
        if self.keep_free is not None:
            return
        with _RESIDENCY.lock:
            for _, key, model, policy in _RESIDENCY.idle(self._key()):
                self._evict(key, model, policy)

    def __repr__(self) -> str:
        return f"ModelOffload(device={self.device!r}, keep_free={self.keep_free!r})"


def _uncount(keys: Iterable[int]) -> None:
    """One use fewer of each model in *keys* (the residency's lock held)."""
    for key in keys:
        uses = _RESIDENCY.uses.get(key, 1) - 1
        if uses > 0:
            _RESIDENCY.uses[key] = uses
        else:
            _RESIDENCY.uses.pop(key, None)


def free_memory(device: Any) -> int:
    """Free bytes on *device*: torch's count for accelerators, the available RAM for the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "xpu":  # pragma: no cover - needs an Intel GPU
        return int(torch.xpu.mem_get_info(device)[0])
    if device.type == "mps":  # pragma: no cover - needs a Mac
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class GroupOffload(Placement):
    """``offload="sequential"``: diffusers' group offloading hooks inside each model.

    The first unit that reads a model gives it diffusers' hooks
    (`diffusers.hooks.apply_group_offloading`): its weights wait on *offload_device*, and
    each layer (``offload_type="leaf_level"``, diffusers' sequential CPU offload) or each
    group of *num_blocks_per_group* blocks (``"block_level"``) moves to *device* for its own
    forward. The least device memory, at the cost of a transfer per layer per call; the
    hooks stay on the model (also for other pipelines sharing it).

    Args:
        device: where layers compute (default: CUDA, MPS or XPU when there is one, else CPU).
        offload_type: ``"leaf_level"`` or ``"block_level"``.
        num_blocks_per_group: blocks moved together with ``"block_level"`` (default 1).
        offload_device: where weights wait (default: the CPU).
        use_stream: overlap transfers with computation on a CUDA stream.
    """

    def __init__(
        self,
        device: Any = None,
        *,
        offload_type: str = "leaf_level",
        num_blocks_per_group: int | None = None,
        offload_device: Any = "cpu",
        use_stream: bool = False,
    ) -> None:
        self.device = device
        self.offload_type = offload_type
        self.num_blocks_per_group = num_blocks_per_group
        self.offload_device = offload_device
        self.use_stream = use_stream
        self._lock = threading.Lock()

    def manages(self, value: Any) -> bool:
        """Lazy components and torch modules."""
        return type(value) is Lazy or _is_module(value)

    def acquire(self, values: list[Any]) -> list[Any]:
        """Give each model diffusers' group offloading hooks, once."""
        placed = [resolve(value) for value in values]
        with self._lock:
            for model in map(_model_of, placed):
                if _is_module(model) and not _has_group_offloading(model):
                    self._apply(model)
        return placed

    def _apply(self, model: Any) -> None:
        import torch
        from diffusers.hooks.group_offloading import apply_group_offloading

        device = self.device if self.device is not None else default_device()
        blocks = self.num_blocks_per_group
        if self.offload_type == "block_level" and blocks is None:
            blocks = 1
        apply_group_offloading(
            model,
            onload_device=torch.device(device),
            offload_device=torch.device(self.offload_device),
            offload_type=self.offload_type,
            num_blocks_per_group=blocks,
            use_stream=self.use_stream,
        )

    def __repr__(self) -> str:
        return f"GroupOffload(device={self.device!r}, offload_type={self.offload_type!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _has_group_offloading(model: Any) -> bool:
    stack = [model]
    while stack:
        module = stack.pop()
        if "_diffusers_hook" in module.__dict__:
            return True
        stack.extend(child for child in module._modules.values() if child is not None)
    return False


class DiskOffload(Placement):
    """``offload="disk"``: model weights stay on disk; each layer group is read for its forward.

    For low-memory machines. The first unit that reads a lazy model opens it from its folder
    with its weights left in the safetensors files: each group of layers (a UNet block, a
    text encoder layer ...) is read in just before its forward and dropped right after. The
    process holds about one group of layers plus activations instead of the sum of the
    models, at the cost of reading the weights on every forward (from the OS page cache when
    it has room). Components given in memory, and weights in another format, stay in memory.

    Attributes:
        held: bytes of weights read in now.
        peak: the most bytes of weights read in at once so far (`reset_peak` starts again).

    Args:
        device: where layers compute (default: CUDA, MPS or XPU when there is one, else CPU).
        group_size: the most bytes one group of layers holds (default: an eighth of each
            model); bigger groups mean fewer, larger reads.
    """

    def __init__(self, device: Any = None, *, group_size: int | None = None) -> None:
        self.device = device
        self.group_size = group_size
        self._lock = threading.Lock()
        self._open: dict[int, tuple[Lazy, Any]] = {}  # id(lazy) -> (lazy, streamed model)
        self.held = 0
        self.peak = 0

    def manages(self, value: Any) -> bool:
        """Lazy components."""
        return type(value) is Lazy

    def acquire(self, values: list[Any]) -> list[Any]:
        """The streamed model for each lazy model (opened once), other lazy components loaded."""
        return [self._placed(value) for value in values]

    def _placed(self, lazy: Lazy) -> Any:
        if not lazy.source.is_model():
            return lazy.get()
        from ._disk import streamed

        with self._lock:
            found = self._open.get(id(lazy))
            if found is None:
                device = self.device if self.device is not None else default_device()
                model = streamed(
                    lazy.source, device=device, group_size=self.group_size, meter=self._meter
                )
                found = self._open[id(lazy)] = (lazy, model)
            return found[1]

    def _meter(self, change: int) -> None:
        with self._lock:
            self.held += change
            self.peak = max(self.peak, self.held)

    def reset_peak(self) -> None:
        """Start measuring `peak` again from what is held now."""
        self.peak = self.held

    def close(self) -> None:
        """Forget the opened models (they hold no weights between forwards)."""
        with self._lock:
            self._open.clear()

    def __repr__(self) -> str:
        return f"DiskOffload(device={self.device!r}, group_size={self.group_size!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"device": self.device, "group_size": self.group_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["device"], group_size=state["group_size"])  # type: ignore[misc]


def placement_for(offload: Any, components: Any) -> Placement | None:
    """The policy for ``Pipeline(offload=...)``: None when there is nothing to place."""
    if offload is None:
        return Placement() if any(type(v) is Lazy for v in components.values()) else None
    if isinstance(offload, Placement):
        return offload
    if offload == "model":
        return ModelOffload()
    if offload == "sequential":
        return GroupOffload()
    if offload == "disk":
        return DiskOffload()
    msg = (
        f"`offload` is one of {', '.join(repr(n) for n in OFFLOAD_NAMES)}, a policy "
        f"(`mb.ModelOffload(...)`, `mb.GroupOffload(...)`, `mb.DiskOffload(...)`) or None, "
        f"not {offload!r}."
    )
    raise WiringError(msg, name="offload")
