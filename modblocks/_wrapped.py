"""Wrapped models: `torch.compile`, PEFT, quantization and parallel wrappers around a model.

A component declared as ``UNet2DConditionModel`` accepts ``torch.compile(unet)`` (an
``OptimizedModule`` whose ``_orig_mod`` is the UNet), a PEFT ``PeftModel``
(``get_base_model()``), a ``DataParallel`` (``.module``) or a wrapper that keeps the model
as ``_wrapped`` (optimum-quanto's quantized models). Models changed in place (accelerate's
hooks, PEFT's injected adapters, torchao and bitsandbytes quantization) keep their class and
pass as they are. Blocks get the wrapper: the run calls it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["unwrapped", "wrapped_classes"]

_MAX_DEPTH = 8  # wrappers of wrappers (compiled PEFT model ...); a cycle stops here


def _inner(value: object) -> Any:
    """The model *value* wraps, or None."""
    attributes: dict[str, Any] = vars(value) if hasattr(value, "__dict__") else {}
    modules: dict[str, Any] = attributes.get("_modules") or {}
    for name in ("_orig_mod", "module", "_wrapped"):  # torch.compile, DataParallel, quanto
        inner: Any = modules.get(name) if name in modules else attributes.get(name)
        if inner is not None and (name != "module" or _is_parallel(value)):
            return inner
    cls = type(value)
    base: Any = getattr(cls, "get_base_model", None)  # PEFT's PeftModel
    if base is not None and cls.__module__.startswith("peft."):
        return base(value)
    return None


def _is_parallel(value: object) -> bool:
    return any(
        cls.__name__ in ("DataParallel", "DistributedDataParallel") for cls in type(value).__mro__
    )


def unwrapped(value: Any) -> Any:
    """The innermost model of *value* (itself when it wraps nothing).

    Example:
        >>> unwrapped(3)
        3
    """
    for _ in range(_MAX_DEPTH):
        inner = _inner(value)
        if inner is None:
            return value
        value = inner
    return value


def wrapped_classes(value: object) -> list[type[object]]:
    """The classes of *value* and of every model inside it, outermost first."""
    classes: list[type[object]] = []
    inner: object = value
    for _ in range(_MAX_DEPTH):
        classes.append(type(inner))
        inner = _inner(inner)
        if inner is None:
            break
    return classes
